"""The API side of a tracking task, against the real tracker in this process and moto's in-process
S3: what lands where, with what; failures and cancellation.

The model service is the real :class:`sam2_api.model.tracker.Tracker` (random-init tiny weights at input
size 256, as in test_tracking.py), called directly instead of over HTTP.
"""

from __future__ import annotations

import io
import os
import json
import re
import threading
import time
import traceback

import av
import boto3
import numpy as np
import pytest
from moto import mock_aws
from PIL import Image

from sam2_api import errors, video
from sam2_api.imaging import unpack_mask
from sam2_api.messages import RecordReader, TrackedFrame
from sam2_api.api.image_urls import ImageSources
from sam2_api.api.storage import MaskStore, make_s3_client
from sam2_api.api.task_board import TaskBoard
from sam2_api.api.track import TrackJobs, TrackRequest
from tests.clips import encode, moving_shapes
from tests.unit.test_tracking import SMALL, build_image_model, make_tracker, on, spec

LIMITS = video.VideoLimits(max_frames=64, max_pixels=10**6, max_seconds=60)
BUCKET = "masks"


class InProcessModel:
    """SAM2Model's two tracking APIs, on a tracker in this process."""

    def __init__(self, tracker) -> None:
        self.tracker = tracker
        self.canceled: list[str] = []

    def track(self, video: bytes, spec):
        return self.tracker.stream(video, spec)

    def cancel_track(self, job_id: str) -> bool:
        self.canceled.append(job_id)
        return self.tracker.cancel(job_id)


@pytest.fixture(scope="module")
def tracker(checkpoint):
    return make_tracker(build_image_model(checkpoint, SMALL), SMALL)


@pytest.fixture
def s3(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def make_jobs(tracker, tmp_path, bucket: str | None = BUCKET) -> TrackJobs:
    client = make_s3_client("us-east-1")
    store = MaskStore(client, bucket, region="us-east-1")
    return TrackJobs(InProcessModel(tracker), store, ImageSources(client, frozenset(), 10**7),
                     TaskBoard(tmp_path / "board.db"), LIMITS, 10**7)


def stored(s3, key: str) -> bytes:
    return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def folder_of(response) -> str:
    """``sam2-api-masks/<folder>/``: where a task's objects went, from its manifest's URL."""
    found = re.search(r"/(sam2-api-masks/\d{8}_\d{6}_[0-9a-f]{32}/)manifest\.json$", response.manifest_url)
    assert found, response.manifest_url
    return found.group(1)


def test_masks_manifest_and_preview_land_under_the_task(tracker, s3, tmp_path):
    clip = encode(moving_shapes(5))
    prompts = [on(0, 0, points=[[20, 32]]), on(1, 0, box=[76, 16, 104, 44]), on(1, 2, points=[[90, 40]])]
    jobs = make_jobs(tracker, tmp_path)
    task_id = "8165f7e8a2b94c0d9e1f2a3b4c5d6e7f"
    response = jobs.run(task_id, TrackRequest(clip, None, 2, prompts, formats=("rle",)))
    assert (response.frames, response.objects, response.width, response.height, response.first_frame,
            response.last_frame, response.clip_frames) == (5, 2, 128, 96, 0, 4, 5)
    folder = folder_of(response)  # a name of its own: the task's id is nowhere in what is stored
    assert response.manifest_url == f"https://{BUCKET}.s3.us-east-1.amazonaws.com/{folder}manifest.json"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert keys == {f"{folder}{o}/{f:06d}.png" for o in (0, 1) for f in range(5)} | {
        f"{folder}manifest.json", f"{folder}preview.mp4"}
    assert not any(task_id in key or task_id in stored(s3, key).decode("latin-1") for key in keys)
    again = jobs.run(task_id, TrackRequest(clip, None, 2, prompts))  # BentoML's retry: a new folder
    assert folder_of(again) != folder

    # the masks are the tracker's own, frame by frame
    direct = {}
    reader = RecordReader()
    for chunk in tracker.stream(clip, spec(prompts, job_id="direct")):
        for record in reader.feed(chunk):
            if isinstance(record, TrackedFrame):
                direct[record.frame_index] = [unpack_mask(bits, 96, 128) for bits in record.masks]
    manifest = json.loads(stored(s3, f"{folder}manifest.json"))
    assert manifest["objects"][1]["prompts"] == [{"frame_index": 0, "box": [76.0, 16.0, 104.0, 44.0]},
                                                 {"frame_index": 2, "points": [[90.0, 40.0]]}]
    for frame in manifest["frames"]:
        for index, entry in enumerate(frame["objects"]):
            key = f"{folder}{index}/{frame['frame_index']:06d}.png"
            assert entry["mask_url"].endswith(key)
            png = np.array(Image.open(io.BytesIO(stored(s3, key)))) > 0
            assert np.array_equal(png, direct[frame["frame_index"]][index])
            assert entry["area"] == int(png.sum()) and entry["rle"]["size"] == [96, 128]
    with av.open(io.BytesIO(stored(s3, f"{folder}preview.mp4"))) as container:
        assert sum(1 for _ in container.decode(video=0)) == 5
    assert jobs.board.get(task_id)["phase"] == "completed"


def test_a_reverse_range_is_stored_in_clip_order_and_its_preview_covers_it(tracker, s3, tmp_path):
    clip = encode(moving_shapes(6))
    jobs = make_jobs(tracker, tmp_path)
    response = jobs.run("rev", TrackRequest(clip, None, 1, [on(0, 4, points=[[30, 32]])], reverse=True, max_frames=3))
    assert (response.first_frame, response.last_frame, response.frames) == (4, 2, 3)
    manifest = json.loads(stored(s3, f"{folder_of(response)}manifest.json"))
    assert [f["frame_index"] for f in manifest["frames"]] == [2, 3, 4]
    with av.open(io.BytesIO(stored(s3, f"{folder_of(response)}preview.mp4"))) as container:
        assert sum(1 for _ in container.decode(video=0)) == 3


def test_without_a_bucket_the_task_fails_at_once_with_503(tracker, s3, tmp_path):
    jobs = make_jobs(tracker, tmp_path, bucket=None)
    with pytest.raises(errors.StorageUnavailable, match="S3_BUCKET_NAME_STAGING"):
        jobs.run("t", TrackRequest(encode(moving_shapes(2)), None, 1, [on(0, 0, points=[[1, 1]])]))
    assert jobs.board.get("t")["phase"] == "failed"


def test_failed_mask_uploads_give_null_urls_with_the_reason_and_the_task_goes_on(tracker, s3, tmp_path):
    jobs = make_jobs(tracker, tmp_path)
    s3.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
        "Resource": [f"arn:aws:s3:::{BUCKET}/sam2-api-masks/*.png", f"arn:aws:s3:::{BUCKET}/sam2-api-masks/*.mp4"]}]}))
    response = jobs.run("nulls", TrackRequest(encode(moving_shapes(2)), None, 1, [on(0, 0, points=[[20, 32]])]))
    manifest = json.loads(stored(s3, f"{folder_of(response)}manifest.json"))
    assert response.frames == 2
    assert [(entry["mask_url"], entry["mask_error"]) for frame in manifest["frames"] for entry in frame["objects"]] == [
        (None, "upload failed")] * 2
    assert (response.preview_url, response.preview_error) == (None, "upload failed")
    assert json.loads(response.model_dump_json())["preview_error"] == "upload failed"


