"""API keys and the upload limit, checked before the body is read; open routes stay open."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from sam2_api.guard import RequestGuard

body_reads = []


async def segment(request):
    body_reads.append(len(await request.body()))
    return JSONResponse({"ok": True})


async def health(request):
    return JSONResponse({"ok": True})


def client(**options) -> TestClient:
    app = Starlette(routes=[Route("/segment", segment, methods=["POST"]), Route("/readyz", health),
                            Route("/metrics", health)])
    guarded = RequestGuard(app, paths={"/segment"}, max_upload_bytes=1000, **options)
    return TestClient(guarded)


@pytest.fixture(autouse=True)
def _clear():
    body_reads.clear()


def test_without_keys_everything_passes():
    assert client().post("/segment", content=b"x" * 10).json() == {"ok": True}


@pytest.mark.parametrize("header", [None, "Bearer wrong", "bearer", "Basic a2V5LW9uZQ==", "key-one", "Bearer key-one2"])
def test_a_missing_or_wrong_key_is_401_before_the_body_is_read(header):
    headers = {"Authorization": header} if header else {}
    response = client(api_keys=["key-one", "key-two"]).post("/segment", content=b"x" * 10, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "missing or invalid API key" in response.json()["error"]
    assert "key-one" not in response.text
    assert body_reads == []


@pytest.mark.parametrize("key", ["key-one", "key-two"])
def test_any_configured_key_is_accepted(key):
    response = client(api_keys=["key-one", "key-two"]).post(
        "/segment", content=b"x", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200


def test_health_and_metrics_stay_open():
    guarded = client(api_keys=["key-one"])
    assert guarded.get("/readyz").status_code == 200
    assert guarded.get("/metrics").status_code == 200


def test_uploads_over_the_limit_are_413_before_the_body_is_read():
    response = client().post("/segment", content=b"x" * 1001)
    assert response.status_code == 413
    assert response.json()["error"] == "the upload is 1001 bytes; the limit is 1000 bytes (SAM2_MAX_UPLOAD_BYTES)"
    assert body_reads == []
    assert client().post("/segment", content=b"x" * 1000).status_code == 200


def test_uploads_without_a_length_are_411():
    def chunks():
        yield b"x" * 10

    response = client().post("/segment", content=chunks())
    assert response.status_code == 411
