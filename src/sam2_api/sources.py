"""Images that are already somewhere: ``s3://bucket/key`` (allowed buckets only) or ``https://``.

S3 objects are read with the service's own credentials, and only from the buckets listed in
``S3_INPUT_BUCKETS``. HTTPS URLs are fetched only from public addresses: the host name is resolved
first and every address it resolves to must be globally routable (no private, loopback,
link-local, reserved or multicast address), so that callers cannot make the service reach into
its own network. Both are bounded by ``SAM2_MAX_UPLOAD_BYTES`` and a timeout. (BentoML's own
guard for URL inputs patches only its async event loop, which these sync handlers do not use.
A name that resolves differently between the check and the connection, DNS rebinding, is not
caught: deployments that must rule it out should also block private ranges at the network.)
"""

from __future__ import annotations

import socket
from urllib.parse import urlparse

import httpx
from botocore.exceptions import BotoCoreError, ClientError

from .addresses import is_public_address, parse_address
from .errors import ForbiddenSource, ImageTooLarge, InvalidImageSource

FETCH_TIMEOUT_SECONDS = 10


class ImageSources:
    def __init__(self, s3_client, input_buckets: frozenset[str], max_bytes: int) -> None:
        self._s3 = s3_client
        self._buckets = input_buckets
        self._max_bytes = max_bytes

    def fetch(self, url: str) -> bytes:
        """The bytes at ``url``; our errors say what is wrong with it."""
        parsed = urlparse(url)
        if parsed.scheme == "s3" and parsed.netloc and parsed.path.strip("/"):
            return self._from_s3(parsed.netloc, parsed.path.lstrip("/"))
        if parsed.scheme == "https" and parsed.hostname:
            return self._from_https(url, parsed.hostname, parsed.port or 443)
        raise InvalidImageSource(f"image_url must be s3://bucket/key or https://host/path; got {url!r}")

    def _from_s3(self, bucket: str, key: str) -> bytes:
        if bucket not in self._buckets or self._s3 is None:
            raise ForbiddenSource(f"bucket {bucket!r} is not one this service reads from (S3_INPUT_BUCKETS)")
        try:
            obj = self._s3.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NoSuchBucket"):
                raise InvalidImageSource(f"s3://{bucket}/{key} does not exist") from None
            raise InvalidImageSource(f"s3://{bucket}/{key} could not be read: {code}") from None
        except BotoCoreError as exc:
            raise InvalidImageSource(f"s3://{bucket}/{key} could not be read: {type(exc).__name__}") from None
        self._check_length(obj.get("ContentLength"))
        return obj["Body"].read()

    def _from_https(self, url: str, host: str, port: int) -> bytes:
        _refuse_non_public(host, port)
        try:
            with httpx.stream("GET", url, timeout=FETCH_TIMEOUT_SECONDS, follow_redirects=False) as response:
                if response.status_code != 200:
                    raise InvalidImageSource(f"{url} answered {response.status_code}")
                length = response.headers.get("content-length")
                self._check_length(int(length) if length and length.isdigit() else None)
                data = bytearray()
                for chunk in response.iter_bytes():
                    data += chunk
                    self._check_length(len(data))
                return bytes(data)
        except httpx.HTTPError as exc:
            raise InvalidImageSource(f"{url} could not be fetched: {type(exc).__name__}") from None

    def _check_length(self, length: int | None) -> None:
        if length is not None and length > self._max_bytes:
            raise ImageTooLarge(f"the image is over {self._max_bytes} bytes (SAM2_MAX_UPLOAD_BYTES)")


def _refuse_non_public(host: str, port: int) -> None:
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except socket.gaierror:
        raise InvalidImageSource(f"the host {host!r} does not resolve") from None
    for address in addresses:
        ip = parse_address(address)
        if not is_public_address(ip):
            raise ForbiddenSource(f"refusing to fetch from {host} ({ip}): not a public address")
