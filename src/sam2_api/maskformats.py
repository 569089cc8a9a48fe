"""What a mask can be besides its PNG: its box and area, COCO RLE, polygons.

Frame: pixels of the upright image, x to the right and y down, origin at the top-left corner;
pixel (x, y) covers the square [x, x+1) × [y, y+1) (the continuous convention of COCO and
detectron2). A box ``[x1, y1, x2, y2]`` covers the mask's pixels ``x1 ≤ x < x2``, ``y1 ≤ y < y2``
(the edges of its first and past its last pixels, the frame of a prompt box). Polygon vertices
are pixel corners (integers, 0..W and 0..H): the rings run along the pixels' edges, so that their
area is the pixel count and the pixels whose centres they hold (even-odd) are the mask.

RLE and polygons grow with the length of a mask's boundary: a noisy 4096×4096 mask is 5 MB of
polygons and 0.3 MB of RLE. A :class:`FormatBudget` bounds what one response carries: each mask's
RLE string, and each polygon ring before it becomes Python lists (about 12 times its JSON bytes),
is charged as it is made, and the request is refused at the first one that passes the bound.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from pycocotools import mask as coco_mask

from .errors import ResponseTooLarge
from .polygons import HOLE_FIELDS_BYTES, PART_FIELDS_BYTES, json_bytes, polygons, rasterise  # noqa: F401 (re-exported)

FORMATS = ("rle", "polygons")
RLE_FIELDS_BYTES = 48  # {"size":[h,w],"counts":""} around the string


class FormatBudget:
    """Bytes of JSON that the formats (RLE strings, polygon vertices) of one response's masks may take
    together (``SAM2_MAX_RESPONSE_BYTES``); ``advice``: what the caller can reduce, in words."""

    def __init__(self, max_bytes: int, masks: int, advice: str) -> None:
        self.max_bytes = max_bytes
        self.left = max_bytes
        self.masks = masks
        self.masks_done = 0
        self.advice = advice

    def charge(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise ResponseTooLarge(
                f"the formats asked for would make the response larger than {self.max_bytes} bytes "
                f"(SAM2_MAX_RESPONSE_BYTES): {self.masks_done} of {self.masks} masks fit; {self.advice}"
            )

    def mask_done(self) -> None:
        self.masks_done += 1

    def groups_that_fit(self, groups: list[int]) -> int:
        """How many of the next ``groups`` (each a count of masks) the bytes left would hold at the
        bytes per mask so far; at least one, so that a caller asking in rounds always goes on."""
        per_mask = max((self.max_bytes - self.left) / max(self.masks_done, 1), 1.0)
        room, fit = self.left / per_mask, 0
        for masks in groups:
            room -= masks
            if room < 0:
                break
            fit += 1
        return max(fit, 1)


def bbox_and_area(mask: np.ndarray) -> tuple[list[int], int]:
    """``[x1, y1, x2, y2]`` (x2, y2 exclusive; ``[0, 0, 0, 0]`` for an empty mask) and the pixel count."""
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    if not rows.any():
        return [0, 0, 0, 0], 0
    y1, y2 = np.flatnonzero(rows)[[0, -1]]
    x1, x2 = np.flatnonzero(cols)[[0, -1]]
    return [int(x1), int(y1), int(x2) + 1, int(y2) + 1], int(np.count_nonzero(mask))


def coco_rle(mask: np.ndarray) -> dict:
    """COCO's compressed RLE, as pycocotools writes it: ``{"size": [h, w], "counts": str}``."""
    rle = coco_mask.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def from_coco_rle(counts: str, height: int, width: int) -> np.ndarray:
    """The ``(H, W)`` bool mask of a COCO compressed RLE string (:func:`coco_rle`'s ``counts``)."""
    return coco_mask.decode({"size": [height, width], "counts": counts.encode("ascii")}).astype(bool)


def describe(mask: np.ndarray, formats: Iterable[str] = (), tolerance: float = 0.0,
             budget: FormatBudget | None = None) -> dict:
    """``bbox`` and ``area`` always; ``rle`` and ``polygons`` when ``formats`` asks for them, charged
    to ``budget`` as they are made (:class:`ResponseTooLarge` once they pass it)."""
    box, area = bbox_and_area(mask)
    out: dict = {"bbox": box, "area": area}
    if "rle" in formats:
        out["rle"] = coco_rle(mask)
        if budget is not None:
            budget.charge(len(out["rle"]["counts"]) + RLE_FIELDS_BYTES)
    if "polygons" in formats:
        out["polygons"] = polygons(mask, tolerance, budget)
    if budget is not None:
        budget.mask_done()
    return out