def test_cancel_from_another_worker_stops_the_task_and_the_tracker(tracker, s3, tmp_path):
    jobs = make_jobs(tracker, tmp_path)
    outcome: list = []

    def run():
        try:
            outcome.append(jobs.run("c", TrackRequest(encode(moving_shapes(16)), None, 1,
                                                      [on(0, 0, points=[[20, 32]])])))
        except errors.RequestError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    other_worker = TaskBoard(tmp_path / "board.db")  # another process would open the same file
    deadline = time.monotonic() + 120
    while (other_worker.get("c") or {}).get("frames_done") in (None, 0):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert other_worker.request_cancel("c")
    thread.join(60)
    assert isinstance(outcome[0], errors.TrackingCanceled)
    assert jobs.model.canceled == ["c"] and "c" not in tracker._jobs
    assert other_worker.get("c")["phase"] == "canceled" and other_worker.get("c")["frames_done"] < 16


def test_each_side_opens_and_decodes_the_clip_once(tracker, s3, tmp_path, monkeypatch):
    """The API side checks the header and the first frame and later draws the preview from one open
    of the clip; the model side decodes it once. PyAV's reads are counted, by the side that made them."""
    opened = {"api": 0, "model": 0}
    real_open = av.open

    def counting_open(file, mode="r", *args, **kwargs):
        if mode == "r":
            in_model = any(frame.filename.endswith(os.path.join("model", "tracker.py"))
                           for frame in traceback.extract_stack())
            opened["model" if in_model else "api"] += 1
        return real_open(file, mode, *args, **kwargs)

    clip = encode(moving_shapes(4))
    monkeypatch.setattr(av, "open", counting_open)
    response = make_jobs(tracker, tmp_path).run("once", TrackRequest(clip, None, 1, [on(0, 0, points=[[20, 32]])]))
    assert response.frames == 4 and response.preview_url is not None
    assert opened == {"api": 1, "model": 1}


def test_a_prompt_off_the_frame_is_refused_before_the_model_in_the_model_services_words(tracker, s3, tmp_path):
    clip = encode(moving_shapes(3))
    prompts = [on(0, 0, points=[[20, 32]]), on(0, 2, points=[[20, 97]])]
    jobs = make_jobs(tracker, tmp_path)
    with pytest.raises(errors.InvalidPrompt) as refused:
        jobs.run("off", TrackRequest(clip, None, 1, prompts))
    assert str(refused.value) == "objects[0] on frame 2: point 0 (20.0, 97.0) is outside the 128x96 image"
    assert jobs.board.get("off")["phase"] == "failed" and "off" not in tracker._jobs
    failure = RecordReader().feed(b"".join(tracker.stream(clip, spec(prompts, job_id="m"))))[-1]
    assert (failure.kind, failure.message) == ("InvalidPrompt", str(refused.value))


def test_video_url_errors_name_video_url_and_quote_the_url_as_sent(tracker, s3, tmp_path):
    jobs = make_jobs(tracker, tmp_path)
    with pytest.raises(errors.InvalidImageSource) as refused:
        jobs.run("url", TrackRequest(None, "ftp://host/image_url.mp4", 1, [on(0, 0, points=[[1, 1]])]))
    assert str(refused.value) == ("video_url must be s3://bucket/key or https://host/path; "
                                  "got 'ftp://host/image_url.mp4'")
