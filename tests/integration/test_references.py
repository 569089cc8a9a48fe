"""Images by reference (image_url): an allowed S3 bucket works; other buckets and hosts are refused."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from tests.conftest import upright_rgb
from tests.integration.conftest import BUCKET, PHOTOS
from tests.integration.test_segment_api import fetch_mask, post


def test_an_s3_image_from_an_allowed_bucket_is_segmented(server, s3, reference_mask, test_images):
    path = test_images / "rocket.jpg"
    s3.put_object(Bucket=PHOTOS, Key="launches/rocket.jpg", Body=path.read_bytes())
    response = post(server, None, image_url=f"s3://{PHOTOS}/launches/rocket.jpg", box=[250, 20, 420, 420])
    assert response.status_code == 200, response.text
    expected, _ = reference_mask(upright_rgb(path), box=[250, 20, 420, 420])
    assert np.array_equal(fetch_mask(response.json()["mask_url"]) == 255, expected)


@pytest.mark.parametrize("url, status, words", [
    (f"s3://{BUCKET}/anything.png", 403, f"bucket '{BUCKET}' is not one this service reads from"),
    (f"s3://{PHOTOS}/missing.png", 400, "does not exist"),
    ("https://127.0.0.1:9/cat.png", 403, "not a public address"),
    ("https://localhost/cat.png", 403, "not a public address"),
    ("ftp://example.com/cat.png", 400, "must be s3://bucket/key or https://"),
])
def test_references_that_may_not_be_read_are_refused_clearly(server, url, status, words):
    response = post(server, None, image_url=url, points=[[1, 1]])
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


def test_upload_and_reference_together_are_refused(server, test_images):
    response = post(server, (test_images / "chelsea.png").read_bytes(), points=[[1, 1]],
                    image_url=f"s3://{PHOTOS}/x.png")
    assert response.status_code == 400 and "not both" in response.text


@pytest.mark.parametrize("url, words", [
    ("https://exa\tmple.com/x.png", "may not contain spaces or control characters"),
    ("https://example.com:99999/x.png", "port of image_url must be a number from 1 to 65535"),
    ("https://example.com/" + "a" * 100_000, "the limit is 2048"),
    ("https://" + "a" * 300 + ".com/x.png", "not a valid name"),
])
def test_malformed_urls_are_a_400_not_a_500(server, url, words):
    response = post(server, None, image_url=url, points=[[1, 1]])
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]


def test_image_url_is_checked_even_when_the_image_id_is_cached(server, test_images):
    image_id = f"checked-{uuid.uuid4().hex}"
    assert post(server, (test_images / "chelsea.png").read_bytes(), image_id=image_id, points=[[1, 1]]).status_code == 200
    for url, status in (("file:///etc/passwd", 400), ("https://169.254.169.254/latest/meta-data", 403),
                        (f"s3://{BUCKET}/anything.png", 403)):
        response = post(server, None, image_id=image_id, image_url=url, points=[[1, 1]])
        assert response.status_code == status, (url, response.text)
