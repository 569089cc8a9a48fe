"""The deadline on request headers, in a real uvicorn server on loopback, spoken to over raw sockets."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
import uvicorn
import uvicorn.config

from sam2_api.server.header_deadline import HeaderDeadline, install

DEADLINE_S = 0.5


async def app(scope, receive, send):
    """Answers "done" after reading the body; ``/slow`` after 3 deadlines."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    if scope["path"] == "/slow":
        await asyncio.sleep(3 * DEADLINE_S)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
    await send({"type": "http.response.body", "body": b"done"})


@pytest.fixture
def server(monkeypatch):
    """(host, port) of uvicorn serving ``app`` as BentoML's worker starts it: default ("auto") protocol,
    on a socket it is handed."""
    monkeypatch.setitem(uvicorn.config.HTTP_PROTOCOLS, "auto", uvicorn.config.HTTP_PROTOCOLS["auto"])
    install(DEADLINE_S)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    served = uvicorn.Server(uvicorn.Config(app, log_config=None, timeout_keep_alive=30))
    thread = threading.Thread(target=served.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    while not served.started:
        time.sleep(0.01)
    assert served.config.http_protocol_class is HeaderDeadline
    yield listener.getsockname()
    served.should_exit = True
    thread.join(10)


def connect(address) -> socket.socket:
    return socket.create_connection(address, timeout=5 + 10 * DEADLINE_S)  # far past the deadline


def read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed (monotonic)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received, time.monotonic()


def test_headers_that_never_end_get_408_and_the_connection_closed(server):
    sock = connect(server)
    started = time.monotonic()
    sock.sendall(b"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Le")
    received, closed = read_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 408 ")
    assert received.endswith(b'{"error": "the request\'s headers did not arrive within 0.5 s"}')
    assert DEADLINE_S * 0.9 <= closed - started < DEADLINE_S + 5  # generous: a loaded machine


def test_a_connection_that_sends_nothing_is_closed_too_without_an_answer(server):
    sock = connect(server)
    started = time.monotonic()
    received, closed = read_until_closed(sock)
    assert received == b"" and closed - started < DEADLINE_S + 5


def test_headers_that_arrive_in_pieces_within_the_deadline_are_served(server):
    sock = connect(server)
    for piece in (b"GET / HTTP/1.1\r\n", b"Host: x\r\n", b"Connection: close\r\n\r\n"):
        sock.sendall(piece)
        time.sleep(DEADLINE_S / 5)
    received, _ = read_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 200 ") and received.endswith(b"done")


def test_the_deadline_bounds_the_headers_only_not_the_body_or_the_answer(server):
    sock = connect(server)
    sock.sendall(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\n")
    time.sleep(2 * DEADLINE_S)  # the body comes late (the guard's own limits bound it), and the answer later
    sock.sendall(b"body")
    received, _ = read_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 200 ") and received.endswith(b"done")


def test_an_idle_kept_alive_connection_is_closed_without_an_answer_a_client_could_misread(server):
    """uvicorn's own keep-alive timeout (30 s here) is longer than the deadline: an idle connection
    that a client may be about to reuse must not hold a 408 for its next request."""
    sock = connect(server)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    first = b""
    while not first.endswith(b"done"):
        first += sock.recv(65536)
    received, _ = read_until_closed(sock)
    assert received == b""


def test_each_request_on_a_kept_alive_connection_has_its_own_deadline(server):
    sock = connect(server)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    first = b""
    while not first.endswith(b"done"):
        first += sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200 ") and first.endswith(b"done")
    started = time.monotonic()
    sock.sendall(b"GET / HTTP/1.1\r\nHo")  # the next request stops half-way
    received, closed = read_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 408 ") and closed - started < DEADLINE_S + 5
