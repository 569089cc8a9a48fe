"""ASGI middleware in front of the API routes: API keys and the upload size limit.

Both are checked from the request line and headers, before BentoML reads a byte of the body, so
a caller without a key, or with an oversized upload, costs the server nothing. Health, metrics
and documentation routes are never guarded.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Awaitable, Callable, Iterable

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class RequestGuard:
    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        *,
        paths: Iterable[str],
        api_keys: Iterable[str] = (),
        max_upload_bytes: int,
    ) -> None:
        self.app = app
        self.paths = frozenset(paths)
        self.api_keys = tuple(key.encode() for key in api_keys)
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") not in self.paths:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])  # ASGI gives lower-cased names as bytes
        if self.api_keys and not self._authorized(headers.get(b"authorization", b"")):
            return await _reply(send, 401, "missing or invalid API key: send `Authorization: Bearer <key>`",
                                [(b"www-authenticate", b"Bearer")])
        if scope["method"] == "POST":
            length = headers.get(b"content-length")
            if length is None:
                return await _reply(send, 411, "send the upload with a Content-Length header")
            if not length.isdigit() or int(length) > self.max_upload_bytes:
                return await _reply(
                    send, 413,
                    f"the upload is {length.decode(errors='replace')} bytes; the limit is "
                    f"{self.max_upload_bytes} bytes (SAM2_MAX_UPLOAD_BYTES)",
                )
        return await self.app(scope, receive, send)

    def _authorized(self, header: bytes) -> bool:
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return False
        matched = False
        for key in self.api_keys:  # every key, every time: timing says nothing about which matched
            matched |= hmac.compare_digest(key, token.strip())
        return matched


async def _reply(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": message}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
    })
    await send({"type": "http.response.body", "body": body})
