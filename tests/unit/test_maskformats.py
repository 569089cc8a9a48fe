"""Masks as box + area, COCO RLE and polygons: each must give back exactly the mask's pixels, and
the polygons must be valid geometry for any tool (OGC / Shapely rules, checked here without Shapely)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from sam2_api.errors import ResponseTooLarge
from sam2_api.maskformats import (HOLE_FIELDS_BYTES, PART_FIELDS_BYTES, RLE_FIELDS_BYTES, FormatBudget, bbox_and_area,
                                  coco_rle, describe, polygons, rasterise)


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
    assert parts[0]["exterior"] == [[5, 5], [45, 5], [45, 45], [5, 45]]  # pixel corners, clockwise on screen
    assert parts[0]["holes"] == [[[15, 15], [15, 35], [35, 35], [35, 15]]]
    assert parts[2]["exterior"] == [[22, 22], [28, 22], [28, 28], [22, 28]]  # the island: a part of its own
    simple = polygons(mask, tolerance=2.0)
    assert [len(p["exterior"]) for p in simple] == [4, 4, 4]  # the bar's 80-corner staircase: a parallelogram
    assert simple[1]["exterior"] == [[55, 10], [58, 10], [77, 30], [74, 30]]
    differing = np.count_nonzero(rasterise(simple, *mask.shape) != mask)
    assert differing <= 0.1 * mask.sum()  # (here none: each pixel centre stays on its side)


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
    # Each ring as its JSON list's items with one separator each, each part's fields around them (the
    # compact JSON of the list of parts, but for a byte a part with holes); the RLE string with its fields.
    fields = sum(PART_FIELDS_BYTES + HOLE_FIELDS_BYTES * len(part["holes"]) for part in made["polygons"])
    size = len(made["rle"]["counts"]) + RLE_FIELDS_BYTES + sum(compact_json(ring) - 1 for ring in rings) + fields
    with_holes = sum(1 for part in made["polygons"] if part["holes"])
    assert compact_json(made["polygons"]) + with_holes == sum(compact_json(ring) - 1 for ring in rings) + fields + 1
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


def test_the_next_round_asks_for_as_many_groups_as_the_bytes_left_hold_at_the_rate_so_far():
    budget = FormatBudget(1000, masks=10, advice="")
    assert budget.groups_that_fit([1, 3, 1]) == 3  # nothing made yet: every group
    for _ in range(2):
        budget.charge(100)
        budget.mask_done()  # 2 masks made, 100 bytes each: 800 bytes left hold 8 more
    assert budget.groups_that_fit([3, 3, 1, 3]) == 3  # 3 + 3 + 1 fit in 8, the last 3 would not
    assert budget.groups_that_fit([3] * 5) == 2
    budget.charge(790)
    assert budget.groups_that_fit([3, 1]) == 1  # none fit: one group all the same, to find out


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


# --- Valid geometry, checked without Shapely ------------------------------------------------------
# OGC's rules for a Polygon, as GEOS (Shapely) applies them: each ring simple (no point passed
# twice) with at least 3 distinct vertices; rings of a part never cross or share an edge, though
# they may touch at points; holes inside the exterior and not inside one another; the interior
# connected. Checked with exact integer arithmetic.


def orientation(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Sign of the turn a → b → c (arrays of [x, y] rows, broadcast)."""
    return np.sign((b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1])
                   - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0]))


def edge_relations(rings: list[np.ndarray]):
    """For every pair of edges of the rings: (ring of each, index in ring of each, whether they meet
    at all, whether they cross properly, whether they overlap along a length)."""
    starts = np.cumsum([0] + [len(ring) for ring in rings])
    p1 = np.concatenate(rings)
    p2 = np.concatenate([np.roll(ring, -1, axis=0) for ring in rings])
    ring_of = np.repeat(np.arange(len(rings)), [len(ring) for ring in rings])
    a, b = np.triu_indices(len(p1), k=1)
    d1, d2 = orientation(p1[a], p2[a], p1[b]), orientation(p1[a], p2[a], p2[b])
    d3, d4 = orientation(p1[b], p2[b], p1[a]), orientation(p1[b], p2[b], p2[a])
    lo_a, hi_a = np.minimum(p1[a], p2[a]), np.maximum(p1[a], p2[a])
    lo_b, hi_b = np.minimum(p1[b], p2[b]), np.maximum(p1[b], p2[b])
    boxes = np.all((lo_a <= hi_b) & (lo_b <= hi_a), axis=1)
    meet = boxes & (d1 * d2 <= 0) & (d3 * d4 <= 0)
    proper = (d1 * d2 < 0) & (d3 * d4 < 0)
    collinear = (d1 == 0) & (d2 == 0)
    overlap = collinear & np.any(np.maximum(lo_a, lo_b) < np.minimum(hi_a, hi_b), axis=1)
    index = np.arange(len(p1)) - starts[ring_of]
    return ring_of[a], ring_of[b], index[a], index[b], meet, proper, overlap


