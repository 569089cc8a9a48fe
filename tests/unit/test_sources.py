"""Images by reference: allowed S3 buckets only, public HTTPS hosts only, bounded in size."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from sam2_api.errors import ForbiddenSource, ImageTooLarge, InvalidImageSource
from sam2_api.sources import ImageSources


@pytest.fixture
def s3(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="photos")
        client.put_object(Bucket="photos", Key="cat.png", Body=b"png bytes")
        client.put_object(Bucket="photos", Key="big.png", Body=b"x" * 2000)
        client.create_bucket(Bucket="secrets")
        yield client


def sources(s3) -> ImageSources:
    return ImageSources(s3, frozenset({"photos"}), max_bytes=1000)


def test_reads_from_an_allowed_bucket(s3):
    assert sources(s3).fetch("s3://photos/cat.png") == b"png bytes"


@pytest.mark.parametrize("url, error, words", [
    ("s3://secrets/cat.png", ForbiddenSource, "bucket 'secrets' is not one this service reads from"),
    ("s3://photos/nope.png", InvalidImageSource, "s3://photos/nope.png does not exist"),
    ("s3://photos/big.png", ImageTooLarge, "over 1000 bytes"),
    ("s3://photos", InvalidImageSource, "must be s3://bucket/key or https://"),
    ("http://example.com/cat.png", InvalidImageSource, "must be s3://bucket/key or https://"),
    ("file:///etc/passwd", InvalidImageSource, "must be"),
])
def test_refusals_say_why(s3, url, error, words):
    with pytest.raises(error, match=words):
        sources(s3).fetch(url)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "10.1.2.3", "192.168.0.7", "169.254.169.254", "[::1]",
                                  "[::127.0.0.1]", "[::ffff:10.0.0.1]", "[64:ff9b::a9fe:a9fe]", "[2002:a00:1::1]",
                                  "224.0.0.1"])
def test_https_to_non_public_addresses_is_refused_before_connecting(s3, host):
    with pytest.raises(ForbiddenSource, match="not a public address"):
        sources(s3).fetch(f"https://{host}/cat.png")


def test_without_credentials_no_bucket_is_readable():
    with pytest.raises(ForbiddenSource):
        ImageSources(None, frozenset({"photos"}), max_bytes=1000).fetch("s3://photos/cat.png")
