"""Where masks go: an S3 (or S3-compatible) bucket, or nowhere.

A mask store never fails a request. When the bucket or credentials are missing it stores nothing
and says why (:attr:`MaskStore.disabled_reason`, which the service logs once at startup); when an upload fails it logs the reason (never a secret) and the
caller gets an :class:`Upload` without a URL, whose ``error`` says in a few words why (responses
show it as ``mask_error``: one of :data:`UPLOAD_ERRORS`, never a secret).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Callable, Iterator, NamedTuple
from urllib.parse import quote

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from .. import metrics

log = logging.getLogger(__name__)

# A dead or hanging endpoint must not hold a request for more than about 10 s: 2 attempts of
# (2 s to connect or 3 s to read) plus standard-mode backoff. Measured against a hanging
# endpoint: 8.1 s in all (10.1 s with 4 s reads). A mask PUT normally answers well under 1 s.
CLIENT_CONFIG = Config(
    signature_version="s3v4",  # presigned URLs too (the access key id is in them; never the secret)
    connect_timeout=2,
    read_timeout=3,
    retries={"total_max_attempts": 2, "mode": "standard"},
)


# Why something was not stored, as responses say it: short, stable, for programs to branch on.
NOT_CONFIGURED = "s3 not configured"  # no bucket or no credentials (the log says which, at start-up)
UNREACHABLE = "s3 unreachable"  # no connection, or no answer in time
FAILED = "upload failed"  # S3 answered with an error (AccessDenied, NoSuchBucket…: the log says which)
LATE = "upload deadline passed"  # not stored within S3_UPLOAD_DEADLINE
UPLOAD_ERRORS = (NOT_CONFIGURED, UNREACHABLE, FAILED, LATE)


class Upload(NamedTuple):
    """Where one object went: its URL, or None and why (one of :data:`UPLOAD_ERRORS`)."""

    url: str | None
    error: str | None = None


def unique_name(now: datetime | None = None) -> str:
    """``<UTC YYYYMMDD_HHMMSS>_<uuid4 hex>``: unique, and not guessable from any other name (122
    random bits), for a mask or a tracking task's folder."""
    now = now or datetime.now(timezone.utc)
    return f"{now.astimezone(timezone.utc):%Y%m%d_%H%M%S}_{uuid.uuid4().hex}"


def mask_key(prefix: str, now: datetime | None = None) -> str:
    """``<prefix><unique_name>.png``."""
    return f"{prefix}{unique_name(now)}.png"


def object_url(bucket: str, key: str, region: str, endpoint_url: str | None) -> str:
    """The object's HTTPS URL on AWS (virtual-hosted style) or path-style on a custom endpoint."""
    if endpoint_url:
        return f"{endpoint_url.rstrip('/')}/{bucket}/{quote(key)}"
    return f"https://{bucket}.s3.{region}.amazonaws.com/{quote(key)}"


def make_s3_client(region: str, endpoint_url: str | None = None):
    """A new S3 client with our timeouts and retries, or None when boto3's credential chain finds no
    credentials. The service takes :func:`shared_s3_client`'s instead."""
    session = boto3.session.Session(region_name=region)
    if session.get_credentials() is None:
        return None
    addressing = Config(s3={"addressing_style": "path"}) if endpoint_url else Config()
    config = CLIENT_CONFIG.merge(addressing).merge(Config(max_pool_connections=32))
    return session.client("s3", endpoint_url=endpoint_url, config=config)


_SHARED: dict[tuple[int, str, str | None], object] = {}  # by (pid, region, endpoint): a forked child makes its own
_SHARED_LOCK = threading.Lock()


def shared_s3_client(region: str, endpoint_url: str | None = None):
    """This process's S3 client for ``region`` and ``endpoint_url``, made at the first call: masks, previews,
    manifests, ``image_url``/``video_url`` reads and presigned URLs share it and its connection pool (boto3
    clients are thread-safe; refreshable credentials refresh themselves). None, and nothing kept, while the
    credential chain finds no credentials."""
    key = (os.getpid(), region, endpoint_url)
    with _SHARED_LOCK:
        if key not in _SHARED and (client := make_s3_client(region, endpoint_url)) is not None:
            _SHARED[key] = client
        return _SHARED.get(key)


def forget_shared_s3_clients() -> None:
    """Drop the shared clients (for tests that change the credentials between them)."""
    with _SHARED_LOCK:
        _SHARED.clear()


def public_read_policy(bucket: str, prefix: str) -> str:
    """The bucket policy that lets anyone GET masks under ``prefix`` (and nothing else)."""
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "PublicReadGetObject",
            "Effect": "Allow",
            "Principal": "*",
            "Action": "s3:GetObject",
            "Resource": f"arn:aws:s3:::{bucket}/{prefix}*",
        }],
    })


