"""The model service's guard: a caller without the shared token is refused before its body is read."""

from __future__ import annotations

import asyncio

import pytest
from _bentoml_impl.client import RemoteProxy

from sam2_api.server.hop import TOKEN_HEADER, HopGuard, prepare_client

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
    prepare_client(proxy, TOKEN)

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
    prepare_client(model, TOKEN)  # no proxy, no hop: nothing to set and nothing raised


async def calls_across_a_session_refresh(manager_class) -> list[str]:
    """Two slow calls through one BentoML session manager whose sessions age in 0.05 s (BentoML's
    replace theirs every 100 calls or 300 s): what each call got."""
    from aiohttp import web
    from _bentoml_impl.client.proxy2 import SessionManager

    async def slow(request):
        await asyncio.sleep(0.5)
        return web.Response(text="done")

    app = web.Application()
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    manager = SessionManager(url=f"http://127.0.0.1:{port}", timeout=30, headers={}, max_age=0.05)
    manager.__class__ = manager_class

    async def call() -> str:
        session = await manager.get_session()
        try:
            async with session.get("/slow") as response:
                return await response.text()
        except Exception as exc:
            return type(exc).__name__

    first = asyncio.create_task(call())
    await asyncio.sleep(0.1)  # the first call is in flight when the second replaces the session
    results = await asyncio.gather(first, call())
    await manager.close()
    await asyncio.sleep(0.6)
    await runner.cleanup()
    return results


def test_a_session_replaced_under_a_running_call_is_closed_only_after_it():
    from _bentoml_impl.client.proxy2 import SessionManager

    from sam2_api.server.hop import DrainingSessions

    assert asyncio.run(calls_across_a_session_refresh(SessionManager))[0] != "done"  # BentoML's own: cut off
    assert asyncio.run(calls_across_a_session_refresh(DrainingSessions)) == ["done", "done"]


def test_prepare_client_installs_the_draining_sessions():
    from sam2_api.server.hop import DrainingSessions

    proxy = RemoteProxy("http://127.0.0.1:9")
    prepare_client(proxy, None)
    assert isinstance(proxy.to_async._session_manager, DrainingSessions)
    assert TOKEN_HEADER not in proxy.to_async.default_headers  # no token configured, none sent
