"""POST /embed and GET /decoder.onnx against `bentoml serve`: onnxruntime running the served decoder
on the served embedding gives /segment's mask for the same prompt (points, a box, a refinement
chained through the previous low-res logits), as a browser would compute it; the routes' guards."""

from __future__ import annotations

import io

import httpx
import numpy as np
import onnxruntime
import pytest

from tests.conftest import upright_rgb
from tests.integration.conftest import API_KEYS, SECRETS
from tests.integration.test_segment_api import fetch_mask, post

MAX_DIFFERING = 0.001  # the bound: onnxruntime vs torch rounding, at most 0.1 % of pixels
SHAPES = {"image_embeddings": (1, 256, 64, 64), "image_features_0": (1, 32, 256, 256),
          "image_features_1": (1, 64, 128, 128)}
WORST: dict[str, float] = {}  # the largest share of differing pixels seen, by dtype (printed at the end)


def embed(server, data: bytes, headers: dict | None = None, **fields) -> httpx.Response:
    return post(server, data, route="/embed", headers=headers, **fields)


def load_npz(response: httpx.Response) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(response.content)) as arrays:
        return {name: arrays[name] for name in arrays.files}


@pytest.fixture(scope="module")
def decoder(server) -> onnxruntime.InferenceSession:
    response = httpx.get(f"{server.url}/decoder.onnx", timeout=120)
    assert response.status_code == 200, response.text
    return onnxruntime.InferenceSession(response.content, providers=["CPUExecutionProvider"])


