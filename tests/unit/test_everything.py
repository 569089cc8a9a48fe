"""Segment everything on the model side (Engine.everything over a real DeviceThread, the test
checkpoint on the CPU): the objects must be SAM2AutomaticMaskGenerator's, pixel for pixel, with its
scores, boxes and points; the cached embedding serves repeats; the deadline and the memory bound hold.

The random weights give masks that cover most of their image, which Meta's generator drops when
they touch an inner crop edge; on images smaller than its 20-pixel edge tolerance every crop's
masks survive, so the crop tests use such an image. Thresholds are lowered so that masks survive.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

from sam2_api.model.embedding_cache import EmbeddingCache
from sam2_api.model.device_thread import DeviceThread, Lane
from sam2_api.model.engine import Engine
from sam2_api.errors import DeadlineExceeded
from sam2_api.model.mask_generator import work_per_point
from sam2_api.messages import CPU_POINTS_PER_BATCH, EverythingLimits, EverythingReply
from sam2_api.api.fields.everything import parse_params
from sam2_api.maskformats import bbox_and_area, from_coco_rle
from sam2_api.prompts import Prompt
from sam2_api.messages import RawImage
from sam2_api.model.segmenter import Segmenter
from tests.conftest import REPO, upright_rgb

KEEP_ALL = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)


@pytest.fixture(scope="module")
def device(sam2_model) -> DeviceThread:
    return DeviceThread(Segmenter(sam2_model))


@pytest.fixture(scope="module")
def cache() -> EmbeddingCache:
    return EmbeddingCache(8, 2**30)


@pytest.fixture(scope="module")
def engine(device, cache) -> Engine:
    # The longest deadline: these tests compare objects on a CPU that others may share (the
    # deadline has tests of its own).
    return Engine(device, cache, everything_limits=EverythingLimits(deadline_s=290))


def small(test_images, width: int, height: int) -> np.ndarray:
    return np.array(Image.fromarray(upright_rgb(test_images / "chelsea.png")).resize((width, height)))


def meta_objects(sam2_model, image: np.ndarray, **params) -> list[dict]:
    """Meta's generator as its README shows it, largest first (as the route orders them)."""
    records = SAM2AutomaticMaskGenerator(sam2_model, **params).generate(image)
    return sorted(records, key=lambda record: -record["area"])


def assert_same_objects(reply: EverythingReply, expected: list[dict]) -> None:
    assert reply.failure is None and not reply.needs_image
    assert len(reply.objects) == len(expected)
    for ours, meta in zip(reply.objects, expected):
        mask = from_coco_rle(ours.counts, reply.height, reply.width)
        assert np.array_equal(mask, meta["segmentation"])
        assert (ours.predicted_iou, ours.stability_score) == (meta["predicted_iou"], meta["stability_score"])
        assert ours.point_coords == meta["point_coords"]
        x, y, w, h = meta["bbox"]  # XYWH with an inclusive maximum
        assert bbox_and_area(mask) == ([x, y, x + w + 1, y + h + 1], meta["area"]) == ([x, y, x + w + 1, y + h + 1], ours.area)


def test_objects_equal_meta_generators_and_a_repeat_skips_the_encoder(engine, sam2_model, test_images):
    image = small(test_images, 64, 48)
    params = dict(points_per_side=3, **KEEP_ALL)
    first = engine.everything("id:cat-64", parse_params(**params), RawImage(pixels=image))
    # left out, points_per_batch is the CPU's 4 (the batch size can change a CPU's last float bits)
    expected = meta_objects(sam2_model, image, points_per_batch=CPU_POINTS_PER_BATCH, **params)
    assert len(expected) == 27  # 9 points × 3 candidates: nothing dropped, so every mask is compared
    assert_same_objects(first, expected)
    assert (first.width, first.height, first.found, first.cached) == (64, 48, 27, False)
    assert "encoder" in first.seconds and "everything" in first.seconds

    again = engine.everything("id:cat-64", parse_params(**params))  # the key alone: served from the cache
    assert again.cached and "encoder" not in again.seconds
    assert again.objects == first.objects


