"""POST /segment over HTTP against `bentoml serve`, with masks fetched back from a real S3 server."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import bentoml
import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import upright_rgb
from tests.integration.conftest import BUCKET, PREFIX, SECRET_KEY, SECRETS, prepare_bucket

KEY = re.compile(rf"/{BUCKET}/({PREFIX}\d{{8}}_\d{{6}}_[0-9a-f]{{32}}\.png)$")


def post(server, data: bytes | None, filename: str = "image.png", timeout: float = 120,
         route: str = "/segment", headers: dict | None = None, **fields):
    """POST multipart to the server: ``data`` as the `image` file (None: no file), each field as JSON."""
    files = {"image": (filename, data, "application/octet-stream")} if data is not None else None
    form = {name: json.dumps(value) for name, value in fields.items()}
    if files is None:
        # httpx only sends multipart when there is a file; keep the request multipart anyway.
        files = {"unrelated": ("x.txt", b"", "text/plain")}
    response = httpx.post(f"{server.url}{route}", files=files, data=form, headers=headers, timeout=timeout)
    assert not any(secret in response.text for secret in SECRETS)
    return response


def fetch_mask(url: str) -> np.ndarray:
    """GET the mask anonymously, as the user's application would, and decode it."""
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    png = Image.open(io.BytesIO(response.content))
    assert (png.format, png.mode) == ("PNG", "L")
    pixels = np.array(png)
    assert set(np.unique(pixels)) <= {0, 255}
    return pixels


CASES = [
    ("astronaut.png", {"points": [[200, 150]]}),
    ("camera.png", {"box": [100, 60, 400, 450]}),
    ("rocket.jpg", {"points": [[320, 200], [100, 50]], "labels": [1, 0], "box": [250, 20, 420, 420]}),
    ("chelsea.png", {"points": [[225, 150]], "multimask_output": False}),
]


@pytest.mark.parametrize("name, fields", CASES, ids=[c[0] for c in CASES])
def test_served_mask_is_exactly_sam2_image_predictors(server, s3, reference_mask, test_images, name, fields):
    path = test_images / name
    response = post(server, path.read_bytes(), name, **fields)
    assert response.status_code == 200, response.text
    body = response.json()
    image = upright_rgb(path)
    height, width = image.shape[:2]
    assert set(body) == {"mask_url", "score", "width", "height", "mask_id", "bbox", "area"}
    assert (body["width"], body["height"]) == (width, height)

    key = KEY.search(body["mask_url"]).group(1)
    assert s3.head_object(Bucket=BUCKET, Key=key)["ContentType"] == "image/png"
    served = fetch_mask(body["mask_url"])
    expected, score = reference_mask(image, **fields)
    assert served.shape == (height, width)
    assert 0 < expected.sum() < expected.size
    assert np.array_equal(served == 255, expected)
    assert body["score"] == pytest.approx(score, abs=1e-6)


# How a camera stores an upright photo under each EXIF orientation: the inverse of what a viewer
# (and Pillow's exif_transpose) does to show it upright.
STORED_AS = {
    1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270,
}


@pytest.fixture(scope="module")
def upright_cat_mask(test_images, reference_mask):
    """The predictor's mask for a click on the upright cat photo (451x300)."""
    return reference_mask(upright_rgb(test_images / "chelsea.png"), points=[[225, 150]])[0]


@pytest.mark.parametrize("orientation", sorted(STORED_AS))
def test_exif_oriented_photos_are_segmented_upright(server, upright_cat_mask, test_images, orientation):
    upright = Image.open(test_images / "chelsea.png").convert("RGB")
    method = STORED_AS[orientation]
    stored = upright if method is None else upright.transpose(method)  # FLIP_LEFT_RIGHT is 0: falsy
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    stored.save(buffer, format="PNG", exif=exif)  # lossless: upright again, pixel for pixel
    body = post(server, buffer.getvalue(), "camera.png", points=[[225, 150]]).json()  # upright frame
    assert (body["width"], body["height"]) == (451, 300)
    assert np.array_equal(fetch_mask(body["mask_url"]) == 255, upright_cat_mask)


def test_bentoml_sync_client_calls_the_same_api(server, test_images):
    with bentoml.SyncHTTPClient(server.url, timeout=120) as client:
        body = client.segment(image=test_images / "coffee.png", box=[150, 50, 450, 350])
    assert (body["width"], body["height"]) == (600, 400)
    assert fetch_mask(body["mask_url"]).shape == (400, 600)


def truncated(path: Path, keep: float) -> bytes:
    data = path.read_bytes()
    return data[: int(len(data) * keep)]


def bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (10_000, 6_000)).save(buffer, format="PNG")  # 60 MP, ~10 KB on the wire
    return buffer.getvalue()


