"""A time limit on a request's headers, which uvicorn (BentoML's HTTP server) does not have.

uvicorn closes a kept-alive connection that stays silent for ``timeout_keep_alive`` seconds, but once
a client has sent one byte it waits for the rest of the headers for ever: 400 connections that sent
half a request line were each held until the client gave up, a socket and a connection object each.
Headers are read before any ASGI app runs, so no middleware can bound them, and BentoML's worker
builds uvicorn's ``Config`` itself (``_bentoml_impl/worker/service.py``), with uvicorn's default HTTP
protocol, "auto". :func:`install` makes "auto" name :class:`HeaderDeadline`: uvicorn's own protocol
(``AutoHTTPProtocol``), which also closes a connection when a request's headers are not complete
``timeout_s`` seconds after the connection opened or after its previous response ended: with a 408
when part of a request had arrived, silently (as uvicorn's keep-alive timeout does) when nothing had,
so that a client about to reuse an idle connection never reads a 408 as the answer to its request.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol


class HeaderDeadline(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's HTTP protocol with a deadline on each request's headers (:data:`timeout_s`)."""

    timeout_s = 10.0  # set by install()
    _timeout_response = b""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._began = False  # whether a byte of the awaited request has arrived

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def data_received(self, data: bytes) -> None:
        self._began = True
        super().data_received(data)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start serving a pipelined request
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._began = False
        self._header_timer = self.loop.call_later(self.timeout_s, self._headers_late, self.cycle)

    def _headers_late(self, cycle: Any) -> None:
        # uvicorn makes a new cycle once a request's headers are complete: the same one, finished
        # (or none yet), means the next request's headers are still incomplete.
        waiting = self.cycle is cycle and (cycle is None or cycle.response_complete)
        if waiting and not self.transport.is_closing():
            if self._began:
                self.transport.write(self._timeout_response)
            self.transport.close()


def install(timeout_s: float) -> None:
    """Every uvicorn server this process starts from now on uses :class:`HeaderDeadline` with
    ``timeout_s`` seconds; call it before BentoML's worker starts its server (at import of service.py)."""
    import uvicorn.config

    body = json.dumps({"error": f"the request's headers did not arrive within {timeout_s:g} s"}).encode()
    HeaderDeadline.timeout_s = timeout_s
    HeaderDeadline._timeout_response = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
    uvicorn.config.HTTP_PROTOCOLS["auto"] = f"{__name__}:{HeaderDeadline.__name__}"
