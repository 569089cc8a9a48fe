"""The device thread: every model call on one thread, images apart, batches as Meta batches them,
callers served in turn."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from prometheus_client import REGISTRY

from sam2_api.model.device_thread import DeviceThread, Lane
from sam2_api.prompts import Prompt
from sam2_api.model.segmenter import GPU_DECODER_BATCH, Segmenter
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


def queue_behind_a_busy_device(device: DeviceThread, jobs: list[tuple[str, Lane, bool]], ran: list[str],
                               pool: ThreadPoolExecutor, seconds: dict[str, float] | None = None) -> list:
    """Submit ``jobs`` (name, lane, long), in this order, while the device runs another job; each
    job records its name as it runs on the device thread (and then takes ``seconds[name]``, if
    given). Returns their futures, once all are queued."""
    gate = threading.Event()
    futures = [pool.submit(device.call, gate.wait, "gate", lane=Lane("someone else", "gate"))]
    while device._running is None:
        time.sleep(0.01)
    for name, lane, long in jobs:
        def job(name=name) -> None:
            ran.append(name)
            time.sleep((seconds or {}).get(name, 0.0))

        futures.append(pool.submit(device.call, job, "probe", lane=lane, long=long))
        while sum(len(device._lanes.of_tenant(t)) for t in device._lanes.tenants()) < len(futures) - 1:
            time.sleep(0.01)  # queued: the next one comes after it
    gate.set()
    return futures


@pytest.mark.parametrize("tenants", [("a", "b"), (None, None)], ids=["api-keys", "no-keys"])
def test_a_caller_with_many_jobs_queued_waits_behind_its_own_not_behind_the_others(segmenter, tenants):
    """Before: first in, first out; the other caller's job ran after all of A's. Now each caller
    (with API keys, each key; without, each route) gets one job per turn."""
    device = DeviceThread(segmenter)
    a, b = Lane(tenants[0], "everything"), Lane(tenants[1], "segment")
    ran: list[str] = []
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = queue_behind_a_busy_device(
            device, [("a1", a, False), ("a2", a, False), ("a3", a, False), ("a4", a, False), ("b1", b, False)], ran, pool)
        for future in futures:
            future.result(timeout=60)
    assert ran == ["a1", "b1", "a2", "a3", "a4"]


def test_turns_are_shared_by_device_time_so_a_key_with_long_jobs_waits_out_its_debt(segmenter):
    """Before: one job per tenant per turn, whatever it cost; a key whose jobs took 1 s (a request
    with 32 objects on a large image) had the device 20 times as long as a key sending clicks of
    0.05 s. Now after a's 1 s job, b's clicks run until b has had about as much device time."""
    device = DeviceThread(segmenter)
    a, b = Lane("a", "segment_objects"), Lane("b", "segment")
    jobs = [("a1", a, False), ("a2", a, False), *((f"b{i}", b, False) for i in range(1, 7))]
    ran: list[str] = []
    with ThreadPoolExecutor(max_workers=10) as pool:
        futures = queue_behind_a_busy_device(device, jobs, ran, pool, seconds={"a1": 1.0, "a2": 1.0})
        for future in futures:
            future.result(timeout=60)
    assert ran == ["a1", "b1", "b2", "b3", "b4", "b5", "b6", "a2"]  # round-robin by count: a1 b1 a2 b2 ...


def test_a_request_with_many_prompts_is_one_job_per_decoder_call_with_the_same_masks(sam2_model, test_images):
    """Before: all of a request's decoder calls were one job, which others waited for whole."""
    segmenter = Segmenter(sam2_model, decoder_batch=GPU_DECODER_BATCH)  # the CPU's is 1: one call per prompt
    device = DeviceThread(segmenter)
    embedding = device.encode(upright_rgb(test_images / "chelsea.png"), StageTimer())
    prompts = [Prompt(points=[[20 + 9 * i, 30 + 5 * i]]) for i in range(20)] + [Prompt(box=[10, 10, 200, 150])]
    calls = segmenter.decoder_calls(prompts, [None] * len(prompts))
    assert [len(indices) for indices in calls] == [8, 8, 4, 1]
    before = REGISTRY.get_sample_value("sam2_stage_seconds_count", {"stage": "decoder"}) or 0
    masks = device.decode(embedding, prompts, StageTimer())
    assert REGISTRY.get_sample_value("sam2_stage_seconds_count", {"stage": "decoder"}) - before == len(calls)
    assert [mask.bits for mask in masks] == [mask.bits for mask in segmenter.decode_many(embedding, prompts)]


