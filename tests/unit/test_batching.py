"""Micro-batched encoding: Meta's batched masks, each request its own image, errors to all."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from prometheus_client import REGISTRY

from sam2_api.batching import EncoderBatcher
from sam2_api.prompts import Prompt
from sam2_api.segmenter import Segmenter
from tests.conftest import upright_rgb


@pytest.fixture(scope="module")
def segmenter(sam2_model) -> Segmenter:
    return Segmenter(sam2_model)


def test_images_arriving_together_are_encoded_in_one_batch_with_metas_batched_masks(
    segmenter, sam2_model, test_images
):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    images = [upright_rgb(test_images / name) for name in ("chelsea.png", "coffee.png")]
    encoder_calls = REGISTRY.get_sample_value("sam2_encoder_seconds_count") or 0
    batcher = EncoderBatcher(segmenter, max_batch=4, max_wait=2.0)
    with ThreadPoolExecutor(max_workers=2) as pool:
        embeddings = list(pool.map(batcher.encode, images))
    assert REGISTRY.get_sample_value("sam2_encoder_seconds_count") - encoder_calls == 1  # one call, two images

    predictor = SAM2ImagePredictor(sam2_model)
    predictor.set_image_batch(images)
    points = [np.array([[im.shape[1] / 2, im.shape[0] / 2]], dtype=np.float32) for im in images]
    masks, scores, _ = predictor.predict_batch(points, [np.array([1])] * 2, multimask_output=True)
    for image, embedding, point, expected, expected_scores in zip(images, embeddings, points, masks, scores):
        assert embedding.orig_hw == image.shape[:2]
        mask = segmenter.decode(embedding, Prompt(points=point.tolist()))
        best = int(np.argmax(expected_scores))
        assert np.array_equal(mask.pixels, expected[best] > 0)


def test_a_failing_batch_fails_each_of_its_requests_and_the_batcher_goes_on(segmenter):
    batcher = EncoderBatcher(segmenter, max_batch=2, max_wait=0.0)
    with pytest.raises(Exception):
        batcher.encode(np.zeros((0, 5, 3), dtype=np.uint8))  # no pixels: the transforms refuse it
    assert batcher.encode(np.zeros((32, 32, 3), dtype=np.uint8)).orig_hw == (32, 32)
