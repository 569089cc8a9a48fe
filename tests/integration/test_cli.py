"""The `sam2-api` command against a real server: one image with an overlay (with S3 on the server
or without), options from the environment or either side of the command, a resumable batch, Ctrl+C
in the middle of one, and what stops a command: no server, a missing file, a refused API key, a
closed stdout."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.conftest import REPO, upright_rgb
from tests.integration.conftest import PHOTOS
from sam2_api.api.guard import RequestGuard
from tests.support.localdev import clean_env, free_port
from tests.integration.test_segment_api import fetch_mask

# The module, not the installed console script: this runs the checkout's own code wherever it is.
SAM2_API = [sys.executable, "-m", "sam2_api.cli"]


def sam2_api(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SAM2_API, *args], cwd=REPO, env=clean_env(**env), capture_output=True, text=True,
                          timeout=300)


def segment_metric(server, name: str) -> float:
    """BentoML's own metric ``name`` (request_total, request_in_progress) for POST /segment."""
    lines = httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines
               if f"{name}{{" in line and 'endpoint="/segment"' in line)


def test_segment_prints_the_result_and_draws_the_overlay(server, reference_mask, test_images, tmp_path):
    image = test_images / "chelsea.png"
    out = tmp_path / "overlay.png"
    result = sam2_api("--url", server.url, "segment", str(image), "--point", "225,150", "--point", "50,50,0",
                      "--overlay", str(out))
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert (body["width"], body["height"]) == (451, 300)
    assert "rle" not in body  # asked of the server for the overlay, not by the user: not printed
    expected, _ = reference_mask(upright_rgb(image), points=[[225, 150], [50, 50]], labels=[1, 0])
    assert np.array_equal(fetch_mask(body["mask_url"]) == 255, expected)
    assert_overlay_of_chelsea(out, expected)


def test_without_s3_on_the_server_the_overlay_is_drawn_from_the_masks_rle(server_without_s3, reference_mask,
                                                                          test_images, tmp_path):
    image = test_images / "chelsea.png"
    out = tmp_path / "overlay.png"
    result = sam2_api("--url", server_without_s3.url, "segment", str(image), "--point", "225,150",
                      "--point", "50,50,0", "--overlay", str(out), "--format", "rle")
    assert result.returncode == 0, result.stderr  # it refused: "the server returned no mask_url"
    body = json.loads(result.stdout)
    assert body["mask_url"] is None and body["rle"]["size"] == [300, 451]  # asked for: printed
    expected, _ = reference_mask(upright_rgb(image), points=[[225, 150], [50, 50]], labels=[1, 0])
    assert_overlay_of_chelsea(out, expected)


def assert_overlay_of_chelsea(out, expected: np.ndarray) -> None:
    """The overlay at ``out`` shows the mask ``expected`` and the clicks (225, 150) and (50, 50, 0)."""
    drawn = np.array(Image.open(out).convert("RGB")).astype(int)
    original = upright_rgb(REPO / "tests" / "data" / "chelsea.png").astype(int)
    assert drawn.shape == original.shape
    assert drawn[150, 225].tolist() == [34, 197, 94] and drawn[50, 50].tolist() == [239, 68, 68]  # the clicks
    rows, cols = np.mgrid[:300, :451]
    clicks = (np.hypot(cols - 225, rows - 150) <= 8) | (np.hypot(cols - 50, rows - 50) <= 8)
    changed = np.any(drawn != original, axis=-1)
    assert not (changed & ~expected & ~clicks).any()  # the mask is drawn over its own pixels only
    assert changed[expected & ~clicks].mean() > 0.99  # (a pixel already of the mask's colour would not change)


