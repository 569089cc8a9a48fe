"""A model size per request, against `bentoml serve` with SAM2_MODELS=hiera_tiny,hiera_small (the
session server; random test weights per size): each size answers its own SAM2ImagePredictor's mask,
on every route that takes `model`; a size not served is a 400 naming the served ones; an image_id
and a mask_id belong to the size they were made with."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from sam2_api import video
from tests.clips import encode, moving_shapes
from tests.conftest import upright_rgb
from tests.integration.test_cvat_api import call as cvat_call
from tests.integration.test_segment_api import fetch_mask, post
from tests.integration.test_track_api import LIMITS, reference_masks, result, submit, wait_for
from tests.support.cvat import cvat_payload, cvat_reads

SERVED = "this server serves: hiera_tiny (facebook/sam2.1-hiera-tiny), hiera_small (facebook/sam2.1-hiera-small)"
CLICK = {"points": [[200, 150]]}


@pytest.fixture(scope="module")
def astronaut(test_images):
    path = test_images / "astronaut.png"
    return path.read_bytes(), upright_rgb(path)


def segmented(server, data, **fields) -> np.ndarray:
    response = post(server, data, "astronaut.png", **fields)
    assert response.status_code == 200, response.text
    return fetch_mask(response.json()["mask_url"]) == 255


def test_the_same_click_gets_each_sizes_own_predictor_mask(server, astronaut, reference_mask, small_reference_mask):
    data, image = astronaut
    tiny, small = reference_mask(image, **CLICK)[0], small_reference_mask(image, **CLICK)[0]
    assert not np.array_equal(tiny, small)  # the two sizes' answers differ: the test can tell which one served
    assert np.array_equal(segmented(server, data, **CLICK), tiny)  # no `model`: the default size
    for name in ("hiera_small", "small", "facebook/sam2.1-hiera-small"):
        assert np.array_equal(segmented(server, data, model=name, **CLICK), small), name
    assert np.array_equal(segmented(server, data, model="hiera_tiny", **CLICK), tiny)


def test_segment_objects_and_cvat_take_the_size_too(server, astronaut, small_reference_mask):
    data, image = astronaut
    objects = [{"points": [[200, 150]]}, {"box": [100, 60, 400, 450]}]
    response = post(server, data, "astronaut.png", route="/segment_objects", objects=objects, model="hiera_small")
    assert response.status_code == 200, response.text
    for served, prompt in zip(response.json()["objects"], objects):
        assert np.array_equal(fetch_mask(served["mask_url"]) == 255, small_reference_mask(image, **prompt)[0])
    cvat = cvat_call(server, {**cvat_payload(data, [[200, 150]], []), "model": "hiera_small"})
    assert cvat.status_code == 200, cvat.text
    height, width = image.shape[:2]
    assert np.array_equal(cvat_reads(cvat.json(), width, height), small_reference_mask(image, **CLICK)[0])


@pytest.mark.parametrize("route", ["/segment", "/segment_objects", "/segment_everything"])
@pytest.mark.parametrize("name, why", [("hiera_large", "is not served here"), ("huge", "is not a SAM 2.1 size")])
def test_a_size_not_served_is_a_400_naming_the_served_ones(server, astronaut, route, name, why):
    fields = {"objects": [CLICK]} if route == "/segment_objects" else {} if route == "/segment_everything" else CLICK
    response = post(server, astronaut[0], "astronaut.png", route=route, model=name, **fields)
    assert response.status_code == 400
    assert response.json() == {"error": f"`model` {name!r} {why}; {SERVED}"}


def test_a_size_not_served_is_a_400_for_cvat_too(server, astronaut):
    response = cvat_call(server, {**cvat_payload(astronaut[0], [[200, 150]], []), "model": "large"})
    assert response.status_code == 400 and response.json() == {"error": f"`model` 'large' is not served here; {SERVED}"}


def test_an_image_id_belongs_to_the_size_it_was_sent_with(server, astronaut, small_reference_mask):
    data, image = astronaut
    first = post(server, data, "astronaut.png", image_id="sizes-astronaut", **CLICK)
    assert first.status_code == 200 and first.headers["x-embedding-cache"] == "miss"
    other = post(server, None, image_id="sizes-astronaut", model="small", **CLICK)
    assert other.status_code == 404
    assert "not cached here (never sent, sent for another `model`, or evicted)" in other.json()["error"]
    same = post(server, None, image_id="sizes-astronaut", model="tiny", **CLICK)
    assert same.status_code == 200 and same.headers["x-embedding-cache"] == "hit"
    # sent with the image for small too, the id then serves both sizes, each its own embedding
    assert post(server, data, "astronaut.png", image_id="sizes-astronaut", model="small", **CLICK).status_code == 200
    again = post(server, None, image_id="sizes-astronaut", model="small", **CLICK)
    assert again.status_code == 200 and again.headers["x-embedding-cache"] == "hit"
    assert np.array_equal(fetch_mask(again.json()["mask_url"]) == 255, small_reference_mask(image, **CLICK)[0])


def test_a_mask_id_is_refined_only_by_the_size_that_made_it(server, astronaut):
    data, _ = astronaut
    first = post(server, data, "astronaut.png", model="tiny", **CLICK)
    assert first.status_code == 200, first.text
    refine = {"points": [[200, 150], [50, 50]], "labels": [1, 0], "previous_mask_id": first.json()["mask_id"]}
    refused = post(server, data, "astronaut.png", model="small", **refine)
    assert refused.status_code == 400
    assert "made by model hiera_tiny, not hiera_small" in refused.json()["error"]
    assert post(server, data, "astronaut.png", model="tiny", **refine).status_code == 200


def test_a_clip_is_tracked_by_the_size_it_names(server, checkpoint, small_checkpoint, tmp_path):
    clip = encode(moving_shapes(3))
    objects = [{"frame_index": 0, "points": [[20, 32]]}]
    task_id = submit(server, clip, objects=objects, model="hiera_small", formats=["rle"])
    assert wait_for(server, task_id)[-1]["status"] == "completed"
    manifest = httpx.get(result(server, task_id).json()["manifest_url"], timeout=10).json()
    served = [fetch_mask(frame["objects"][0]["mask_url"]) > 0 for frame in manifest["frames"]]
    frames, prompts = list(video.frames(clip, LIMITS)), [(0, 0, objects[0])]
    (tmp_path / "small").mkdir(), (tmp_path / "tiny").mkdir()
    small = reference_masks(small_checkpoint, frames, prompts, tmp_path / "small", "configs/sam2.1/sam2.1_hiera_s.yaml")
    tiny = reference_masks(checkpoint, frames, prompts, tmp_path / "tiny")
    assert all(np.array_equal(mask, small[index][0]) for index, mask in enumerate(served))
    assert not all(np.array_equal(mask, tiny[index][0]) for index, mask in enumerate(served))


def test_the_command_line_sends_the_size(server, astronaut, test_images, small_reference_mask):
    from tests.integration.test_cli import sam2_api

    done = sam2_api("--url", server.url, "segment", str(test_images / "astronaut.png"), "--point", "200,150",
                    "--model", "small")
    assert done.returncode == 0, done.stderr
    mask = fetch_mask(json.loads(done.stdout)["mask_url"]) == 255
    assert np.array_equal(mask, small_reference_mask(astronaut[1], **CLICK)[0])
    refused = sam2_api("--url", server.url, "everything", str(test_images / "astronaut.png"), "--model", "large")
    assert refused.returncode != 0 and "`model` 'large' is not served here" in refused.stdout + refused.stderr
