"""What a request body may hold before BentoML parses it: a multipart form, a url-encoded form, JSON.

BentoML 1.4 parses an API's form with Starlette, then JSON-decodes every field that is not a file
field, and downloads the *text* value of a file field as a URL (``MultipartSerde.ensure_file``).
Every exception on that way becomes a logged 500: Starlette's limits (1,000 parts, 1 MiB per
field), a part without a name, a malformed body, a field nested 5,000 deep (``RecursionError``),
an integer of 5,000 digits (``ValueError``), a file part that is not text. :class:`FormInspector`
sees the same bytes first, as they stream in, through the same parser (python-multipart), and
refuses each of those with our own 4xx before BentoML reads the part that would fail.

BentoML reads a url-encoded form as a multipart one (the same JSON-decoding of every field), and
any other body as JSON, validated by pydantic against the route's fields: a file field in JSON (an
image as base64) or a body that is not a JSON object comes back as pydantic's report ("1
validation error for Input"). :class:`UrlEncodedInspector` and :class:`JsonInspector` hold those
bodies (they are small: ``guard.MAX_JSON_BODY_BYTES``) and refuse the same with a message in words.
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Iterable
from urllib.parse import unquote_plus

import numpy as np
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, QuerystringParser, parse_options_header

from ..errors import BodyTooLarge, MalformedRequest, UnsupportedContentType

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
                # a binary file under another name: `curl -F file=@photo.jpg`
                raise MalformedRequest(
                    f"form field `{self._name}` is a file that is not text, and no file field of this API is "
                    f"called `{self._name}`: {_file_fields_hint(self._file_fields)}"
                ) from None
        else:
            text = _decode(raw, self._charset)
        check_json_safe(f"form field `{self._name}`", text)

    def _on_end(self) -> None:
        self._ended = True


class UrlEncodedInspector:
    """Feed it an ``application/x-www-form-urlencoded`` body, which it reads field by field as
    Starlette does (python-multipart's parser, names and values percent-decoded from latin-1), and
    checks each field as BentoML will read it (JSON-decoded where it parses). Such a form cannot
    carry a file, and BentoML would download a text value of a file field as a URL: those are a 415."""

    def __init__(self, file_fields: frozenset[str]) -> None:
        self._file_fields = file_fields
        self._fields = 0
        self._name = bytearray()
        self._value = bytearray()
        self._parser = QuerystringParser({
            "on_field_start": self._on_field_start,
            "on_field_name": self._on_field_name,
            "on_field_data": self._on_field_data,
            "on_field_end": self._on_field_end,
        })

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except FormParserError as exc:
            raise MalformedRequest(f"the url-encoded form is malformed: {exc}") from None

    def close(self) -> None:
        try:
            self._parser.finalize()
        except FormParserError as exc:
            raise MalformedRequest(f"the url-encoded form is malformed: {exc}") from None

    def _on_field_start(self) -> None:
        self._fields += 1
        if self._fields > MAX_PARTS:
            raise BodyTooLarge(f"the form has more than {MAX_PARTS} fields")
        self._name, self._value = bytearray(), bytearray()

    def _on_field_name(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _on_field_data(self, data: bytes, start: int, end: int) -> None:
        if len(self._value) + (end - start) > MAX_FIELD_BYTES:
            raise BodyTooLarge(f"form field `{unquote_plus(self._name.decode('latin-1'))}` is over "
                               f"{MAX_FIELD_BYTES} bytes")
        self._value += data[start:end]

    def _on_field_end(self) -> None:
        name = unquote_plus(self._name.decode("latin-1"))
        if name in self._file_fields:
            raise UnsupportedContentType(
                f"`{name}` is a file, which a url-encoded form cannot carry: send the request as "
                f"multipart/form-data ({_curl(name)}){_by_url(name)}"
            )
        check_json_safe(f"form field `{name}`", unquote_plus(self._value.decode("latin-1")))


class JsonInspector:
    """Feed it a body BentoML reads as JSON; :meth:`close` refuses, in words, what its pydantic
    validation would answer with a report: not JSON, not an object, a file field (e.g. a base64 image)."""

    def __init__(self, file_fields: frozenset[str], max_items: int | None = None) -> None:
        """``max_items``: the most values the body may hold, counted before it is parsed (as its
        commas and opening brackets, strings included: an upper bound), for a body whose size is
        allowed for one long string (CVAT's base64 image) and not for millions of parsed values."""
        self._file_fields = file_fields
        self._max_items = max_items
        self._body = bytearray()  # within the JSON body limit, which the guard enforces as it arrives
        self.fields: dict | None = None  # the body's fields, once closed

    def feed(self, chunk: bytes) -> None:
        self._body += chunk

    def close(self) -> None:
        raw = bytes(self._body)
        if not raw.strip():
            return  # BentoML reads an empty body as {}
        items = raw.count(b",") + raw.count(b"[") + raw.count(b"{")
        if self._max_items is not None and items > self._max_items:
            raise BodyTooLarge(f"the JSON body holds more than {self._max_items} values (points, numbers, lists)")
        try:
            text = raw.decode(json.detect_encoding(raw))
            check_json_safe("the JSON body", text)
            fields = json.loads(text)
        except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError included
            raise MalformedRequest(
                f"the body is not valid JSON ({exc}): send a JSON object of fields, e.g. "
                '{"image_url": "s3://bucket/key", "points": [[x, y]]}, or a multipart/form-data form'
            ) from None
        if not isinstance(fields, dict):
            raise MalformedRequest(
                'a JSON body must be an object of fields, e.g. {"image_id": "photo-42", "points": [[x, y]]}; '
                f"got {_JSON_TYPES.get(type(fields), type(fields).__name__)}"
            )
        self.fields = fields
        files = sorted(self._file_fields & fields.keys())
        if files:
            name = files[0]
            raise MalformedRequest(
                f"`{name}` is a file and cannot be sent in a JSON body (base64 neither): send the request as "
                f"multipart/form-data ({_curl(name)}){_by_url(name)}"
            )


_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true or false",
               type(None): "null"}
# What each file field takes, for the messages that send a file where it belongs.
_EXAMPLE_FILES = {"image": "photo.jpg", "mask_input": "mask.png", "video": "clip.mp4"}


def _curl(name: str) -> str:
    return f"curl -F {name}=@{_EXAMPLE_FILES.get(name, 'file')}"


def _by_url(name: str) -> str:
    return f", or name it by `{name}_url`" if name in ("image", "video") else ""


def _file_fields_hint(file_fields: Iterable[str]) -> str:
    names = sorted(file_fields, key=lambda name: (name != "image", name))  # the image first: the usual one
    if not names:
        return "this API takes no files"
    others = ", ".join(f"`{name}`" for name in names[1:])
    return (f"the image goes in `{names[0]}` ({_curl(names[0])})"
            + (f"; the other file fields are {others}" if others else ""))


def check_json_safe(name: str, text: str) -> None:
    """``name``: what holds ``text``, for the message ("form field `points`").

    Refuse what makes ``json.loads`` raise something other than a JSONDecodeError (which BentoML
    treats as "a plain string"): nesting past the recursion limit, integers past Python's digit limit.

    Both are judged on the raw text, strings included: a refusal of a string holding 65 brackets
    in a row is the price of a check that costs one pass in numpy instead of a parse.
    """
    codes = np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    opens = np.isin(codes, _BRACKETS_OPEN)
    brackets = np.flatnonzero(opens | np.isin(codes, _BRACKETS_CLOSE))  # few, even in a CVAT body's base64 image
    steps = np.where(opens[brackets], 1, -1)
    if steps.size and int(np.cumsum(steps).max()) > MAX_JSON_DEPTH:
        raise MalformedRequest(f"{name} is nested more than {MAX_JSON_DEPTH} levels deep")
    if _LONG_NUMBER.search(text):
        raise MalformedRequest(f"{name} holds a number of more than {MAX_NUMBER_DIGITS} digits")


def _decode(data: bytes, charset: str) -> str:
    """Bytes to text exactly as Starlette's form parser decodes names and values."""
    try:
        return data.decode(charset)
    except (UnicodeDecodeError, LookupError):
        return data.decode("latin-1")
