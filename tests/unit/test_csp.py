"""The pages' Content-Security-Policy: where /ui may load from, for each way masks are stored."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from sam2_api.config import Settings
from sam2_api.api.csp import PageHeaders, mask_origin, ui_policy
from sam2_api.api.storage import forget_shared_s3_clients


@pytest.fixture
def env(monkeypatch):
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "S3_ENDPOINT_URL", "S3_URL_MODE", "S3_BUCKET_NAME_STAGING"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield monkeypatch
    forget_shared_s3_clients()  # presigning made this process's S3 client with these credentials


@pytest.mark.parametrize("settings, origin", [
    ({}, None),  # masks are not stored: no bucket to show them from
    ({"s3_bucket_name_staging": "masks", "aws_region": "eu-west-1"}, "https://masks.s3.eu-west-1.amazonaws.com"),
    ({"s3_bucket_name_staging": "masks", "s3_endpoint_url": "http://127.0.0.1:4566/"}, "http://127.0.0.1:4566"),
    ({"s3_bucket_name_staging": "masks", "s3_endpoint_url": "https://minio.example:9000",
      "s3_url_mode": "presigned"}, "https://minio.example:9000"),
    # boto3's presigned URLs use the global endpoint in us-east-1, and path style for dotted names
    ({"s3_bucket_name_staging": "masks", "aws_region": "us-east-1", "s3_url_mode": "presigned"},
     "https://masks.s3.amazonaws.com"),
    ({"s3_bucket_name_staging": "my.masks", "aws_region": "eu-west-1", "s3_url_mode": "presigned"},
     "https://s3.eu-west-1.amazonaws.com"),
], ids=["no-bucket", "aws", "endpoint", "endpoint-presigned", "aws-presigned", "aws-presigned-dotted"])
def test_mask_origin_is_where_the_store_s_urls_point(env, settings, origin):
    assert mask_origin(Settings(**settings)) == origin


def test_the_ui_loads_scripts_and_sends_requests_to_its_own_origin_only():
    policy = dict(part.split(" ", 1) for part in ui_policy("http://127.0.0.1:4566").split("; "))
    assert policy["default-src"] == "'none'" and policy["script-src"] == "'self' 'wasm-unsafe-eval'"  # no inline, no JS eval, no CDN; WebAssembly
    assert policy["connect-src"] == "'self'" and policy["style-src"] == "'self'"
    assert policy["img-src"] == "'self' http://127.0.0.1:4566"  # the masks
    assert policy["media-src"] == "'self' blob: http://127.0.0.1:4566"  # the chosen clip, the preview
    assert policy["frame-ancestors"] == "'none'" and policy["base-uri"] == "'none'"
    assert "img-src 'self';" in ui_policy(None)


def test_page_headers_are_added_to_every_response_and_made_once():
    made = []

    def headers():
        made.append(1)
        return {"Content-Security-Policy": "default-src 'none'"}

    app = Starlette(routes=[Route("/{name}", lambda request: PlainTextResponse("hi", headers={"X-Own": "1"}))])
    client = TestClient(PageHeaders(app, headers))
    for path in ("/a", "/b", "/c/d"):  # the last one is the app's own 404
        response = client.get(path)
        assert response.headers["content-security-policy"] == "default-src 'none'"
    assert response.status_code == 404 and client.get("/a").headers["x-own"] == "1"
    assert made == [1]
