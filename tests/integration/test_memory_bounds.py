"""Every request's working memory is bounded, whatever the image's shape and however many masks:
at most 32 bytes per pixel of the image plus 256 MiB, across both services (docs/RELIABILITY.md)."""

from __future__ import annotations

import io
import json
import re
import threading

import httpx
import numpy as np
import psutil
from PIL import Image

from tests.integration.conftest import BUCKET
from tests.integration.test_segment_api import fetch_mask, post
from tests.unit.test_maskinput import mode_i_tiff, tiff

BYTES_PER_PIXEL, FIXED = 32, 256 * 2**20  # the stated bound
TRACE_BYTES_PER_PIXEL = 36  # tracing one noise mask's rings (maskformats: 38 B/px at most, on pure pixel noise)
SIDE = 1024  # of the noise image of the amplification test: its 96 masks' formats are about twice the bound


def tree_rss(pid: int) -> int:
    total = 0
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


class PeakRss:
    """The peak RSS of the server's process tree while the ``with`` block runs."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._done = pid, 0, threading.Event()

    def __enter__(self) -> "PeakRss":
        self.before = tree_rss(self.pid)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.05):
            self.peak = max(self.peak, tree_rss(self.pid))

    def __exit__(self, *_) -> None:
        self._done.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return max(0, self.peak - self.before)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_thin_image_is_refused_from_its_header_at_no_cost(server):
    thin = png(Image.new("L", (1, 200_000)))  # 200,000 pixels, well inside the pixel limit
    assert len(thin) < 2000
    with PeakRss(server.proc.pid) as rss:
        response = post(server, thin, points=[[0, 0]])
    assert response.status_code == 413
    assert response.json()["error"] == "the image is 1x200000; the limit is 16384 pixels on either side"
    assert rss.growth < 64 * 2**20  # it cost 2.3 GB when SAM 2's resize saw it


def test_32_masks_of_a_16_megapixel_image_stay_within_the_bound(server, test_images):
    side = 4000
    photo = Image.open(test_images / "astronaut.png").convert("RGB").resize((side, side))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=90)
    objects = [{"box": [40 * i, 30 * i, 40 * i + 2000, 30 * i + 2500]} for i in range(32)]
    post(server, (test_images / "chelsea.png").read_bytes(), points=[[10, 10]])  # warm, small
    with PeakRss(server.proc.pid) as rss:
        response = post(server, buffer.getvalue(), route="/segment_objects", objects=objects, timeout=300)
    assert response.status_code == 200, response.text
    masks = response.json()["objects"]
    assert len(masks) == 32 and all(m["mask_url"] for m in masks)
    assert fetch_mask(masks[-1]["mask_url"]).shape == (side, side)
    bound = BYTES_PER_PIXEL * side * side + FIXED  # 768 MiB; all 32 masks as float32 at once took 2.4 GB
    assert rss.growth < bound, f"+{rss.growth / 2**20:.0f} MiB for one request (bound {bound / 2**20:.0f} MiB)"


def deflated_tiff(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="TIFF", compression="tiff_adobe_deflate")
    return buffer.getvalue()


def post_with_mask(server, image: bytes, mask: bytes, **fields) -> httpx.Response:
    files = {"image": ("image.png", image, "image/png"), "mask_input": ("mask.tif", mask, "image/tiff")}
    return httpx.post(f"{server.url}/segment", files=files, data={k: json.dumps(v) for k, v in fields.items()},
                      timeout=120)


def test_a_mask_input_bomb_is_refused_from_its_header_and_a_large_mask_costs_little(server, test_images):
    image = (test_images / "chelsea.png").read_bytes()
    bomb = mode_i_tiff(16384, 3000)  # 277 KB: +733 MiB and 2.7 s when it was decoded
    post(server, image, points=[[225, 150]])  # warm: the image's embedding is cached
    with PeakRss(server.proc.pid) as rss:
        refused = post_with_mask(server, image, bomb, points=[[225, 150]])
    assert refused.status_code == 413
    assert refused.json()["error"] == (
        "`mask_input`: the image is 16384x3000 = 49152000 pixels; the limit is 16000000 "
        "(SAM2_MASK_INPUT_MAX_PIXELS): send the mask smaller, it becomes 256x256 cells anyway")
    assert rss.growth < 64 * 2**20, f"+{rss.growth / 2**20:.0f} MiB"

    # A legitimate large mask: 3840x3840 (14.7 megapixels) of 32-bit values, a rectangle on whole
    # cells of 15x15 pixels, is read as the same 256x256 cells as the rectangle drawn at 256x256.
    large = np.zeros((3840, 3840), dtype=np.int32)
    large[15 * 40: 15 * 200, 15 * 60: 15 * 180] = 1
    small = np.zeros((256, 256), dtype=np.uint8)
    small[40:200, 60:180] = 255
    with PeakRss(server.proc.pid) as rss:
        from_large = post_with_mask(server, image, deflated_tiff(large), points=[[225, 150]])
    from_small = post_with_mask(server, image, tiff(Image.fromarray(small)), points=[[225, 150]])
    assert from_large.status_code == from_small.status_code == 200, from_large.text
    assert from_large.json()["score"] == from_small.json()["score"]
    assert np.array_equal(fetch_mask(from_large.json()["mask_url"]), fetch_mask(from_small.json()["mask_url"]))
    # 4 bytes a pixel decoded, 2 more converted (91 MiB in-process); was 15.5 bytes a pixel
    assert rss.growth < 7 * 3840 * 3840 + 32 * 2**20, f"+{rss.growth / 2**20:.0f} MiB"


def noise_jpeg(side: int) -> bytes:
    """An image of noise: the random-init model's masks of it are blobs a few pixels across, whose
    polygons and RLE are as large as masks get (a 4096² one: 490 MB of JSON for 96 masks)."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(
        buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def stored_keys(s3) -> int:
    return sum(page.get("KeyCount", 0) for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET))


