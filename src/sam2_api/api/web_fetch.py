"""GET one image from a public web address: to the address that was checked, within one deadline.

- DNS rebinding: the host name is resolved once, every address it resolves to is checked
  (``public_ip.py``), and the connection goes to a checked address: httpcore is given a network
  backend that never resolves the name again. The URL keeps its host name, so the Host header,
  the TLS server name (SNI) and the certificate check are the host's own.
- One deadline for the whole fetch: every socket operation (connect, TLS handshake, each read
  and write) waits at most the time that is left, so a server dripping a byte every few seconds
  is cut at the deadline rather than one read timeout after each byte. The name lookup runs in a
  worker thread for the same reason (``getaddrinfo`` cannot be interrupted; a lookup that
  outlives the deadline is left to finish on its own).

The service only ever fetches ``https`` (``ImageSources.locate``); ``parse_web_url`` takes
``http`` only when a caller asks for it, which the tests do to reach loopback servers.
"""

from __future__ import annotations

import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable
from urllib.parse import quote, urlsplit

import httpcore

from .public_ip import IPAddress, is_public_address, parse_address
from ..errors import ForbiddenSource, ImageTooLarge, InvalidImageSource

FETCH_TIMEOUT_SECONDS = 10
MAX_HOST_LENGTH = 253  # RFC 1035, in its dotted ASCII form
MAX_LABEL_LENGTH = 63
_HOST_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")
_DEFAULT_PORTS = {"https": 443, "http": 80}
# Characters that stay as they are in the request target (RFC 3986 reserved, unreserved and "%").
_TARGET_SAFE = "!$&'()*+,/:;=?@[]~%-._"
_TRANSPORT_ERRORS = (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError,
                     httpcore.UnsupportedProtocol)
# getaddrinfo cannot be interrupted: lookups run here, and one that outlives its deadline is
# abandoned to finish within the resolver's own timeout.
_LOOKUPS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="image-url-lookup")


@dataclass(frozen=True)
class WebAddress:
    """A checked ``http(s)`` URL, in the parts that go on the wire."""

    scheme: str
    host: str  # ASCII: an IDNA-encoded name, or an IP address without brackets
    port: int
    target: str  # path and query, percent-encoded ASCII

    @property
    def authority(self) -> str:
        """``host[:port]`` as the Host header and messages show it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.authority}{self.target}"


def parse_web_url(url: str, schemes: Iterable[str] = ("https",), field: str = "image_url") -> WebAddress:
    """Check ``url``'s syntax and split it; our errors say what is wrong, naming the request's
    ``field`` that held it.

    Its length and characters are ``ImageSources.locate``'s to check first (``urlsplit`` would
    silently drop a tab or a newline).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        raise InvalidImageSource(f"the URL must start with {' or '.join(f'{s}://' for s in schemes)}")
    if "@" in parts.netloc:
        raise InvalidImageSource(f"{field} may not carry a user name or password")
    try:
        port = parts.port
    except ValueError:  # not a number, or over 65535
        port = 0
    if port == 0:
        raise InvalidImageSource(f"the port of {field} must be a number from 1 to 65535")
    port = port or _DEFAULT_PORTS[scheme]
    host = parts.hostname or ""
    try:
        literal = parse_address(host)
    except ValueError:
        return WebAddress(scheme, _checked_name(host, field), port, _target(parts.path, parts.query))
    if "%" in host:
        raise InvalidImageSource(f"{field} may not name an IPv6 zone")
    return WebAddress(scheme, str(literal), port, _target(parts.path, parts.query))


def _checked_name(host: str, field: str) -> str:
    if not host:
        raise InvalidImageSource(f"{field} has no host")
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidImageSource(
            f"the host name of {field} is not a valid name (labels of 1-{MAX_LABEL_LENGTH} characters)"
        ) from None
    labels = ascii_host.rstrip(".").split(".")
    if len(ascii_host) > MAX_HOST_LENGTH or any(not 0 < len(label) <= MAX_LABEL_LENGTH for label in labels):
        raise InvalidImageSource(
            f"the host name of {field} must be at most {MAX_HOST_LENGTH} characters, in labels of "
            f"1-{MAX_LABEL_LENGTH}"
        )
    if not set(ascii_host.lower()) <= _HOST_CHARACTERS | {"."}:
        raise InvalidImageSource(f"the host name of {field} may hold only letters, digits, '-', '_' and '.'")
    return ascii_host.lower()


def _target(path: str, query: str) -> str:
    target = quote(path or "/", safe=_TARGET_SAFE)
    return f"{target}?{quote(query, safe=_TARGET_SAFE)}" if query else target