def shoelace(ring: np.ndarray) -> float:
    x, y = ring[:, 0].astype(float), ring[:, 1].astype(float)
    return float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) / 2)


def inside(point: np.ndarray, ring: np.ndarray) -> int:
    """1 inside, 0 on the ring, -1 outside (exact, for integer vertices)."""
    p1, p2 = ring, np.roll(ring, -1, axis=0)
    on = (orientation(p1, p2, point[None]) == 0) & np.all(
        (np.minimum(p1, p2) <= point) & (point <= np.maximum(p1, p2)), axis=1)
    if on.any():
        return 0
    straddle = (p1[:, 1] > point[1]) != (p2[:, 1] > point[1])
    # x of the crossing > point's x, compared without division: sign-corrected cross product.
    right = orientation(p1, p2, point[None]) * np.sign(p2[:, 1] - p1[:, 1]) < 0
    return 1 if np.count_nonzero(straddle & right) % 2 else -1


def assert_valid_part(part: dict) -> None:
    rings = [np.asarray(part["exterior"], dtype=np.int64)] + [np.asarray(h, dtype=np.int64) for h in part["holes"]]
    for ring in rings:
        assert ring.ndim == 2 and ring.shape[1] == 2 and len(ring) >= 3, ring
        assert len({tuple(v) for v in ring.tolist()}) == len(ring), f"a vertex repeated: {ring.tolist()}"
    assert shoelace(rings[0]) > 0 and all(shoelace(hole) < 0 for hole in rings[1:])  # orientation as documented
    ring_a, ring_b, at_a, at_b, meet, proper, overlap = edge_relations(rings)
    size = np.array([len(ring) for ring in rings])[ring_a]
    adjacent = (ring_a == ring_b) & (((at_b - at_a) % size == 1) | ((at_a - at_b) % size == 1))
    assert not (meet & (ring_a == ring_b) & ~adjacent).any(), "a ring touches or crosses itself"
    assert not (overlap & adjacent).any(), "a ring folds back on itself"
    assert not (proper | overlap)[ring_a != ring_b].any(), "two rings cross or share an edge"
    for h, hole in enumerate(rings[1:], start=1):
        assert all(inside(v, rings[0]) >= 0 for v in hole) and any(inside(v, rings[0]) > 0 for v in hole) or \
            all(inside(v, rings[0]) == 0 for v in hole), "a hole outside its exterior"
        for other in rings[h + 1:]:
            assert not any(inside(v, other) > 0 for v in hole) and not any(inside(v, hole) > 0 for v in other)


def assert_valid_exact(parts: list[dict], mask: np.ndarray) -> None:
    """Tolerance 0: each part valid, rectilinear on pixel corners; the interior of each part
    connected (its pixels 4-connected), holes inside the exterior pixel for pixel and disjoint,
    parts disjoint; areas add up to the pixel count; even-odd pixel-centre fill gives the mask."""
    height, width = mask.shape
    assert np.array_equal(rasterise(parts, height, width), mask)
    assert sum(shoelace(np.array(p["exterior"])) + sum(shoelace(np.array(h)) for h in p["holes"]) for p in parts) \
        == np.count_nonzero(mask)
    covered = np.zeros(mask.shape, dtype=int)
    areas = []
    for part in parts:
        assert_valid_part(part)
        rings = [np.array(part["exterior"])] + [np.array(h) for h in part["holes"]]
        for ring in rings:
            assert ring.min() >= 0 and ring[:, 0].max() <= width and ring[:, 1].max() <= height
            step = np.roll(ring, -1, axis=0) - ring
            assert np.all((step[:, 0] == 0) != (step[:, 1] == 0)), "an edge off the pixel grid"
        cells = [rasterise([{"exterior": ring.tolist(), "holes": []}], height, width) for ring in rings]
        pixels = rasterise([part], height, width)
        assert np.array_equal(pixels, cells[0] & ~np.any(cells[1:], axis=0)) if len(cells) > 1 else True
        for h, hole in enumerate(cells[1:], start=1):
            assert not (hole & ~cells[0]).any(), "a hole outside its exterior"
            assert not any((hole & other).any() for other in cells[h + 1:]), "holes overlap"
        count, _ = cv2.connectedComponents(pixels.astype(np.uint8), connectivity=4)
        assert count == 2, "a part's interior is not connected"
        covered += pixels
        areas.append(shoelace(rings[0]))
    assert covered.max(initial=0) <= 1, "parts overlap"
    assert areas == sorted(areas, reverse=True), "largest part first"


