"""The model service's guard: a caller without the shared token is refused before its body is read."""

from __future__ import annotations

import asyncio

import pytest
from _bentoml_impl.client import RemoteProxy

from sam2_api.hop import TOKEN_HEADER, HopGuard, send_token

TOKEN = "the-shared-internal-token"


def call(guard: HopGuard, path: str = "/predict", headers: list[tuple[bytes, bytes]] = ()) -> tuple[int, bool]:
    """The status ``guard`` answers a POST to ``path`` with, and whether anyone read the body."""
    read = []
    sent = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive():
        read.append(True)
        return {"type": "http.request", "body": b"pickle bytes", "more_body": False}

    async def send(message):
        sent.append(message)

    guard.app = app
    scope = {"type": "http", "method": "POST", "path": path, "headers": list(headers)}
    asyncio.run(guard(scope, receive, send))
    return sent[0]["status"], bool(read)


def token(value: bytes) -> tuple[bytes, bytes]:
    return TOKEN_HEADER.lower().encode(), value


@pytest.mark.parametrize("headers", [[], [token(b"")], [token(b"wrong")], [token(TOKEN.encode() + b"x")],
                                     [token(TOKEN[:-1].encode())], [(b"authorization", b"Bearer " + TOKEN.encode())],
                                     [token(TOKEN.encode()), token(b"wrong")]],
                         ids=["none", "empty", "wrong", "longer", "shorter", "other-header", "two"])
def test_a_call_without_exactly_the_token_is_refused_unread(headers):
    assert call(HopGuard(None, token=TOKEN), headers=headers) == (401, False)


def test_the_token_lets_a_call_through():
    assert call(HopGuard(None, token=TOKEN), headers=[token(TOKEN.encode())]) == (200, True)


def test_without_a_token_configured_nobody_gets_through():
    assert call(HopGuard(None, token=None), headers=[token(b"")]) == (401, False)
    assert call(HopGuard(None, token=None), headers=[token(b"None")]) == (401, False)


@pytest.mark.parametrize("path", ["/readyz", "/livez", "/healthz", "/metrics"])
def test_probes_and_metrics_stay_open(path):
    assert call(HopGuard(None, token=TOKEN), path=path) == (200, True)


def test_the_model_client_sends_the_token_with_every_call():
    proxy = RemoteProxy("http://127.0.0.1:9")
    send_token(proxy, TOKEN)

    async def sessions() -> list[str]:
        manager = proxy.to_async._session_manager  # BentoML's: a new aiohttp session every few minutes
        tokens = []
        for _ in range(2):
            session = await manager.get_session()
            tokens.append(session.headers[TOKEN_HEADER])
            manager._session = None  # as when it is refreshed
            await session.close()
        return tokens

    assert asyncio.run(sessions()) == [TOKEN, TOKEN]


def test_an_in_process_model_is_left_alone():
    model = object()
    send_token(model, TOKEN)  # no proxy, no hop: nothing to set and nothing raised
