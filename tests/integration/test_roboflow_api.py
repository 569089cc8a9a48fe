"""Roboflow's SAM 2 routes against `bentoml serve`, called by Roboflow's own inference-sdk (from
the clients' venv, unchanged: tests/clients/roboflow_call.py), and equal pixel for pixel to
/segment's mask for the same prompt: COCO RLE decoded, polygons filled back (even-odd)."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import uuid

import httpx
import numpy as np
import pytest

from sam2_api.maskformats import from_coco_rle, rasterise
from tests.conftest import REPO, upright_rgb
from tests.integration.conftest import API_KEYS, PHOTOS, SECRETS
from tests.integration.test_segment_api import fetch_mask, post

CLIENT_PYTHON = REPO / ".venv-clients" / "bin" / "python"
CLIENT_SCRIPT = REPO / "tests" / "clients" / "roboflow_call.py"


def sdk(server, image, prompts: list[dict], api_key: str | None = None, **options) -> dict:
    """``InferenceHTTPClient(api_url=..., api_key=...).sam2_segment_image(...)`` in the clients' venv."""
    if not CLIENT_PYTHON.exists():
        pytest.fail(f"{CLIENT_PYTHON} is missing: scripts/setup.sh builds it (inference-sdk)")
    args = {"api_url": server.url, "api_key": api_key, "image": str(image), "prompts": prompts, **options}
    run = subprocess.run([str(CLIENT_PYTHON), str(CLIENT_SCRIPT), json.dumps(args)], capture_output=True,
                         text=True, timeout=180, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    assert run.returncode in (0, 3), run.stderr
    assert not any(secret in run.stdout for secret in SECRETS)
    return json.loads(run.stdout)


def call(server, route: str, body: dict, headers: dict | None = None, query: str = "") -> httpx.Response:
    response = httpx.post(f"{server.url}{route}{query}", json=body, headers=headers, timeout=120)
    assert not any(secret in response.text for secret in SECRETS)
    return response


def b64(path) -> dict:
    return {"type": "base64", "value": base64.b64encode(path.read_bytes()).decode()}


def segment_mask(server, path, multimask_output: bool = True, **fields) -> tuple[np.ndarray, dict]:
    """/segment's mask, with Roboflow's default: the best of three masks for any prompt."""
    response = post(server, path.read_bytes(), path.name, multimask_output=multimask_output, **fields)
    assert response.status_code == 200, response.text
    mask = fetch_mask(response.json()["mask_url"]) == 255
    assert 0 < mask.sum() < mask.size
    return mask, response.json()


def shown(prediction: dict, height: int, width: int) -> np.ndarray:
    """The mask a Roboflow user gets from one prediction."""
    if prediction["format"] == "rle":
        assert prediction["masks"]["size"] == [height, width]
        return from_coco_rle(prediction["masks"]["counts"], height, width)
    assert prediction["format"] == "polygon"
    return rasterise([{"exterior": ring, "holes": []} for ring in prediction["masks"]], height, width)


CASES = [  # the SDK's prompt, and the same as /segment's fields
    ("astronaut.png", {"points": [{"x": 200, "y": 150, "positive": True}]}, {"points": [[200, 150]], "labels": [1]}),
    ("camera.png", {"box": {"x": 250, "y": 255, "width": 300, "height": 390}}, {"box": [100, 60, 400, 450]}),
    ("rocket.jpg", {"box": {"x": 335, "y": 220, "width": 170, "height": 400},
                    "points": [{"x": 320, "y": 200, "positive": True}, {"x": 100, "y": 50, "positive": False}]},
     {"box": [250, 20, 420, 420], "points": [[320, 200], [100, 50]], "labels": [1, 0]}),
]


@pytest.mark.parametrize("format", ["json", "rle"])
@pytest.mark.parametrize("name, prompt, fields", CASES, ids=[c[0] for c in CASES])
def test_the_sdks_masks_are_segments_pixel_for_pixel(server, test_images, name, prompt, fields, format):
    path = test_images / name
    height, width = upright_rgb(path).shape[:2]
    answer = sdk(server, path, [prompt], format=format)
    assert set(answer) == {"predictions", "time"} and answer["time"] > 0, answer
    (prediction,) = answer["predictions"]
    expected, segment = segment_mask(server, path, **fields)
    assert np.array_equal(shown(prediction, height, width), expected)
    assert prediction["confidence"] == pytest.approx(segment["score"], abs=1e-6)
    assert np.array_equal(fetch_mask(prediction["mask_url"]) == 255, expected)  # this server has S3


def test_several_prompts_give_one_prediction_each_in_order(server, test_images):
    path = test_images / "rocket.jpg"
    height, width = upright_rgb(path).shape[:2]
    answer = sdk(server, path, [CASES[2][1], {"points": [{"x": 120, "y": 300, "positive": True}]}], format="rle")
    first, second = answer["predictions"]
    assert np.array_equal(shown(first, height, width), segment_mask(server, path, **CASES[2][2])[0])
    assert np.array_equal(shown(second, height, width), segment_mask(server, path, points=[[120, 300]])[0])


def test_multimask_output_false_is_segments_single_mask(server, test_images):
    path = test_images / "astronaut.png"
    height, width = upright_rgb(path).shape[:2]
    answer = sdk(server, path, [CASES[0][1]], format="rle", multimask_output=False)
    expected, _ = segment_mask(server, path, multimask_output=False, **CASES[0][2])
    assert np.array_equal(shown(answer["predictions"][0], height, width), expected)


def test_the_sdks_errors_carry_our_words(server, test_images):
    path = test_images / "astronaut.png"
    wrong_size = sdk(server, path, [CASES[0][1]], sam2_version_id="hiera_large")
    assert wrong_size["status"] == 400 and wrong_size["message"].startswith(
        "`sam2_version_id` 'hiera_large' is not served here; this server serves: hiera_tiny"), wrong_size
    outside = sdk(server, path, [{"points": [{"x": 5000, "y": 1, "positive": True}]}])
    assert outside["status"] == 400 and "outside" in outside["message"]
    binary = sdk(server, path, [CASES[0][1]], format="binary")
    assert binary["status"] == 400 and "`binary`" in binary["message"]


def test_sam2_version_id_picks_the_size_as_model_does(server, test_images):
    """The session server serves tiny and small: the SDK's hiera_small is /segment's model=hiera_small."""
    path = test_images / "astronaut.png"
    height, width = upright_rgb(path).shape[:2]
    answer = sdk(server, path, [CASES[0][1]], format="rle", sam2_version_id="hiera_small")
    small, _ = segment_mask(server, path, model="hiera_small", **CASES[0][2])
    tiny, _ = segment_mask(server, path, **CASES[0][2])
    assert np.array_equal(shown(answer["predictions"][0], height, width), small)
    assert not np.array_equal(small, tiny)  # the two sizes' random weights give different masks


def test_embed_then_segment_by_id_alone_skips_the_encoder(server, test_images):
    path = test_images / "chelsea.png"
    data = path.read_bytes()
    embedded = call(server, "/sam2/embed_image", {"image": b64(path)})
    assert embedded.status_code == 200, embedded.text
    assert embedded.json()["image_id"] == hashlib.sha256(data).hexdigest() and embedded.json()["time"] > 0
    prompt = {"prompts": [{"points": [{"x": 225, "y": 150, "positive": True}]}], "format": "rle"}
    by_id = call(server, "/sam2/segment_image", {"image_id": embedded.json()["image_id"], **prompt})
    assert by_id.status_code == 200, by_id.text
    assert by_id.headers["x-embedding-cache"] == "hit"
    height, width = upright_rgb(path).shape[:2]
    expected, _ = segment_mask(server, path, points=[[225, 150]])
    assert np.array_equal(shown(by_id.json()["predictions"][0], height, width), expected)
    unknown = call(server, "/sam2/segment_image", {"image_id": "never-sent-" + uuid.uuid4().hex, **prompt})
    assert unknown.status_code == 404 and unknown.json()["message"] == unknown.json()["error"]


def test_a_url_image_is_read_as_image_url_is(server, s3, test_images):
    path = test_images / "coffee.png"
    s3.put_object(Bucket=PHOTOS, Key="roboflow/coffee.png", Body=path.read_bytes())
    prompt = {"prompts": {"box": {"x": 300, "y": 200, "width": 300, "height": 300}}, "format": "rle"}
    answer = call(server, "/sam2/segment_image", {"image": {"type": "url", "value": f"s3://{PHOTOS}/roboflow/coffee.png"},
                                                  **prompt})
    assert answer.status_code == 200, answer.text
    height, width = upright_rgb(path).shape[:2]
    expected, _ = segment_mask(server, path, box=[150, 50, 450, 350])
    assert np.array_equal(shown(answer.json()["predictions"][0], height, width), expected)
    for url, status in (("s3://not-an-input-bucket/coffee.png", 403), ("https://127.0.0.1/coffee.png", 403),
                        ("file:///etc/passwd", 400)):
        refused = call(server, "/sam2/segment_image", {"image": {"type": "url", "value": url}, **prompt})
        assert refused.status_code == status, refused.text


def test_cached_logits_refine_as_previous_mask_id_does(server, test_images):
    path = test_images / "astronaut.png"
    image_id = "roboflow-logits-" + uuid.uuid4().hex[:8]
    first_click = {"x": 200, "y": 150, "positive": True}
    second_click = {"x": 260, "y": 120, "positive": False}
    saved = call(server, "/sam2/segment_image", {"image": b64(path), "image_id": image_id, "format": "rle",
                                                 "prompts": [{"points": [first_click]}], "save_logits_to_cache": True})
    assert saved.status_code == 200, saved.text
    refined = call(server, "/sam2/segment_image", {"image_id": image_id, "format": "rle", "load_logits_from_cache": True,
                                                   "prompts": [{"points": [first_click, second_click]}]})
    assert refined.status_code == 200, refined.text
    _, first = segment_mask(server, path, points=[[200, 150]])
    expected, _ = segment_mask(server, path, points=[[200, 150], [260, 120]], labels=[1, 0],
                               previous_mask_id=first["mask_id"])
    height, width = upright_rgb(path).shape[:2]
    assert np.array_equal(shown(refined.json()["predictions"][0], height, width), expected)


def test_api_keys_in_the_body_the_header_or_the_query(guarded_server, test_images):
    path = test_images / "chelsea.png"
    prompt = [{"points": [{"x": 225, "y": 150, "positive": True}]}]
    for transport in ("legacy", "header"):  # the body's api_key (the SDK's default), Authorization: Bearer
        answer = sdk(guarded_server, path, prompt, api_key=API_KEYS[0], transport=transport, format="rle")
        assert len(answer["predictions"]) == 1, answer
    refused = sdk(guarded_server, path, prompt, api_key="not-a-key")
    assert refused["status"] == 401 and "missing or invalid API key" in refused["message"]
    body = {"image": b64(path), "prompts": prompt}
    assert call(guarded_server, "/sam2/embed_image", body, query=f"?api_key={API_KEYS[1]}").status_code == 200
    assert call(guarded_server, "/sam2/embed_image", body).status_code == 401
    # guarded_server's SAM2_MAX_UPLOAD_BYTES is 2,000,000: an image just over it is 413, with the words as `message`
    too_large = {"image": {"type": "base64", "value": base64.b64encode(b"\0" * 2_000_001).decode()}, "prompts": prompt}
    refused = call(guarded_server, "/sam2/segment_image", too_large, {"Authorization": f"Bearer {API_KEYS[0]}"})
    assert refused.status_code == 413 and "SAM2_MAX_UPLOAD_BYTES" in refused.json()["message"]
    # elsewhere the header alone counts
    assert call(guarded_server, "/segment", {"image_id": "x", "points": [[1, 1]]},
                query=f"?api_key={API_KEYS[1]}").status_code == 401
