"""What a multipart form may hold before BentoML parses it.

BentoML 1.4 parses an API's form with Starlette, then JSON-decodes every field that is not a file
field, and downloads the *text* value of a file field as a URL (``MultipartSerde.ensure_file``).
Every exception on that way becomes a logged 500: Starlette's limits (1,000 parts, 1 MiB per
field), a part without a name, a malformed body, a field nested 5,000 deep (``RecursionError``),
an integer of 5,000 digits (``ValueError``), a file part that is not text. :class:`FormInspector`
sees the same bytes first, as they stream in, through the same parser (python-multipart), and
refuses each of those with our own 4xx before BentoML reads the part that would fail.
"""

from __future__ import annotations

import codecs
import json
import re

import numpy as np
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from .errors import BodyTooLarge, MalformedRequest

MAX_PARTS = 64  # the largest form (/segment_everything) has 21 fields; Starlette's own limit (1,000) is a 500
MAX_FIELD_BYTES = 256 * 1024  # 32 objects of 64 points each take about 100 KB of JSON
# Starlette holds every field in memory, and each is checked on the event loop (about 4 ms per
# 256 KiB): the fields of one form together stay under this.
MAX_FIELDS_TOTAL_BYTES = 1024 * 1024
MAX_BOUNDARY_BYTES = 70  # RFC 2046
MAX_JSON_DEPTH = 64  # our deepest field (`objects`) nests 4 deep; json's recursion limit is ~1,000
MAX_NUMBER_DIGITS = 1000  # Python refuses to parse integers over 4,300 digits (a ValueError)

_LONG_NUMBER = re.compile(rf"[0-9]{{{MAX_NUMBER_DIGITS + 1}}}")
_BRACKETS_OPEN = (ord("["), ord("{"))
_BRACKETS_CLOSE = (ord("]"), ord("}"))


def boundary_of(content_type: bytes) -> tuple[bytes, str]:
    """The boundary and charset of a ``multipart/form-data`` Content-Type header."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise MalformedRequest("a multipart/form-data body needs a boundary in its Content-Type")
    if len(boundary) > MAX_BOUNDARY_BYTES:
        raise MalformedRequest(f"the multipart boundary is over {MAX_BOUNDARY_BYTES} bytes")
    charset = params.get(b"charset", b"utf-8").decode("latin-1")
    try:
        charset = codecs.lookup(charset).name  # as Starlette decodes field names and values
    except LookupError:
        charset = "latin-1"
    return boundary, charset


class FormInspector:
    """Feed it a multipart body chunk by chunk; it raises our errors for what BentoML cannot take.

    File parts of ``file_fields`` (the image) pass through unbuffered; every other part is held,
    up to :data:`MAX_FIELD_BYTES` (:data:`MAX_FIELDS_TOTAL_BYTES` for all of them), until it
    ends, then checked as BentoML will decode it.
    """

    def __init__(self, boundary: bytes, charset: str, file_fields: frozenset[str]) -> None:
        self._charset = charset
        self._file_fields = file_fields
        self._parts = 0
        self._field_bytes = 0  # held so far, all fields together
        self._ended = False
        self._new_part()
        try:
            self._parser = MultipartParser(boundary, {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            })
        except (FormParserError, ValueError) as exc:
            raise MalformedRequest(f"the multipart boundary cannot be used: {exc}") from None

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except FormParserError as exc:
            raise MalformedRequest(f"the multipart form is malformed: {exc}") from None

    def close(self) -> None:
        """The body is complete: it must have ended with the form's closing boundary."""
        try:
            self._parser.finalize()
        except FormParserError as exc:
            raise MalformedRequest(f"the multipart form is malformed: {exc}") from None
        if not self._ended:
            raise MalformedRequest("the multipart form ends before its closing boundary")

    def _new_part(self) -> None:
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._name = ""
        self._is_file = False
        self._held: bytearray | None = None  # the value of a part BentoML will JSON-decode

    def _on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise BodyTooLarge(f"the form has more than {MAX_PARTS} parts")
        self._new_part()

    # python-multipart bounds the headers of a part (8 of at most 4 KiB each) and raises a parse error beyond.
    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)  # the last one wins, as in Starlette
        self._header_name = bytearray()
        self._header_value = bytearray()

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise MalformedRequest(
                f"form part {self._parts} has no name: each part needs `Content-Disposition: form-data; name=...`"
            )
        self._name = _decode(options[b"name"], self._charset)
        self._is_file = b"filename" in options
        if self._name in self._file_fields:
            if not self._is_file:
                # BentoML would download a text value of a file field as a URL, from inside our network.
                hint = "; to name an image by URL, send `image_url`" if self._name == "image" else ""
                raise MalformedRequest(f"`{self._name}` must be a file part (with a filename){hint}")
        else:
            self._held = bytearray()

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._held is None:
            return
        if len(self._held) + (end - start) > MAX_FIELD_BYTES:
            raise BodyTooLarge(f"form field `{self._name}` is over {MAX_FIELD_BYTES} bytes")
        self._field_bytes += end - start
        if self._field_bytes > MAX_FIELDS_TOTAL_BYTES:
            raise BodyTooLarge(f"the form's fields other than the image are over {MAX_FIELDS_TOTAL_BYTES} bytes together")
        self._held += data[start:end]

    def _on_part_end(self) -> None:
        if self._held is None:
            return
        raw = bytes(self._held)
        if self._is_file:  # BentoML reads the file and hands json.loads its bytes
            try:
                text = raw.decode(json.detect_encoding(raw), "surrogatepass")
            except UnicodeDecodeError:
                raise MalformedRequest(f"form field `{self._name}` is not text in a JSON encoding") from None
        else:
            text = _decode(raw, self._charset)
        check_json_safe(self._name, text)

    def _on_end(self) -> None:
        self._ended = True


def check_json_safe(name: str, text: str) -> None:
    """Refuse what makes ``json.loads`` raise something other than a JSONDecodeError (which BentoML
    treats as "a plain string"): nesting past the recursion limit, integers past Python's digit limit.

    Both are judged on the raw text, strings included: a refusal of a string holding 65 brackets
    in a row is the price of a check that costs one pass in numpy instead of a parse.
    """
    codes = np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    steps = np.isin(codes, _BRACKETS_OPEN).astype(np.int32) - np.isin(codes, _BRACKETS_CLOSE)
    if steps.size and int(np.cumsum(steps).max()) > MAX_JSON_DEPTH:
        raise MalformedRequest(f"form field `{name}` is nested more than {MAX_JSON_DEPTH} levels deep")
    if _LONG_NUMBER.search(text):
        raise MalformedRequest(f"form field `{name}` holds a number of more than {MAX_NUMBER_DIGITS} digits")


def _decode(data: bytes, charset: str) -> str:
    """Bytes to text exactly as Starlette's form parser decodes names and values."""
    try:
        return data.decode(charset)
    except (UnicodeDecodeError, LookupError):
        return data.decode("latin-1")