def test_refinement_single_masks_and_max_objects_equal_meta_generators(engine, sam2_model, test_images):
    image = small(test_images, 64, 48)
    params = dict(points_per_side=2, use_m2m=True, multimask_output=False, points_per_batch=3, **KEEP_ALL)
    reply = engine.everything("id:cat-64", parse_params(max_objects=3, **params), RawImage(pixels=image))
    expected = meta_objects(sam2_model, image, **params)
    assert reply.found == len(expected) == 4
    assert_same_objects(reply, expected[:3])


def test_crop_layers_equal_meta_generators(engine, sam2_model, test_images):
    image = small(test_images, 48, 36)
    params = dict(points_per_side=2, crop_n_layers=1, crop_nms_thresh=1.0, **KEEP_ALL)
    assert engine.everything("id:cat-48", parse_params(**params)).needs_image  # crops need the pixels
    reply = engine.everything("id:cat-48", parse_params(**params), RawImage(pixels=image))
    expected = meta_objects(sam2_model, image, **params)
    crops = {tuple(record["crop_box"]) for record in expected}
    assert len(crops) == 5  # the whole image and each of the 4 crops kept masks
    assert_same_objects(reply, expected)


def test_when_no_crop_keeps_a_mask_the_answer_is_empty(engine, test_images):
    # Meta's generator raises IndexError here (its cross-crop NMS indexes an empty 1-D tensor).
    image = small(test_images, 48, 36)
    reply = engine.everything("id:cat-48", parse_params(points_per_side=2, crop_n_layers=1, pred_iou_thresh=0.99),
                              RawImage(pixels=image))
    assert reply.failure is None and reply.objects == [] and reply.found == 0 and reply.cached


def test_a_request_that_would_pass_its_deadline_stops_between_batches_and_the_device_serves_on(device, cache, test_images):
    image = small(test_images, 64, 48)
    Engine(device, cache).everything("id:cat-64-deadline", parse_params(points_per_side=1), RawImage(pixels=image))
    # 0.5 s: the first batch starts within it (the embedding is cached), but not all 16 fit (0.1-0.6 s
    # each on a CPU). A new Engine has measured no batch yet, so nothing is refused before the first.
    hurried = Engine(device, cache, everything_limits=EverythingLimits(deadline_s=0.5))
    started = time.monotonic()
    reply = hurried.everything("id:cat-64-deadline", parse_params(points_per_side=4, points_per_batch=1, **KEEP_ALL))
    elapsed = time.monotonic() - started
    assert reply.failure is not None and reply.failure.kind == "DeadlineExceeded"
    assert DeadlineExceeded.status == 503
    message = reply.failure.message
    done = re.search(r"would not finish within its 0.5 s deadline \(SAM2_EVERYTHING_DEADLINE_S\): (\d+) of 16 points "
                     "were done", message)
    assert done and 1 <= int(done.group(1)) < 16, message
    assert "reduce points_per_side (4) or crop_n_layers (0)" in message
    assert elapsed < 10  # a few batches (a fraction of a second each), not sixteen
    # The device thread is free: the same image serves a click, and segment everything again.
    assert len(hurried.predict("id:cat-64-deadline", [Prompt(points=[[10, 10]])]).masks) == 1
    assert Engine(device, cache).everything("id:cat-64-deadline", parse_params(points_per_side=1)).failure is None


class CheckpointLog(DeviceThread):
    """The device thread, noting each checkpoint a long job reaches (in ``events``) before serving it."""

    def __init__(self, segmenter: Segmenter, events: list[str]) -> None:
        super().__init__(segmenter)
        self.events = events

    def checkpoint(self) -> None:
        self.events.append("batch")
        super().checkpoint()


A, B = "aaaaaaaaaaaaaaaa/id:cat", "bbbbbbbbbbbbbbbb/id:cat"  # the same image id, two API keys' tenants


