"""The S3 mask store against moto's in-process S3: keys, URLs, success and every failure path."""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from datetime import datetime, timezone

import boto3
import pytest
from moto import mock_aws

from sam2_api.api.csp import mask_origin
from sam2_api.api.segment import build_pipeline
from sam2_api.api.storage import (
    FailureLog, MaskStore, PngsNotMade, Upload, forget_shared_s3_clients, make_s3_client, mask_key, object_url,
    shared_s3_client,
)
from sam2_api.api.track import build_track_jobs
from sam2_api.config import Settings

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
KEY_PATTERN = re.compile(r"^sam2-api-masks/\d{8}_\d{6}_[0-9a-f]{32}\.png$")


@pytest.fixture
def aws_env(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "S3_ENDPOINT_URL", "S3_OBJECT_ACL"):
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        yield boto3.client("s3", region_name="eu-west-1")


def make_store(bucket: str | None = None, **options) -> MaskStore:
    return MaskStore(make_s3_client("eu-west-1"), bucket, region="eu-west-1", **options)


def test_key_format_is_prefix_utc_time_and_full_uuid():
    when = datetime(2024, 9, 2, 16, 30, 22, tzinfo=timezone.utc)
    key = mask_key("sam2-api-masks/", when)
    assert re.fullmatch(r"sam2-api-masks/20240902_163022_[0-9a-f]{32}\.png", key)
    assert len({mask_key("p/") for _ in range(1000)}) == 1000


def test_urls_on_aws_and_on_a_custom_endpoint():
    assert object_url("bkt", "sam2-api-masks/a b.png", "eu-west-1", None) == (
        "https://bkt.s3.eu-west-1.amazonaws.com/sam2-api-masks/a%20b.png"
    )
    assert object_url("bkt", "k.png", "us-east-1", "http://127.0.0.1:9000/") == (
        "http://127.0.0.1:9000/bkt/k.png"
    )