class MaskStore:
    """Uploads PNG masks and returns their URLs; several at once within one deadline."""

    def __init__(self, client, bucket: str | None, *, region: str, endpoint_url: str | None = None,
                 prefix: str = "sam2-api-masks/", acl: str | None = None, presign_expires: int | None = None,
                 deadline: float = 10.0, parallel: int = 4) -> None:
        """``client``: a boto3 S3 client (:func:`make_s3_client`) or None when there are no
        credentials; ``presign_expires``: seconds, for presigned URLs instead of plain ones;
        ``deadline``: seconds that :meth:`put_many` waits on S3 for one request's uploads, all together
        (the time its upload threads spend making PNGs does not count: :class:`S3Clock`)."""
        self._client = client
        self._bucket = bucket
        self._region = region
        self._endpoint_url = endpoint_url
        self._prefix = prefix
        self._acl = acl
        self._presign_expires = presign_expires
        self.deadline = deadline
        self._failures = FailureLog()  # uploads that failed
        self._late = FailureLog()  # requests whose uploads were cut by the deadline
        # Why nothing will be stored, for the service to say once at startup; None when enabled.
        self.disabled_reason: str | None = None
        if not bucket:
            self.disabled_reason = "S3_BUCKET_NAME_STAGING is not set: masks will not be stored (mask_url: null)"
        elif client is None:
            self.disabled_reason = "no AWS credentials found: masks will not be stored (mask_url: null)"
        else:
            # Uploads wait on the network; bounded, so that a hanging S3 holds threads, not memory,
            # and so that at most `parallel` full-size 8-bit masks are being encoded at a time in
            # each pool. Bulk uploads (every object of an image, a clip's frames) have a pool of
            # their own, so that a request's one mask never queues behind hundreds of them.
            self._pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="s3-upload")
            self._bulk_pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="s3-upload-bulk")
            self._clocks = {self._pool: S3Clock(), self._bulk_pool: S3Clock()}
        self.enabled = self.disabled_reason is None

    def check_bucket(self) -> bool:
        """Ask S3 once whether the bucket is there and reachable (HeadBucket, within the client's
        timeouts), and log one line that says so, naming the bucket and the endpoint (never a secret):
        a wrong ``S3_ENDPOINT_URL`` or bucket name is then seen at start-up, not at the first mask.
        Whatever the answer, uploads are still tried for every mask. True when the bucket answered."""
        if not self.enabled:
            return False
        where = f"s3://{self._bucket} at {self._endpoint_url or f'AWS {self._region}'}"
        try:
            self._client.head_bucket(Bucket=self._bucket)
        except (BotoCoreError, ClientError) as exc:
            denied = _code(exc) in ("403", "AccessDenied")
            hint = " (HeadBucket needs s3:ListBucket: uploads may still work)" if denied else ""
            log.warning("the mask bucket %s did not answer at start-up: %s%s; the service serves on, with "
                        "mask_url null while uploads fail", where, _reason(exc), hint)
            return False
        log.info("masks go to %s", where)
        return True

    def put(self, png: bytes) -> Upload:
        """Store one PNG under a fresh key; its URL, or why it was not stored."""
        if not self.enabled:
            return Upload(None, NOT_CONFIGURED)
        return self._put(mask_key(self._prefix), png, "image/png")

    def put_named(self, name: str, body: bytes, content_type: str) -> Upload:
        """Store ``body`` under ``<prefix><name>`` (a name the caller made unique); its URL, or why not."""
        if not self.enabled:
            return Upload(None, NOT_CONFIGURED)
        return self._put(self._prefix + name, body, content_type)

    def _put(self, key: str, body: bytes, content_type: str) -> Upload:
        extra = {"ACL": self._acl} if self._acl else {}
        try:
            self._client.put_object(
                Bucket=self._bucket, Key=key, Body=body, ContentType=content_type, **extra
            )
        except (BotoCoreError, ClientError) as exc:
            metrics.UPLOAD_FAILURES.labels(reason=_code(exc)).inc()
            self._failures.failed(f"s3://{self._bucket}: {_reason(exc)}")
            return Upload(None, UNREACHABLE if isinstance(exc, (BotoConnectionError, HTTPClientError)) else FAILED)
        self._failures.succeeded()
        if self._presign_expires is not None:
            return Upload(self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self._bucket, "Key": key}, ExpiresIn=self._presign_expires
            ))
        return Upload(object_url(self._bucket, key, self._region, self._endpoint_url))

    def put_many(self, pngs: list[Callable[[], bytes]], *, bulk: bool = False,
                 until: float | None = None) -> list[Upload]:
        """Make and store each PNG (``pngs`` make them, in the upload threads), in parallel; the URL of
        each, or why not (:data:`LATE` for those not stored once the call has waited :attr:`deadline` seconds on S3)
        (those may still land later, under keys nobody is given)). ``bulk``: in the bulk uploads' own
        threads. ``until``: a ``time.monotonic()`` by which the call returns in any case; when some
        PNG is not even made by then, :class:`PngsNotMade` (the request's own work was too much)."""
        return self._all([(make, self.put) for make in pngs], bulk, until)

    def put_named_many(self, pngs: list[tuple[str, Callable[[], bytes]]], *, bulk: bool = False) -> list[Upload]:
        """:meth:`put_many` under the given names (:meth:`put_named`)."""
        return self._all([(make, lambda png, name=name: self.put_named(name, png, "image/png")) for name, make in pngs],
                         bulk)

    def _all(self, uploads: list[tuple[Callable[[], bytes], Callable[[bytes], Upload]]],
             bulk: bool, until: float | None = None) -> list[Upload]:
        if not self.enabled:
            return [Upload(None, NOT_CONFIGURED)] * len(uploads)
        pool = self._bulk_pool if bulk else self._pool
        clock = self._clocks[pool]
        made = [False] * len(uploads)

        def upload(index: int, make: Callable[[], bytes], put: Callable[[bytes], Upload]) -> Upload:
            with clock.making():
                png = make()
            made[index] = True
            return put(png)

        started = clock.seconds()
        futures = [pool.submit(upload, index, make, put) for index, (make, put) in enumerate(uploads)]
        while True:
            # The clock runs no faster than wall time: waiting what is left of the deadline, then
            # asking again, ends once S3 has had the whole deadline.
            left = self.deadline - (clock.seconds() - started)
            if until is not None:
                left = min(left, until - time.monotonic())
            done, late = wait(futures, timeout=max(left, 0))
            if not late or left <= 0:
                break
        if late and until is not None and time.monotonic() >= until and not all(made):
            for future in late:
                future.cancel()  # those not started yet never start
            raise PngsNotMade(sum(made), len(made))
        if late:
            metrics.UPLOAD_FAILURES.labels(reason="RequestDeadline").inc(len(late))
            # One reason for every request cut short, so that an outage is logged once, not per request
            # (how many were late is in the metric); the uploads' own failures are logged apart.
            self._late.failed(f"s3://{self._bucket}: uploads not done within the {self.deadline:g} s deadline "
                              "(S3_UPLOAD_DEADLINE)")
            for future in late:
                future.cancel()  # those not started yet never start
        else:
            self._late.succeeded()
        return [future.result() if future in done else Upload(None, LATE) for future in futures]


