"""The hop from the API service to the model service is a trust boundary.

BentoML's calls between services carry pickles, and unpickling a body runs whatever code its
author chose: whoever reaches the model service's port, TCP or the local Unix socket, could run
code there as its user, read another tenant's masks by guessing a cache key, or hand it an image
that the API service would refuse. So the model service serves only callers that present the shared
secret ``SAM2_INTERNAL_TOKEN`` in the ``X-SAM2-Internal-Token`` header: :class:`HopGuard` checks
it (constant-time) before BentoML reads a byte of the body, and answers 401 otherwise. Health
probes and metrics stay open (they read no body). The API service sends the token with every call
(:func:`prepare_client`); the model service re-checks every bound it is given (``model/engine.py``) all the
same.

Where the token comes from: the environment (a Kubernetes Secret, a BentoCloud secret), the same
value on both services. ``bentoml serve service.py`` runs both on one machine: when no token is
set, a random one is made for that start (:func:`token_for_local_serve`) and every worker inherits
it. The model service served on its own (``--service-name SAM2Model``, listening on TCP) refuses
to start without one.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import secrets
from typing import Any, Callable

from _bentoml_impl.client.proxy2 import SessionManager

from .asgi import App, Scope, send_json
from ..config import Settings

log = logging.getLogger(__name__)

TOKEN_ENV = "SAM2_INTERNAL_TOKEN"
TOKEN_HEADER = "X-SAM2-Internal-Token"
# BentoML's probes and metrics: no body is read, nothing of a tenant's is shown.
OPEN_PATHS = frozenset({"/readyz", "/livez", "/healthz", "/metrics"})


class HopGuard:
    """ASGI middleware in front of the model service: only calls carrying ``token`` get through.

    ``token`` None (none configured) refuses every call but the open paths: a model service that
    cannot tell its API service from anyone else serves nobody."""

    def __init__(self, app: App, *, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan" or (scope["type"] == "http" and scope["path"].rstrip("/") in OPEN_PATHS):
            return await self.app(scope, receive, send)
        sent = [value for name, value in scope.get("headers", []) if name == TOKEN_HEADER.lower().encode()]
        # compare_digest takes as long whatever the value: the time of a refusal says nothing of the token
        if self.token is not None and len(sent) == 1 and hmac.compare_digest(sent[0], self.token):
            return await self.app(scope, receive, send)
        if scope["type"] != "http":  # a websocket: refuse the handshake
            return await send({"type": "websocket.close", "code": 1008})
        await send_json(send, 401, {"error": f"this service serves only the SAM2API service: send its "
                                             f"{TOKEN_HEADER} ({TOKEN_ENV})"}, [(b"connection", b"close")])


def prepare_client(model: Any, token: str | None) -> None:
    """Our two changes to BentoML's client of the model service (a ``RemoteProxy``); call it
    before the first call. In-process (the model is an object of this process, not a proxy)
    there is no hop and nothing to do.

    - ``token`` goes with every call. BentoML 1.4's proxy takes no headers of its own; its sync
      client calls through its async one, whose session manager makes each aiohttp session with
      the very ``default_headers`` dict changed here.
    - A session it replaces is closed once no call is using it (:class:`DrainingSessions`), not at
      once: BentoML replaces its session every 100 calls or 300 s of a worker, and closing it cut
      off every call still running on it (under load, three 503s at a time every few seconds)."""
    client = getattr(model, "to_async", None)
    if client is None:
        return
    if token:
        client.default_headers[TOKEN_HEADER] = token
    client._session_manager.__class__ = DrainingSessions


class DrainingSessions(SessionManager):
    """BentoML's session manager, but a replaced session is closed when its last call has ended
    (or when a call could not last any longer: the client's timeout)."""

    async def get_session(self) -> Any:
        if self._session is not None and self._should_refresh():
            replaced, self._session = self._session, None
            asyncio.get_running_loop().create_task(_close_when_idle(replaced, self._timeout.total or 3600))
        return await super().get_session()


async def _close_when_idle(session: Any, limit_s: float, poll_s: float = 0.5) -> None:
    waited = 0.0
    # aiohttp keeps the connections that calls are using in the connector's _acquired
    while getattr(session.connector, "_acquired", None) and waited < limit_s:
        await asyncio.sleep(poll_s)
        waited += poll_s
    await session.close()


def token_for_local_serve() -> None:
    """For ``bentoml serve`` of both services on one machine, from the serving process before its
    workers start: when no token is configured, make a random one that every worker inherits."""
    if Settings().sam2_internal_token is None:
        os.environ[TOKEN_ENV] = secrets.token_urlsafe(32)  # written, not read: config.py reads the environment
        log.info("no %s set: both services use a random one made for this start", TOKEN_ENV)