def test_upload_stores_png_with_content_type_and_returns_its_url(aws_env):
    aws_env.create_bucket(Bucket="masks", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    store = make_store("masks")
    url = store.put(b"\x89PNG fake bytes").url
    match = re.fullmatch(r"https://masks\.s3\.eu-west-1\.amazonaws\.com/(.+)", url)
    key = match.group(1)
    assert KEY_PATTERN.match(key)
    stored = aws_env.get_object(Bucket="masks", Key=key)
    assert stored["Body"].read() == b"\x89PNG fake bytes"
    assert stored["ContentType"] == "image/png"


def test_acl_is_applied_only_when_configured(aws_env):
    aws_env.create_bucket(Bucket="masks", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    plain = make_store("masks").put(b"png").url
    public = make_store("masks", acl="public-read").put(b"png").url
    grants = lambda url: aws_env.get_object_acl(Bucket="masks", Key=url.split(".com/")[1])["Grants"]
    all_users = "http://acs.amazonaws.com/groups/global/AllUsers"
    assert not any(g["Grantee"].get("URI") == all_users for g in grants(plain))
    assert any(g["Grantee"].get("URI") == all_users and g["Permission"] == "READ" for g in grants(public))


def test_missing_bucket_name_disables_uploads_and_says_why_once(aws_env, caplog):
    with caplog.at_level(logging.WARNING):
        store = make_store()
        assert store.put(b"png") == Upload(None, "s3 not configured")
        assert store.put_named("a/b.json", b"{}", "application/json") == Upload(None, "s3 not configured")
    assert not caplog.records  # not per request: the service logs the reason once at startup
    assert store.disabled_reason == "S3_BUCKET_NAME_STAGING is not set: masks will not be stored (mask_url: null)"


def test_missing_credentials_disable_uploads(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = make_store("masks")
    assert not store.enabled and store.put(b"png") == Upload(None, "s3 not configured")
    assert store.disabled_reason == "no AWS credentials found: masks will not be stored (mask_url: null)"


def test_nonexistent_bucket_gives_none_and_logs_the_reason(aws_env, caplog):
    store = make_store("no-such-bucket")
    with caplog.at_level(logging.WARNING):
        assert store.put(b"png") == Upload(None, "upload failed")
    assert "NoSuchBucket" in caplog.text
    assert SECRET not in caplog.text


def test_access_denied_gives_none_and_logs_the_reason(aws_env, caplog):
    aws_env.create_bucket(Bucket="locked", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    aws_env.put_bucket_policy(
        Bucket="locked",
        Policy='{"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Principal": "*", '
        '"Action": "s3:PutObject", "Resource": "arn:aws:s3:::locked/*"}]}',
    )
    store = make_store("locked")
    with caplog.at_level(logging.WARNING):
        assert store.put(b"png") == Upload(None, "upload failed")
    assert re.search(r"failed: s3://locked: (AccessDenied|403)", caplog.text)  # moto: a bare 403
    assert SECRET not in caplog.text
    assert aws_env.list_objects_v2(Bucket="locked").get("KeyCount") == 0


def test_an_outage_is_logged_once_then_its_end(aws_env, caplog):
    store = make_store("later")
    with caplog.at_level(logging.WARNING):
        assert [store.put(b"png").url for _ in range(5)] == [None] * 5
        aws_env.create_bucket(Bucket="later", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        assert store.put(b"png").url is not None
        assert store.put(b"png").url is not None
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0].startswith("mask upload failed: s3://later: NoSuchBucket")
    assert messages[1] == "mask uploads work again after 5 failed (s3://later: NoSuchBucket " \
        "(The specified bucket does not exist))"


def test_a_long_outage_gets_periodic_summaries(caplog):
    failures = FailureLog(interval=0)
    with caplog.at_level(logging.WARNING):
        failures.failed("s3://b: SlowDown")
        failures.failed("s3://b: SlowDown")
        failures.failed("s3://b: AccessDenied")
    assert [r.getMessage().split(";")[0].split(" (")[0] for r in caplog.records] == [
        "mask upload failed: s3://b: SlowDown",
        "mask uploads still failing: 1 more in the last 0 s",
        "mask upload failed: s3://b: AccessDenied",
    ]


def test_presigned_mode_returns_a_signed_get_url_that_works(aws_env):
    import requests

    aws_env.create_bucket(Bucket="private", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    store = make_store("private", presign_expires=120)
    url = store.put(b"png bytes").url
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=120" in url
    assert KEY_PATTERN.match(re.search(r"amazonaws\.com/([^?]+)", url).group(1))
    assert SECRET not in url
    assert requests.get(url, timeout=5).content == b"png bytes"


def test_put_many_stores_in_parallel_and_keeps_the_order(aws_env):
    aws_env.create_bucket(Bucket="masks", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    store = make_store("masks")
    bodies = [f"png {i}".encode() for i in range(12)]
    urls = [upload.url for upload in store.put_many([lambda body=body: body for body in bodies])]
    stored = [aws_env.get_object(Bucket="masks", Key=url.split(".com/")[1])["Body"].read() for url in urls]
    assert stored == bodies and len(set(urls)) == 12


def slow_puts(client, seconds: float, body: bytes) -> None:
    """S3 (moto's, in-process) takes ``seconds`` to answer each PUT of ``body``: botocore's own hook."""
    def hang(params, **_) -> None:
        if params.get("Body") == body:
            time.sleep(seconds)
    client.meta.events.register("before-parameter-build.s3.PutObject", hang)


def test_put_many_gives_up_on_what_is_not_stored_by_the_deadline(aws_env, caplog):
    aws_env.create_bucket(Bucket="masks", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    store = make_store("masks", deadline=0.5, parallel=2)
    slow_puts(store._client, 3, b"late")

    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        uploads = store.put_many([lambda: b"quick", lambda: b"late", lambda: b"late",
                                  lambda: b"queued behind the slow ones"])
    assert time.monotonic() - started < 1.5  # the deadline, not the slow uploads
    assert uploads[0].url is not None and uploads[0].error is None
    assert uploads[1:] == [Upload(None, "upload deadline passed")] * 3
    assert "uploads not done within the 0.5 s deadline (S3_UPLOAD_DEADLINE)" in caplog.text
    with caplog.at_level(logging.WARNING):  # the same outage again: not logged again
        assert [u.url for u in store.put_many([lambda: b"quick", lambda: b"late", lambda: b"late"])[1:]] == [None, None]
    assert caplog.text.count("deadline (S3_UPLOAD_DEADLINE)") == 1
    store._pool.shutdown(wait=True)  # the late ones finish inside moto's mock, not after it


def test_making_the_pngs_does_not_count_against_the_upload_deadline(aws_env):
    # 12 PNGs that take 0.3 s each to make, in 2 threads: 1.8 s of encoding, S3 answering at once.
    # The deadline (0.5 s) bounds what S3 adds to the request's time, not the request's own work.
    aws_env.create_bucket(Bucket="masks", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    store = make_store("masks", deadline=0.5, parallel=2)

    def encoded(index: int) -> bytes:
        time.sleep(0.3)
        return f"png {index}".encode()

    urls = [upload.url for upload in store.put_many([lambda index=index: encoded(index) for index in range(12)])]
    assert None not in urls  # was: 8 of 12 null
    stored = [aws_env.get_object(Bucket="masks", Key=url.split(".com/")[1])["Body"].read() for url in urls]
    assert stored == [f"png {index}".encode() for index in range(12)]


def test_until_ends_the_call_and_says_when_pngs_were_not_even_made(aws_env):
    # segment everything's deadline covers its PNGs: past it, the call says how far it got.
    aws_env.create_bucket(Bucket="masks", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    store = make_store("masks", deadline=10, parallel=2)

    def encoded() -> bytes:
        time.sleep(0.3)
        return b"png"

    started = time.monotonic()
    with pytest.raises(PngsNotMade) as cut:
        store.put_many([encoded] * 12, until=time.monotonic() + 0.5)
    assert time.monotonic() - started < 1.0
    assert 2 <= cut.value.made <= 6 and cut.value.total == 12
    assert None not in [upload.url for upload in store.put_many([encoded] * 2, until=time.monotonic() + 5)]
    store._pool.shutdown(wait=True)


def test_the_deadline_still_holds_when_s3_hangs_between_pngs_being_made(aws_env):
    aws_env.create_bucket(Bucket="masks", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    store = make_store("masks", deadline=0.5, parallel=2)
    slow_puts(store._client, 1, b"png")

    def encoded() -> bytes:
        time.sleep(0.1)
        return b"png"

    started = time.monotonic()
    uploads = store.put_many([encoded] * 12)  # each 0.1 s to make, then 1 s for S3: 6.6 s if waited for
    assert time.monotonic() - started < 2.0
    assert uploads.count(Upload(None, "upload deadline passed")) >= 8
    store._pool.shutdown(wait=True)


def test_a_single_mask_never_queues_behind_bulk_uploads(aws_env):
    aws_env.create_bucket(Bucket="masks", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    store = make_store("masks", deadline=5, parallel=2)

    def slow() -> bytes:
        time.sleep(1)
        return b"one of many"

    bulk = threading.Thread(target=store.put_many, args=([slow] * 8,), kwargs={"bulk": True})
    bulk.start()  # 8 s of work for 2 bulk threads
    time.sleep(0.2)
    started = time.monotonic()
    url = store.put_many([lambda: b"one mask"])[0].url
    waited = time.monotonic() - started
    bulk.join()
    assert url is not None and waited < 2.5, waited  # behind the bulk ones it would wait about 4 s
    store._bulk_pool.shutdown(wait=True)


def test_put_many_without_a_bucket_makes_no_png(aws_env):
    assert make_store().put_many([lambda: pytest.fail("encoded a PNG nobody stores")]) == [
        Upload(None, "s3 not configured")]


def test_the_start_up_check_names_a_dead_endpoint_and_the_bucket_in_one_line(monkeypatch, caplog):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    with socket.socket() as unused:  # a loopback port nobody listens on: connections are refused
        unused.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{unused.getsockname()[1]}"
    store = MaskStore(make_s3_client("us-east-1", endpoint), "masks", region="us-east-1", endpoint_url=endpoint)
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="sam2_api.api.storage"):
        assert store.check_bucket() is False
    assert time.monotonic() - started < 10  # the client's own timeouts: refused at once, 2 attempts
    [line] = [record.getMessage() for record in caplog.records]
    assert line.startswith(f"the mask bucket s3://masks at {endpoint} did not answer at start-up: EndpointConnectionError")
    assert SECRET not in caplog.text and "AKIAIOSFODNN7EXAMPLE" not in caplog.text
    assert store.enabled  # it serves on, and tries each upload
    assert store.put(b"png") == Upload(None, "s3 unreachable")  # what the response's mask_error says


def test_the_start_up_check_says_where_masks_go_or_that_the_bucket_is_missing(aws_env, caplog):
    aws_env.create_bucket(Bucket="masks", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    with caplog.at_level(logging.INFO, logger="sam2_api.api.storage"):
        assert make_store("masks").check_bucket() is True
        assert make_store("no-such-bucket").check_bucket() is False
        assert make_store(None).check_bucket() is False  # no bucket: the service says so already, nothing more
    assert [record.getMessage() for record in caplog.records] == [
        "masks go to s3://masks at AWS eu-west-1",
        "the mask bucket s3://no-such-bucket at AWS eu-west-1 did not answer at start-up: 404 (Not Found); the "
        "service serves on, with mask_url null while uploads fail",
    ]


def test_the_api_process_makes_one_s3_client_and_every_part_of_it_shares_it(aws_env, tmp_path, monkeypatch):
    """The mask store, image_url and video_url reads, and the pages' presigned-URL origin: one client,
    one connection pool; none kept while there are no credentials, so that a later call finds them."""
    made = []
    real_client = boto3.session.Session.client

    def counting_client(self, *args, **kwargs):
        made.append(args[0] if args else kwargs.get("service_name"))
        return real_client(self, *args, **kwargs)

    monkeypatch.setattr(boto3.session.Session, "client", counting_client)
    settings = Settings(s3_bucket_name_staging="masks", aws_region="eu-west-1", s3_url_mode="presigned")
    forget_shared_s3_clients()
    try:
        with monkeypatch.context() as no_credentials:
            for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                no_credentials.delenv(name)
            no_credentials.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
            no_credentials.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
            no_credentials.setenv("AWS_EC2_METADATA_DISABLED", "true")
            assert shared_s3_client("eu-west-1") is None and made == []
        pipeline = build_pipeline(settings, model=None)
        tracks = build_track_jobs(settings, None, pipeline.store, str(tmp_path / "board.db"))
        assert mask_origin(settings).startswith("https://masks.s3.")  # presigned by the shared client
        client = shared_s3_client("eu-west-1")
        assert pipeline.store._client is client and pipeline.sources._s3 is client and tracks.sources._s3 is client
        assert made == ["s3"]
        assert client.meta.config.retries == {"total_max_attempts": 2, "mode": "standard"}
        assert shared_s3_client("eu-west-1", "http://127.0.0.1:4566") is not client  # another endpoint, its own
    finally:
        forget_shared_s3_clients()
