"""Roboflow's SAM 2 request and answer (sam2_api.api.roboflow): the prompts in each shape Roboflow
takes, the box's centre convention, the image field, the version check, bad input in words."""

from __future__ import annotations

import base64
import hashlib

import numpy as np
import pytest

from sam2_api.api import roboflow
from sam2_api.api.image_urls import ImageSources
from sam2_api.api.segment import Result, StoredMask
from sam2_api.config import MODEL_IDS, Settings
from sam2_api.errors import ForbiddenSource, ImageTooLarge, InvalidField, InvalidImage, InvalidPrompt, RequestError
from sam2_api.maskformats import describe, from_coco_rle, rasterise

CLICK = {"points": [{"x": 200, "y": 150, "positive": True}]}
SOURCES = ImageSources(None, frozenset(), 1000)


@pytest.mark.parametrize("shape", [{"prompts": [CLICK]}, [CLICK], CLICK], ids=["nested", "flat", "single"])
def test_the_three_shapes_of_prompts_are_one_prompt(shape):
    prompts, keys = roboflow.parse_prompts(shape, True)
    assert [p.model_dump(exclude_none=True) for p in prompts] == [
        {"points": [[200.0, 150.0]], "labels": [1], "multimask_output": True}]
    assert keys == [roboflow.PromptKey(None, frozenset({(200.0, 150.0, True)}))]


def test_a_box_is_sent_by_its_centre_and_becomes_corners():
    prompts, keys = roboflow.parse_prompts([{"box": {"x": 100, "y": 80, "width": 40, "height": 20}}], False)
    assert prompts[0].box == [80.0, 70.0, 120.0, 90.0] and prompts[0].multimask_output is False
    assert keys[0].box == (100.0, 80.0, 40.0, 20.0)


def test_points_and_box_together_and_several_prompts_in_order():
    prompts, _ = roboflow.parse_prompts({"prompts": [
        {"box": {"x": 50, "y": 50, "width": 10, "height": 10},
         "points": [{"x": 50, "y": 50, "positive": True}, {"x": 1, "y": 2, "positive": False}]},
        {"points": [{"x": 7, "y": 8, "positive": 1}]},
    ]}, True)
    assert prompts[0].points == [[50.0, 50.0], [1.0, 2.0]] and prompts[0].labels == [1, 0]
    assert prompts[0].box == [45.0, 45.0, 55.0, 55.0]
    assert prompts[1].points == [[7.0, 8.0]] and prompts[1].labels == [1]


@pytest.mark.parametrize("value, words", [
    (None, "send at least one prompt in `prompts`"),
    ({"prompts": []}, "send at least one prompt in `prompts`"),
    ({"prompts": None}, "send at least one prompt in `prompts`"),
    ("a box", "`prompts` must be {\"prompts\": [...]}"),
    ([{}], "prompt 0 has neither `box` nor `points`"),
    ([CLICK, 5], "prompt 1 must be an object"),
    ([{"points": [{"x": 1, "y": 2}]}], "prompt 0: point 0 needs `positive`"),
    ([{"points": [{"x": "1", "y": 2, "positive": True}]}], "prompt 0: point 0 `x` must be a number"),
    ([{"points": [[1, 2]]}], "prompt 0: point 0 must be {\"x\", \"y\", \"positive\"}"),
    ([{"box": {"x": 1, "y": 2, "width": 0, "height": 3}}], "prompt 0: `box` must have a width and height above 0"),
    ([{"box": [1, 2, 3, 4]}], "prompt 0: `box.x` must be a number"),
    ([CLICK] * 33, "`prompts` holds 33 prompts; the limit is 32"),
    ([{"points": [{"x": 1, "y": 1, "positive": True}] * 65}], "prompt 0 has 65 points; the limit is 64"),
])
def test_bad_prompts_are_400_saying_what_is_wrong(value, words):
    with pytest.raises(InvalidPrompt) as caught:
        roboflow.parse_prompts(value, True)
    assert caught.value.status == 400 and str(caught.value).startswith(words), str(caught.value)


def test_version_ids_name_the_served_sizes_and_none_is_the_default():
    settings = Settings(sam2_model=MODEL_IDS[0], sam2_models="hiera_tiny,hiera_large")
    assert [roboflow.model_of_version(v, settings.model_for) for v in (None, "hiera_tiny", "hiera_large")] == [
        MODEL_IDS[0], MODEL_IDS[0], MODEL_IDS[3]]


@pytest.mark.parametrize("value, words", [
    ("hiera_small", "`sam2_version_id` 'hiera_small' is not served here; this server serves: hiera_tiny "
                    "(facebook/sam2.1-hiera-tiny), hiera_large (facebook/sam2.1-hiera-large)"),
    ("sam2-large", "`sam2_version_id` 'sam2-large' is not a SAM 2.1 size; this server serves: hiera_tiny"),
])
def test_a_version_not_served_is_400_naming_the_served_ones(value, words):
    settings = Settings(sam2_model=MODEL_IDS[0], sam2_models="hiera_tiny,hiera_large")
    with pytest.raises(InvalidField) as caught:
        roboflow.model_of_version(value, settings.model_for)
    assert str(caught.value).startswith(words), str(caught.value)