def grid(rows: str) -> np.ndarray:
    return np.array([[c == "#" for c in row] for row in rows.split()], dtype=bool)


SHAPES = {
    "single pixel": (grid("... .#. ..."), [{"exterior": [[1, 1], [2, 1], [2, 2], [1, 2]], "holes": []}]),
    "one-pixel line": (grid("..... .###. ....."), [{"exterior": [[1, 1], [4, 1], [4, 2], [1, 2]], "holes": []}]),
    "one-pixel column at the edge": (grid("#. #. #."), [{"exterior": [[0, 0], [1, 0], [1, 3], [0, 3]], "holes": []}]),
    "two pixels touching at a corner": (grid("#. .#"), [{"exterior": [[0, 0], [1, 0], [1, 1], [0, 1]], "holes": []},
                                                       {"exterior": [[1, 1], [2, 1], [2, 2], [1, 2]], "holes": []}]),
    "a ring with a one-pixel hole": (grid("### #.# ###"), [{"exterior": [[0, 0], [3, 0], [3, 3], [0, 3]],
                                                            "holes": [[[1, 1], [1, 2], [2, 2], [2, 1]]]}]),
}


@pytest.mark.parametrize("name", SHAPES)
def test_small_shapes_are_traced_along_pixel_edges(name):
    mask, expected = SHAPES[name]
    assert polygons(mask) == expected
    assert_valid_exact(expected, mask)


def test_a_one_pixel_part_and_a_one_pixel_line_have_four_vertices_and_their_area():
    # Before: [[x, y]] and [[x1, y], [x2, y]], which PIL, Shapely and GeoJSON refuse.
    mask = np.zeros((6, 9), dtype=bool)
    mask[1, 1] = True
    mask[4, 2:8] = True
    parts = polygons(mask)
    assert [len(p["exterior"]) for p in parts] == [4, 4]
    assert [shoelace(np.array(p["exterior"])) for p in parts] == [6.0, 1.0]
    assert_valid_exact(parts, mask)


def test_pixels_touching_only_at_corners_are_separate_parts():
    checkerboard = (np.indices((6, 6)).sum(axis=0) % 2).astype(bool)
    parts = polygons(checkerboard)
    assert len(parts) == 18 and all(len(p["exterior"]) == 4 and p["holes"] == [] for p in parts)
    assert_valid_exact(parts, checkerboard)
    diamond = grid("..... ..#.. .#.#. ..#.. .....")  # four pixels around an empty one
    assert len(polygons(diamond)) == 4
    assert_valid_exact(polygons(diamond), diamond)


def test_a_loop_closed_at_a_corner_is_an_exterior_and_a_hole_touching_at_that_point():
    # The part wraps around an empty pixel and closes only where two of its pixels meet at a corner:
    # one ring through that corner twice would not be simple; OGC's form is a hole touching the
    # exterior there.
    pinched = grid("..... .###. .#.#. .##.. .....")
    parts = polygons(pinched)
    assert len(parts) == 1 and len(parts[0]["holes"]) == 1
    assert_valid_exact(parts, pinched)
    exterior, hole = ({tuple(v) for v in ring} for ring in (parts[0]["exterior"], parts[0]["holes"][0]))
    assert exterior & hole == {(3, 3)}


def test_holes_touching_at_a_corner_are_two_holes():
    mask = grid("##### #.### ##.## #####")
    parts = polygons(mask)
    assert len(parts) == 1 and sorted(parts[0]["holes"]) == [[[1, 1], [1, 2], [2, 2], [2, 1]],
                                                              [[2, 2], [2, 3], [3, 3], [3, 2]]]
    assert_valid_exact(parts, mask)