def test_another_callers_click_runs_between_batches_and_the_objects_stay_metas(sam2_model, test_images):
    """Before: the click waited for every batch of the request ahead of it. Now it waits for one."""
    events: list[str] = []
    engine = Engine(CheckpointLog(Segmenter(sam2_model), events), EmbeddingCache(8, 2**30))
    image = small(test_images, 64, 48)
    click = [Prompt(points=[[20, 15]])]
    alone = engine.predict(B, click, RawImage(pixels=small(test_images, 40, 30))).masks[0].bits
    engine.everything(A, parse_params(points_per_side=1), RawImage(pixels=image))  # A's embedding, cached
    params = dict(points_per_side=3, points_per_batch=1, **KEEP_ALL)  # 9 batches
    events.clear()
    with ThreadPoolExecutor(max_workers=1) as pool:
        everything = pool.submit(engine.everything, A, parse_params(**params))
        while events.count("batch") < 2:
            time.sleep(0.005)
        events.append("click queued")
        answer = engine.predict(B, click)
        events.append("click answered")
        reply = everything.result(timeout=600)
    assert answer.cached and answer.masks[0].bits == alone
    assert_same_objects(reply, meta_objects(sam2_model, image, **params))
    assert events.count("batch") == 9
    queued, answered = events.index("click queued"), events.index("click answered")
    assert events[queued:answered].count("batch") <= 2  # the next checkpoint served it (and one more may pass meanwhile)
    assert events[answered:].count("batch") >= 3  # while A's request went on


def test_a_request_that_cannot_finish_after_the_work_queued_before_it_is_refused_before_its_first_batch(
        engine, device, cache, test_images):
    """Before: each request ran until its deadline check failed half-way. Now its expected time (the
    measured pace) after the work queued ahead is checked when it arrives, and again when its turn comes."""
    image = small(test_images, 64, 48)
    assert engine.everything(A, parse_params(points_per_side=1, **KEEP_ALL), RawImage(pixels=image)).failure is None
    assert engine.everything_pace.per_byte > 0  # measured by that batch
    engine = Engine(device, cache, everything_limits=EverythingLimits(deadline_s=6.0))  # A's image cached
    params = parse_params(points_per_side=3, **KEEP_ALL)
    plan = params.plan(64, 48, EverythingLimits())
    engine.everything_pace.per_byte = 0.4 / work_per_point(params, plan)  # 0.4 s a point: 3.6 s for these 9
    gate = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        # Another caller's long job, expected to take 5 s more: 5 + 3.6 s pass the 6 s deadline.
        ahead = pool.submit(device.call, lambda: gate.wait(60), "everything", lane=Lane("c" * 16, "everything"),
                            long=True, expected_s=5.0)
        while device.seconds_ahead(Lane("a" * 16, "everything")) < 4:
            time.sleep(0.01)
        started = time.monotonic()
        refused = engine.everything(A, params)
        assert time.monotonic() - started < 2  # at once: its 9 points would take 3.6 s after the 5 s ahead
        gate.set()
        ahead.result(timeout=60)
    message = refused.failure.message
    assert refused.failure.kind == "DeadlineExceeded" and "everything" not in refused.seconds
    assert "would not finish within its 6 s deadline (SAM2_EVERYTHING_DEADLINE_S): it needs about 4 s" in message
    assert "for its 9 points, after about" in message and "s of other requests' work queued before it" in message
    assert "with a 25% margin that is more than the 6 s left; nothing was computed; retry in a while, or " \
           "reduce points_per_side (3)" in message

    # Nothing was queued when it arrived, but a job said to be short held the device for 3 s: when its
    # turn comes, 3 s are left of 6, fewer than the 3.6 it needs and its 25 % margin (4.5 s); refused
    # then, before any batch (when it arrived, 4.5 s fitted).
    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(device.call, lambda: time.sleep(3), "probe", lane=Lane("c" * 16, "segment"),
                            expected_s=0.0)
        while device._running is None:
            time.sleep(0.01)
        refused = engine.everything(A, params)
        ahead.result(timeout=60)
    assert refused.failure.kind == "DeadlineExceeded" and "nothing was computed" in refused.failure.message
    assert "other requests' work" not in refused.failure.message and "everything" not in refused.seconds
    assert refused.seconds["queue"] > 2.5

    assert engine.everything(A, parse_params(points_per_side=2, **KEEP_ALL)).failure is None  # 1.6 s: fits


