"""A TCP proxy on loopback that can pass traffic through, hang it, or cut it: S3 faults, for real."""

from __future__ import annotations

import asyncio
import threading

from tests.support.localdev import free_port


class FaultProxy:
    """Forwards 127.0.0.1:<port> to ``target_port``; ``mode`` decides the fate of new connections:
    ``pass`` (forward), ``hang`` (accept, read, never answer) or ``reset`` (close at once)."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.mode = "pass"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "FaultProxy":
        self._thread.start()
        self._ready.wait(5)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "reset":
            writer.transport.abort()
            return
        if self.mode == "hang":
            while await reader.read(65536):
                pass  # swallow the request; never answer
            writer.close()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, from_client: bool) -> None:
            try:
                while data := await source.read(65536):
                    # A kept-alive connection meets the fault too, at its next request.
                    if from_client and self.mode == "reset":
                        writer.transport.abort()
                        break
                    if from_client and self.mode == "hang":
                        continue
                    sink.write(data)
                    await sink.drain()
            except ConnectionError:
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream_writer, True), pipe(upstream_reader, writer, False))
