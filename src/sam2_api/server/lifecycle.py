"""Start and stop: a readiness probe that always answers at once, and workers that always exit.

**Readiness.** BentoML's ``/readyz`` of the API service asks the model service's ``/readyz``; while
that one loads its weights (its event loop busy in ``__init__``) or restarts, the question hangs
or fails with an exception BentoML does not catch (a 500, or no response at all).
:class:`BoundedReadiness` gives BentoML's answer :data:`READINESS_BOUND_S` seconds and answers
503 otherwise, so a load balancer or Kubernetes always hears "not ready" quickly.

**Stopping.** On SIGTERM (or Ctrl+C) uvicorn stops accepting connections and waits for the requests
in flight, however long: a clip being tracked, a stream its reader abandoned. BentoML's process
manager (circus) waits a day for its workers before it kills them, and its workers run in sessions
of their own, so a server whose own process was killed left them behind, port bound.
:func:`exit_after_grace` makes each worker leave ``grace_s`` seconds after the signal whatever is
still running: requests that finish within the grace are answered, the others are cut off (their
callers see a closed connection; a tracking task is lost with the worker, as on any restart).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from typing import Any, Callable

from .asgi import App, Scope, captured_response, send_json

log = logging.getLogger(__name__)

READINESS_BOUND_S = 3.0
READINESS_PATH = "/readyz"


class BoundedReadiness:
    """ASGI middleware: ``/readyz`` is BentoML's answer if it comes within ``bound_s`` seconds, else 503."""

    def __init__(self, app: App, *, bound_s: float = READINESS_BOUND_S) -> None:
        self.app = app
        self.bound_s = bound_s

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") != READINESS_PATH:
            return await self.app(scope, receive, send)
        try:
            async with asyncio.timeout(self.bound_s):
                status, headers, body = await captured_response(self.app, scope, receive)
        except TimeoutError:
            status, reason = None, f"the model service did not say it was ready within {self.bound_s:g} s " \
                                   "(loading or restarting)"
        except Exception as exc:  # BentoML's probe of the model service raised: it is not there
            status, reason = None, f"the model service is not reachable ({type(exc).__name__})"
        else:
            reason = "no answer yet"
        if status is None:
            return await send_json(send, 503, {"error": f"not ready: {reason}"})
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def exit_after_grace(grace_s: float) -> None:
    """From a worker's main thread (its service's ``__init__``, after uvicorn has set its own
    handlers): on SIGTERM or SIGINT, uvicorn's handler starts its graceful shutdown as before, and
    the process exits ``grace_s`` seconds later if it has not by then."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)

        def on_signal(received: int, frame: Any, previous: Any = previous) -> None:
            _arm(grace_s)
            if callable(previous):
                previous(received, frame)
            elif previous == signal.SIG_DFL:
                raise SystemExit(128 + received)

        signal.signal(signum, on_signal)


_armed = threading.Event()


def _arm(grace_s: float) -> None:
    if _armed.is_set():
        return
    _armed.set()

    def leave() -> None:
        log.warning("still busy %g s after the stop signal: exiting now (requests in flight are cut off)", grace_s)
        logging.shutdown()
        os._exit(0)

    timer = threading.Timer(grace_s, leave)
    timer.daemon = True
    timer.start()
