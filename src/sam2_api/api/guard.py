"""ASGI middleware in front of the API routes: API keys, request framing, and the request body.

The request line and headers are checked before BentoML reads a byte of the body, so a caller
without a key, with an ambiguous framing or with a declared size over the limit costs the server
nothing. The body is then watched while BentoML reads it:

- its bytes are counted as they arrive and refused past the limit: a chunked body declares no
  size, and a declared Content-Length is not what the server reads when Transfer-Encoding is
  also present (so that pair is refused outright);
- it must arrive within a deadline and, after a grace period, at a minimum rate: BentoML's
  Timeout and MaxConcurrency middlewares run *outside* this one, so a trickling body holds one
  of the replica's ``max_concurrency`` slots for as long as it takes;
- a multipart form is inspected part by part (``multipart.py``) for what BentoML's own form
  handling would turn into a 500 or into a download; a url-encoded form and a JSON body, once
  complete, for what BentoML would download or answer with pydantic's report instead of a message.

A refusal is answered at once with our ``{"error": ...}`` and ``Connection: close`` (the rest of
the body is not wanted), and BentoML's handler, which is waiting in ``receive()``, is unwound
without a response of its own. Health, metrics and documentation routes are never guarded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable
from urllib.parse import parse_qs

from ..server.asgi import send_json
from .answers import error_body
from ..config import BODY_TIMEOUT_S, MIN_UPLOAD_BYTES_PER_S
from ..errors import (
    BodyTimeout, BodyTooLarge, MalformedRequest, RequestError, Unauthorized, UnsupportedContentType,
)
from .multipart import FormInspector, JsonInspector, UrlEncodedInspector, boundary_of

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

UPLOAD_GRACE_S = 5.0  # the start of a body (TCP slow start, a client warming up) is not rate-checked
MAX_JSON_BODY_BYTES = 1024 * 1024  # a JSON request carries prompts and references, no image bytes (but CVAT's)
PICKLE = "application/vnd.bentoml+pickle"  # BentoML's own between services; its refusal here is not our shape
# Fields that BentoML treats as files; a text value of one would be downloaded as a URL.
FILE_FIELDS = ("image",)


def tenant_id(api_key: str) -> str:
    """A stable name for the holder of ``api_key`` that reveals nothing of it (for cache scoping, logs)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


