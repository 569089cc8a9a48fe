"""The `sam2-api` command against a real server: one image with an overlay, and a resumable batch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from tests.conftest import REPO, upright_rgb
from tests.integration.conftest import PHOTOS
from sam2_api.localdev import clean_env
from tests.integration.test_segment_api import fetch_mask


# The module, not the installed console script: this runs the checkout's own code wherever it is.
SAM2_API = [sys.executable, "-m", "sam2_api.cli"]


def sam2_api(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SAM2_API, *args], cwd=REPO, env=clean_env(**env), capture_output=True, text=True,
                          timeout=300)


def test_segment_prints_the_result_and_draws_the_overlay(server, reference_mask, test_images, tmp_path):
    image = test_images / "chelsea.png"
    out = tmp_path / "overlay.png"
    result = sam2_api("--url", server.url, "segment", str(image), "--point", "225,150", "--point", "50,50,0",
                      "--overlay", str(out))
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert (body["width"], body["height"]) == (451, 300)
    expected, _ = reference_mask(upright_rgb(image), points=[[225, 150], [50, 50]], labels=[1, 0])
    assert np.array_equal(fetch_mask(body["mask_url"]) == 255, expected)

    drawn = np.array(Image.open(out).convert("RGB")).astype(int)
    original = upright_rgb(image).astype(int)
    assert drawn.shape == original.shape
    assert drawn[150, 225].tolist() == [34, 197, 94] and drawn[50, 50].tolist() == [239, 68, 68]  # the clicks
    rows, cols = np.mgrid[:300, :451]
    clicks = (np.hypot(cols - 225, rows - 150) <= 8) | (np.hypot(cols - 50, rows - 50) <= 8)
    changed = np.any(drawn != original, axis=-1)
    assert not (changed & ~expected & ~clicks).any()  # the mask is drawn over its own pixels only
    assert changed[expected & ~clicks].mean() > 0.99  # (a pixel already of the mask's colour would not change)


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
    assert env_only.returncode != 0 and "ConnectError" in env_only.stderr