def test_bounds_are_checked_before_the_encoder(engine, test_images):
    reply = engine.everything("id:cat-16", parse_params(points_per_side=32), RawImage(pixels=small(test_images, 16, 12)))
    assert reply.failure.kind == "InvalidField" and "at most 12 for this 16x12 image" in reply.failure.message
    assert "encoder" not in reply.seconds
    reply = engine.everything("id:cat-16", parse_params(min_mask_region_area=100), RawImage(pixels=small(test_images, 16, 12)))
    assert reply.failure.kind == "InvalidField" and "sam2's compiled CUDA extension" in reply.failure.message


MEMORY_PROBE = """
import json, os, sys, threading, time
import numpy as np
from sam2.build_sam import build_sam2
from sam2_api.model.embedding_cache import EmbeddingCache
from sam2_api.model.device_thread import DeviceThread
from sam2_api.model.engine import Engine
from sam2_api.messages import EverythingParams, EverythingLimits
from sam2_api.messages import RawImage
from sam2_api.model.segmenter import Segmenter

def rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", sys.argv[1], device="cpu")
engine = Engine(DeviceThread(Segmenter(model)), EmbeddingCache(1, 2**30))
image = np.random.default_rng(0).integers(0, 256, (384, 512, 3), dtype=np.uint8)  # noisy masks: the worst RLE
engine.everything("id:probe", EverythingParams(points_per_side=1), RawImage(pixels=image))  # encoder, outside the probe
params = EverythingParams(points_per_side=3, points_per_batch=8, pred_iou_thresh=0, stability_score_thresh=0,
                          box_nms_thresh=1)
base, peak, running = rss(), [0], True
def sample():
    while running:
        peak[0] = max(peak[0], rss())
        time.sleep(0.0005)
sampler = threading.Thread(target=sample)
sampler.start()
reply = engine.everything("id:probe", params)
running = False
sampler.join()
plan = params.plan(512, 384, EverythingLimits())
print(json.dumps({"measured": peak[0] - base, "estimate": plan.batch_bytes, "found": reply.found}))
"""


def test_one_batch_stays_within_the_stated_memory_bound(checkpoint):
    """In a fresh process (the allocator holds nothing yet), the resident memory that one batch of
    8 points adds stays under the estimate that the memory bound is applied to, and is of its order."""
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(checkpoint)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=True)
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert probe["found"] == 27
    assert probe["estimate"] / 3 < probe["measured"] <= probe["estimate"]


def test_the_fast_helpers_give_meta_helpers_values_and_leave_meta_generator_as_it_is():
    import sam2.automatic_mask_generator as meta_module
    from sam2.utils.amg import MaskData, mask_to_rle_pytorch

    from sam2_api.model.mask_generator import _mask_to_rle, _MaskData

    rng = np.random.default_rng(0)
    for shape in [(0, 4, 4), (1, 1, 1), (3, 5, 7), (6, 30, 20)]:
        for density in (0.0, 0.3, 1.0):
            masks = torch.from_numpy(rng.random(shape) < density)
            assert _mask_to_rle(masks) == mask_to_rle_pytorch(masks), (shape, density)
    gathered, expected = _MaskData(), MaskData()
    for batch in range(3):
        rles = mask_to_rle_pytorch(torch.from_numpy(rng.random((2, 4, 4)) < 0.5))
        for data in (gathered, expected):
            data.cat(MaskData(rles=list(rles), iou=torch.tensor([batch, batch + 0.5])))
    assert gathered["rles"] == expected["rles"] and torch.equal(gathered["iou"], expected["iou"])
    # Meta's own generator still runs Meta's helpers: the reference the other tests compare with.
    assert SAM2AutomaticMaskGenerator._process_batch.__globals__["mask_to_rle_pytorch"] is mask_to_rle_pytorch
    assert meta_module.MaskData is MaskData
