"""HTTP/1.1 written by hand on a socket: the exact headers, and the body at the pace a caller chooses.

For the hostile requests of the tests and of ``tests.support.loadcheck``.

httpx (like any good client) will not send both Content-Length and Transfer-Encoding, trickle a
body, or keep writing after the server has answered; attacks do all three.
"""

from __future__ import annotations

import json
import select
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> str:
        return json.loads(self.body)["error"]


class RawRequest:
    def __init__(self, url: str, path: str, headers: dict[str, str], method: str = "POST"):
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
        head = f"{method} {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
        self.sock.sendall(head.encode("latin-1"))
        self.sent = 0  # body bytes written

    def send(self, data: bytes) -> bool:
        """Write ``data``; False when the server has closed the connection (it answered, or gave up)."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return False
        self.sent += len(data)
        return True

    def send_chunk(self, data: bytes) -> bool:
        return self.send(b"%x\r\n%s\r\n" % (len(data), data))

    def answered(self) -> bool:
        """Whether the server has started answering (without waiting)."""
        return bool(select.select([self.sock], [], [], 0)[0])

    def response(self, timeout: float = 30) -> RawResponse:
        """Read the answer: up to its Content-Length, or until the server closes the connection."""
        self.sock.settimeout(timeout)
        data = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in data or len(data) < self._expected(data):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no complete answer in {timeout} s: {data[:200]!r}")
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:  # closed with our unread body in its buffer: the answer came first
                break
            if not chunk:
                break
            data += chunk
        self.sock.close()
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        return RawResponse(int(status_line.split()[1]), headers, body)

    @staticmethod
    def _expected(data: bytes) -> int:
        head, _, _ = data.partition(b"\r\n\r\n")
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                return len(head) + 4 + int(value)
        return len(data) + 1  # no length: read until the server closes