class PngsNotMade(Exception):
    """:meth:`MaskStore.put_many`'s ``until`` passed before every PNG was made."""

    def __init__(self, made: int, total: int) -> None:
        super().__init__(f"{made} of {total} PNGs made")
        self.made = made
        self.total = total


class S3Clock:
    """Seconds during which none of a pool's threads was making a PNG: the time S3 (uploads, and
    waiting for a thread held by one) adds to a request. Making PNGs is CPU work the request asked
    for, and may take longer than the upload deadline on a busy machine; the deadline bounds what a
    slow or hanging S3 adds to it. The pool as a whole, not one request: a request whose PNGs queue
    behind another's being made is not waiting on S3 either."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._making = 0  # threads making a PNG now
        self._idle = 0.0  # seconds with none making, up to _since
        self._since = time.monotonic()

    @contextmanager
    def making(self) -> Iterator[None]:
        with self._lock:
            if self._making == 0:
                self._idle += time.monotonic() - self._since
            self._making += 1
        try:
            yield
        finally:
            with self._lock:
                self._making -= 1
                if self._making == 0:
                    self._since = time.monotonic()

    def seconds(self) -> float:
        with self._lock:
            return self._idle + (time.monotonic() - self._since if self._making == 0 else 0.0)


class FailureLog:
    """Logs an outage once when it starts, a summary every ``interval`` seconds while it lasts,
    and once when uploads work again — not once per failed request."""

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._reason: str | None = None
        self._count = 0
        self._since_log = 0
        self._logged_at = 0.0

    def failed(self, reason: str) -> None:
        with self._lock:
            self._count += 1
            self._since_log += 1
            now = time.monotonic()
            if reason != self._reason:
                self._reason, self._logged_at, self._since_log = reason, now, 0
                log.warning("mask upload failed: %s; masks are not stored (mask_url: null) until "
                            "uploads work again", reason)
            elif now - self._logged_at >= self.interval:
                log.warning("mask uploads still failing: %d more in the last %.0f s (%s)",
                            self._since_log, now - self._logged_at, reason)
                self._logged_at, self._since_log = now, 0

    def succeeded(self) -> None:
        if self._reason is None:  # the common case, without taking the lock
            return
        with self._lock:
            if self._reason is not None:
                log.warning("mask uploads work again after %d failed (%s)", self._count, self._reason)
                self._reason, self._count, self._since_log = None, 0, 0


def _code(exc: Exception) -> str:
    """S3's error code (AccessDenied, NoSuchBucket…) or the botocore error class: no secrets."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "ClientError"))
    return type(exc).__name__


def _reason(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return f"{_code(exc)} ({exc.response.get('Error', {}).get('Message', '')})"
    return _code(exc)