def test_clicks_come_first_at_a_long_jobs_checkpoint(segmenter):
    """Before: queued short jobs ran for at most as long as the long job's step (0.3 s here, so 3
    of b's 5 clicks), the long job kept half of the device. Now for up to SHORT_FIRST times its step."""
    device = DeviceThread(segmenter)
    ran: list[str] = []
    queued = threading.Event()

    def long_job() -> None:
        queued.wait(60)
        time.sleep(0.3)  # its step
        ran.append("long0")
        device.checkpoint()
        ran.append("long1")

    def click(name: str) -> None:
        time.sleep(0.1)
        ran.append(name)

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(device.call, long_job, "everything", lane=Lane("a", "everything"), long=True)]
        while device._running is None:
            time.sleep(0.01)
        for index in range(5):
            futures.append(pool.submit(device.call, lambda name=f"b{index}": click(name), "probe", lane=Lane("b", "segment")))
            while sum(len(device._lanes.of_tenant(t)) for t in device._lanes.tenants()) < index + 1:
                time.sleep(0.01)
        queued.set()
        for future in futures:
            future.result(timeout=60)
    assert ran == ["long0", "b0", "b1", "b2", "b3", "b4", "long1"]  # 0.5 s of clicks within 3 × 0.3 s


def test_another_keys_click_runs_between_the_blocks_of_an_encoder_pass_on_the_cpu(segmenter):
    """Before: a click waited for the whole encoder pass of another key's new image (2-17 s on this
    CPU). Now it runs at the next block of the trunk, and the embedding is the same."""
    device = DeviceThread(segmenter)
    image = np.random.default_rng(3).integers(0, 256, (1024, 1024, 3), np.uint8)
    finished: dict[str, float] = {}

    def encode() -> None:
        embedding = device.encode(image, StageTimer(), Lane("a", "segment"))
        finished["encode"] = time.perf_counter()
        return embedding

    with ThreadPoolExecutor(max_workers=2) as pool:
        encoding = pool.submit(encode)
        while device._running is None or device._running.image is None:
            time.sleep(0.001)
        device.call(lambda: finished.setdefault("click", time.perf_counter()), "decoder", lane=Lane("b", "segment"))
        embedding = encoding.result(timeout=300)
    assert finished["click"] < finished["encode"]
    alone = segmenter.encode(image)
    assert torch.equal(embedding.image_embed, alone.image_embed)
    assert all(torch.equal(mine, theirs) for mine, theirs in zip(embedding.high_res_feats, alone.high_res_feats))


def test_clicks_come_first_between_the_blocks_of_an_encoder_pass_too(segmenter):
    """Before: between an encoder pass's blocks, queued clicks ran for about as long as the block
    (the new image kept half of the device while others clicked). Now for up to SHORT_FIRST times
    as long, as at a long job's checkpoint: the pass keeps a quarter, the clicks three quarters."""
    device = DeviceThread(segmenter)
    image = np.random.default_rng(4).integers(0, 256, (1024, 1024, 3), np.uint8)
    timer = StageTimer()
    encoded = threading.Event()

    def clicker() -> None:  # 20 ms clicks, one queued at a time by each of 16 threads, until the pass ends
        while not encoded.is_set():
            device.call(lambda: time.sleep(0.02), "probe", lane=Lane("b", "segment"))

    with ThreadPoolExecutor(max_workers=17) as pool:
        encoding = pool.submit(device.encode, image, timer, Lane("a", "segment"))
        while device._running is None or device._running.image is None:
            time.sleep(0.001)
        clickers = [pool.submit(clicker) for _ in range(16)]
        started = time.perf_counter()
        encoding.result(timeout=300)
        wall = time.perf_counter() - started
        encoded.set()
        for future in clickers:
            future.result(timeout=60)
    own = timer.seconds["encoder"]  # the pass's own time, its pauses left out
    print(f"{wall - own:.2f} s of clicks during {own:.2f} s of the pass")
    assert wall - own > 2 * own, f"{wall - own:.2f} s of clicks beside {own:.2f} s of the pass"  # was about 1x


