"""The tracker's masks are SAM2VideoPredictor's, pixel for pixel, on the same decoded frames; its
jobs queue, cancel, and give their memory back.

Both sides run the random-init tiny weights on the CPU with the model's input size set to 256
(a hydra override of the same config, for both): every step of the computation is the one run at
1024, at a sixteenth of the cost. tests/integration/test_track_api.py checks the served result at
the real size.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from sam2_api import errors, metrics, video
from sam2_api.model.device_thread import DeviceThread
from sam2_api.messages import (
    Failure, RecordReader, TrackDecoding, TrackedFrame, TrackEnd, TrackPrompt, TrackQueued, TrackSpec, TrackStarted,
)
from sam2_api.prompts import Prompt
from sam2_api.model.segmenter import Segmenter
from sam2_api.model.tracker import Tracker, TrackerSettings
from sam2_api.model.video_session import (
    FrameStore, memory_reach, new_inference_state, plan_offload, processed_range, state_bytes,
)
from tests.clips import encode, moving_shapes

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
SMALL = ("++model.image_size=256",)
SHORT_REACH = SMALL + ("++model.max_obj_ptrs_in_encoder=4",)  # memory_reach 6: pruning within 10 frames
LIMITS = video.VideoLimits(max_frames=64, max_pixels=10**6, max_seconds=60)


def build_image_model(checkpoint, overrides):
    from sam2.build_sam import build_sam2

    return build_sam2(CONFIG, str(checkpoint), device="cpu", hydra_overrides_extra=list(overrides))


def build_reference(checkpoint, overrides):
    from sam2.build_sam import build_sam2_video_predictor

    return build_sam2_video_predictor(CONFIG, str(checkpoint), device="cpu", hydra_overrides_extra=list(overrides))


def make_tracker(model, overrides, **settings) -> Tracker:
    values = dict(limits=LIMITS, offload="auto", gpu_bytes=2**30, job_timeout_s=600, overrides=overrides)
    return Tracker(DeviceThread(Segmenter(model)), CONFIG, TrackerSettings(**{**values, **settings}))


@pytest.fixture(scope="module")
def tracker(checkpoint):
    return make_tracker(build_image_model(checkpoint, SMALL), SMALL)


@pytest.fixture(scope="module")
def reference(checkpoint):
    return build_reference(checkpoint, SMALL)


@pytest.fixture(scope="module")
def clip() -> bytes:
    return encode(moving_shapes(8))


def records(stream) -> list:
    reader = RecordReader()
    found = []
    for chunk in stream:
        found += reader.feed(chunk)
    assert reader.pending == 0
    return found


def tracked(found: list) -> dict[int, list[np.ndarray]]:
    started = next(r for r in found if isinstance(r, TrackStarted))
    from sam2_api.imaging import unpack_mask

    return {r.frame_index: [unpack_mask(bits, started.height, started.width) for bits in r.masks]
            for r in found if isinstance(r, TrackedFrame)}


def reference_masks(predictor, frames, prompts: list[TrackPrompt], start, max_frames, reverse, tmp_path):
    """Meta's predictor used as its README shows, on the frames we decoded: written losslessly
    (PNG bytes; its loader opens them by content, whatever the name) where init_state reads them."""
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"{index:05d}.jpg", format="PNG")
    state = predictor.init_state(str(tmp_path))
    for prompt in sorted(prompts, key=lambda p: p.object_index):
        points, labels = prompt.prompt.point_arrays()
        predictor.add_new_points_or_box(state, frame_idx=prompt.frame_index, obj_id=prompt.object_index,
                                        points=points, labels=labels, box=prompt.prompt.box_array())
    masks = {}
    for frame_index, object_ids, logits in predictor.propagate_in_video(
            state, start_frame_idx=start, max_frame_num_to_track=None if max_frames is None else max_frames - 1,
            reverse=reverse):
        masks[frame_index] = [(logits[object_ids.index(k), 0] > 0.0).numpy() for k in sorted(object_ids)]
    return masks


def spec(prompts, **fields) -> TrackSpec:
    objects = 1 + max(prompt.object_index for prompt in prompts)
    return TrackSpec(job_id=fields.pop("job_id", "job"), objects=objects, prompts=prompts, **fields)


def on(object_index, frame_index, **prompt) -> TrackPrompt:
    return TrackPrompt(object_index=object_index, frame_index=frame_index, prompt=Prompt(**prompt))


# Two objects, each prompted on two frames: the red square by clicks, the green disc by a box
# then a click. (On the CPU every object needs a prompt on the first tracked frame: see
# test_on_the_cpu_every_object_starts_prompted.)
PROMPTS = [
    on(0, 0, points=[[20, 32]], labels=[1]),
    on(1, 0, box=[76, 16, 104, 44]),
    on(0, 4, points=[[40, 32], [100, 80]], labels=[1, 0]),
    on(1, 3, points=[[90, 40]]),
]


def test_forward_masks_equal_the_video_predictors(tracker, reference, clip, tmp_path):
    found = records(tracker.stream(clip, spec(PROMPTS)))
    ours = tracked(found)
    frames = list(video.frames(clip, LIMITS))
    expected = reference_masks(reference, frames, PROMPTS, 0, None, False, tmp_path)
    assert list(ours) == list(expected) == list(range(8))
    for index in expected:
        for mine, theirs in zip(ours[index], expected[index], strict=True):
            assert np.array_equal(mine, theirs), f"frame {index}"
    assert isinstance(found[-1], TrackEnd)
    started = next(r for r in found if isinstance(r, TrackStarted))
    assert (started.clip_frames, started.width, started.height, started.first_frame, started.last_frame) == \
        (8, 128, 96, 0, 7)
    assert any(isinstance(r, TrackDecoding) and r.frames_decoded == 8 for r in found)
    # a check that can fail: the objects' masks are not all empty, and differ from each other
    assert any(ours[i][0].any() for i in ours) and any(not np.array_equal(*ours[i]) for i in ours)


def test_reverse_masks_equal_the_video_predictors(tracker, reference, clip, tmp_path):
    prompts = [on(0, 5, points=[[40, 32]]), on(1, 5, box=[76, 33, 104, 61]), on(1, 3, points=[[90, 40]])]
    found = records(tracker.stream(clip, spec(prompts, reverse=True, max_frames=5)))
    ours = tracked(found)
    expected = reference_masks(reference, list(video.frames(clip, LIMITS)), prompts, 5, 5, True, tmp_path)
    assert list(ours) == list(expected) == [5, 4, 3, 2, 1]
    for index in expected:
        for mine, theirs in zip(ours[index], expected[index], strict=True):
            assert np.array_equal(mine, theirs), f"frame {index}"


def test_state_stays_bounded_and_masks_stay_exact_when_old_frames_are_forgotten(checkpoint, tmp_path):
    model = build_image_model(checkpoint, SHORT_REACH)
    tracker = make_tracker(model, SHORT_REACH)
    clip = encode(moving_shapes(12))
    prompts = [on(0, 0, points=[[20, 32]])]
    stream = tracker.stream(clip, spec(prompts, job_id="long"))
    reader, found, state_sizes, kept = RecordReader(), [], [], []
    for chunk in stream:
        for record in reader.feed(chunk):
            found.append(record)
            if isinstance(record, TrackedFrame):
                session = tracker._jobs["long"].session
                state_sizes.append(session.nbytes())
                kept.append(len(session.state["output_dict_per_obj"][0]["non_cond_frame_outputs"]))
    reach = memory_reach(tracker.model)
    assert reach == 6
    assert max(kept) == reach and kept[-1] == reach  # frames 0 (prompted) + the last `reach` tracked
    assert max(state_sizes) <= state_bytes(tracker.model, objects=1, prompted_frames=1)
    ours = tracked(found)
    expected = reference_masks(build_reference(checkpoint, SHORT_REACH), list(video.frames(clip, LIMITS)), prompts,
                               0, None, False, tmp_path)
    assert list(ours) == list(expected) == list(range(12))
    for index in expected:
        assert np.array_equal(ours[index][0], expected[index][0]), f"frame {index}"


def test_video_predictor_holds_the_image_models_weights(tracker):
    image_model = tracker.device.segmenter.model
    theirs = {name: t.data_ptr() for name, t in image_model.state_dict(keep_vars=True).items()}
    ours = {name: t.data_ptr() for name, t in tracker.model.state_dict(keep_vars=True).items()}
    assert ours == theirs
    assert tracker.model.image_size == image_model.image_size == 256
    # Meta's video settings, which the image model does not have
    assert tracker.model.binarize_mask_from_pts_for_mem_enc and tracker.model.fill_hole_area == 8
    assert not image_model.binarize_mask_from_pts_for_mem_enc


def test_inference_state_has_init_states_keys(tracker, clip, tmp_path):
    frames = list(video.frames(clip, LIMITS))[:2]
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"{index:05d}.jpg", format="PNG")
    theirs = tracker.model.init_state(str(tmp_path))
    ours = new_inference_state(tracker.model, FrameStore(256, torch.device("cpu")), 2, 96, 128, False, False)
    assert set(ours) == set(theirs)
    assert {k: v for k, v in ours.items() if k not in ("images", "cached_features")} == \
        {k: v for k, v in theirs.items() if k not in ("images", "cached_features")}


def test_frames_are_bit_identical_to_meta_loaders(clip, tmp_path):
    from sam2.utils.misc import load_video_frames_from_jpg_images

    frames = list(video.frames(clip, LIMITS))
    store = FrameStore(256, torch.device("cpu"))
    for index, frame in enumerate(frames):
        store.put(index, frame)
        Image.fromarray(frame).save(tmp_path / f"{index:05d}.jpg", format="PNG")
    images, height, width = load_video_frames_from_jpg_images(str(tmp_path), 256, offload_video_to_cpu=True,
                                                                compute_device=torch.device("cpu"))
    assert (height, width) == (96, 128)
    for index in range(len(frames)):
        assert torch.equal(store[index], images[index])
    assert store.nbytes == len(frames) * 256 * 256 * 3  # a quarter of the loader's float32 copy


@pytest.mark.parametrize("start, max_frames, reverse, expected", [
    (0, None, False, (0, 7)), (2, 3, False, (2, 4)), (6, 5, False, (6, 7)),
    (5, None, True, (5, 0)), (5, 2, True, (5, 4)), (1, 5, True, (1, 0)),
])
def test_processed_range_is_propagate_in_videos(start, max_frames, reverse, expected):
    assert processed_range(8, start, max_frames, reverse) == expected


def test_offload_plan():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert plan_offload("auto", cpu, 10**12, 10**12, 1) == (False, False)  # host memory is all there is
    assert plan_offload("auto", cuda, 600, 300, 1000) == (False, False)
    assert plan_offload("auto", cuda, 800, 300, 1000) == (True, False)
    assert plan_offload("auto", cuda, 800, 3000, 1000) == (True, True)
    assert plan_offload("none", cuda, 10**12, 10**12, 1) == (False, False)
    assert plan_offload("frames", cuda, 1, 1, 1000) == (True, False)
    assert plan_offload("frames_and_state", cuda, 1, 1, 1000) == (True, True)


@pytest.mark.parametrize("prompts, fields, kind, words", [
    ([on(0, 9, points=[[20, 32]])], {}, errors.InvalidField, "frame_index 9 is outside the clip (frames 0 to 7)"),
    ([on(0, 1, points=[[20, 32]])], {"start_frame_index": 3}, errors.InvalidField,
     "frame_index 1 is outside the frames tracked, 3 to 7"),
    ([on(0, 2, points=[[20, 32]])], {"start_frame_index": 2, "max_frames": 2, "reverse": True}, errors.InvalidField,
     None),
    ([on(0, 0, points=[[20, 32]])], {"reverse": True}, errors.InvalidField, "reverse tracking from frame 0"),
    ([on(0, 1, points=[[200, 32]])], {}, errors.InvalidPrompt, "outside the 128x96 image"),
    ([on(0, 1, points=[[20, 32]])], {"start_frame_index": 8}, errors.InvalidField, "start_frame_index 8"),
    ([on(0, 1, points=[[20, 32]]), on(1, 2, points=[[90, 40]])], {}, errors.InvalidField,
     "objects[1] has no prompt on frame 1, where tracking starts: on the CPU"),
])
def test_prompts_outside_the_clip_or_the_range_fail(tracker, clip, prompts, fields, kind, words):
    found = records(tracker.stream(clip, spec(prompts, **fields)))
    if words is None:  # a valid request: frames 2, 1
        assert sorted(tracked(found)) == [1, 2]
        return
    failure = found[-1]
    assert isinstance(failure, Failure) and failure.kind == kind.__name__ and words in failure.message
    assert not any(isinstance(r, TrackedFrame) for r in found)


@pytest.mark.parametrize("data, kind", [
    (b"not a video at all", errors.UnsupportedVideo),
    (b"", errors.InvalidVideo),
])
def test_bad_clips_fail_with_their_status_and_leave_nothing_behind(tracker, data, kind):
    found = records(tracker.stream(data, spec([on(0, 0, points=[[1, 1]])])))
    assert isinstance(found[-1], Failure) and found[-1].kind == kind.__name__
    assert tracker._jobs == {} and running_jobs() == 0


def test_a_rotated_clip_is_tracked_upright(tracker):
    clip = encode(moving_shapes(2), rotation=90)  # shown as 96 wide, 128 high
    found = records(tracker.stream(clip, spec([on(0, 0, points=[[32, 100]])], max_frames=1)))
    started = next(r for r in found if isinstance(r, TrackStarted))
    assert (started.width, started.height) == (96, 128)
    assert tracked(found)[0][0].shape == (128, 96)
    found = records(tracker.stream(clip, spec([on(0, 0, points=[[100, 32]])], max_frames=1)))
    assert isinstance(found[-1], Failure) and "outside the 96x128 image" in found[-1].message


def test_beyond_the_waiting_room_a_clip_is_turned_away(tracker, clip):
    from sam2_api.model.track_queue import MAX_WAITING_JOBS

    streams = [tracker.stream(clip, spec([on(0, 0, points=[[20, 32]])], job_id=f"w{i}", tenant=f"key{i}"))
               for i in range(MAX_WAITING_JOBS + 2)]
    firsts = [RecordReader().feed(next(stream)) for stream in streams]  # the first holds the tracker
    assert all(isinstance(found[0], TrackQueued) for found in firsts[1:-1])
    assert isinstance(firsts[-1][0], Failure) and firsts[-1][0].kind == "ModelUnavailable"
    assert "9 clips are already being tracked or waiting" in firsts[-1][0].message
    for stream in streams:
        stream.close()
    assert tracker._jobs == {} and running_jobs() == 0


def test_one_key_gets_its_share_of_the_waiting_room_and_another_key_still_gets_in(tracker, clip):
    from sam2_api.model.track_queue import MAX_WAITING_PER_TENANT

    def submit(job_id, tenant):
        stream = tracker.stream(clip, spec([on(0, 0, points=[[20, 32]])], job_id=job_id, tenant=tenant))
        return stream, RecordReader().feed(next(stream))

    flood = [submit(f"a{i}", "key-a") for i in range(MAX_WAITING_PER_TENANT + 2)]  # one tracks, 4 wait
    assert all(isinstance(first[0], TrackQueued) for _, first in flood[1:-1])
    refused = flood[-1][1][0]
    assert isinstance(refused, Failure) and refused.kind == "ModelUnavailable"
    assert "4 clips of this API key are already waiting" in refused.message
    assert "SAM2_VIDEO_MAX_WAITING_PER_KEY" in refused.message
    other, first = submit("b0", "key-b")
    assert isinstance(first[0], TrackQueued) and first[0].position == 1  # next in line, before key-a's 4
    for stream, _ in [*flood, (other, None)]:
        stream.close()
    assert tracker._jobs == {} and running_jobs() == 0


def test_waiting_clips_take_turns_across_keys():
    from sam2_api.model.track_queue import TrackJob, Turns

    turns = Turns(max_waiting=8, max_waiting_per_tenant=4)
    jobs = {name: TrackJob(name, float("inf"), tenant) for name, tenant in
            [("a0", "A"), ("a1", "A"), ("a2", "A"), ("a3", "A"), ("b0", "B"), ("b1", "B"), ("c0", "C")]}
    for job in jobs.values():  # in this order: a0 tracks at once, the others wait
        turns.join(job)
    assert turns.wait(jobs["a0"], 0) == 0
    # least recently served key first, each key's clips in their order; first come first served
    # would have been a1 a2 a3 b0 b1 c0
    with turns._changed:
        assert [job.id for job in turns.order()] == ["b0", "c0", "a1", "b1", "a2", "a3"]
    assert [turns.wait(jobs[name], 0) for name in ("b0", "c0", "a1", "b1", "a2", "a3")] == [1, 2, 3, 4, 5, 6]
    tracked = ["a0"]
    for _ in range(6):
        current = tracked[-1]
        turns.leave(jobs[current])
        tracked.append(next(name for name, job in jobs.items() if name not in tracked and turns.wait(job, 0) == 0))
    assert tracked == ["a0", "b0", "c0", "a1", "b1", "a2", "a3"]
    # a key that arrives while another's clips wait goes ahead of all but one of them
    late = TrackJob("c1", float("inf"), "C")
    turns.join(late)
    turns.leave(jobs["a3"])
    assert turns.wait(late, 0) == 0


def running_jobs() -> float:
    return metrics.VIDEO_JOBS.labels(state="running")._value.get()


def test_cancel_stops_the_job_and_frees_it(tracker, clip):
    stream = tracker.stream(clip, spec([on(0, 0, points=[[20, 32]])], job_id="to-cancel"))
    reader = RecordReader()
    first_frame = None
    while first_frame is None:
        first_frame = next((r for r in reader.feed(next(stream)) if isinstance(r, TrackedFrame)), None)
    job = tracker._jobs["to-cancel"]
    assert job.session is not None and running_jobs() == 1
    assert tracker.cancel("to-cancel")
    assert job.session is None  # frames and state released at once, the stream still suspended
    # nothing more is computed: the stream ends with the reason
    assert [(r.kind, r.message) for r in records(stream)] == [("TrackingCanceled", "the tracking job was canceled")]
    assert "to-cancel" not in tracker._jobs and running_jobs() == 0
    assert not tracker.cancel("to-cancel")
    # the tracker is free for the next job
    found = records(tracker.stream(clip, spec([on(0, 0, points=[[20, 32]])], max_frames=2)))
    assert sorted(tracked(found)) == [0, 1]


def test_a_second_clip_waits_for_the_first(tracker, clip):
    first = tracker.stream(clip, spec([on(0, 0, points=[[20, 32]])], job_id="first", max_frames=2))
    first_reader, first_records = RecordReader(), []
    while not any(isinstance(r, TrackStarted) for r in first_records):
        first_records += first_reader.feed(next(first))
    second_records: list = []

    def run_second():
        reader = RecordReader()
        for chunk in tracker.stream(clip, spec([on(0, 0, points=[[20, 32]])], job_id="second",
                                               max_frames=2)):
            second_records.extend(reader.feed(chunk))

    thread = threading.Thread(target=run_second)
    thread.start()
    time.sleep(2.5)  # the second job only says where it stands while the first holds the tracker
    assert second_records and all(isinstance(r, TrackQueued) for r in second_records)
    for chunk in first:
        first_records += first_reader.feed(chunk)
    thread.join(timeout=120)
    assert isinstance(first_records[-1], TrackEnd) and isinstance(second_records[-1], TrackEnd)
    queued = [r for r in second_records if isinstance(r, TrackQueued)]
    assert queued and all(r.position == 1 for r in queued)
    assert sorted(tracked(second_records)) == [0, 1]


def test_a_stream_nobody_reads_is_abandoned(checkpoint, clip):
    tracker = make_tracker(build_image_model(checkpoint, SMALL), SMALL, stall_s=1.0)
    assert tracker.model is not None  # built now: building it in the job would outlast the 1 s stall bound
    stream = tracker.stream(clip, spec([on(0, 0, points=[[20, 32]])], job_id="left"))
    reader = RecordReader()
    while not any(isinstance(r, TrackedFrame) for r in reader.feed(next(stream))):
        pass
    job = tracker._jobs["left"]
    deadline = time.monotonic() + 10
    while job.closed is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job.closed == "abandoned" and job.session is None
    assert [r.kind for r in records(stream)] == ["ModelUnavailable"]