def test_segment_refines_lists_candidates_and_returns_rle_and_polygons(server, test_images, tmp_path):
    from pycocotools import mask as coco_mask

    from sam2_api.maskformats import rasterise

    image = str(test_images / "chelsea.png")
    first = sam2_api("--url", server.url, "segment", image, "--point", "225,150", "--candidates")
    assert first.returncode == 0, first.stderr
    body = json.loads(first.stdout)
    assert len(body["candidates"]) == 3 and body["candidates"][0]["mask_id"] == body["mask_id"]
    second = sam2_api("--url", server.url, "segment", image, "--point", "225,150", "--point", "50,50,0",
                      "--previous-mask-id", body["mask_id"], "--format", "rle", "--format", "polygons")
    assert second.returncode == 0, second.stderr
    refined = json.loads(second.stdout)
    png = fetch_mask(refined["mask_url"]) == 255
    rle = refined["rle"]
    assert np.array_equal(coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}) == 1, png)
    assert np.array_equal(rasterise(refined["polygons"], *png.shape), png)

    Image.fromarray(png).save(tmp_path / "start.png")  # a mask file, as another tool would hand it over
    third = sam2_api("--url", server.url, "segment", image, "--point", "300,100", "--mask-input", str(tmp_path / "start.png"))
    assert third.returncode == 0, third.stderr
    stale = sam2_api("--url", server.url, "segment", image, "--point", "1,1", "--previous-mask-id", "m_" + "Q" * 22)
    assert stale.returncode == 1 and "is not known here" in json.loads(stale.stdout)["error"]


def test_segment_refuses_a_request_without_prompt():
    result = sam2_api("segment", "whatever.png")
    assert result.returncode == 2 and "give at least one --point or a --box" in result.stderr


def test_batch_writes_one_line_per_request_goes_on_after_errors_and_resumes(server, s3, test_images, tmp_path):
    s3.put_object(Bucket=PHOTOS, Key="batch/coffee.png", Body=(test_images / "coffee.png").read_bytes())
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join(json.dumps(r) for r in [
        {"id": "cat", "image": str(test_images / "chelsea.png"), "points": [[225, 150]]},
        {"id": "bad-box", "image": str(test_images / "chelsea.png"), "box": [10, 10, 5, 5]},
        {"id": "from-s3", "image": f"s3://{PHOTOS}/batch/coffee.png", "box": [150, 50, 450, 350]},
        {"id": "no-file", "image": str(tmp_path / "missing.png"), "points": [[1, 1]]},
    ]) + "\n")
    results = tmp_path / "results.jsonl"
    run = sam2_api("--url", server.url, "batch", str(requests), "--output", str(results), "--concurrency", "2")
    assert run.returncode == 1  # some requests failed; the batch still ran them all
    lines = {r["id"]: r for r in map(json.loads, results.read_text().splitlines())}
    assert set(lines) == {"cat", "bad-box", "from-s3", "no-file"}
    assert lines["cat"]["ok"] and lines["cat"]["mask_url"] and lines["from-s3"]["width"] == 600
    assert lines["bad-box"]["status"] == 400 and "x2 > x1" in lines["bad-box"]["error"]
    assert lines["no-file"]["status"] == 0 and "FileNotFoundError" in lines["no-file"]["error"]

    again = sam2_api("batch", str(requests), "--output", str(results), "--resume", "--quiet", "--url", server.url)
    retried = [json.loads(line) for line in results.read_text().splitlines()][4:]
    assert [r["id"] for r in retried] == ["no-file"]  # only the one that never reached the server
    assert "0 ok, 1 failed, 3 already done" in again.stderr


def test_server_options_come_from_the_environment_or_either_side_of_the_command(server, test_images):
    image = str(test_images / "chelsea.png")
    from_env = sam2_api("segment", image, "--point", "225,150", SAM2_API_URL=server.url)
    assert from_env.returncode == 0, from_env.stderr
    assert json.loads(from_env.stdout)["width"] == 451
    dead = "http://127.0.0.1:9"  # the discard port: nothing listens there
    flag_after = sam2_api("segment", image, "--point", "225,150", "--url", server.url, "--timeout", "60",
                          SAM2_API_URL=dead)
    assert flag_after.returncode == 0, flag_after.stderr
    env_only = sam2_api("segment", image, "--point", "225,150", SAM2_API_URL=dead)
    assert env_only.returncode == 1 and env_only.stderr.startswith(f"error: no server answers at {dead} ")