def test_tenants_take_turns_and_encodes_of_any_caller_still_share_a_batch(segmenter, test_images):
    device = DeviceThread(segmenter, max_batch=4, max_wait=0.0)
    a, b, c = Lane("a", "segment"), Lane("b", "segment"), Lane("c", "segment")
    ran: list[str] = []
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = queue_behind_a_busy_device(
            device, [("a1", a, False), ("a2", a, False), ("b1", b, False), ("b2", b, False), ("c1", c, False)], ran, pool)
        for future in futures:
            future.result(timeout=60)
    assert ran == ["a1", "b1", "c1", "a2", "b2"]

    # Three callers' images queued behind a busy device: one encoder call for all three.
    images = [np.ascontiguousarray(upright_rgb(test_images / "chelsea.png")[:64 * (i + 1), :64]) for i in range(3)]
    batches = REGISTRY.get_sample_value("sam2_encoder_batch_size_count") or 0
    gate = threading.Event()
    with ThreadPoolExecutor(max_workers=4) as pool:
        blocker = pool.submit(device.call, gate.wait, "gate")
        while device._running is None:
            time.sleep(0.01)
        encoded = [pool.submit(device.encode, image, StageTimer(), lane) for image, lane in zip(images, (a, b, c))]
        while sum(len(device._lanes.of_tenant(t)) for t in device._lanes.tenants()) < 3:
            time.sleep(0.01)
        gate.set()
        blocker.result(timeout=60)
        sizes = [future.result(timeout=300).orig_hw for future in encoded]
    assert sizes == [(64, 64), (128, 64), (192, 64)]
    assert REGISTRY.get_sample_value("sam2_encoder_batch_size_count") - batches == 1


def test_a_long_job_lets_queued_short_jobs_run_at_its_checkpoints(segmenter):
    """A long job (segment everything) yields at its checkpoints to queued short jobs, in turn by
    device time, for as long as its step took (here: its wait, longer than theirs);
    other long jobs wait for it to end; the time queued ahead is estimated from what is queued."""
    device = DeviceThread(segmenter)
    ran: list[str] = []
    queued = threading.Event()

    def long_job() -> None:
        queued.wait(60)
        time.sleep(0.3)  # its first step's work: more than a turn's credit (TURN_S)
        for step in range(3):
            ran.append(f"long{step}")
            device.checkpoint()

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(device.call, long_job, "everything", lane=Lane("a", "everything"), long=True,
                               expected_s=30.0)]
        while device._running is None:
            time.sleep(0.01)
        jobs = [("b1", Lane("b", "segment"), False), ("b2", Lane("b", "segment"), False),
                ("c-long", Lane("c", "everything"), True), ("a-click", Lane("a", "segment"), False)]
        for name, lane, long in jobs:
            futures.append(pool.submit(device.call, lambda name=name: ran.append(name), "probe", lane=lane,
                                       long=long, expected_s=20.0 if long else 0.5))
            while sum(len(device._lanes.of_tenant(t)) for t in device._lanes.tenants()) < len(futures) - 1:
                time.sleep(0.01)
        # Ahead of a new caller d: the rest of a's long job (30 s expected), then one job of each
        # other caller (b's first click, c's long job, a's click); ahead of b's next: both of b's.
        assert 45 < device.seconds_ahead(Lane("d", "everything")) <= 30 + 0.5 + 20 + 0.5
        assert 45 < device.seconds_ahead(Lane("b", "segment")) <= 30 + 2 * 0.5 + 20 + 0.5
        assert device.seconds_ahead(Lane("b", "segment")) - device.seconds_ahead(Lane("d", "everything")) == pytest.approx(0.5, abs=0.1)
        queued.set()
        for future in futures:
            future.result(timeout=60)
    # b's two clicks before a's: a has had the device for its long job's first step.
    assert ran == ["long0", "b1", "b2", "a-click", "long1", "long2", "c-long"]
    assert 0 < device.stretch() < 1  # others' jobs took part of the long job's time, less than its own
    with pytest.raises(RuntimeError, match="device thread"):
        device.checkpoint()  # not from a request's thread
