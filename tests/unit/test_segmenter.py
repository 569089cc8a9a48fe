"""Segmenter must give exactly SAM2ImagePredictor's masks, and keep images apart across threads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam2_api.imaging import pack_mask
from sam2_api.prompts import Prompt
from sam2_api.model.segmenter import GPU_DECODER_BATCH, Segmenter
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
    from sam2_api.model.segmenter import _BIT_WEIGHTS

    rng = np.random.default_rng(1)
    for height, width in [(5, 13), (16, 16), (427, 640)]:
        mask = torch.from_numpy(rng.random((height, width)) > 0.4)
        rows = torch.nn.functional.pad(mask.to(torch.uint8), (0, (-width) % 8))
        weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8)
        packed = (rows.view(height, -1, 8) * weights).sum(dim=2, dtype=torch.uint8)
        assert packed.numpy().tobytes() == pack_mask(mask.numpy())


# A user's session: clicks added one by one, each sent with the previous answer's logits.
SESSIONS = {
    "astronaut.png": ([[200, 150], [260, 260], [100, 300]], [1, 1, 0]),
    "coffee.png": ([[300, 200], [50, 50], [200, 150]], [1, 0, 1]),
    "rocket.jpg": ([[320, 200], [330, 100], [100, 50]], [1, 1, 0]),
}


@pytest.mark.parametrize("name", SESSIONS)
def test_chained_clicks_equal_the_predictor_fed_its_previous_logits(segmenter, reference_predictor, test_images, name):
    """Click 1 as SAM 2 advises (three candidates, the best kept); each further click with all the
    clicks so far and the previous answer's low-res logits as mask_input, as in Meta's notebook."""
    image = upright_rgb(test_images / name)
    points, labels = SESSIONS[name]
    embedding = segmenter.encode(image)
    predictor = reference_predictor(image)
    previous_ours = previous_theirs = None
    for count in range(1, len(points) + 1):
        prompt = Prompt(points=points[:count], labels=labels[:count])
        masks, scores, logits = predictor.predict(
            point_coords=np.asarray(points[:count], dtype=np.float32), point_labels=np.asarray(labels[:count]),
            mask_input=None if previous_theirs is None else previous_theirs[None], multimask_output=count == 1,
        )
        best = int(np.argmax(scores))
        mask = segmenter.decode_many(embedding, [prompt], [previous_ours])[0]
        expected = masks[best] > 0
        assert 0 < expected.sum() < expected.size, f"click {count}: a degenerate mask proves nothing"
        assert np.array_equal(mask.pixels(), expected), f"click {count}"
        assert mask.score == pytest.approx(float(scores[best]), abs=1e-6)
        assert mask.logits.dtype == torch.float32 and torch.equal(mask.logits, torch.from_numpy(logits[best]))
        if count > 1:  # the mask input changed the answer: the test would see it ignored
            alone = segmenter.decode(embedding, prompt)
            assert not np.array_equal(alone.pixels(), expected)
        previous_ours, previous_theirs = mask.logits, logits[best]


def test_candidates_are_the_predictors_three_masks_best_first(segmenter, reference_predictor, test_images):
    image = upright_rgb(test_images / "chelsea.png")
    embedding = segmenter.encode(image)
    predictor = reference_predictor(image)
    masks, scores, logits = predictor.predict(point_coords=np.asarray([[225.0, 150.0]]), point_labels=np.asarray([1]),
                                              multimask_output=True)
    best = segmenter.decode(embedding, Prompt(points=[[225, 150]], candidates=True))
    got = [best, *best.others]
    order = np.argsort(-scores, kind="stable")
    assert len(got) == 3 and order[0] == np.argmax(scores)
    for mask, index in zip(got, order):
        assert np.array_equal(mask.pixels(), masks[index] > 0)
        assert mask.score == pytest.approx(float(scores[index]), abs=1e-6)
        assert torch.equal(mask.logits, torch.from_numpy(logits[index]))
    assert len({m.bits for m in got}) == 3  # three different masks
    assert segmenter.decode(embedding, Prompt(points=[[225, 150]])).others == ()


def test_on_the_cpu_each_object_is_its_own_decoder_call_exactly_the_predictors_for_that_prompt(
        segmenter, reference_predictor, test_images):
    """Before: 8 prompts a call on the CPU too, a few seconds that another caller's click waited
    for, with masks that could differ from each prompt's alone in the last bits."""
    image = upright_rgb(test_images / "astronaut.png")
    embedding = segmenter.encode(image)
    points = [[60.0 + 37 * i, 40.0 + 29 * i] for i in range(10)]
    prompts = [Prompt(points=[point]) for point in points]
    assert segmenter.decoder_batch == 1 and segmenter.decoder_calls(prompts, [None] * 10) == [[i] for i in range(10)]
    predictor = reference_predictor(image)
    for point, mask in zip(points, segmenter.decode_many(embedding, prompts)):
        masks, scores, logits = predictor.predict(point_coords=np.asarray([point]), point_labels=np.asarray([1]),
                                                  multimask_output=True)
        best = int(np.argmax(scores))
        assert np.array_equal(mask.pixels(), masks[best] > 0)
        assert torch.equal(mask.logits, torch.from_numpy(logits[best]))


def test_batched_prompts_with_mask_inputs_equal_each_alone(sam2_model, test_images):
    """/segment_objects decodes prompts of one shape together (on a GPU), mask inputs too."""
    segmenter = Segmenter(sam2_model, decoder_batch=GPU_DECODER_BATCH)
    image = upright_rgb(test_images / "coffee.png")
    embedding = segmenter.encode(image)
    first = [segmenter.decode(embedding, Prompt(points=[point])) for point in ([300, 200], [100, 300])]
    prompts = [Prompt(points=[[300, 200], [310, 150]]), Prompt(points=[[100, 300], [120, 320]]),
               Prompt(points=[[500, 100], [520, 120]])]
    inputs = [first[0].logits, first[1].logits, None]
    together = segmenter.decode_many(embedding, prompts, inputs)
    for prompt, mask_input, mask in zip(prompts, inputs, together):
        alone = segmenter.decode_many(embedding, [prompt], [mask_input])[0]
        assert alone.bits == mask.bits and alone.score == mask.score
        # The batched matrix products round a few logits differently in their last bits.
        assert torch.allclose(alone.logits, mask.logits, rtol=0, atol=1e-5)
