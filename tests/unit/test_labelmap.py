"""The label map: the overlap rule, and a 16-bit PNG that reads back as it was painted."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sam2_api.api.labelmap import LabelMap, paint_order, read_png


def disc(shape, cx, cy, r) -> np.ndarray:
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    return (cols - cx) ** 2 + (rows - cy) ** 2 <= r * r


def test_where_objects_overlap_the_higher_score_wins_and_ties_go_to_the_earlier():
    shape = (40, 60)
    masks = [disc(shape, 20, 20, 15), disc(shape, 35, 20, 15), disc(shape, 28, 28, 10), disc(shape, 50, 30, 8)]
    scores = [0.5, 0.9, 0.5, 0.1]
    labels = LabelMap(*shape)
    for index in paint_order(scores):
        labels.paint(index, masks[index])
    for y in range(shape[0]):
        for x in range(shape[1]):
            covering = [i for i, mask in enumerate(masks) if mask[y, x]]
            # the highest score; among equal scores, the lowest index
            expected = min(covering, key=lambda i: (-scores[i], i)) + 1 if covering else 0
            assert labels.labels[y, x] == expected, (x, y)
    assert set(np.unique(labels.labels)) == {0, 1, 2, 3, 4}


def test_png_is_16_bit_grayscale_at_the_image_size_and_reads_back_exactly():
    labels = LabelMap(3, 5)
    labels.paint(0, np.eye(3, 5, dtype=bool))
    labels.paint(299, np.eye(3, 5, k=2, dtype=bool))
    labels.paint(65534, np.eye(3, 5, k=-1, dtype=bool))
    data = labels.png()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and (data[24], data[25]) == (16, 0)  # IHDR: bit depth 16, grayscale
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (5, 3)
    read = read_png(data)
    assert read.dtype == np.uint16 and np.array_equal(read, labels.labels)
    assert {int(v) for v in np.unique(read)} == {0, 1, 300, 65535}
    with pytest.raises(ValueError, match="at most 65535"):
        labels.paint(65535, np.ones((3, 5), dtype=bool))