def test_a_base64_image_without_id_is_named_by_the_hash_of_its_bytes():
    data = b"\x89PNG some bytes"
    image = roboflow.parse_image({"type": "base64", "value": base64.b64encode(data).decode()}, None, 1000, SOURCES)
    assert image.image_id == hashlib.sha256(data).hexdigest()
    assert (image.request.upload, image.request.image_id) == (data, image.image_id)
    named = roboflow.parse_image({"type": "base64", "value": base64.b64encode(data).decode()}, "photo-1", 1000, SOURCES)
    assert (named.image_id, named.request.image_id) == ("photo-1", "photo-1")


def test_an_image_id_alone_names_a_cached_image():
    image = roboflow.parse_image(None, "photo-1", 1000, SOURCES)
    assert image.request.upload is None and image.request.url is None and image.image_id == "photo-1"


@pytest.mark.parametrize("image, image_id, error, words", [
    (None, None, InvalidImage, "send the image as `image`"),
    ("aGVsbG8=", None, InvalidImage, "`image` must be {\"type\""),
    ({"type": "numpy", "value": "x"}, None, InvalidImage, "`image.type` 'numpy' is not supported here"),
    ({"type": "base64", "value": "not base64!"}, None, InvalidImage, "`image` is not valid base64"),
    ({"type": "base64", "value": base64.b64encode(b"x" * 1001).decode()}, None, ImageTooLarge, ""),
    ({"type": "url", "value": "ftp://example.com/a.png"}, None, RequestError, "image.value must be s3://"),
    ({"type": "url", "value": "https://127.0.0.1/a.png"}, None, ForbiddenSource, "refusing to fetch from 127.0.0.1"),
    ({"type": "url", "value": "https://127.0.0.1/a.png"}, "id-1", ForbiddenSource, "refusing to fetch from 127.0.0.1"),
    ({"type": "url", "value": "s3://private/a.png"}, "id-1", ForbiddenSource, "bucket 'private' is not one"),
    ({"type": "base64", "value": "aGVsbG8="}, "bad id!", InvalidField, "`image_id` must be"),
])
def test_bad_images_are_4xx_before_anything_is_read(image, image_id, error, words):
    with pytest.raises(error) as caught:
        roboflow.parse_image(image, image_id, 1000, SOURCES)
    assert 400 <= caught.value.status < 500 and str(caught.value).startswith(words), str(caught.value)


@pytest.mark.parametrize("kwargs, words", [
    ({"format": "binary"}, "`format` must be one of json, rle; got 'binary' (`binary`, Roboflow's npz"),
    ({"format": "polygons"}, "`format` must be one of json, rle"),
    ({"mask_input": [[[0.0]]]}, "`mask_input` is not supported here"),
    ({"multimask_output": "yes"}, "`multimask_output` must be true or false"),
    ({"save_logits": 1}, "`save_logits_to_cache` must be true or false"),
])
def test_unsupported_or_malformed_fields_are_400(kwargs, words):
    fields = {"prompts": [CLICK], "multimask_output": None, "format": None, "save_logits": None,
              "load_logits": None, "mask_input": None, **kwargs}
    with pytest.raises(InvalidField) as caught:
        roboflow.parse_segment(roboflow.parse_image(None, "a", 1, SOURCES), **fields)
    assert str(caught.value).startswith(words), str(caught.value)


def test_defaults_are_roboflows_json_and_the_best_of_three():
    request = roboflow.parse_segment(roboflow.parse_image(None, "a", 1, SOURCES), [CLICK], None, None, None, None, None)
    assert request.format == "json" and request.prompts[0].multimask_output is True
    assert (request.save_logits, request.load_logits) == (False, False)


def ring_mask() -> np.ndarray:
    mask = np.zeros((20, 30), dtype=bool)
    mask[2:12, 3:15] = True
    mask[5:8, 6:9] = False  # a hole
    mask[15:18, 20:29] = True  # a second part
    return mask


def result_of(mask: np.ndarray, formats: tuple[str, ...], url: str | None = None) -> Result:
    stored = StoredMask(url, 0.75, "m_" + "a" * 22, describe(mask, formats))
    return Result([stored], mask.shape[1], mask.shape[0], cached=False)


def test_json_masks_are_every_ring_and_fill_back_to_the_mask_even_odd():
    mask = ring_mask()
    body = roboflow.response(result_of(mask, ("polygons",)), "json", False, 0.5)
    assert body["time"] == 0.5 and len(body["predictions"]) == 1
    prediction = body["predictions"][0]
    assert set(prediction) == {"masks", "confidence", "format"}
    assert prediction["format"] == "polygon" and prediction["confidence"] == 0.75
    assert len(prediction["masks"]) == 3  # two exteriors, one hole
    assert all(len(ring) >= 4 and all(len(p) == 2 for p in ring) for ring in prediction["masks"])
    filled = rasterise([{"exterior": ring, "holes": []} for ring in prediction["masks"]], 20, 30)
    assert np.array_equal(filled, mask)


def test_rle_masks_are_cocos_and_mask_url_comes_when_s3_is_configured():
    mask = ring_mask()
    body = roboflow.response(result_of(mask, ("rle",), "https://bucket/m.png"), "rle", True, 0.1)
    prediction = body["predictions"][0]
    assert prediction["format"] == "rle" and prediction["masks"]["size"] == [20, 30]
    assert np.array_equal(from_coco_rle(prediction["masks"]["counts"], 20, 30), mask)
    assert prediction["mask_url"] == "https://bucket/m.png" and "mask_error" not in prediction
