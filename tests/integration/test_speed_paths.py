"""The fast paths give the plain path's masks: embedding cache, image_id, several objects at once."""

from __future__ import annotations

import uuid

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import upright_rgb
from tests.integration.test_segment_api import fetch_mask, post

CACHE_HEADER = "x-embedding-cache"


@pytest.fixture
def fresh_image(test_images, tmp_path):
    """A real photo with one random pixel changed, so that no other test has cached its embedding."""
    pixels = upright_rgb(test_images / "astronaut.png")
    spot = uuid.uuid4().int % (512 * 512)
    pixels[spot // 512, spot % 512, 0] ^= 1
    path = tmp_path / "fresh.png"
    Image.fromarray(pixels).save(path)
    return path


def test_repeat_image_skips_the_encoder_and_gives_identical_masks(server, reference_mask, fresh_image):
    data = fresh_image.read_bytes()
    first = post(server, data, points=[[200, 150]])
    again = post(server, data, points=[[200, 150]])
    other = post(server, data, box=[50, 40, 400, 480])
    assert [r.headers[CACHE_HEADER] for r in (first, again, other)] == ["miss", "hit", "hit"]
    # Where the time went, by stage: the encoder and the image decode only for the new image.
    stages = lambda r: {part.split(";")[0].strip(): float(part.split("dur=")[1]) for part in r.headers["server-timing"].split(",")}
    assert {"read", "model_call", "image_decode", "queue", "encoder", "decoder", "png", "store", "total"} <= set(stages(first))
    assert stages(first)["total"] >= stages(first)["model_call"] + stages(first)["store"] - 1  # ms, rounded
    assert {"encoder", "image_decode"}.isdisjoint(stages(again)) and stages(again)["decoder"] > 0
    assert np.array_equal(fetch_mask(first.json()["mask_url"]), fetch_mask(again.json()["mask_url"]))
    assert first.json()["score"] == again.json()["score"]
    expected, _ = reference_mask(upright_rgb(fresh_image), box=[50, 40, 400, 480])
    assert np.array_equal(fetch_mask(other.json()["mask_url"]) == 255, expected)


def test_image_id_lets_later_clicks_skip_the_upload(server, reference_mask, fresh_image):
    image_id = f"test-{uuid.uuid4().hex}"
    first = post(server, fresh_image.read_bytes(), image_id=image_id, points=[[100, 100]])
    assert first.status_code == 200 and first.headers[CACHE_HEADER] == "miss"
    click = post(server, None, image_id=image_id, points=[[300, 260]])
    assert click.status_code == 200 and click.headers[CACHE_HEADER] == "hit"
    assert (click.json()["width"], click.json()["height"]) == (512, 512)
    expected, _ = reference_mask(upright_rgb(fresh_image), points=[[300, 260]])
    assert np.array_equal(fetch_mask(click.json()["mask_url"]) == 255, expected)


def test_unknown_image_id_without_image_is_404(server):
    response = post(server, None, image_id="never-sent", points=[[1, 1]])
    assert response.status_code == 404
    assert "image_id 'never-sent' is not cached here" in response.text


def test_neither_image_nor_image_id_is_400(server):
    response = post(server, None, points=[[1, 1]])
    assert response.status_code == 400
    assert response.json() == {"error": "send the image as `image` (a file) or `image_url`, or the `image_id` of "
                                        "an image sent before"}


def test_several_objects_share_one_encoder_pass(server, sam2_model, fresh_image):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    boxes = [[10, 10, 200, 200], [100, 50, 500, 400], [200, 100, 400, 500]]
    objects = [{"box": box} for box in boxes] + [{"points": [[256, 256]], "labels": [1]}]
    response = post(server, fresh_image.read_bytes(), route="/segment_objects", objects=objects)
    assert response.status_code == 200, response.text
    assert response.headers[CACHE_HEADER] == "miss"
    body = response.json()
    assert (body["width"], body["height"]) == (512, 512) and len(body["objects"]) == 4

    # Meta's predictor with the same batches: three boxes at once, then the lone click.
    predictor = SAM2ImagePredictor(sam2_model)
    predictor.set_image(upright_rgb(fresh_image))
    box_masks, box_scores, _ = predictor.predict(box=np.array(boxes, dtype=np.float32), multimask_output=False)
    click_masks, click_scores, _ = predictor.predict(point_coords=np.array([[256, 256]], dtype=np.float32),
                                                     point_labels=np.array([1]), multimask_output=True)
    best = int(np.argmax(click_scores))
    expected = [m[0] > 0 for m in box_masks] + [click_masks[best] > 0]
    scores = [s[0] for s in box_scores] + [click_scores[best]]
    for obj, mask, score in zip(body["objects"], expected, scores):
        assert np.array_equal(fetch_mask(obj["mask_url"]) == 255, mask)
        assert obj["score"] == pytest.approx(float(score), abs=1e-6)
    assert len({obj["mask_url"] for obj in body["objects"]}) == 4


def test_objects_are_validated_like_single_prompts(server, test_images):
    data = (test_images / "chelsea.png").read_bytes()
    for objects, words in [([], "`objects` must be a list of 1 to 32 prompts"),
                           ([{"box": [5, 5, 1, 1]}], "objects[0]: invalid prompt: `box` must be [x1, y1, x2, y2] with "
                                                     "x2 > x1 and y2 > y1"),
                           ([{"points": [[1, 1]]}, {"points": [[999, 1]]}], "outside the 451x300 image")]:
        response = post(server, data, route="/segment_objects", objects=objects)
        assert response.status_code == 400, response.text
        assert words in response.json()["error"]
    # The same malformed prompt gets the same words on both routes.
    alone = post(server, data, points=[320, 200]).json()["error"]
    among = post(server, data, route="/segment_objects", objects=[{"points": [320, 200]}]).json()["error"]
    assert alone.startswith("invalid prompt: `points` must be a list of [x, y] pairs in pixels, e.g. [[320, 200]]")
    assert among == f"objects[0]: {alone}"


def test_metrics_count_encoder_cache_and_uploads(server, test_images):
    post(server, (test_images / "coffee.png").read_bytes(), points=[[300, 200]])
    post(server, (test_images / "coffee.png").read_bytes(), points=[[100, 200]])
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        if line.startswith("sam2_") and " " in line:
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    stages = lambda name: values[f'sam2_stage_seconds_count{{stage="{name}"}}']
    assert stages("encoder") >= 1 and stages("image_decode") >= 1  # model service, API service: one /metrics
    assert stages("decoder") >= 2 and stages("model_call") >= 3 and stages("png") >= 2
    assert values["sam2_embedding_cache_hits_total"] >= 1
    assert values["sam2_embedding_cache_misses_total"] >= 1


def test_openapi_documents_every_field_and_the_errors(server):
    spec = httpx.get(f"{server.url}/docs.json", timeout=10).json()
    for route, required_examples in (("/segment", {"points", "labels", "box", "image_id", "image_url",
                                                   "previous_mask_id", "formats", "polygon_tolerance", "steps"}),
                                     ("/segment_objects", {"objects", "image_id", "image_url", "formats"})):
        post_spec = spec["paths"][route]["post"]
        schema = post_spec["requestBody"]["content"]["multipart/form-data"]["schema"]
        if "$ref" in schema:
            schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        properties = schema["properties"]
        assert all(field.get("description") for field in properties.values()), route
        assert {name for name, field in properties.items() if field.get("examples")} >= required_examples
        for status in ("401", "403", "404", "413", "415"):
            assert status in post_spec["description"] or status in spec["paths"]["/segment"]["post"]["description"]
