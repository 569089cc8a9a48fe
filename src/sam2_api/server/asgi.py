"""Two small ASGI helpers for our middlewares (guard, hop, lifecycle, task_board): keep an app's
response instead of sending it, and answer with JSON."""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, Iterable

Scope = dict[str, Any]
Message = dict[str, Any]
App = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


async def captured_response(app: App, scope: Scope, receive: Callable) -> tuple[int | None, list, bytes]:
    """Run ``app`` for this request and keep its response (status, headers, body) instead of
    sending it; status None when the app sent none."""
    status, headers, body = None, [], bytearray()

    async def keep(message: Message) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status, headers = message["status"], message.get("headers", [])
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    await app(scope, receive, keep)
    return status, headers, bytes(body)


async def send_json(send: Callable[[Message], Awaitable[None]], status: int, answer: Any,
                    headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """``answer`` as a JSON response (bytes are sent as they are); ``headers`` other than its
    Content-Type and Content-Length are kept."""
    body = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
    kept = [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"content-type")]
    await send({"type": "http.response.start", "status": status, "headers": [
        *kept, (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
