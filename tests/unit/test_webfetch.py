"""Fetching image_url from the web, against real loopback servers: one deadline for the whole
fetch, the connection to the address that was checked, the certificate checked for the URL's name.

The servers listen on 127.0.0.x, which the service never reaches; here the fetcher is told which
of them it may (``may_connect``), and plain ``http`` is asked for explicitly.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from sam2_api.errors import ForbiddenSource, ImageTooLarge, InvalidImageSource
from sam2_api.api.web_fetch import WebFetcher, parse_web_url

GOOD = "127.0.0.2"  # the address a test's resolver answers first, and that the fetcher may reach
EVIL = "127.0.0.3"  # the address it answers afterwards: must never be reached
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 100


class Server:
    """A loopback TCP server: each connection's request head is recorded, then ``answer(conn)`` runs."""

    def __init__(self, answer, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None):
        self.listener = socket.create_server((host, port))
        self.port = self.listener.getsockname()[1]
        self.answer, self.tls = answer, tls
        self.requests: list[bytes] = []
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            if self.tls:
                conn = self.tls.wrap_socket(conn, server_side=True)
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096) or b"\r\n\r\n"
            self.requests.append(head)
            self.answer(conn)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.listener.close()


def ok(body: bytes = PNG):
    return lambda conn: conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def loopback(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return ip.is_loopback


def fetcher(**options) -> WebFetcher:
    options.setdefault("max_bytes", 10_000)
    options.setdefault("may_connect", loopback)
    return WebFetcher(**options)


def http(url: str):
    return parse_web_url(url, schemes=("http",))


@pytest.fixture
def servers():
    started: list[Server] = []

    def start(*args, **kwargs) -> Server:
        started.append(Server(*args, **kwargs))
        return started[-1]

    yield start
    for server in started:
        server.close()


def test_the_body_of_a_200_comes_back(servers):
    server = servers(ok())
    assert fetcher().get(http(f"http://127.0.0.1:{server.port}/cat.png?size=big")) == PNG
    assert server.requests[0].startswith(b"GET /cat.png?size=big HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n".encode() in server.requests[0]


def test_a_server_dripping_bytes_is_cut_at_the_total_deadline(servers):
    def drip(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):  # a byte every 0.3 s: each read is quick, the whole would take 300 s
            conn.sendall(b"x")
            time.sleep(0.3)

    server = servers(drip)
    started = time.monotonic()
    with pytest.raises(InvalidImageSource, match=rf"http://127.0.0.1:{server.port}/x.png was not fetched within 1.5 s"):
        fetcher(timeout_s=1.5).get(http(f"http://127.0.0.1:{server.port}/x.png"))
    assert 1.5 <= time.monotonic() - started < 5  # the deadline and a loaded CPU's margin, not the drip's 300 s


@pytest.mark.parametrize("behaviour", ["silent", "slow headers"])
def test_a_server_that_does_not_answer_is_cut_at_the_deadline(servers, behaviour):
    def answer(conn):
        if behaviour == "slow headers":
            for byte in b"HTTP/1.1 200 OK\r\n" * 10:
                conn.sendall(bytes([byte]))
                time.sleep(0.1)
        time.sleep(5)

    server = servers(answer)
    started = time.monotonic()
    with pytest.raises(InvalidImageSource, match="not fetched within 1 s"):
        fetcher(timeout_s=1).get(http(f"http://127.0.0.1:{server.port}/x.png"))
    # The 1 s deadline and a loaded CPU's margin; a bound per read alone would end "slow headers" after 2.7 s.
    assert time.monotonic() - started < 2


@pytest.fixture
def rebinding_resolver(monkeypatch):
    """``images.test`` resolves to GOOD the first time and to EVIL ever after (DNS rebinding);
    every other name as the system resolves it."""
    real = socket.getaddrinfo
    calls: list[str] = []

    def resolve(host, port, *args, **kwargs):
        if host not in ("images.test", "other.test"):
            return real(host, port, *args, **kwargs)
        calls.append(host)
        address = GOOD if len(calls) == 1 else EVIL
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    return calls


def only_good(ip) -> bool:
    return str(ip) == GOOD


def test_the_connection_goes_to_the_address_that_was_checked(servers, rebinding_resolver):
    good = servers(ok(), host=GOOD)
    evil = servers(ok(b"secrets"), host=EVIL, port=good.port)
    assert fetcher(may_connect=only_good).get(http(f"http://images.test:{good.port}/x.png")) == PNG
    assert rebinding_resolver == ["images.test"]  # resolved once
    assert evil.connections == 0
    assert f"Host: images.test:{good.port}\r\n".encode() in good.requests[0]  # the URL's own name


def test_a_name_with_any_address_not_allowed_is_403_before_connecting(servers, monkeypatch):
    server = servers(ok(), host=GOOD)
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port, *a, **k: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", (GOOD, port)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", (EVIL, port))])
    with pytest.raises(ForbiddenSource, match=f"refusing to fetch from images.test \\({EVIL}\\): not a public address"):
        fetcher(may_connect=only_good).get(http(f"http://images.test:{server.port}/x.png"))
    assert server.connections == 0


