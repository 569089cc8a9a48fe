"""POST /cvat/interactor against `bentoml serve`: CVAT's request, built as CVAT's server builds it,
and the answer read back as CVAT's browser reads it (tests/support/cvat.py says where in CVAT's
source each step is), equal pixel for pixel to /segment's mask for the same clicks."""

from __future__ import annotations

import base64
import importlib.util
import json
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from tests.conftest import REPO, upright_rgb
from tests.integration.conftest import API_KEYS, SECRETS
from tests.integration.test_segment_api import fetch_mask, post
from tests.support.cvat import cvat_payload, cvat_reads

ROUTE = "/cvat/interactor"


def call(server, payload, headers: dict | None = None) -> httpx.Response:
    """As CVAT's LambdaGateway posts it: ``requests``' ``json=`` (application/json)."""
    response = httpx.post(f"{server.url}{ROUTE}", json=payload, headers=headers, timeout=120)
    assert not any(secret in response.text for secret in SECRETS)
    return response


def segment_fields(pos: list, neg: list, bbox: list | None) -> dict:
    """The same prompt as /segment's fields."""
    fields: dict = {}
    if pos or neg:
        fields["points"], fields["labels"] = pos + neg, [1] * len(pos) + [0] * len(neg)
    if bbox is not None:
        (x1, y1), (x2, y2) = bbox
        fields["box"] = [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]
    return fields


CASES = [
    ("astronaut.png", [[200, 150]], [], None),  # a lone click: /segment's best of three
    ("rocket.jpg", [[320, 200]], [[100, 50]], None),
    ("camera.png", [], [], [[400, 450], [100, 60]]),  # a box alone, drawn bottom-right first
    ("coffee.png", [[300, 200]], [[120, 80]], [[150, 50], [450, 350]]),
]


@pytest.mark.parametrize("name, pos, neg, bbox", CASES, ids=[c[0] for c in CASES])
def test_cvats_call_gets_segments_mask_pixel_for_pixel(server, test_images, name, pos, neg, bbox):
    path = test_images / name
    height, width = upright_rgb(path).shape[:2]
    response = call(server, cvat_payload(path.read_bytes(), pos, neg, bbox))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) <= {"mask", "bounds", "points", "mask_url"} and "mask_url" in body  # this server has S3
    shown = cvat_reads(body, width, height)

    segment = post(server, path.read_bytes(), name, **segment_fields(pos, neg, bbox))
    assert segment.status_code == 200, segment.text
    expected = fetch_mask(segment.json()["mask_url"]) == 255
    assert 0 < expected.sum() < expected.size
    assert np.array_equal(shown, expected)
    assert np.array_equal(fetch_mask(body["mask_url"]) == 255, expected)


def test_the_second_click_on_a_frame_skips_the_encoder(server, test_images):
    frame = (test_images / "chelsea.png").read_bytes()
    first = call(server, cvat_payload(frame, [[225, 150]], []))
    again = call(server, cvat_payload(frame, [[225, 150]], [[20, 20]]))
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.headers["x-embedding-cache"] == "hit"


def test_through_the_nuclio_function_cvat_gets_the_same_answer(server, test_images, monkeypatch):
    """deploy/cvat/main.py between CVAT and the service, called as nuclio calls it (event.body: the
    JSON body, decoded)."""
    spec = importlib.util.spec_from_file_location("cvat_nuclio_main", REPO / "deploy" / "cvat" / "main.py")
    function = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(function)
    monkeypatch.setenv("SAM2_API_URL", server.url)
    payload = cvat_payload((test_images / "astronaut.png").read_bytes(), [[200, 150]], [])
    context = SimpleNamespace(Response=SimpleNamespace, logger=SimpleNamespace(warn=print, info=print))
    forwarded = function.handler(context, SimpleNamespace(body=payload))
    assert forwarded.status_code == 200 and forwarded.content_type == "application/json"
    direct = call(server, payload).json()
    assert json.loads(forwarded.body)["mask"] == direct["mask"] and json.loads(forwarded.body)["bounds"] == direct["bounds"]


@pytest.mark.parametrize("payload, status, words", [
    (cvat_payload(b"hello, this is not an image", [[1, 1]], []), 415, ""),
    ({"image": "not base64!", "pos_points": [[1, 1]], "neg_points": [], "obj_bbox": None}, 400,
     "`image` is not valid base64"),
    (cvat_payload(b"x", [], [], None), 400, "send at least one point in `pos_points`, or a box in `obj_bbox`"),
    (cvat_payload(b"x", [[1, 2, 3]], []), 400, "`pos_points` must be a list of [x, y] pairs"),
    ([[1, 1]], 400, "a JSON body must be an object of fields"),
])
def test_bad_input_is_a_4xx_in_our_error_shape(server, payload, status, words):
    response = call(server, payload)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and response.json()["error"].startswith(words)


def test_a_point_outside_the_frame_is_400(server, test_images):
    response = call(server, cvat_payload((test_images / "astronaut.png").read_bytes(), [[5000, 10]], []))
    assert response.status_code == 400 and "outside" in response.json()["error"]


def test_api_keys_apply_and_the_upload_limit_counts_the_decoded_image(guarded_server, test_images):
    payload = cvat_payload((test_images / "chelsea.png").read_bytes(), [[225, 150]], [])
    for headers in (None, {"Authorization": "Bearer not-a-key"}):
        refused = call(guarded_server, payload, headers)
        assert refused.status_code == 401 and "API key" in refused.json()["error"]
    key = {"Authorization": f"Bearer {API_KEYS[0]}"}
    assert call(guarded_server, payload, key).status_code == 200
    # guarded_server's SAM2_MAX_UPLOAD_BYTES is 2,000,000: a frame just over it is 413, whatever its base64 size
    too_large = {**payload, "image": base64.b64encode(b"\0" * 2_000_001).decode()}
    response = call(guarded_server, too_large, key)
    assert response.status_code == 413 and "SAM2_MAX_UPLOAD_BYTES" in response.json()["error"]
