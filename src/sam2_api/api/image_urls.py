"""Images that are already somewhere: ``s3://bucket/key`` (allowed buckets only) or ``https://``.

:meth:`ImageSources.locate` checks an ``image_url`` at once — its length and characters, its
scheme, an S3 bucket against ``S3_INPUT_BUCKETS``, a web URL's host name, port and, when the host
is an IP address, that it is public — and returns a loader that reads the image only when called.
A request whose image is already cached (``image_id``) thus still has its ``image_url`` checked,
and pays for no transfer.

S3 objects are read with the service's own credentials, and only from the allowed buckets.
HTTPS URLs are fetched only from public addresses, to the very address that was checked, within
one deadline (``web_fetch.py``), so that callers cannot make the service reach into its own
network. Both are bounded by ``SAM2_MAX_UPLOAD_BYTES``. (BentoML's own guard for URL inputs
patches only its async event loop, which these sync handlers do not use.)
"""

from __future__ import annotations

import re
from functools import partial
from typing import Callable

from botocore.exceptions import BotoCoreError, ClientError

from ..errors import ForbiddenSource, ImageTooLarge, InvalidImageSource
from .web_fetch import WebFetcher, parse_web_url

ImageLoader = Callable[[], bytes]  # reads the image when called; raises our RequestErrors

MAX_URL_LENGTH = 2048
MAX_S3_KEY_BYTES = 1024  # S3's own limit
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_FORMS = "must be s3://bucket/key or https://host/path"  # after the field's name


class ImageSources:
    def __init__(self, s3_client, input_buckets: frozenset[str], max_bytes: int,
                 web: WebFetcher | None = None) -> None:
        self._s3 = s3_client
        self._buckets = input_buckets
        self._max_bytes = max_bytes
        self._web = web or WebFetcher(max_bytes=max_bytes)

    def locate(self, url: str, field: str = "image_url") -> ImageLoader:
        """Check ``url`` now, without any network traffic; the returned loader reads the image.
        ``field``: the request's field that held ``url``, which the errors name."""
        if len(url) > MAX_URL_LENGTH:
            raise InvalidImageSource(f"{field} is {len(url)} characters long; the limit is {MAX_URL_LENGTH}")
        if any(char.isspace() or not char.isprintable() for char in url):
            # urllib would drop a tab or a newline silently and fetch another URL than the one shown
            raise InvalidImageSource(f"{field} may not contain spaces or control characters")
        scheme, separator, rest = url.partition("://")
        if separator and scheme.lower() == "s3":
            return self._locate_s3(rest, field)
        if separator and scheme.lower() == "https":
            address = parse_web_url(url, field=field)
            self._web.check_host(address)
            return partial(self._web.get, address)
        raise InvalidImageSource(f"{field} {_FORMS}; got {_shown(url)}")

    def fetch(self, url: str, field: str = "image_url") -> bytes:
        """``locate(url, field)()``: for callers that always need the bytes (the pipeline should locate first)."""
        return self.locate(url, field)()

    def _locate_s3(self, bucket_and_key: str, field: str) -> ImageLoader:
        bucket, _, key = bucket_and_key.partition("/")
        if not bucket or not key:
            raise InvalidImageSource(f"{field} {_FORMS}; got {_shown('s3://' + bucket_and_key)}")
        if not _BUCKET_NAME.fullmatch(bucket):
            raise InvalidImageSource(f"{_shown(bucket)} is not an S3 bucket name")
        if len(key.encode()) > MAX_S3_KEY_BYTES:
            raise InvalidImageSource(f"the S3 key of {field} is over {MAX_S3_KEY_BYTES} bytes")
        if bucket not in self._buckets or self._s3 is None:
            raise ForbiddenSource(f"bucket {bucket!r} is not one this service reads from (S3_INPUT_BUCKETS)")
        return partial(self._from_s3, bucket, key)

    def _from_s3(self, bucket: str, key: str) -> bytes:
        try:
            obj = self._s3.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NoSuchBucket"):
                raise InvalidImageSource(f"s3://{bucket}/{key} does not exist") from None
            raise InvalidImageSource(f"s3://{bucket}/{key} could not be read: {code}") from None
        except BotoCoreError as exc:
            raise InvalidImageSource(f"s3://{bucket}/{key} could not be read: {type(exc).__name__}") from None
        if (obj.get("ContentLength") or 0) > self._max_bytes:
            raise ImageTooLarge.in_bytes(self._max_bytes)
        return obj["Body"].read()


def _shown(text: str, limit: int = 100) -> str:
    """``text`` as a message may quote it: a 100 kB URL is not echoed back whole."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"
