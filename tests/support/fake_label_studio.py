"""A stand-in for Label Studio's file routes on loopback: ``GET /data/upload/<project>/<name>``
answers the file when the request carries ``Authorization: Token <key>``, as Label Studio does
for uploaded files (401 without it, 404 for a file it does not have). It records each request's
path and Authorization header, for the tests to see what the service sent."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeLabelStudio:
    def __init__(self, files: dict[str, bytes], api_key: str) -> None:
        self.files = files  # path -> bytes
        self.api_key = api_key
        self.requests: list[tuple[str, str | None]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                owner.requests.append((self.path, self.headers.get("Authorization")))
                if self.headers.get("Authorization") != f"Token {owner.api_key}":
                    self._answer(401, b'{"detail": "Authentication credentials were not provided."}')
                elif self.path not in owner.files:
                    self._answer(404, b'{"detail": "Not found."}')
                else:
                    self._answer(200, owner.files[self.path], "image/png")

            def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-label-studio", daemon=True)

    def start(self) -> "FakeLabelStudio":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