def test_formats_that_would_amplify_the_response_are_refused_before_any_png(server, s3):
    # 32 objects with candidates and both formats on a noise image: 96 masks of blobs. Before the
    # bound this answered 200 with about 120 MB of JSON (4096²: 490 MB, 108 s, +5.7 GB).
    objects = [{"points": [[30 * i + 20, 500]], "candidates": True} for i in range(32)]
    keys = stored_keys(s3)
    with PeakRss(server.proc.pid) as rss:
        refused = post(server, noise_jpeg(SIDE), route="/segment_objects", objects=objects,
                       formats=["rle", "polygons"], timeout=600)
    assert refused.status_code == 422, refused.text[:200]
    fit = re.fullmatch(
        r"the formats asked for would make the response larger than 33554432 bytes \(SAM2_MAX_RESPONSE_BYTES\): "
        r"(\d+) of 96 masks fit; ask for fewer `formats` \(polygons are the larger\), a `polygon_tolerance` of 1-2 "
        r"pixels \(a fraction of the vertices, each within that distance of the boundary\), or fewer objects or "
        r"candidates", refused.json()["error"])
    assert fit and int(fit.group(1)) < 80, refused.json()["error"]  # stopped early, not after every mask
    assert stored_keys(s3) == keys  # not one PNG made or stored
    timing = dict(part.split(";dur=") for part in refused.headers["Server-Timing"].split(", "))
    print(f"refused after {float(timing['total']) / 1000:.1f} s (formats {float(timing['formats']) / 1000:.1f} s), "
          f"+{rss.growth / 2**20:.0f} MiB")
    # The stated bounds together: the request's own (32 bytes a pixel + 256 MiB), tracing one mask's
    # rings (36 bytes a pixel of noise, before its rings are counted; was cv2.findContours, the same)
    # and the formats held while the response is built (13 times SAM2_MAX_RESPONSE_BYTES).
    pixels = SIDE * SIDE
    bound = BYTES_PER_PIXEL * pixels + FIXED + TRACE_BYTES_PER_PIXEL * pixels + 13 * 32 * 2**20
    assert rss.growth < bound, f"+{rss.growth / 2**20:.0f} MiB, bound {bound / 2**20:.0f} MiB"
