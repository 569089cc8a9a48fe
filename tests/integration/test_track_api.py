"""The `track` task over HTTP against `bentoml serve`: submit, status with progress, result, masks,
manifest and preview on a real S3 server; bad input, cancellation, two tasks at once.

The served model runs at its real input size (1024) on the CPU, a few seconds per frame, so the
clips here are a few frames long; tests/unit/test_tracking.py covers longer clips at a smaller size.
"""

from __future__ import annotations

import io
import json
import re
import time

import av
import httpx
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from sam2_api import video
from tests.clips import encode, moving_shapes
from tests.conftest import REPO
from tests.support.localdev import bento_server
from tests.integration.conftest import API_KEYS, BUCKET, PHOTOS, PREFIX, SECRETS
from tests.integration.test_segment_api import fetch_mask

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
LIMITS = video.VideoLimits(max_frames=24, max_pixels=320 * 240, max_seconds=600)


def submit(server, clip: bytes | None, filename: str = "clip.mp4", headers: dict | None = None, **fields) -> str:
    files = {"video": (filename, clip, "application/octet-stream")} if clip is not None else \
        {"unrelated": ("x.txt", b"", "text/plain")}  # keeps the request multipart
    response = httpx.post(f"{server.url}/track/submit", files=files, headers=headers,
                          data={name: json.dumps(value) for name, value in fields.items()}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["task_id"]


def status(server, task_id: str, headers: dict | None = None) -> dict:
    response = httpx.get(f"{server.url}/track/status", params={"task_id": task_id}, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for(server, task_id: str, timeout: float = 300, until=("completed", "failed", "canceled"),
             headers: dict | None = None) -> list[dict]:
    """Every status seen until the task is in one of ``until``."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.append(status(server, task_id, headers))
        if seen[-1]["status"] in until:
            return seen
        time.sleep(0.3)
    log = server.log().splitlines()
    about = [line for line in log if task_id in line][-20:]
    raise AssertionError(f"task {task_id} still {seen[-1]} after {timeout} s; the server's log about it:\n"
                         + "\n".join(about) + "\n... and its last lines:\n" + "\n".join(log[-40:]))


def result(server, task_id: str, headers: dict | None = None) -> httpx.Response:
    response = httpx.get(f"{server.url}/track/get", params={"task_id": task_id}, headers=headers, timeout=10)
    assert not any(secret in response.text for secret in SECRETS)
    return response


def reference_masks(checkpoint, frames, prompts, tmp_path, config: str = CONFIG) -> dict[int, list[np.ndarray]]:
    """SAM2VideoPredictor on the frames the server decoded (written losslessly where init_state reads)."""
    from PIL import Image
    from sam2.build_sam import build_sam2_video_predictor

    predictor = build_sam2_video_predictor(config, str(checkpoint), device="cpu")
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"{index:05d}.jpg", format="PNG")
    state = predictor.init_state(str(tmp_path))
    for object_index, frame_index, prompt in prompts:
        points = np.asarray(prompt["points"], dtype=np.float32) if "points" in prompt else None
        labels = np.asarray(prompt.get("labels", [1] * len(prompt.get("points", []))), dtype=np.int32) \
            if "points" in prompt else None
        box = np.asarray(prompt["box"], dtype=np.float32) if "box" in prompt else None
        predictor.add_new_points_or_box(state, frame_idx=frame_index, obj_id=object_index, points=points,
                                        labels=labels, box=box)
    return {frame_index: [(logits[object_ids.index(k), 0] > 0.0).numpy() for k in sorted(object_ids)]
            for frame_index, object_ids, logits in predictor.propagate_in_video(state)}


def test_tracked_masks_on_s3_are_exactly_the_video_predictors(server, s3, checkpoint, tmp_path):
    clip = encode(moving_shapes(3))
    objects = [
        {"prompts": [{"frame_index": 0, "points": [[20, 32]]}, {"frame_index": 2, "points": [[36, 32], [100, 80]],
                                                                  "labels": [1, 0]}]},
        {"frame_index": 0, "box": [76, 16, 104, 44]},
    ]
    task_id = submit(server, clip, objects=objects, formats=["rle"])
    seen = wait_for(server, task_id)
    assert seen[-1]["status"] == "completed", seen[-1]
    progress = [s["progress"] for s in seen if s.get("progress")]
    assert progress[-1] == {"phase": "completed", "frames_done": 3, "frames_total": 3, "queue_position": None}
    response = result(server, task_id)
    assert response.status_code == 200, response.text
    body = response.json()
    assert {k: body[k] for k in ("frames", "objects", "width", "height", "fps", "clip_frames", "first_frame",
                                 "last_frame")} == {"frames": 3, "objects": 2, "width": 128, "height": 96, "fps": 10.0,
                                                    "clip_frames": 3, "first_frame": 0, "last_frame": 2}
    folder = re.search(rf"/{BUCKET}/{PREFIX}(\d{{8}}_\d{{6}}_[0-9a-f]{{32}})/manifest\.json$", body["manifest_url"])[1]
    manifest = httpx.get(body["manifest_url"], timeout=10).json()  # anonymously, through the bucket policy
    assert [frame["frame_index"] for frame in manifest["frames"]] == [0, 1, 2]
    assert manifest["objects"][0]["prompts"][1] == {"frame_index": 2, "points": [[36.0, 32.0], [100.0, 80.0]],
                                                    "labels": [1, 0]}

    prompts = [(0, 0, objects[0]["prompts"][0]), (0, 2, objects[0]["prompts"][1]), (1, 0, objects[1])]
    expected = reference_masks(checkpoint, list(video.frames(clip, LIMITS)), prompts, tmp_path)
    for frame in manifest["frames"]:
        for index, entry in enumerate(frame["objects"]):
            assert re.search(rf"/{PREFIX}{folder}/{index}/{frame['frame_index']:06d}\.png$", entry["mask_url"])
            mask = fetch_mask(entry["mask_url"]) > 0
            assert np.array_equal(mask, expected[frame["frame_index"]][index]), (frame["frame_index"], index)
            rle = {"size": entry["rle"]["size"], "counts": entry["rle"]["counts"].encode()}
            assert np.array_equal(coco_mask.decode(rle).astype(bool), mask)
            assert entry["area"] == int(mask.sum())

    preview = httpx.get(body["preview_url"], timeout=10)
    assert preview.status_code == 200 and preview.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(preview.content)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 3 and frames[0].shape == (96, 128, 3)


def test_the_plain_route_is_guarded_like_the_task():
    import service

    assert {"/track", "/track/submit", "/track/status", "/track/get", "/track/cancel"} <= service.TRACK_PATHS


BAD = [
    ("not a video", lambda: b"GIF89a" + b"\0" * 100, {}, 415, "not a video in a supported format"),
    ("truncated", lambda: encode(moving_shapes(3))[:300], {}, 400, "could not be read"),
    ("too many frames", lambda: encode(moving_shapes(30)), {}, 413, "SAM2_VIDEO_MAX_FRAMES"),
    ("too many pixels", lambda: encode([np.zeros((256, 352, 3), np.uint8)] * 2), {}, 413, "SAM2_VIDEO_MAX_PIXELS"),
    ("frame outside the clip", lambda: encode(moving_shapes(3)), {"objects": [{"frame_index": 7, "points": [[9, 9]]}]},
     400, "frame_index 7 is outside the clip (frames 0 to 2)"),
    ("frame outside the range", lambda: encode(moving_shapes(3)),
     {"objects": [{"frame_index": 0, "points": [[9, 9]]}], "start_frame_index": 1}, 400,
     "frame_index 0 is outside the frames tracked, 1 to 2"),
    ("point outside the frame", lambda: encode(moving_shapes(3)), {"objects": [{"frame_index": 0, "points": [[999, 9]]}]},
     400, "outside the 128x96 image"),
    ("malformed objects", lambda: encode(moving_shapes(3)), {"objects": [{"points": [[9, 9]]}]}, 400,
     "objects[0].frame_index must be a frame number"),
    ("no clip", lambda: None, {}, 400, "send the clip as `video` (a file) or `video_url`"),
    ("bucket not allowed", lambda: None, {"video_url": "s3://not-allowed/clip.mp4"}, 403, "S3_INPUT_BUCKETS"),
    ("missing object in an allowed bucket", lambda: None, {"video_url": f"s3://{PHOTOS}/none.mp4"}, 400,
     "does not exist"),
    ("size not served", lambda: encode(moving_shapes(3)), {"model": "hiera_large"}, 400,
     "`model` 'hiera_large' is not served here; this server serves: hiera_tiny"),
]


@pytest.mark.parametrize("case, make, fields, code, words", BAD, ids=[c[0] for c in BAD])
def test_bad_input_fails_the_task_with_a_clear_4xx(server, case, make, fields, code, words):
    fields = {"objects": [{"frame_index": 0, "points": [[20, 32]]}], **fields}
    task_id = submit(server, make(), **fields)
    assert wait_for(server, task_id, timeout=60)[-1]["status"] == "failed"
    response = result(server, task_id)
    assert response.status_code == code, response.text
    assert words in response.json()["error"]


def test_an_upload_over_the_limit_is_refused_at_submit(server):
    response = httpx.post(f"{server.url}/track/submit", files={"video": ("big.mp4", b"\0" * (3 * 1024**2))},
                          data={"objects": "[]"}, timeout=30)
    assert response.status_code == 413 and "SAM2_VIDEO_MAX_UPLOAD_BYTES" in response.json()["error"]


def metric(server, name: str, labels: str = "") -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    found = re.search(rf"^{name}{re.escape(labels)} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_cancel_stops_the_work_at_once_and_frees_the_tracker(server, s3):
    task_id = submit(server, encode(moving_shapes(12)), objects=[{"frame_index": 0, "points": [[20, 32]]}])
    wait_for(server, task_id, until=("in_progress",), timeout=120)
    deadline = time.monotonic() + 120
    while (status(server, task_id)["progress"]["frames_done"] or 0) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert metric(server, "sam2_video_jobs", '{state="running"}') == 1
    response = httpx.put(f"{server.url}/track/cancel", params={"task_id": task_id}, timeout=10)
    assert response.status_code == 200 and response.json() == {"task_id": task_id, "status": "canceling"}
    canceled_at = time.monotonic()
    while metric(server, "sam2_video_jobs", '{state="running"}') != 0:  # the model side ended the job
        assert time.monotonic() - canceled_at < 60, "the model service still tracks the canceled clip"
        time.sleep(0.3)
    frames = metric(server, "sam2_video_frames_tracked_total")
    seen = wait_for(server, task_id, timeout=120)  # the frame being tracked ends first (seconds on a busy CPU)
    assert seen[-1]["status"] == "canceled" and seen[-1]["progress"]["phase"] == "canceled"
    time.sleep(3)
    assert metric(server, "sam2_video_frames_tracked_total") == frames  # nothing more is tracked
    assert result(server, task_id).status_code == 409
    again = httpx.put(f"{server.url}/track/cancel", params={"task_id": task_id}, timeout=10)
    assert again.status_code == 409
    assert httpx.put(f"{server.url}/track/cancel", params={"task_id": "f" * 32}, timeout=10).status_code == 404


def test_two_tasks_at_once_queue_and_both_finish(server, s3):
    first = submit(server, encode(moving_shapes(3)), objects=[{"frame_index": 0, "points": [[20, 32]]}])
    second = submit(server, encode(moving_shapes(4)), objects=[{"frame_index": 1, "box": [76, 16, 104, 48]}],
                    max_frames=1)
    seen = wait_for(server, second, timeout=300)
    assert seen[-1]["status"] == "completed"
    assert any(s["status"] == "pending" and s["progress"]["queue_position"] == 1 for s in seen)
    assert wait_for(server, first)[-1]["status"] == "completed"
    for task_id, frames in ((first, [0, 1, 2]), (second, [1])):
        manifest = httpx.get(result(server, task_id).json()["manifest_url"], timeout=10).json()
        assert [frame["frame_index"] for frame in manifest["frames"]] == frames


def test_the_command_line_tracks_shows_progress_and_downloads_the_results(server, s3, tmp_path):
    import subprocess

    from tests.integration.test_cli import SAM2_API
    from tests.support.localdev import clean_env

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(encode(moving_shapes(3)))
    done = subprocess.run([*SAM2_API, "track", str(clip), "--object", "0:20,32", "--object",
                           "0:box=76,16,104,44", "--max-frames", "2", "--rle", "--output-dir", str(tmp_path / "out"),
                           "--url", server.url], cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert (body["frames"], body["objects"], body["first_frame"], body["last_frame"]) == (2, 2, 0, 1)
    assert re.search(r"2/2 \[", done.stderr) and "task " in done.stderr  # the progress bar, the task id
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [f["frame_index"] for f in manifest["frames"]] == [0, 1] and "rle" in manifest["frames"][0]["objects"][0]
    with av.open(str(tmp_path / "out" / "preview.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 2


# --- Tasks of two API keys, on a server of their own --------------------------------------------
# BentoML's client of the model service makes a new connection pool (closing the old one) every
# 100 calls or 300 s of an API worker; here every 2 calls (runner_connection), so that a tracking
# stream outlives several within seconds. Each key may have 1 clip waiting.


@pytest.fixture(scope="module")
def keyed(s3, s3_server, checkpoint, logs):
    from tests.integration.conftest import ACCESS_KEY, SECRET_KEY

    served = bento_server("bentoml-track-keys", logs, project=REPO, env={
        "SAM2_CHECKPOINT": str(checkpoint), "S3_BUCKET_NAME_STAGING": BUCKET, "S3_ENDPOINT_URL": s3_server.url,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1",
        "SAM2_API_KEYS": ",".join(API_KEYS), "SAM2_VIDEO_MAX_WAITING_PER_KEY": "1",
        "SAM2_VIDEO_MAX_FRAMES": "64", "SAM2_VIDEO_MAX_PIXELS": str(320 * 240),
        "BENTOML_CONFIG_OPTIONS": "services.SAM2Model.runner_connection.max_requests=2",
    })
    served.start("/readyz")
    yield served
    served.stop()


KEY_A, KEY_B = ({"Authorization": f"Bearer {key}"} for key in API_KEYS)
ONE_OBJECT = [{"frame_index": 0, "points": [[8, 8]]}]


def long_clip(frames: int) -> bytes:
    return encode(moving_shapes(frames, width=16, height=16))


def frames_done(server, task_id: str, headers: dict) -> int:
    return (status(server, task_id, headers).get("progress") or {}).get("frames_done") or 0


def wait_for_frames(server, task_id: str, headers: dict, count: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while frames_done(server, task_id, headers) < count:
        assert time.monotonic() < deadline, f"task {task_id}: fewer than {count} frames after {timeout} s"
        time.sleep(0.3)


def test_another_keys_task_is_not_found_and_runs_on_untouched(keyed, s3):
    task_id = submit(keyed, encode(moving_shapes(3)), headers=KEY_A, objects=[{"frame_index": 0, "points": [[20, 32]]}])
    for method, route in (("GET", "status"), ("GET", "get"), ("POST", "retry"), ("PUT", "cancel")):
        response = httpx.request(method, f"{keyed.url}/track/{route}", params={"task_id": task_id}, headers=KEY_B,
                                 timeout=10)
        assert (response.status_code, response.json()) == (404, {"error": "task_id not found"}), route
    seen = wait_for(keyed, task_id, headers=KEY_A)
    assert seen[-1]["status"] == "completed", seen[-1]  # B's cancel did not touch it
    body = result(keyed, task_id, KEY_A).json()
    assert result(keyed, task_id, KEY_B).status_code == 404
    # what is stored names no task: a mask's URL does not lead anyone to the task
    folder = re.search(rf"/{PREFIX}([^/]+)/manifest\.json$", body["manifest_url"])[1]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}{folder}/")["Contents"]]
    assert len(keys) == 3 + 2 and not any(task_id in key for key in keys)  # 3 masks, manifest, preview
    assert task_id not in httpx.get(body["manifest_url"], timeout=10).text
    # the owner may retry it: a new task, again the owner's alone
    retried = httpx.post(f"{keyed.url}/track/retry", params={"task_id": task_id}, headers=KEY_A, timeout=30)
    assert retried.status_code == 200, retried.text
    again = retried.json()["task_id"]
    assert httpx.get(f"{keyed.url}/track/status", params={"task_id": again}, headers=KEY_B, timeout=10).status_code == 404
    assert wait_for(keyed, again, headers=KEY_A)[-1]["status"] == "completed"


def test_a_long_clip_outlives_the_clients_reconnections_and_a_cancel_ends_it_within_seconds(keyed, s3):
    task_id = submit(keyed, long_clip(60), headers=KEY_A, objects=ONE_OBJECT)
    wait_for_frames(keyed, task_id, KEY_A, 1)
    for _ in range(8):  # model calls from both API workers: each worker's connection pool is replaced
        response = httpx.post(f"{keyed.url}/segment", json={"image_id": "never-sent", "points": [[1, 1]]},
                              headers=KEY_B, timeout=60)
        assert response.status_code == 404, response.text
    # the task's stream goes on (it used to be cut off with the old pool, its reader waiting an hour)
    wait_for_frames(keyed, task_id, KEY_A, frames_done(keyed, task_id, KEY_A) + 2)
    response = httpx.put(f"{keyed.url}/track/cancel", params={"task_id": task_id}, headers=KEY_A, timeout=10)
    assert response.status_code == 200, response.text
    canceled_at = time.monotonic()
    seen = wait_for(keyed, task_id, timeout=30, headers=KEY_A)  # stated bound: 30 s on this busy 2-core CPU
    assert seen[-1]["status"] == "canceled" and seen[-1]["progress"]["frames_done"] < 60
    print(f"canceled after {time.monotonic() - canceled_at:.1f} s")
    assert result(keyed, task_id, KEY_A).status_code == 409
    # nothing is left stuck: the next clip is tracked to its end
    after = submit(keyed, long_clip(2), headers=KEY_A, objects=ONE_OBJECT)
    assert wait_for(keyed, after, headers=KEY_A)[-1]["status"] == "completed"


def test_one_key_cannot_fill_the_queue_and_another_keys_clip_goes_first(keyed, s3):
    first = submit(keyed, long_clip(60), headers=KEY_A, objects=ONE_OBJECT)
    wait_for_frames(keyed, first, KEY_A, 1)
    waiting = submit(keyed, long_clip(2), headers=KEY_A, objects=ONE_OBJECT)
    wait_for(keyed, waiting, until=("pending",), timeout=60, headers=KEY_A)
    refused = submit(keyed, long_clip(2), headers=KEY_A, objects=ONE_OBJECT)  # over A's share: 1 waiting
    assert wait_for(keyed, refused, timeout=60, headers=KEY_A)[-1]["status"] == "failed"
    answer = result(keyed, refused, KEY_A)
    assert answer.status_code == 503 and "SAM2_VIDEO_MAX_WAITING_PER_KEY" in answer.json()["error"], answer.text
    other = submit(keyed, long_clip(2), headers=KEY_B, objects=ONE_OBJECT)  # B still gets in
    assert status(keyed, other, KEY_B)["status"] in ("pending", "in_progress")
    httpx.put(f"{keyed.url}/track/cancel", params={"task_id": first}, headers=KEY_A, timeout=10)
    assert wait_for(keyed, other, headers=KEY_B)[-1]["status"] == "completed"
    # B's clip came after A's waiting one, and tracked before it: turns across keys
    assert status(keyed, waiting, KEY_A)["status"] != "completed"
    assert wait_for(keyed, waiting, headers=KEY_A)[-1]["status"] == "completed"
