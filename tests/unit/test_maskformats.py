"""Masks as box + area, COCO RLE and polygons: each must give back exactly the mask's pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from sam2_api.errors import ResponseTooLarge
from sam2_api.maskformats import RLE_FIELDS_BYTES, FormatBudget, bbox_and_area, coco_rle, describe, polygons, rasterise


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


def compact_json(value) -> int:
    return len(json.dumps(value, separators=(",", ":")))


def test_the_budget_counts_the_formats_json_bytes_and_refuses_the_first_mask_past_it():
    mask = MASKS["random blobs"]
    made = describe(mask, {"rle", "polygons"})
    rings = [ring for part in made["polygons"] for ring in [part["exterior"], *part["holes"]]]
    # Each ring as its JSON list's items with one separator each; the RLE string with its fields around.
    size = len(made["rle"]["counts"]) + RLE_FIELDS_BYTES + sum(compact_json(ring) - 1 for ring in rings)
    assert size > 2000
    exact = FormatBudget(3 * size, masks=3, advice="ask for less")
    for _ in range(3):
        assert describe(mask, {"rle", "polygons"}, budget=exact) == made  # the same formats, counted
    assert exact.left == 0
    over = FormatBudget(3 * size - 1, masks=3, advice="ask for less")
    describe(mask, {"rle", "polygons"}, budget=over)
    describe(mask, {"rle", "polygons"}, budget=over)
    with pytest.raises(ResponseTooLarge, match=rf"^the formats asked for would make the response larger than "
                       rf"{3 * size - 1} bytes \(SAM2_MAX_RESPONSE_BYTES\): 2 of 3 masks fit; ask for less$"):
        describe(mask, {"rle", "polygons"}, budget=over)


def test_a_noisy_mask_is_refused_ring_by_ring_before_its_polygons_become_lists():
    # 1024x1024 of blobs a few pixels wide: about 0.9 MB of polygons. A 64 KiB budget stops
    # at the first rings over it, long before the rest of the boundary is listed.
    noisy = np.random.default_rng(1).random((1024, 1024)) > 0.5
    budget = FormatBudget(64 * 1024, masks=1, advice="")
    with pytest.raises(ResponseTooLarge, match="0 of 1 masks fit"):
        polygons(noisy, budget=budget)
    assert -2000 < budget.left < 0  # charged up to the ring that passed it, not beyond


def test_a_polygon_tolerance_makes_the_same_mask_fit():
    blob = np.zeros((400, 400), dtype=bool)
    yy, xx = np.mgrid[:400, :400]
    blob[(xx - 200) ** 2 + (yy - 200) ** 2 < 150**2] = True
    exact = compact_json(polygons(blob))
    assert compact_json(polygons(blob, 1.5, FormatBudget(exact // 4, masks=1, advice=""))) < exact // 4
