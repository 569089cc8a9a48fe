"""Every request's working memory is bounded, whatever the image's shape and however many masks:
at most 32 bytes per pixel of the image plus 256 MiB, across both services (docs/RELIABILITY.md)."""

from __future__ import annotations

import io
import threading

import psutil
from PIL import Image

from tests.integration.test_segment_api import fetch_mask, post

BYTES_PER_PIXEL, FIXED = 32, 256 * 2**20  # the stated bound


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
