"""The model service's stream of tracking records, as the API service's task thread reads it.

BentoML 1.4's client of a dependency (``_bentoml_impl/client/proxy2.py``) shares one aiohttp session
among all of an API worker's calls to the model service, and replaces it, closing the old one,
at the first call after 300 s or 100 calls. Closing a session closes its connections, and aiohttp
(``ResponseHandler.close``) drops a response that is still streaming on one without ending it: its
reader then waits for the client's total timeout, ``SAM2_VIDEO_JOB_TIMEOUT_S`` (an hour), whatever
the model service does. Any call of that worker could do it, the task's own cancel among them;
that is how long clips, canceled or not, stayed ``in_progress`` for many minutes after the model
service had ended their job, their threads stuck in the client's stream.

So a tracking stream is read through a client of its own (:class:`ModelStream`): made like the
dependency's (its URL, headers, the internal token among them, and timeout), for that one call,
closed after it. A read waits at most ``silence_s`` for the next chunk (the model service sends a
record at least every frame, and once a second while the job waits), and :meth:`ModelStream.close`
ends a read in progress at once, from any thread: a canceled task stops without waiting for a chunk.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Iterator

import anyio
import anyio.from_thread
import anyio.lowlevel

from .. import errors
from ..messages import TrackSpec

SILENCE_S = 300.0  # longest wait for the next chunk: a frame behind other device work takes seconds


def event_loop_token():
    """The token of the event loop whose worker thread this is (BentoML runs sync APIs in such
    threads), or None outside any."""
    try:
        return anyio.from_thread.run_sync(anyio.lowlevel.current_token)
    except anyio.NoEventLoopError:
        return None


class ModelStream:
    """The chunks of ``model.track(video, spec)``; iterate in the thread that made it, :meth:`close`
    from any thread. ``model`` is BentoML's client of the model service, or the service object
    itself when it runs in this process (tests), whose stream is read as it is."""

    def __init__(self, model: Any, video: bytes, spec: TrackSpec, silence_s: float = SILENCE_S) -> None:
        self._model = model
        self._video = video
        self._spec = spec
        self.silence_s = silence_s
        self._token = event_loop_token()
        self._remote = self._token is not None and hasattr(model, "to_async")
        # Touched only in the event loop's thread (remote), so without a lock:
        self._client = None
        self._chunks: AsyncIterator[bytes] | None = None
        self._reading: anyio.CancelScope | None = None
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        if not self._remote:
            for chunk in self._model.track(video=self._video, spec=self._spec):
                if self.closed:
                    return
                yield chunk
            return
        while (chunk := anyio.from_thread.run(self._next, token=self._token)) is not None:
            yield chunk

    def close(self) -> None:
        """End the stream: a read in progress returns at once, the connection is closed."""
        if not self._remote:
            self.closed = True
            return
        anyio.from_thread.run(self._close, token=self._token)

    def __enter__(self) -> ModelStream:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    async def _next(self) -> bytes | None:
        """The next chunk; None at the stream's end or once closed."""
        if self.closed:
            return None
        with anyio.CancelScope() as self._reading:
            try:
                if self._chunks is None:
                    self._chunks = self._open()
                with anyio.fail_after(self.silence_s):
                    return await self._chunks.__anext__()
            except StopAsyncIteration:
                return None
            except TimeoutError:
                raise errors.ModelUnavailable(
                    f"the model service sent nothing about this clip for {self.silence_s:.0f} s; retry the task") from None
            finally:
                self._reading = None
        return None  # canceled by close()

    def _open(self) -> AsyncIterator[bytes]:
        """The track call on a client of its own: BentoML's, made as the dependency's is."""
        shared = self._model.to_async
        self._client = type(shared)(shared.url, media_type=shared.media_type, service=shared.service,
                                    timeout=shared.timeout, server_ready_timeout=0, app=shared.app)
        self._client.default_headers.update(shared.default_headers)  # the internal token (sam2_api.server.hop)
        return self._client.call("track", video=self._video, spec=self._spec)

    async def _close(self) -> None:
        self.closed = True
        if self._reading is not None:
            self._reading.cancel()
        client, self._client = self._client, None
        if client is not None:
            await client.close()
