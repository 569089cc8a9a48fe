"""Segmenter must give exactly SAM2ImagePredictor's masks, and keep images apart across threads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam2_api.imaging import pack_mask
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
        pixels = mask.pixels()
        assert mask.hw == (height, width) and pixels.shape == (height, width), label
        assert 0 < pixels.sum() < pixels.size, f"{label}: degenerate mask proves nothing"
        assert np.array_equal(pixels, expected), label
        assert mask.bits == pack_mask(expected), label
        assert mask.score == pytest.approx(expected_score, abs=1e-6), label


def test_model_input_is_sam2_transforms_bit_for_bit(segmenter, test_images):
    """The uint8 image crosses to the device and is resized there: on the CPU that must be the very
    computation SAM2ImagePredictor runs through SAM2Transforms."""
    image = upright_rgb(test_images / "rocket.jpg")
    expected = segmenter._transforms(image)
    assert torch.equal(segmenter.model_input(image), expected)


def test_device_packing_equals_pack_mask(segmenter):
    """The CUDA path packs with tensor ops; the same ops on the CPU must give pack_mask's bytes."""
    from sam2_api.segmenter import _BIT_WEIGHTS

    rng = np.random.default_rng(1)
    for height, width in [(5, 13), (16, 16), (427, 640)]:
        mask = torch.from_numpy(rng.random((height, width)) > 0.4)
        rows = torch.nn.functional.pad(mask.to(torch.uint8), (0, (-width) % 8))
        weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8)
        packed = (rows.view(height, -1, 8) * weights).sum(dim=2, dtype=torch.uint8)
        assert packed.numpy().tobytes() == pack_mask(mask.numpy())