class RequestGuard:
    """When API keys are configured and one matched, ``scope["state"]["tenant"]`` is its
    :func:`tenant_id` (Starlette and BentoML show it as ``request.state.tenant``)."""

    def __init__(
        self,
        app: App,
        *,
        paths: Iterable[str],
        api_keys: Iterable[str] = (),
        max_upload_bytes: int,
        body_timeout_s: float = BODY_TIMEOUT_S,
        min_upload_bytes_per_s: int = MIN_UPLOAD_BYTES_PER_S,
        upload_grace_s: float = UPLOAD_GRACE_S,
        file_fields: Iterable[str] = FILE_FIELDS,
        setting_names: tuple[str, str] = ("SAM2_MAX_UPLOAD_BYTES", "SAM2_BODY_TIMEOUT_S"),
        max_json_body_bytes: int = MAX_JSON_BODY_BYTES,
        basic_auth: bool = False,
        key_in_query_or_body: bool = False,
        max_json_items: int | None = None,
    ) -> None:
        """``setting_names``: the settings of ``max_upload_bytes`` and ``body_timeout_s``, for messages.
        ``max_json_body_bytes``: the limit of a JSON or url-encoded body (held whole to be checked);
        larger than :data:`MAX_JSON_BODY_BYTES` only for a route whose JSON carries an image (CVAT's,
        Roboflow's) or a client's whole task (Label Studio's). ``basic_auth``: a key is also taken as the
        password of HTTP basic auth, whatever the user name (Label Studio sends its model's credentials so).
        ``key_in_query_or_body``: without an ``Authorization`` header, the key may also come as
        ``?api_key=`` or as the JSON body's ``api_key``, and refusals carry ``message`` too (as
        Roboflow's clients send the key and read errors; only their routes).
        ``max_json_items``: the most values a JSON body may hold (:class:`JsonInspector`'s ``max_items``)."""
        self.app = app
        self.paths = frozenset(paths)
        self.api_keys = tuple((key.encode(), tenant_id(key)) for key in api_keys)
        self.max_upload_bytes = max_upload_bytes
        self.body_timeout_s = body_timeout_s
        self.min_upload_bytes_per_s = min_upload_bytes_per_s
        self.upload_grace_s = upload_grace_s
        self.file_fields = frozenset(file_fields)
        self.setting_names = setting_names
        self.max_json_body_bytes = max_json_body_bytes
        self.basic_auth = basic_auth
        self.key_in_query_or_body = key_in_query_or_body
        self.max_json_items = max_json_items

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") not in self.paths:
            return await self.app(scope, receive, send)
        headers: dict[bytes, list[bytes]] = {}
        for name, value in scope["headers"]:  # ASGI gives lower-cased names as bytes
            headers.setdefault(name, []).append(value)
        state = scope.setdefault("state", {})
        try:
            tenant = self._tenant(headers, scope.get("query_string", b""))
            rules = self._body_rules(headers)
        except RequestError as exc:
            return await _reply(send, exc, with_message=self.key_in_query_or_body,
                                challenge=b'Basic realm="sam2-api"' if self.basic_auth else b"Bearer")
        if tenant is _IN_BODY:
            rules.on_fields = lambda fields: state.__setitem__("tenant", self._body_tenant(fields))
        elif tenant is not None:
            state["tenant"] = tenant
        body = _WatchedBody(receive, send, rules, self.body_timeout_s, self.min_upload_bytes_per_s,
                            self.upload_grace_s, self.setting_names[1], self.key_in_query_or_body)
        try:
            await self.app(scope, body.receive, body.send)
        except _Refused:
            pass  # our answer is sent; the app's handler was only waiting for the body

    def _tenant(self, headers: dict[bytes, list[bytes]], query: bytes = b"") -> str | object | None:
        """The matched key's tenant id; None when no keys are configured; :data:`_IN_BODY` when the
        key is to be read from the body once it has arrived (``key_in_query_or_body`` only)."""
        if not self.api_keys:
            return None
        values = headers.get(b"authorization", [])
        if len(values) > 1:
            # Which one counts would depend on who reads them (a proxy, us): refuse to guess.
            raise MalformedRequest("send one Authorization header, not several")
        if not values and self.key_in_query_or_body:
            in_query = parse_qs(query.decode("latin-1")).get("api_key", [])
            if len(in_query) > 1:
                raise MalformedRequest("send one `api_key` query parameter, not several")
            return self._matched(in_query[0].encode("latin-1")) if in_query else _IN_BODY
        scheme, _, token = (values[0] if values else b"").partition(b" ")
        token = token.strip()
        if self.basic_auth and scheme.lower() == b"basic":
            return self._matched(_basic_password(token))
        return self._matched(token if scheme.lower() == b"bearer" else b"")

    def _matched(self, token: bytes) -> str:
        tenant = None
        if token:
            for key, key_tenant in self.api_keys:  # every key, every time: timing says nothing about which matched
                if hmac.compare_digest(key, token):
                    tenant = key_tenant
        if tenant is None:
            if self.basic_auth:
                raise Unauthorized("missing or invalid API key: give it as the password of basic auth (any user "
                                   "name; in Label Studio, the model's \"Basic Authentication\"), or send "
                                   "`Authorization: Bearer <key>`")
            where = " (or `?api_key=`, or `api_key` in the JSON body)" if self.key_in_query_or_body else ""
            raise Unauthorized(f"missing or invalid API key: send `Authorization: Bearer <key>`{where}")
        return tenant

    def _body_tenant(self, fields: dict | None) -> str:
        key = (fields or {}).get("api_key")
        return self._matched(key.encode() if isinstance(key, str) else b"")

    def _body_rules(self, headers: dict[bytes, list[bytes]]) -> _BodyRules:
        """The byte limit of this body and the inspector of its form, from the headers alone."""
        lengths = headers.get(b"content-length", [])
        encodings = headers.get(b"transfer-encoding", [])
        if lengths and encodings:
            raise MalformedRequest("send Content-Length or Transfer-Encoding: chunked, not both")
        if len(lengths) > 1:
            raise MalformedRequest("send one Content-Length header")
        if encodings and [e.strip().lower() for e in b",".join(encodings).split(b",")] != [b"chunked"]:
            raise MalformedRequest("the only Transfer-Encoding accepted is chunked")

        # The body is classified exactly as BentoML picks its parser: by the first Content-Type,
        # case-sensitively (a "Multipart/Form-Data" body goes to its JSON parser).
        content_type = headers.get(b"content-type", [b""])[0]
        media_type = content_type.decode("latin-1").split(";")[0].strip()
        limit, limit_name = self.max_upload_bytes, self.setting_names[0]
        inspector: FormInspector | UrlEncodedInspector | JsonInspector
        if media_type == "multipart/form-data":
            boundary, charset = boundary_of(content_type)
            inspector = FormInspector(boundary, charset, self.file_fields)
        elif media_type == PICKLE:
            raise UnsupportedContentType("send the request as multipart/form-data, a url-encoded form or JSON")
        else:
            # Anything else is read as JSON by BentoML; a url-encoded form (prompts and references: it
            # cannot carry a file) as a multipart one. Both are held whole to be checked, so they are small.
            inspector = (UrlEncodedInspector(self.file_fields) if media_type == "application/x-www-form-urlencoded"
                         else JsonInspector(self.file_fields, self.max_json_items))
            if self.max_json_body_bytes < limit:
                limit, limit_name = self.max_json_body_bytes, "for a JSON body"

        if lengths:
            if not lengths[0].isdigit():
                raise MalformedRequest(f"Content-Length must be a number of bytes; got {lengths[0].decode('latin-1')!r}")
            if int(lengths[0]) > limit:
                raise BodyTooLarge(f"the upload is {int(lengths[0])} bytes; the limit is {limit} bytes ({limit_name})")
        return _BodyRules(limit, limit_name, inspector)