def test_an_island_in_a_hole_is_a_part_of_its_own():
    mask = np.zeros((9, 9), dtype=bool)
    mask[1:8, 1:8] = True
    mask[2:7, 2:7] = False
    mask[4, 4] = True
    parts = polygons(mask)
    assert [len(p["holes"]) for p in parts] == [1, 0]
    assert parts[1]["exterior"] == [[4, 4], [5, 4], [5, 5], [4, 5]]
    assert_valid_exact(parts, mask)


@pytest.mark.parametrize("name", MASKS)
def test_the_masks_polygons_are_valid_and_exact(name):
    assert_valid_exact(polygons(MASKS[name]), MASKS[name])


def random_masks(count: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        height, width = rng.integers(1, 24, size=2)
        mask = rng.random((height, width)) < rng.uniform(0.2, 0.8)
        if rng.random() < 0.3:  # blobs as well as noise
            mask = cv2.resize(mask.astype(np.uint8), (width * 3, height * 3), interpolation=cv2.INTER_NEAREST) > 0
        yield mask


def test_random_masks_round_trip_exactly_with_valid_parts():
    for mask in random_masks(300, seed=19):
        assert_valid_exact(polygons(mask), mask)


def assert_parts_apart(parts: list[dict]) -> None:
    """A valid MultiPolygon: no two parts cross or share an edge, and none lies inside another
    (they may touch at points)."""
    rings = [np.asarray(ring, dtype=np.int64) for part in parts for ring in [part["exterior"], *part["holes"]]]
    owner = np.repeat(np.arange(len(parts)), [1 + len(part["holes"]) for part in parts])
    ring_a, ring_b, _, _, _, proper, overlap = edge_relations(rings)
    assert not ((proper | overlap) & (owner[ring_a] != owner[ring_b])).any(), "two parts cross or share an edge"
    for i, part in enumerate(parts):
        for j, other in enumerate(parts):
            if i != j:
                vertex = np.asarray(part["exterior"][0])
                inside_other = inside(vertex, np.asarray(other["exterior"])) > 0 and not any(
                    inside(vertex, np.asarray(hole)) >= 0 for hole in other["holes"])
                assert not inside_other, "a part inside another"


@pytest.mark.parametrize("tolerance", [0.5, 1.0, 2.0, 5.0])
def test_simplified_parts_stay_valid_and_none_is_dropped(tolerance):
    for number, mask in enumerate([MASKS["ring, hole, island, bar"], *random_masks(100, seed=5)]):
        exact, simple = polygons(mask), polygons(mask, tolerance)
        assert len(simple) == len(exact)  # every part kept (one that would degenerate stays exact)
        for part in simple:
            assert_valid_part(part)
        if number < 30:
            assert_parts_apart(simple)
        vertices = [sum(len(p["exterior"]) + sum(map(len, p["holes"])) for p in parts) for parts in (exact, simple)]
        assert vertices[1] <= vertices[0]


def test_a_part_that_simplification_would_collapse_keeps_its_exact_outline():
    mask = grid("....... .#..... ....... ...####")
    simple = polygons(mask, tolerance=2.0)
    assert simple[1]["exterior"] == [[1, 1], [2, 1], [2, 2], [1, 2]]  # not 2 points, not gone
    assert len(simple[0]["exterior"]) == 4  # the line: already its 4 corners


@pytest.mark.parametrize("rings", [
    [[[3, 2]]],  # what a one-pixel part was
    [[[1, 1], [4, 1]]],  # and a one-pixel line
    [[[0, 0], [1, 0], [1, 1], [2, 1], [2, 2], [1, 2], [1, 1], [0, 1]]],  # a bow tie through (1, 1) twice
    [[[0, 0], [2, 2], [2, 0], [0, 2]]],  # a ring crossing itself
    [[[0, 0], [0, 1], [1, 1], [1, 0]]],  # an exterior counter-clockwise on screen
    [[[0, 0], [4, 0], [4, 4], [0, 4]], [[5, 5], [5, 6], [6, 6], [6, 5]]],  # a hole outside
    [[[0, 0], [4, 0], [4, 4], [0, 4]], [[0, 1], [0, 3], [2, 3], [2, 1]]],  # a hole sharing an edge
    [[[0, 0], [6, 0], [6, 6], [0, 6]], [[1, 1], [1, 5], [5, 5], [5, 1]], [[2, 2], [2, 3], [3, 3], [3, 2]]],  # nested
])
def test_the_validity_check_refuses_what_ogc_refuses(rings):
    with pytest.raises(AssertionError):
        assert_valid_part({"exterior": rings[0], "holes": rings[1:]})
