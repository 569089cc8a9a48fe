"""The Label Studio ML backend under /labelstudio against `bentoml serve`: bodies shaped as Label
Studio sends them (label_studio/ml/api_connector.py; the context of label-studio-ml-backend's own SAM
tests), the answer read back with label_studio_sdk's own decoder (tests/clients/labelstudio_decode.py,
in .venv-clients), equal pixel for pixel to /segment's mask for the same prompt."""

from __future__ import annotations

import base64
import json
import subprocess
import uuid

import httpx
import numpy as np
import pytest

from tests.conftest import REPO, upright_rgb
from tests.integration.conftest import (
    API_KEYS, LABEL_STUDIO_ACCESS_TOKEN, LABEL_STUDIO_KEY, PHOTOS, SECRETS,
)
from tests.integration.test_segment_api import fetch_mask, post
from tests.unit.test_labelstudio import BITMASK_CONFIG, CONFIG, KEYPOINT, RECTANGLE

CLIENT_PYTHON = REPO / ".venv-clients" / "bin" / "python"
DECODER = REPO / "tests" / "clients" / "labelstudio_decode.py"
PROJECT = "1.1764745200"  # MLApi._create_project_uid: "<id>.<created_at timestamp>"


def call(server, route: str, body: dict, headers: dict | None = None) -> httpx.Response:
    """As Label Studio's MLApi posts it: ``requests``' ``json=`` to the backend URL joined with the route."""
    response = httpx.post(f"{server.url}/labelstudio/{route}", json=body, headers=headers, timeout=120)
    assert not any(secret in response.text for secret in SECRETS)
    return response


def predict_body(image_url: str, regions: list[dict], config: str = CONFIG) -> dict:
    """MLApi._prep_prediction_req for an interactive click (MLBackend.interactive_annotating)."""
    task = {"id": 7, "data": {"image": image_url}, "annotations": [], "predictions": [], "drafts": [],
            "project": 1, "meta": {}, "created_at": "2026-12-03T07:00:00Z", "is_labeled": False}
    return {"tasks": [task], "project": PROJECT, "label_config": config,
            "params": {"login": None, "password": None, "context": {"result": regions}}}


def keypoint(x_px: float, y_px: float, width: int, height: int, positive: bool = True, label: str = "Banana") -> dict:
    return {**KEYPOINT, "original_width": width, "original_height": height, "is_positive": positive,
            "value": {"x": x_px / width * 100, "y": y_px / height * 100, "width": 0.3, "keypointlabels": [label]}}


def rectangle(box: list[float], width: int, height: int) -> dict:
    x1, y1, x2, y2 = box
    return {**RECTANGLE, "original_width": width, "original_height": height, "to_name": "image",
            "value": {"x": x1 / width * 100, "y": y1 / height * 100, "width": (x2 - x1) / width * 100,
                      "height": (y2 - y1) / height * 100, "rotation": 0, "rectanglelabels": ["Orange"]}}


def segment_fields(regions: list[dict], width: int, height: int) -> dict:
    """The same prompt for /segment: percent to pixels exactly as the route converts them."""
    fields: dict = {}
    points = [r for r in regions if r["type"] == "keypointlabels"]
    if points:
        fields["points"] = [[r["value"]["x"] * width / 100, r["value"]["y"] * height / 100] for r in points]
        fields["labels"] = [int(r["is_positive"]) for r in points]
    for r in regions:
        if r["type"] == "rectanglelabels":
            v = r["value"]
            fields["box"] = [v["x"] * width / 100, v["y"] * height / 100, (v["x"] + v["width"]) * width / 100,
                             (v["y"] + v["height"]) * height / 100]
    return fields