_IN_BODY = object()  # the API key is the JSON body's `api_key`, checked once the body has arrived


class _Refused(BaseException):
    """Unwinds the app from inside ``receive()`` once our refusal is sent.

    A BaseException on purpose: BentoML turns every Exception of a handler into a logged 500
    (which it would then try to send), and Starlette's form parser closes its files on any exception.
    """


@dataclass
class _BodyRules:
    max_bytes: int
    limit_name: str  # what sets the limit, for the message
    inspector: FormInspector | UrlEncodedInspector | JsonInspector  # checks the body as it arrives
    on_fields: Callable[[dict | None], None] | None = None  # called with the JSON body's fields once complete


class _WatchedBody:
    """``receive`` and ``send`` for the app: the body counted, timed and inspected as it streams in."""

    def __init__(self, receive: Receive, send: Send, rules: _BodyRules, timeout_s: float, min_rate: int,
                 grace_s: float, timeout_name: str = "SAM2_BODY_TIMEOUT_S", with_message: bool = False) -> None:
        self._receive, self._send = receive, send
        self._rules = rules
        self._timeout_s, self._min_rate, self._grace_s = timeout_s, min_rate, grace_s
        self._timeout_name = timeout_name
        self._with_message = with_message
        self._loop = asyncio.get_running_loop()
        self._started = self._loop.time()
        self._received = 0
        self._complete = False
        self._responding = False  # a response has started: ours, or the app's
        self._refused = False

    async def receive(self) -> Message:
        if self._complete:  # later calls wait for a disconnect: no deadline then
            return await self._receive()
        deadline, reason = self._deadline()
        try:
            async with asyncio.timeout_at(deadline):
                message = await self._receive()
        except TimeoutError:
            await self._refuse(BodyTimeout(reason))
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            self._received += len(chunk)
            self._complete = not message.get("more_body", False)
            try:
                if self._received > self._rules.max_bytes:
                    raise BodyTooLarge(f"the upload is more than {self._rules.max_bytes} bytes; the limit is "
                                       f"{self._rules.max_bytes} bytes ({self._rules.limit_name})")
                self._rules.inspector.feed(chunk)
                if self._complete:
                    self._rules.inspector.close()
                    if self._rules.on_fields is not None:
                        self._rules.on_fields(getattr(self._rules.inspector, "fields", None))
            except RequestError as exc:
                await self._refuse(exc)
        return message

    async def send(self, message: Message) -> None:
        if self._refused:
            return
        if message["type"] == "http.response.start":
            self._responding = True
        await self._send(message)

    def _deadline(self) -> tuple[float, str]:
        """When waiting for the next chunk must end, and what to say then."""
        total = self._started + self._timeout_s
        if self._min_rate:
            # received >= min_rate * (elapsed - grace) fails at elapsed = grace + received / min_rate
            rate_bound = self._started + self._grace_s + self._received / self._min_rate
            if rate_bound < total:
                return rate_bound, (
                    f"the request body arrived slower than {self._min_rate} bytes/s "
                    f"(SAM2_MIN_UPLOAD_BYTES_PER_S): {self._received} bytes in "
                    f"{rate_bound - self._started:.1f} s"
                )
        return total, f"the request body did not arrive within {self._timeout_s:g} s ({self._timeout_name})"

    async def _refuse(self, exc: RequestError) -> None:
        if not self._responding:  # once the app has started its response, ours cannot be sent
            self._responding = True
            await _reply(self._send, exc, close=True, with_message=self._with_message)
        self._refused = True
        raise _Refused


def _basic_password(credentials: bytes) -> bytes:
    """The password of HTTP basic auth's ``base64(user:password)``; empty when it is not that."""
    try:
        _, colon, password = base64.b64decode(credentials, validate=True).partition(b":")
    except (binascii.Error, ValueError):
        return b""
    return password if colon else b""


async def _reply(send: Send, exc: RequestError, close: bool = False, with_message: bool = False,
                 challenge: bytes = b"Bearer") -> None:
    headers = [(b"www-authenticate", challenge)] if isinstance(exc, Unauthorized) else []
    if close:
        headers.append((b"connection", b"close"))
    await send_json(send, int(exc.status), error_body(exc, with_message), headers)
