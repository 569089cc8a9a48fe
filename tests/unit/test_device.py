"""The device thread: every model call on one thread, images apart, batches as Meta batches them."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from prometheus_client import REGISTRY

from sam2_api.device import DeviceThread
from sam2_api.prompts import Prompt
from sam2_api.segmenter import Segmenter
from sam2_api.timing import StageTimer
from tests.conftest import upright_rgb


@pytest.fixture(scope="module")
def segmenter(sam2_model) -> Segmenter:
    return Segmenter(sam2_model)


def test_concurrent_requests_never_see_each_others_image_and_all_run_on_one_thread(segmenter, test_images):
    device = DeviceThread(segmenter)
    images = [upright_rgb(test_images / name) for name in ("chelsea.png", "coffee.png")]
    prompts = [Prompt(points=[(im.shape[1] / 2, im.shape[0] / 2)]) for im in images]
    alone = [segmenter.segment(im, p).bits for im, p in zip(images, prompts)]
    threads = set()

    def request(i: int) -> bytes:
        timer = StageTimer()
        embedding = device.encode(images[i % 2], timer)
        threads.add(device.call(threading.get_ident, "probe", timer))
        mask = device.decode(embedding, [prompts[i % 2]], timer)[0]
        assert set(timer.seconds) == {"queue", "encoder", "probe", "decoder"}
        return mask.bits

    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(request, range(4)))
    assert together == [alone[i % 2] for i in range(4)]
    assert threads == {device._thread.ident}


def test_images_arriving_together_are_encoded_in_one_batch_with_metas_batched_masks(
    segmenter, sam2_model, test_images
):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    images = [upright_rgb(test_images / name) for name in ("chelsea.png", "coffee.png")]
    device = DeviceThread(segmenter, max_batch=4, max_wait=2.0)
    batches = REGISTRY.get_sample_value("sam2_encoder_batch_size_count") or 0
    with ThreadPoolExecutor(max_workers=2) as pool:
        embeddings = list(pool.map(lambda im: device.encode(im, StageTimer()), images))
    assert REGISTRY.get_sample_value("sam2_encoder_batch_size_count") - batches == 1  # one call, two images

    predictor = SAM2ImagePredictor(sam2_model)
    predictor.set_image_batch(images)
    points = [np.array([[im.shape[1] / 2, im.shape[0] / 2]], dtype=np.float32) for im in images]
    masks, scores, _ = predictor.predict_batch(points, [np.array([1])] * 2, multimask_output=True)
    for image, embedding, point, expected, expected_scores in zip(images, embeddings, points, masks, scores):
        assert embedding.orig_hw == image.shape[:2]
        mask = segmenter.decode(embedding, Prompt(points=point.tolist()))
        best = int(np.argmax(expected_scores))
        assert np.array_equal(mask.pixels(), expected[best] > 0)


def test_a_failing_job_fails_its_callers_and_the_thread_goes_on(segmenter):
    device = DeviceThread(segmenter, max_batch=2, max_wait=0.0)
    with pytest.raises(Exception):
        device.encode(np.zeros((0, 5, 3), dtype=np.uint8), StageTimer())  # no pixels: the resize refuses it
    with pytest.raises(ZeroDivisionError):
        device.call(lambda: 1 / 0, "probe")
    assert device.encode(np.zeros((32, 32, 3), dtype=np.uint8), StageTimer()).orig_hw == (32, 32)