def decoded(config: str, answer: dict, tmp_path) -> tuple[dict, list[np.ndarray]]:
    """label_studio_sdk's reading of our answer, in its own venv."""
    assert CLIENT_PYTHON.exists(), "run scripts/setup.sh: it builds .venv-clients (Label Studio's SDK)"
    out = tmp_path / f"decoded-{uuid.uuid4().hex[:8]}.npz"
    done = subprocess.run([str(CLIENT_PYTHON), str(DECODER), str(out)], input=json.dumps(
        {"config": config, "answer": answer}), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with np.load(out) as saved:
        report = json.loads(str(saved["report"]))
        return report, [saved[f"mask_{i}"] == 1 for i in range(len(report["regions"]))]


CASES = [  # image in S3, regions as pixels (converted to percent as Label Studio's editor gives them)
    ("astronaut.png", lambda w, h: [keypoint(200, 150, w, h)]),  # a lone click: /segment's best of three
    ("rocket.jpg", lambda w, h: [keypoint(320, 200, w, h), keypoint(100, 50, w, h, positive=False)]),
    ("camera.png", lambda w, h: [rectangle([100, 60, 400, 450], w, h)]),
    ("coffee.png", lambda w, h: [keypoint(300, 200, w, h), rectangle([150, 50, 450, 350], w, h)]),
]


@pytest.mark.parametrize("name, regions_of", CASES, ids=[c[0] for c in CASES])
def test_a_click_as_label_studio_sends_it_decodes_to_segments_mask(server, s3, test_images, tmp_path, name, regions_of):
    path = test_images / name
    height, width = upright_rgb(path).shape[:2]
    s3.put_object(Bucket=PHOTOS, Key=f"labelstudio/{name}", Body=path.read_bytes())
    regions = regions_of(width, height)
    response = call(server, "predict", predict_body(f"s3://{PHOTOS}/labelstudio/{name}", regions, BITMASK_CONFIG))
    assert response.status_code == 200, response.text
    answer = response.json()
    (prediction,) = answer["results"]
    assert answer["model_version"] == prediction["model_version"] == "sam2.1-hiera-tiny"
    assert [r["type"] for r in prediction["result"]] == ["brushlabels", "bitmasklabels"]
    assert all((r["original_width"], r["original_height"]) == (width, height) for r in prediction["result"])
    report, masks = decoded(BITMASK_CONFIG, answer, tmp_path)
    assert report["valid"] == []  # LabelInterface.validate_prediction: no errors
    assert report["regions"][0]["mask2rle_same_bytes"] and report["regions"][0]["rgb_equal_alpha"]
    assert all(r["values"] in ([0, 255], [0], [255]) for r in report["regions"])

    segment = post(server, path.read_bytes(), name, **segment_fields(regions, width, height))
    assert segment.status_code == 200, segment.text
    expected = fetch_mask(segment.json()["mask_url"]) == 255
    assert 0 < expected.sum() < expected.size
    assert prediction["score"] == pytest.approx(segment.json()["score"], abs=1e-6)
    for mask in masks:  # the brush RLE and the bitmask PNG, as Label Studio reads them
        assert np.array_equal(mask, expected)
    assert np.array_equal(fetch_mask(prediction["mask_url"]) == 255, expected)


def test_the_second_click_on_a_task_costs_the_decoder_only(server, s3, test_images):
    s3.put_object(Bucket=PHOTOS, Key="labelstudio/chelsea.png", Body=(test_images / "chelsea.png").read_bytes())
    url = f"s3://{PHOTOS}/labelstudio/chelsea.png"
    height, width = upright_rgb(test_images / "chelsea.png").shape[:2]
    first = call(server, "predict", predict_body(url, [keypoint(225, 150, width, height)]))
    again = call(server, "predict", predict_body(url, [keypoint(225, 150, width, height),
                                                       keypoint(20, 20, width, height, positive=False)]))
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.headers["x-embedding-cache"] == "hit"
    assert "model_call" in again.headers["server-timing"]


def test_setup_health_and_webhook_answer_as_label_studio_expects(server):
    setup = {"project": PROJECT, "schema": CONFIG, "hostname": "http://localhost:8080",
             "access_token": LABEL_STUDIO_ACCESS_TOKEN, "extra_params": None}  # MLApi.setup
    response = call(server, "setup", setup)
    assert response.status_code == 200 and response.json() == {"model_version": "sam2.1-hiera-tiny"}
    lacking = call(server, "setup", {**setup, "schema": '<View><Image name="image" value="$image"/></View>'})
    assert lacking.status_code == 400 and "needs an <Image>, a <BrushLabels>" in lacking.json()["error"]
    for path in ("health", ""):
        health = httpx.get(f"{server.url}/labelstudio/{path}", timeout=10)
        assert health.status_code == 200 and health.json() == {"status": "UP", "model_class": "SAM2"}
    event = {"action": "ANNOTATION_CREATED", "annotation": {"id": 1, "result": []}, "task": {"id": 7},
             "project": {"id": 1, "label_config": CONFIG}}  # webhooks/utils.py: run_webhook_sync
    hook = call(server, "webhook", event)
    assert hook.status_code == 200 and hook.json()["status"] == "ignored"
    assert hook.json()["action"] == "ANNOTATION_CREATED"
    no_click = call(server, "predict", {**predict_body("s3://nowhere/x.png", []), "params": {"context": None}})
    assert no_click.status_code == 200 and no_click.json()["results"] == []


@pytest.mark.parametrize("body, status, words", [
    (predict_body("/data/upload/1/chelsea.png", [KEYPOINT]), 400, "set LABEL_STUDIO_URL"),
    (predict_body("https://127.0.0.1/x.png", [KEYPOINT]), 403, "not a public address"),
    (predict_body("s3://not-allowed/x.png", [KEYPOINT]), 403, "S3_INPUT_BUCKETS"),
    ({**predict_body("x", [KEYPOINT]), "tasks": []}, 400, "`tasks` must hold the one task"),
    (predict_body("x", [{**KEYPOINT, "value": {"x": "a", "y": 1}}]), 400, "`params.context.result[0].value.x`"),
])
def test_bad_input_is_a_4xx_in_our_error_shape(server, body, status, words):
    response = call(server, "predict", body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and words in response.json()["error"]


def basic(password: str, user: str = "sam2") -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_label_studios_files_come_from_it_with_its_token_and_its_basic_auth_carries_our_key(
        guarded_server, label_studio, test_images, tmp_path):
    height, width = upright_rgb(test_images / "coffee.png").shape[:2]
    regions = [keypoint(300, 200, width, height)]
    body = predict_body("/data/upload/1/coffee.png", regions)
    for headers in (None, basic("not-a-key")):
        refused = call(guarded_server, "predict", body, headers)
        assert refused.status_code == 401 and "password of basic auth" in refused.json()["error"]
        assert refused.headers["www-authenticate"] == 'Basic realm="sam2-api"'
    seen = len(label_studio.requests)
    response = call(guarded_server, "predict", body, basic(API_KEYS[0]))  # MLApi with BASIC_AUTH
    assert response.status_code == 200, response.text
    assert label_studio.requests[seen:] == [("/data/upload/1/coffee.png", f"Token {LABEL_STUDIO_KEY}")]
    _, (mask,) = decoded(CONFIG, response.json(), tmp_path)
    segment = post(guarded_server, (test_images / "coffee.png").read_bytes(), "coffee.png",
                   headers={"Authorization": f"Bearer {API_KEYS[0]}"}, **segment_fields(regions, width, height))
    assert segment.status_code == 200, segment.text
    assert np.array_equal(mask, fetch_mask(segment.json()["mask_url"]) == 255)

    missing = call(guarded_server, "predict", predict_body("/data/upload/1/gone.png", regions), basic(API_KEYS[0]))
    assert missing.status_code == 400 and "answered 404" in missing.json()["error"]
    assert "LABEL_STUDIO_API_KEY" in missing.json()["error"]
    setup = call(guarded_server, "setup", {"project": PROJECT, "schema": CONFIG}, basic(API_KEYS[1]))
    assert setup.status_code == 200
    # Label Studio's health check and its webhook (which carries no credentials) need no key
    assert httpx.get(f"{guarded_server.url}/labelstudio/health", timeout=10).status_code == 200
    assert call(guarded_server, "webhook", {"action": "PROJECT_UPDATED"}).status_code == 200