class WebFetcher:
    """``get(address)``: the body of a 200 answer, at most ``max_bytes``, within ``timeout_s``.

    ``may_connect`` decides which resolved addresses are acceptable (every one must be);
    ``ssl_context`` is httpcore's default (certifi's CAs) unless given.
    """

    def __init__(self, *, max_bytes: int, timeout_s: float = FETCH_TIMEOUT_SECONDS,
                 may_connect: Callable[[IPAddress], bool] = is_public_address,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self._may_connect = may_connect
        self._ssl_context = ssl_context

    def get(self, address: WebAddress, headers: Iterable[tuple[bytes, bytes]] = ()) -> bytes:
        """``headers``: sent besides Host, Accept and User-Agent (Label Studio's token, to its own host)."""
        deadline = _Deadline(self.timeout_s)
        backend = _PinnedBackend(self._checked_addresses(address, deadline), deadline)
        url = httpcore.URL(scheme=address.scheme, host=address.host, port=address.port, target=address.target)
        headers = [(b"Host", address.authority.encode()), (b"Accept", b"image/*"), (b"User-Agent", b"sam2-api"),
                   *headers]
        try:
            with httpcore.ConnectionPool(ssl_context=self._ssl_context, network_backend=backend, retries=0) as pool:
                with pool.stream("GET", url, headers=headers) as response:
                    if response.status != 200:
                        raise InvalidImageSource(f"{address} answered {response.status}")
                    length = dict((k.lower(), v) for k, v in response.headers).get(b"content-length", b"")
                    if length.isdigit():
                        self._check_length(int(length))
                    data = bytearray()
                    for chunk in response.iter_stream():
                        data += chunk
                        self._check_length(len(data))
                    return bytes(data)
        except _TRANSPORT_ERRORS as exc:
            if deadline.expired():
                raise InvalidImageSource(f"{address} was not fetched within {self.timeout_s:g} s") from None
            raise InvalidImageSource(f"{address} could not be fetched: {type(exc).__name__}") from None

    def _checked_addresses(self, address: WebAddress, deadline: _Deadline) -> list[IPAddress]:
        """Every address the host resolves to, each one acceptable; the host itself if it is one."""
        try:
            literal = parse_address(address.host)
        except ValueError:
            pass
        else:
            return self._checked(address.host, [literal])
        # socket.getaddrinfo is looked up at each call: tests replace it with a resolver of their own.
        lookup = _LOOKUPS.submit(socket.getaddrinfo, address.host, address.port, type=socket.SOCK_STREAM)
        try:
            infos = lookup.result(timeout=deadline.left())
        except TimeoutError:
            raise InvalidImageSource(f"the host {address.host!r} did not resolve within {self.timeout_s:g} s") from None
        except (OSError, UnicodeError):
            raise InvalidImageSource(f"the host {address.host!r} does not resolve") from None
        return self._checked(address.host, list(dict.fromkeys(parse_address(info[4][0]) for info in infos)))

    def _checked(self, host: str, addresses: list[IPAddress]) -> list[IPAddress]:
        for ip in addresses:
            if not self._may_connect(ip):
                raise ForbiddenSource(f"refusing to fetch from {host} ({ip}): not a public address")
        return addresses

    def check_host(self, address: WebAddress) -> None:
        """What can be checked without the network: a host that is an IP address must be one this
        fetcher may connect to (names are checked when :meth:`get` resolves them)."""
        try:
            ip = parse_address(address.host)
        except ValueError:
            return
        self._checked(address.host, [ip])

    def _check_length(self, length: int) -> None:
        if length > self.max_bytes:
            raise ImageTooLarge.in_bytes(self.max_bytes)


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self._end - time.monotonic())

    def expired(self) -> bool:
        return self.left() == 0.0

    def bound(self, timeout_error: type[Exception]) -> float:
        """The time left for one socket operation; past the deadline, that operation's timeout."""
        left = self.left()
        if left == 0.0:  # socket.settimeout(0) would mean "do not block", not "no time"
            raise timeout_error("the fetch deadline has passed")
        return left


class _PinnedBackend(httpcore.SyncBackend):
    """Connects to the checked addresses, whatever name it is asked for, and times every socket
    operation of the connection by the fetch's deadline."""

    def __init__(self, addresses: list[IPAddress], deadline: _Deadline) -> None:
        self._addresses = addresses
        self._deadline = deadline

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable | None = None) -> httpcore.NetworkStream:
        failure: Exception = httpcore.ConnectError(f"no address to connect to for {host}")
        for ip in self._addresses:  # `host` is the URL's name: it is never resolved again
            try:
                stream = super().connect_tcp(str(ip), port, self._deadline.bound(httpcore.ConnectTimeout),
                                             local_address, socket_options)
            except httpcore.ConnectError as exc:
                failure = exc
                continue
            return _DeadlineStream(stream, self._deadline)
        raise failure


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self._stream = stream
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._deadline.bound(httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._deadline.bound(httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        stream = self._stream.start_tls(ssl_context, server_hostname, self._deadline.bound(httpcore.ConnectTimeout))
        return _DeadlineStream(stream, self._deadline)

    def get_extra_info(self, info: str) -> object:
        return self._stream.get_extra_info(info)
