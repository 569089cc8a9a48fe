"""Segmenter must give exactly SAM2ImagePredictor's masks, and keep images apart across threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from sam2_api.prompts import Prompt
from sam2_api.segmenter import Segmenter
from tests.conftest import upright_rgb

PROMPTS = {
    "one click": lambda w, h: dict(points=[(w / 3, h / 2)]),
    "box": lambda w, h: dict(box=(w * 0.1, h * 0.2, w * 0.6, h * 0.9)),
    "clicks and box": lambda w, h: dict(
        points=[(w / 2, h / 2), (w / 4, h / 4)], labels=[1, 0], box=(5, 5, w - 5, h - 5)
    ),
    "two clicks, multimask forced": lambda w, h: dict(
        points=[(w / 2, h / 3), (w / 2, h / 2)], multimask_output=True
    ),
}


@pytest.fixture(scope="module")
def segmenter(sam2_model) -> Segmenter:
    return Segmenter(sam2_model)


@pytest.mark.parametrize("name", ["astronaut.png", "camera.png", "rocket.jpg"])
def test_masks_equal_sam2_image_predictor(segmenter, reference_mask, test_images, name):
    image = upright_rgb(test_images / name)
    height, width = image.shape[:2]
    embedding = segmenter.encode(image)
    for label, make in PROMPTS.items():
        fields = make(width, height)
        expected, expected_score = reference_mask(image, **fields)
        mask = segmenter.decode(embedding, Prompt(**fields))
        assert mask.pixels.shape == (height, width), label
        assert mask.pixels.dtype == np.bool_
        assert 0 < mask.pixels.sum() < mask.pixels.size, f"{label}: degenerate mask proves nothing"
        assert np.array_equal(mask.pixels, expected), label
        assert mask.score == pytest.approx(expected_score, abs=1e-6), label


def test_concurrent_requests_never_see_each_others_image(segmenter, test_images):
    names = ["chelsea.png", "coffee.png"]
    images = [upright_rgb(test_images / name) for name in names]
    prompts = [Prompt(points=[(im.shape[1] / 2, im.shape[0] / 2)]) for im in images]
    alone = [segmenter.segment(im, p).pixels for im, p in zip(images, prompts)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(segmenter.segment, images[i % 2], prompts[i % 2]) for i in range(4)]
        together = [f.result().pixels for f in futures]
    for i, mask in enumerate(together):
        assert np.array_equal(mask, alone[i % 2])