def test_no_server_and_a_missing_file_are_one_line_each_and_exit_1(test_images, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"  # a port nothing listens on
    image, missing = str(test_images / "chelsea.png"), str(tmp_path / "missing.jpg")
    for argv, message in [
        (["segment", image, "--point", "225,150"],
         f"error: no server answers at {closed} ([Errno 111] Connection refused); start one (scripts/serve.sh) "
         "or give its address with --url or SAM2_API_URL"),
        (["everything", image], f"error: no server answers at {closed} ([Errno 111] Connection refused); "
         "start one (scripts/serve.sh) or give its address with --url or SAM2_API_URL"),
        (["segment", missing, "--point", "225,150"], f"error: {missing}: No such file or directory"),
        (["track", missing, "--object", "0:1,1"], f"error: {missing}: No such file or directory"),
        (["batch", missing, "--output", str(tmp_path / "out.jsonl")], f"error: {missing}: No such file or directory"),
    ]:
        result = sam2_api("--url", closed, *argv)
        assert (result.returncode, result.stdout, result.stderr.splitlines()) == (1, "", [message]), argv


@pytest.fixture(scope="module")
def keyed_server():
    """The service's own API-key check (RequestGuard, as service.py mounts it) on a real HTTP server,
    with one key, in front of an app that answers every request that gets past it alike."""

    async def passed(request):
        return JSONResponse({"passed": "the API key check"})

    port = free_port()
    app = RequestGuard(Starlette(routes=[Route("/segment", passed, methods=["POST"])]), paths={"/segment"},
                       api_keys=["the-right-key"], max_upload_bytes=10_000_000)
    served = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=served.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not served.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    served.should_exit = True
    thread.join(timeout=10)


def test_a_401_names_the_options_that_carry_the_api_key(keyed_server, test_images):
    image = str(test_images / "chelsea.png")
    without = sam2_api("--url", keyed_server, "segment", image, "--point", "1,1")
    assert (without.returncode, without.stdout, without.stderr.splitlines()) == (1, "", [
        "error: the server wants an API key: pass --api-key KEY, or set SAM2_API_KEY in the environment"])
    wrong = sam2_api("--url", keyed_server, "segment", image, "--point", "1,1", SAM2_API_KEY="a-wrong-key")
    assert (wrong.returncode, wrong.stdout, wrong.stderr.splitlines()) == (1, "", [
        "error: the server refused this API key (--api-key, or SAM2_API_KEY in the environment)"])
    right = sam2_api("--url", keyed_server, "segment", image, "--point", "1,1", "--api-key", "the-right-key")
    assert (right.returncode, json.loads(right.stdout)) == (0, {"passed": "the API key check"})


def test_a_batch_refused_for_its_api_key_says_so_and_resume_sends_it_again(keyed_server, test_images, tmp_path):
    requests, results = tmp_path / "requests.jsonl", tmp_path / "results.jsonl"
    requests.write_text(json.dumps({"image": str(test_images / "chelsea.png"), "points": [[1, 1]]}) + "\n")
    first = sam2_api("--url", keyed_server, "batch", str(requests), "--output", str(results), "--quiet")
    assert first.returncode == 1
    assert first.stderr.splitlines()[0] == ("error: 1 requests refused: the server wants an API key: pass --api-key "
                                            "KEY, or set SAM2_API_KEY in the environment")
    again = sam2_api("--url", keyed_server, "batch", str(requests), "--output", str(results), "--quiet", "--resume",
                     "--api-key", "the-right-key")
    assert (again.returncode, again.stderr.splitlines()[-1]) == (
        0, f"1 ok, 0 failed, 0 already done; results in {results}")
    assert [json.loads(line)["status"] for line in results.read_text().splitlines()] == [401, 200]


def test_a_closed_stdout_ends_the_command_quietly_with_sigpipes_status(server, test_images):
    read_end, write_end = os.pipe()
    os.close(read_end)  # as `sam2-api … | head` once head has what it wanted
    try:
        result = subprocess.run([*SAM2_API, "--url", server.url, "segment", str(test_images / "chelsea.png"),
                                 "--point", "225,150"], cwd=REPO, env=clean_env(), stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, "")  # was a BrokenPipeError traceback


def test_ctrl_c_stops_a_batch_keeps_every_result_and_resume_sends_only_the_rest(server, test_images, tmp_path):
    count = 40
    (tmp_path / "requests.jsonl").write_text("".join(
        json.dumps({"id": f"click-{i}", "image": str(test_images / "chelsea.png"), "points": [[10 + 10 * i, 150]]})
        + "\n" for i in range(count)))
    results = tmp_path / "results.jsonl"
    served_before = segment_metric(server, "request_total")
    batch = subprocess.Popen([*SAM2_API, "batch", "requests.jsonl", "--output", "results.jsonl", "--concurrency", "2",
                              "--url", server.url], cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             # as a terminal's Ctrl+C finds it, even where this test runs as a background job
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (results.exists() and len(results.read_text().splitlines()) >= 3):
        assert batch.poll() is None and time.monotonic() < deadline, batch.communicate()
        time.sleep(0.02)
    batch.send_signal(signal.SIGINT)
    _, stderr = batch.communicate(timeout=60)

    assert batch.returncode == 130, stderr
    assert "Traceback" not in stderr
    first = [json.loads(line) for line in results.read_text().splitlines()]
    assert 3 <= len(first) < count
    assert all(r["ok"] and r["mask_url"] for r in first)
    assert len({r["id"] for r in first}) == len(first)
    assert f"{len(first)} ok, 0 failed, 0 already done" in stderr
    assert f"{count - len(first)} not sent" in stderr and "abandoned" not in stderr  # in flight: awaited
    resume = stderr.split("resume with: ", 1)[1].splitlines()[0]
    assert shlex.split(resume)[:2] == ["sam2-api", "batch"]

    again = subprocess.run([*SAM2_API, *shlex.split(resume)[1:]], cwd=tmp_path, env=clean_env(), capture_output=True,
                           text=True, timeout=300)  # the printed command, as the user would paste it
    assert again.returncode == 0, again.stderr
    assert f"{count - len(first)} ok, 0 failed, {len(first)} already done" in again.stderr
    every = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(r["id"] for r in every) == sorted(f"click-{i}" for i in range(count))  # each once
    assert all(r["ok"] for r in every)
    assert segment_metric(server, "request_total") - served_before == count  # the server saw each request once


def test_a_second_ctrl_c_stops_at_once_abandoning_requests_in_flight(server, tmp_path):
    for name in ("a", "b"):  # new images: each request waits for the encoder (seconds on a CPU)
        noise = np.random.default_rng(ord(name)).integers(0, 256, (240, 320, 3), dtype=np.uint8)
        Image.fromarray(noise).save(tmp_path / f"{name}.png")
    (tmp_path / "requests.jsonl").write_text("".join(
        json.dumps({"id": name, "image": f"{name}.png", "points": [[100, 100]]}) + "\n" for name in ("a", "b")))
    batch = subprocess.Popen([*SAM2_API, "batch", "requests.jsonl", "--output", "results.jsonl", "--quiet",
                              "--url", server.url], cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not segment_metric(server, "request_in_progress"):
        assert batch.poll() is None and time.monotonic() < deadline, batch.communicate()
        time.sleep(0.02)
    batch.send_signal(signal.SIGINT)
    time.sleep(0.2)
    batch.send_signal(signal.SIGINT)
    _, stderr = batch.communicate(timeout=5)  # does not wait for the server

    assert batch.returncode == 130, stderr
    assert "Traceback" not in stderr and "Fatal" not in stderr
    assert "abandoned in flight" in stderr and "resume with: sam2-api batch requests.jsonl" in stderr