def decode(session, embedding: dict[str, np.ndarray], points=None, labels=None, box=None,
           low_res: np.ndarray | None = None, multimask: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The mask a browser draws for this prompt (as /ui's worker computes it): box corners first
    (labels 2, 3), then the clicks; a lone click takes the best of the three candidates, as
    /segment does; anything else the first mask. Returns the mask and its low-res logits."""
    coords, codes = [], []
    if box is not None:
        coords += [box[:2], box[2:]]
        codes += [2, 3]
    if points:
        coords += points
        codes += labels if labels is not None else [1] * len(points)
    feeds = {name: embedding[name].astype(np.float32) for name in SHAPES}
    feeds.update(
        point_coords=np.array([coords], dtype=np.float32), point_labels=np.array([codes], dtype=np.int32),
        input_masks=(np.zeros((1, 1, 256, 256), np.float32) if low_res is None else low_res[None, None]),
        has_input_masks=np.array([0.0 if low_res is None else 1.0], dtype=np.float32),
        original_image_size=embedding["original_image_size"],
    )
    masks, iou, low = session.run(["masks", "iou_predictions", "low_res_masks"], feeds)
    multimask = multimask if multimask is not None else (box is None and len(points or ()) == 1)
    index = 1 + int(np.argmax(iou[0, 1:])) if multimask else 0
    return masks[0, index] > 0, low[0, index]


def differing(got: np.ndarray, expected: np.ndarray, dtype: str) -> float:
    assert got.shape == expected.shape and 0 < expected.sum() < expected.size  # a mask, not an empty answer
    share = float((got != expected).mean())
    WORST[dtype] = max(WORST.get(dtype, 0.0), share)
    print(f"\n{dtype}: {share * 100:.4f} % of pixels differ (worst so far {WORST[dtype] * 100:.4f} %)")
    return share


def test_the_embedding_is_one_npz_of_the_decoders_inputs(server, test_images):
    path = test_images / "rocket.jpg"
    height, width = upright_rgb(path).shape[:2]
    response = embed(server, path.read_bytes())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    arrays = load_npz(response)
    assert {name: a.shape for name, a in arrays.items() if name in SHAPES} == SHAPES
    assert {a.dtype for name, a in arrays.items() if name in SHAPES} == {np.dtype(np.float16)}
    assert arrays["original_image_size"].tolist() == [height, width]
    assert arrays["original_image_size"].dtype == np.int32
    size = len(response.content)
    assert 8_300_000 < size < 8_500_000, size  # float16: 4,194,304 values, 2 bytes each, plus the npz headers
    etag = response.headers["etag"]
    assert etag.startswith('"') and "private" in response.headers["cache-control"]
    # the same image again: the same bytes from the cache, the encoder skipped; If-None-Match: 304
    again = embed(server, path.read_bytes(), headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["x-embedding-cache"] == "hit"
    full = embed(server, path.read_bytes(), dtype="float32")
    as32 = load_npz(full)
    assert as32["image_embeddings"].dtype == np.float32 and 16_700_000 < len(full.content) < 16_900_000
    assert np.array_equal(as32["image_embeddings"].astype(np.float16), arrays["image_embeddings"])


def test_the_decoder_is_onnx_with_onnxruntimes_sam2_names_and_an_etag(server, decoder):
    assert [i.name for i in decoder.get_inputs()] == [
        "image_embeddings", "image_features_0", "image_features_1", "point_coords", "point_labels",
        "input_masks", "has_input_masks", "original_image_size"]
    assert [o.name for o in decoder.get_outputs()] == ["masks", "iou_predictions", "low_res_masks"]
    first = httpx.get(f"{server.url}/decoder.onnx", timeout=60)
    assert first.status_code == 200 and 10_000_000 < len(first.content) < 40_000_000
    etag = first.headers["etag"]
    assert httpx.get(f"{server.url}/decoder.onnx", headers={"If-None-Match": etag}).status_code == 304
    assert httpx.post(f"{server.url}/decoder.onnx").status_code == 405


CASES = [
    ("astronaut.png", {"points": [[200, 150]]}),  # a lone click: the best of three
    ("camera.png", {"box": [100, 60, 400, 450]}),
    ("rocket.jpg", {"points": [[320, 200], [100, 50]], "labels": [1, 0], "box": [250, 20, 420, 420]}),
    ("chelsea.png", {"points": [[225, 150]], "multimask_output": False}),  # SAM 2's stability fall-back
]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("name, fields", CASES, ids=[c[0] for c in CASES])
def test_the_browsers_mask_is_segments(server, decoder, test_images, name, fields, dtype):
    data = (test_images / name).read_bytes()
    embedding = load_npz(embed(server, data, dtype=dtype))
    segment = post(server, data, name, **fields)
    assert segment.status_code == 200, segment.text
    expected = fetch_mask(segment.json()["mask_url"]) == 255
    got, _ = decode(decoder, embedding, fields.get("points"), fields.get("labels"), fields.get("box"),
                    multimask=fields.get("multimask_output"))
    assert differing(got, expected, dtype) <= MAX_DIFFERING


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_chained_refinement_with_the_previous_low_res_logits_is_segments(server, decoder, test_images, dtype):
    data = (test_images / "coffee.png").read_bytes()
    embedding = load_npz(embed(server, data, dtype=dtype))
    clicks: list = []
    previous_id, low_res = None, None
    for point, label in (([300, 200], 1), ([120, 80], 0), ([350, 260], 1)):
        clicks.append((point, label))
        fields = {"points": [p for p, _ in clicks], "labels": [l for _, l in clicks]}
        answer = post(server, data, "coffee.png", **fields, **({"previous_mask_id": previous_id} if previous_id else {}))
        assert answer.status_code == 200, answer.text
        expected = fetch_mask(answer.json()["mask_url"]) == 255
        got, low_res = decode(decoder, embedding, fields["points"], fields["labels"], low_res=low_res)
        assert differing(got, expected, dtype) <= MAX_DIFFERING
        previous_id = answer.json()["mask_id"]


@pytest.mark.parametrize("data, status, words", [
    (b"hello, this is not an image", 415, ""),
    (None, 400, "send the image"),
])
def test_bad_input_is_answered_as_segment_does(server, data, status, words):
    response = embed(server, data)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and response.json()["error"].startswith(words)
    segment = post(server, data, points=[[1, 1]])
    assert (segment.status_code, segment.json()) == (response.status_code, response.json())


def test_a_bad_dtype_is_400(server, test_images):
    response = embed(server, (test_images / "chelsea.png").read_bytes(), dtype="int8")
    assert response.status_code == 400 and "`dtype`" in response.json()["error"]


def test_api_keys_tenancy_and_the_upload_limit(guarded_server, test_images):
    data = (test_images / "chelsea.png").read_bytes()
    for headers in (None, {"Authorization": "Bearer not-a-key"}):
        assert embed(guarded_server, data, headers=headers).status_code == 401
        refused = httpx.get(f"{guarded_server.url}/decoder.onnx", headers=headers, timeout=60)
        assert refused.status_code == 401 and "API key" in refused.json()["error"]
    first, second = ({"Authorization": f"Bearer {key}"} for key in API_KEYS)
    assert httpx.get(f"{guarded_server.url}/decoder.onnx", headers=first, timeout=120).status_code == 200
    assert embed(guarded_server, data, headers=first, image_id="browser-cat").status_code == 200
    # an image_id is the caller's own: another key does not see it
    other = embed(guarded_server, None, headers=second, image_id="browser-cat")
    assert other.status_code == 404 and "browser-cat" in other.json()["error"]
    assert embed(guarded_server, None, headers=first, image_id="browser-cat").status_code == 200
    # guarded_server's SAM2_MAX_UPLOAD_BYTES is 2,000,000
    too_large = embed(guarded_server, b"\0" * 2_000_001, headers=first)
    assert too_large.status_code == 413 and "SAM2_MAX_UPLOAD_BYTES" in too_large.json()["error"]
    assert not any(secret in too_large.text for secret in SECRETS)


def test_another_size_has_its_own_embedding_and_decoder(server, decoder, test_images):
    """The session server serves tiny and small: `/embed` and `/decoder.onnx?model=` of small together
    give /segment's mask with model=hiera_small; a size not served is a 400 naming the served ones."""
    data = (test_images / "astronaut.png").read_bytes()
    fields = {"points": [[200, 150]], "labels": [1]}
    small = httpx.get(f"{server.url}/decoder.onnx?model=hiera_small", timeout=300)
    assert small.status_code == 200, small.text
    assert small.headers["etag"] != httpx.get(f"{server.url}/decoder.onnx", timeout=120).headers["etag"]
    session = onnxruntime.InferenceSession(small.content, providers=["CPUExecutionProvider"])
    embedding = load_npz(embed(server, data, dtype="float32", model="hiera_small"))
    segment = post(server, data, "astronaut.png", model="hiera_small", **fields)
    assert segment.status_code == 200, segment.text
    expected = fetch_mask(segment.json()["mask_url"]) == 255
    got, _ = decode(session, embedding, fields["points"], fields["labels"])
    assert differing(got, expected, "float32") <= MAX_DIFFERING
    tiny_embedding = load_npz(embed(server, data, dtype="float32"))
    assert not np.array_equal(tiny_embedding["image_embeddings"], embedding["image_embeddings"])
    for refused in (httpx.get(f"{server.url}/decoder.onnx?model=hiera_large", timeout=60),
                    embed(server, data, model="hiera_large")):
        assert refused.status_code == 400 and "this server serves: hiera_tiny" in refused.text, refused.text
