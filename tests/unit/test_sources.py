"""Images by reference: allowed S3 buckets only, public HTTPS hosts only, bounded in size; every URL
checked when it is located, the image read only when its loader is called."""

from __future__ import annotations

import socket

import boto3
import pytest
from moto import mock_aws

from sam2_api.errors import ForbiddenSource, ImageTooLarge, InvalidImageSource
from sam2_api.api.image_urls import ImageSources


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


@pytest.fixture
def lookups(monkeypatch):
    """Every name resolution attempted (none may be, while a URL is only located)."""
    names = []
    real = socket.getaddrinfo

    def resolve(host, *args, **kwargs):
        names.append(host)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    return names


@pytest.mark.parametrize("url, error, words", [
    ("file:///etc/passwd", InvalidImageSource, "must be s3://bucket/key or https://host/path; got 'file:///etc/passwd'"),
    ("https://exa\tmple.com/x.png", InvalidImageSource, "may not contain spaces or control characters"),
    ("https://example.com/x.png\n", InvalidImageSource, "may not contain spaces or control characters"),
    ("https://example.com/\u200bx.png", InvalidImageSource, "may not contain spaces or control characters"),
    ("https://example.com:99999/x.png", InvalidImageSource, "port of image_url must be a number from 1 to 65535"),
    ("https://example.com/" + "a" * 100_000, InvalidImageSource, "image_url is 100020 characters long; the limit is 2048"),
    ("https://" + "a" * 300 + ".com/x.png", InvalidImageSource, "not a valid name"),
    ("https://10.0.0.1/x.png", ForbiddenSource, r"refusing to fetch from 10.0.0.1 \(10.0.0.1\): not a public address"),
    ("https://[::ffff:169.254.169.254]/x.png", ForbiddenSource, "not a public address"),
    ("s3://secrets/cat.png", ForbiddenSource, "bucket 'secrets' is not one this service reads from"),
    ("s3://Not_A_Bucket/cat.png", InvalidImageSource, "'Not_A_Bucket' is not an S3 bucket name"),
    ("s3://photos/" + "k" * 1025, InvalidImageSource, "the S3 key of image_url is over 1024 bytes"),
    ("s3:///cat.png", InvalidImageSource, "must be s3://bucket/key"),
])
def test_locating_checks_the_url_at_once_without_the_network(s3, lookups, url, error, words):
    with pytest.raises(error, match=words):
        sources(s3).locate(url)
    assert lookups == []


@pytest.mark.parametrize("url, words", [
    ("ftp://x/image_url.mp4", "video_url must be s3://bucket/key or https://host/path; got 'ftp://x/image_url.mp4'"),
    ("s3://photos", "video_url must be s3://bucket/key"),
    ("https://example.com/" + "a" * 3000, "video_url is 3020 characters long"),
    ("https://example.com/a b.mp4", "video_url may not contain spaces"),
    ("https://user@example.com/a.mp4", "video_url may not carry a user name or password"),
    ("https://example.com:0/a.mp4", "the port of video_url must be"),
    ("https://[fe80::1%25eth0]/a.mp4", "video_url may not name an IPv6 zone"),
    ("https:///a.mp4", "video_url has no host"),
    ("https://exa*mple.com/a.mp4", "the host name of video_url may hold only"),
    ("https://" + "a" * 300 + ".com/a.mp4", "the host name of video_url is not a valid name"),
    ("https://" + ".".join(["a" * 60] * 5) + "/a.mp4", "the host name of video_url must be at most"),
    ("s3://photos/" + "k" * 1025, "the S3 key of video_url is over 1024 bytes"),
])
def test_each_check_names_the_field_it_is_given(s3, url, words):
    """A clip's ``video_url`` is checked by the same code, whose messages name that field (and
    quote the URL as it was sent)."""
    with pytest.raises(InvalidImageSource) as refused:
        sources(s3).locate(url, field="video_url")
    assert words in str(refused.value) and "image_url" not in str(refused.value).replace(url[:100], "")


def test_the_loader_reads_only_when_called(s3, lookups):
    load_s3 = sources(s3).locate("s3://photos/later.png")
    load_web = sources(s3).locate("https://images.invalid/x.png")
    assert lookups == []
    s3.put_object(Bucket="photos", Key="later.png", Body=b"written after locate")
    assert load_s3() == b"written after locate"
    with pytest.raises(InvalidImageSource, match="the host 'images.invalid' does not resolve"):
        load_web()
    assert lookups == ["images.invalid"]