def tls_pair(name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for ``name`` from a fresh CA, and a client context
    that trusts only that CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sam2-api test CA")])

    def certificate(subject, public_key, serial, extension):
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public_key)
                .serial_number(serial).not_valid_before(now - timedelta(hours=1))
                .not_valid_after(now + timedelta(hours=1)).add_extension(extension, critical=False)
                .sign(ca_key, hashes.SHA256()))

    ca = certificate(ca_name, ca_key.public_key(), 1, x509.BasicConstraints(ca=True, path_length=None))
    cert = certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key.public_key(), 2,
                       x509.SubjectAlternativeName([x509.DNSName(name)]))
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    import tempfile

    with tempfile.NamedTemporaryFile() as chain:
        chain.write(cert.public_bytes(pem) + key_pem)
        chain.flush()
        server.load_cert_chain(chain.name)
    client = ssl.create_default_context(cadata=ca.public_bytes(pem).decode())
    return server, client


def test_tls_names_the_host_and_checks_its_certificate_though_it_connects_to_an_address(servers, rebinding_resolver):
    server_context, client_context = tls_pair("images.test")
    names = []
    server_context.sni_callback = lambda sslobj, name, context: names.append(name)
    server = servers(ok(), host=GOOD, tls=server_context)
    address = parse_web_url(f"https://images.test:{server.port}/x.png")
    assert fetcher(may_connect=only_good, ssl_context=client_context).get(address) == PNG
    assert names == ["images.test"]
    assert f"Host: images.test:{server.port}\r\n".encode() in server.requests[0]


def test_a_certificate_for_another_name_is_refused(servers, rebinding_resolver):
    server_context, client_context = tls_pair("images.test")
    server = servers(ok(), host=GOOD, tls=server_context)
    address = parse_web_url(f"https://other.test:{server.port}/x.png")  # resolves to the same server
    with pytest.raises(InvalidImageSource, match="could not be fetched: ConnectError"):
        fetcher(may_connect=only_good, ssl_context=client_context).get(address)
    assert server.requests == []


@pytest.mark.parametrize("answer, error, words", [
    (lambda conn: conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"), InvalidImageSource, "answered 404"),
    (lambda conn: conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\nContent-Length: 0\r\n\r\n"),
     InvalidImageSource, "answered 302"),
    (lambda conn: conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 20000\r\n\r\n"), ImageTooLarge, "over 10000 bytes"),
    (lambda conn: conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 20000), ImageTooLarge, "over 10000 bytes"),
    (lambda conn: conn.sendall(b"garbage\r\n\r\n"), InvalidImageSource, "could not be fetched: RemoteProtocolError"),
])
def test_answers_that_are_not_an_image_within_bounds_say_why(servers, answer, error, words):
    server = servers(answer)
    with pytest.raises(error, match=words):
        fetcher().get(http(f"http://127.0.0.1:{server.port}/x.png"))


def test_nothing_listening_is_a_400():
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    with pytest.raises(InvalidImageSource, match="could not be fetched: ConnectError"):
        fetcher().get(http(f"http://127.0.0.1:{port}/x.png"))


@pytest.mark.parametrize("url, words", [
    ("https://example.com:99999/x.png", "port of image_url must be a number from 1 to 65535"),
    ("https://example.com:0/x.png", "port of image_url must be a number"),
    ("https://example.com:abc/x.png", "port of image_url must be a number"),
    ("https://" + "a" * 300 + ".com/x.png", "not a valid name"),
    ("https://" + ".".join(["a" * 60] * 5) + "/x.png", "at most 253 characters"),
    ("https://exa mple.com/x.png", "may hold only letters"),
    ("https://ex*ample.com/x.png", "may hold only letters"),
    ("https://user:pw@example.com/x.png", "user name or password"),
    ("https:///x.png", "has no host"),
    ("http://example.com/x.png", "must start with https://"),
    ("https://[fe80::1%25eth0]/x.png", "IPv6 zone"),
])
def test_malformed_urls_are_refused_before_any_lookup(url, words):
    with pytest.raises(InvalidImageSource, match=words):
        parse_web_url(url)


def test_urls_are_split_into_what_goes_on_the_wire():
    address = parse_web_url("https://Bücher.Example/ä b.png?q=1 2")
    assert (address.host, address.port, address.target) == ("xn--bcher-kva.example", 443, "/%C3%A4%20b.png?q=1%202")
    assert str(parse_web_url("https://[2606:4700::1]:8443/x")) == "https://[2606:4700::1]:8443/x"
