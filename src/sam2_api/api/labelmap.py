"""The label map of segment everything: one 16-bit image naming the object at every pixel.

Frame: pixels of the upright image, ``(H, W)``. Value 0 is no object; ``i`` is the i-th object of
the response (1-based, the response's order: largest first). Where objects overlap, the one with
the higher ``predicted_iou`` wins; on equal scores, the earlier (larger) one.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from ..imaging import PNG_COMPRESS_LEVEL

MAX_LABEL = 65535


def paint_order(scores: Sequence[float]) -> list[int]:
    """Object indexes in the order to paint them so that the overlap rule holds: the last painted
    wins, so lowest score first and, among equal scores, the later object first."""
    return sorted(range(len(scores)), key=lambda i: (scores[i], -i))


class LabelMap:
    """Built by painting each object's mask once, in :func:`paint_order`."""

    def __init__(self, height: int, width: int) -> None:
        self.labels = np.zeros((height, width), dtype=np.uint16)

    def paint(self, index: int, mask: np.ndarray) -> None:
        """Object ``index`` (0-based, response order) over ``mask``, an ``(H, W)`` bool array."""
        if index + 1 > MAX_LABEL:
            raise ValueError(f"a 16-bit label map holds at most {MAX_LABEL} objects")
        self.labels[mask] = index + 1

    def png(self) -> bytes:
        """A 16-bit grayscale PNG (Pillow mode ``I;16``) of the labels, as they are."""
        buffer = io.BytesIO()
        Image.fromarray(self.labels).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        return buffer.getvalue()


def read_png(data: bytes) -> np.ndarray:
    """The ``(H, W)`` uint16 labels of :meth:`LabelMap.png`'s bytes."""
    with Image.open(io.BytesIO(data)) as image:
        if image.mode not in ("I;16", "I"):
            raise ValueError(f"not a 16-bit label map: mode {image.mode}")
        return np.array(image, dtype=np.uint16)
