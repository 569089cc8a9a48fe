"""Masks as box + area, COCO RLE and polygons: each must give back exactly the mask's pixels."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from sam2_api.maskformats import bbox_and_area, coco_rle, describe, polygons, rasterise


def ring_with_a_hole_and_an_island() -> np.ndarray:
    """Two parts: a square ring whose hole holds an island, and a separate diagonal bar."""
    mask = np.zeros((60, 80), dtype=bool)
    mask[5:45, 5:45] = True
    mask[15:35, 15:35] = False  # the hole
    mask[22:28, 22:28] = True  # an island inside the hole: a third part
    for i in range(20):
        mask[10 + i, 55 + i : 58 + i] = True  # a diagonal stroke, 8-connected
    return mask


MASKS = {
    "ring, hole, island, bar": ring_with_a_hole_and_an_island(),
    "single pixel": np.pad(np.ones((1, 1), dtype=bool), ((3, 4), (5, 2))),
    "touches every edge": np.ones((7, 9), dtype=bool),
    "random blobs": np.random.default_rng(0).random((50, 70)) > 0.6,
    "empty": np.zeros((4, 6), dtype=bool),
}


@pytest.mark.parametrize("name", MASKS)
def test_rle_decodes_to_exactly_the_mask(name):
    mask = MASKS[name]
    rle = coco_rle(mask)
    assert rle["size"] == list(mask.shape) and isinstance(rle["counts"], str)
    decoded = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    assert np.array_equal(decoded.astype(bool), mask)


@pytest.mark.parametrize("name", MASKS)
def test_polygons_at_tolerance_zero_rasterise_to_exactly_the_mask(name):
    mask = MASKS[name]
    assert np.array_equal(rasterise(polygons(mask), *mask.shape), mask)


def test_parts_and_holes_are_found_and_simplification_stays_close():
    mask = MASKS["ring, hole, island, bar"]
    parts = polygons(mask)
    assert len(parts) == 3  # ring, bar, island: largest first
    assert [len(part["holes"]) for part in parts] == [1, 0, 0]
    assert parts[0]["exterior"] == [[5, 5], [5, 44], [44, 44], [44, 5]]  # boundary pixel centres
    simple = polygons(mask, tolerance=2.0)
    assert sum(len(p["exterior"]) for p in simple) <= sum(len(p["exterior"]) for p in parts)
    differing = np.count_nonzero(rasterise(simple, *mask.shape) != mask)
    assert 0 < differing <= 0.1 * mask.sum()  # 2 px off a 3 px wide stroke moves a few percent


def test_box_and_area():
    mask = MASKS["ring, hole, island, bar"]
    assert bbox_and_area(mask) == ([5, 5, 77, 45], int(mask.sum()))
    assert bbox_and_area(MASKS["empty"]) == ([0, 0, 0, 0], 0)
    assert describe(mask) == {"bbox": [5, 5, 77, 45], "area": int(mask.sum())}
    assert set(describe(mask, {"rle", "polygons"})) == {"bbox", "area", "rle", "polygons"}