BAD_REQUESTS = [
    ("no image part", lambda d: (None, {"points": [[1, 1]]}), 400, "image"),
    ("empty file", lambda d: (b"", {"points": [[1, 1]]}), 400, "the image file is empty"),
    ("text named .png", lambda d: (b"just some text\n", {"points": [[1, 1]]}), 415, "not an image"),
    ("truncated jpeg", lambda d: (truncated(d / "rocket.jpg", 0.3), {"points": [[1, 1]]}), 400, "truncated"),
    ("truncated png", lambda d: (truncated(d / "chelsea.png", 0.5), {"points": [[1, 1]]}), 400, "truncated"),
    ("no prompt", lambda d: ((d / "chelsea.png").read_bytes(), {}), 400, "at least one of `points` or `box`"),
    ("labels mismatch", lambda d: ((d / "chelsea.png").read_bytes(), {"points": [[1, 1]], "labels": [1, 0]}), 400, "`labels` has 2 entries"),
    ("label not 0/1", lambda d: ((d / "chelsea.png").read_bytes(), {"points": [[1, 1]], "labels": [3]}), 400, "labels"),
    ("inverted box", lambda d: ((d / "chelsea.png").read_bytes(), {"box": [200, 10, 100, 50]}), 400, "x2 > x1"),
    ("point outside", lambda d: ((d / "chelsea.png").read_bytes(), {"points": [[452, 10]]}), 400, "outside the 451x300 image"),
    ("box outside", lambda d: ((d / "chelsea.png").read_bytes(), {"box": [0, 0, 100, 301]}), 400, "outside the 451x300 image"),
    ("too many pixels", lambda d: (bomb(), {"points": [[1, 1]]}), 413, "the limit is 50000000"),
]


@pytest.mark.parametrize("case, make, status, words", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_get_a_clear_4xx(server, test_images, case, make, status, words):
    data, fields = make(test_images)
    response = post(server, data, **fields)
    assert response.status_code == status, response.text
    assert words in response.text


def test_non_finite_coordinates_are_refused(server, test_images):
    # JSON has no NaN, but Python's json module (and many clients) will send one anyway.
    files = {"image": ("c.png", (test_images / "chelsea.png").read_bytes())}
    response = httpx.post(f"{server.url}/segment", files=files, data={"points": "[[NaN, 5]]"}, timeout=30)
    assert response.status_code == 400
    assert "finite" in response.text


def test_server_keeps_working_after_bad_requests(server, test_images):
    for data in (b"", b"garbage", truncated(test_images / "rocket.jpg", 0.2)):
        assert post(server, data, points=[[1, 1]]).status_code in (400, 415)
    response = post(server, (test_images / "chelsea.png").read_bytes(), box=[100, 50, 300, 250])
    assert response.status_code == 200 and response.json()["mask_url"]


def test_without_a_bucket_masks_are_computed_but_not_stored(server_without_s3, test_images):
    response = post(server_without_s3, (test_images / "chelsea.png").read_bytes(), points=[[225, 150]])
    assert response.status_code == 200
    body = response.json()
    assert body["mask_url"] is None and (body["width"], body["height"]) == (451, 300)
    assert body["mask_error"] == "s3 not configured"  # why, in words a program can branch on
    assert 0 < body["score"] < 1
    log = server_without_s3.log()
    assert log.count("S3_BUCKET_NAME_STAGING is not set: masks will not be stored") == 1


def test_s3_outage_gives_null_url_within_the_bound_then_recovers(server, s3, s3_server, test_images):
    image = (test_images / "chelsea.png").read_bytes()
    s3_server.stop()
    try:
        started = time.monotonic()
        response = post(server, image, box=[100, 50, 300, 250])
        elapsed = time.monotonic() - started
        assert response.status_code == 200
        assert response.json()["mask_url"] is None and response.json()["mask_error"] == "s3 unreachable"
        assert elapsed < 20, f"a dead S3 held the request {elapsed:.1f} s"  # bound ~10 s + encoder
        assert f"mask upload failed: s3://{BUCKET}: EndpointConnectionError" in server.log()
    finally:
        s3_server.start("/moto-api/")
        prepare_bucket(s3)  # moto keeps buckets in memory only
    response = post(server, image, box=[100, 50, 300, 250])
    assert response.json()["mask_url"] is not None and "mask_error" not in response.json()  # no restart needed
    # The API process that saw the failure says so when its uploads work again; with several API
    # processes the next requests may land on another one first.
    for _ in range(30):
        if "mask uploads work again after 1 failed" in server.log():
            break
        assert post(server, image, box=[100, 50, 300, 250]).json()["mask_url"] is not None
    assert "mask uploads work again after 1 failed" in server.log()


def test_secrets_never_reach_logs_or_responses(server, test_images):
    response = post(server, (test_images / "chelsea.png").read_bytes(), points=[[225, 150]])
    assert SECRET_KEY not in response.text
    assert SECRET_KEY not in server.log()


def test_without_reachable_weights_the_server_stops_with_one_clear_line(tmp_path):
    import subprocess

    from tests.support.localdev import BIN, clean_env, free_port
    from tests.conftest import REPO

    env = clean_env(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), BENTOML_HOME=str(tmp_path / "bentoml"))
    result = subprocess.run([str(BIN / "bentoml"), "serve", "service.py", "--port", str(free_port())],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert output.strip().splitlines()[-1] == (
        "error: could not fetch facebook/sam2.1-hiera-tiny from Hugging Face (LocalEntryNotFoundError); "
        "set SAM2_CHECKPOINT to a local checkpoint file"
    )
    assert output.count("could not fetch") == 1
