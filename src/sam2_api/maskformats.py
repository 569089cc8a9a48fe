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

import cv2
import numpy as np
from pycocotools import mask as coco_mask

from .errors import ResponseTooLarge

FORMATS = ("rle", "polygons")
RLE_FIELDS_BYTES = 48  # {"size":[h,w],"counts":""} around the string
# {"exterior":[],"holes":[]} and a comma around a part's rings, and 2 more a hole: a noisy mask has
# as many parts as rings (pixels touching at a corner are parts of their own)
PART_FIELDS_BYTES, HOLE_FIELDS_BYTES = 26, 2


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


def json_bytes(points: np.ndarray) -> int:
    """The length of ``points`` (non-negative integer ``[x, y]`` pairs) as compact JSON,
    ``[x,y],`` each, as the response writes them."""
    values = points.reshape(-1)
    digits = values.size + sum(int(np.count_nonzero(values >= 10**power)) for power in range(1, 5))
    return digits + 4 * (values.size // 2)


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


# --- Tracing pixel edges -------------------------------------------------------------------------
#
# The boundary is made of the unit edges between an object pixel and a background one (outside the
# image is background), each directed so that the object lies on its right as drawn (x right, y
# down): clockwise on screen around an object, so an exterior's shoelace area is positive and a
# hole's negative. A vertex (x, y) of the (H+1)×(W+1) lattice sees the four pixels around it:
# TL (x-1, y-1), TR (x, y-1), BL (x-1, y), BR (x, y); which of them are object (bits 1, 2, 4, 8)
# says which of its four arms (up, right, down, left) are boundary edges, and which way each runs.
# Only the vertices where the boundary turns are kept. Where two object pixels meet only at a corner
# (TL+BR or TR+BL: a saddle), the boundary passes twice and each pass turns right, hugging its own
# pixel; a ring that then meets itself at such a vertex is cut there in two, so that no ring
# passes through a point twice (OGC's simple rings: a diagonal pinch becomes a hole touching its
# exterior, or two holes touching, at that one point).
# Directions: 0 = +x, 1 = +y, 2 = -x, 3 = -y; a right turn is d + 1 (mod 4).

def _vertex_table() -> np.ndarray:
    """Per 2×2 configuration: ``[turns, in1, out1, in2, out2]``; turns 0 (no boundary or a straight
    pass), 1 (a corner), 2 (a saddle: two corners, each turning right)."""
    table = np.zeros((16, 5), dtype=np.int8)
    for config in range(16):
        tl, tr, bl, br = (bool(config & bit) for bit in (1, 2, 4, 8))
        arms = []  # (incoming direction, outgoing direction) of each boundary arm: one of them None
        for a, b, into, out in ((tl, tr, 1, 3), (tr, br, 2, 0), (br, bl, 3, 1), (bl, tl, 0, 2)):
            # up arm: TL object → runs down into the vertex; TR object → runs up out of it; etc.
            if a != b:
                arms.append((into, None) if a else (None, out))
        ins = [d for d, _ in arms if d is not None]
        outs = [d for _, d in arms if d is not None]
        if len(arms) == 2 and (ins[0] - outs[0]) % 2:
            table[config] = (1, ins[0], outs[0], 0, 0)
        elif len(arms) == 4:
            table[config] = (2, ins[0], (ins[0] + 1) % 4, ins[1], (ins[1] + 1) % 4)
    return table


_VERTICES = _vertex_table()
# The object pixel on the right of an edge arriving at vertex (x, y) in direction d: (x + dx, y + dy).
_RIGHT_OF = np.array([[-1, 0], [-1, -1], [0, -1], [0, 0]], dtype=np.int64)


def _rings(mask: np.ndarray) -> tuple[np.ndarray, ...]:
    """The boundary's rings: ``(xs, ys, starts, labels, areas, top_left)``. Ring i's corners are
    ``xs[starts[i]:starts[i+1]]`` (and ys), from its top-left one: each ring simple, with at least
    four corners, clockwise on screen (exteriors, positive area) or counter-clockwise (holes);
    ``labels``: the 4-connected part (``cv2.connectedComponents``' label) that each ring bounds;
    ``areas``: signed shoelace areas; ``top_left``: each ring's first corner's rank in row-major order."""
    height, width = mask.shape
    # Indices of corners and passes: 4 bytes where they fit (a noisy mask has about one corner a pixel).
    whole = np.int32 if 2 * (height + 1) * (width + 1) < 2**31 else np.int64
    padded = np.pad(mask.astype(bool, copy=False), 1).view(np.uint8)
    config = padded[:-1, :-1] | (padded[:-1, 1:] << 1) | (padded[1:, :-1] << 2) | (padded[1:, 1:] << 3)
    del padded
    corners = np.flatnonzero(_VERTICES[:, 0][config])  # row-major: the next corner right of one is the next here
    table = _VERTICES[config.reshape(-1)[corners]]
    del config
    count = corners.size
    cy, cx = (values.astype(whole) for values in np.divmod(corners, width + 1))
    del corners
    by_column = np.lexsort((cy, cx)).astype(whole)
    column_rank = np.empty(count, dtype=whole)
    column_rank[by_column] = np.arange(count, dtype=whole)

    saddles = np.flatnonzero(table[:, 0] == 2).astype(whole)
    second = np.full(count, -1, dtype=whole)
    second[saddles] = count + np.arange(saddles.size, dtype=whole)
    corner = np.concatenate([np.arange(count, dtype=whole), saddles])  # each pass's corner
    into = np.concatenate([table[:, 1], table[saddles, 3]])
    out = np.concatenate([table[:, 2], table[saddles, 4]])
    del table
    # The corner each pass leads to: the next corner along its row or column in its direction.
    along_row = out % 2 == 0
    target = np.where(along_row, corner, column_rank[corner])
    target += np.where(out < 2, 1, -1).astype(whole)
    np.clip(target, 0, count - 1, out=target)
    target = np.where(along_row, target, by_column[target])
    del along_row, by_column, column_rank
    succ = np.where(into[target] == out, target, second[target])
    del target, out

    # Each pass's ring (the smallest pass in it) and its place in it, by pointer jumping.
    passes = succ.size
    index = np.arange(passes, dtype=whole)
    ring = index.copy()
    jump = succ.copy()
    while True:
        np.minimum(ring, ring[jump], out=ring)
        jump = jump[jump]
        if np.array_equal(ring[succ], ring):
            break
    jump = np.where(succ == ring, index, succ)  # cut each ring before its smallest pass
    del succ
    to_end = (jump != index).astype(whole)
    while True:
        ahead = jump[jump]
        if np.array_equal(ahead, jump):
            break
        to_end += to_end[jump]
        jump = ahead
    del jump, ahead
    heads = np.flatnonzero(ring == index).astype(whole)
    lengths = to_end[heads] + 1
    starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    number = np.searchsorted(heads, ring).astype(whole)
    del heads
    order = np.empty(passes, dtype=whole)
    order[starts[number] + lengths[number] - 1 - to_end] = index
    del to_end, index

    # Cut the rings that pass a saddle twice into rings that pass each point once.
    touching = np.flatnonzero(ring[saddles] == ring[count:])
    if touching.size:
        cut = np.unique(number[saddles[touching]])
        kept = np.ones(passes, dtype=bool)
        pieces = []
        for i in cut.tolist():
            kept[starts[i]:starts[i + 1]] = False
            pieces.extend(_simple_loops(order[starts[i]:starts[i + 1]], corner))
        lengths = np.concatenate([np.delete(lengths, cut), [len(piece) for piece in pieces]]).astype(whole)
        order = np.concatenate([order[kept], *pieces]).astype(whole, copy=False)
        starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        del kept, pieces
    del ring, number

    # Each ring from its top-left corner (the first in row-major order), so that the output does
    # not depend on how the passes were numbered.
    key = corner[order]  # corners are numbered in row-major order
    ring_of = np.repeat(np.arange(lengths.size, dtype=whole), lengths)
    smallest = np.minimum.reduceat(key, starts[:-1])
    shift = np.flatnonzero(key == smallest[ring_of]) - starts[:-1]  # a ring passes each corner once
    place = np.arange(key.size, dtype=whole) - (starts[:-1] + shift).astype(whole)[ring_of]
    place %= lengths[ring_of]
    place += starts[:-1].astype(whole)[ring_of]
    rotated = np.empty_like(order)
    rotated[place] = order
    order = rotated
    del key, ring_of, shift, place, rotated

    xs, ys = cx[corner[order]], cy[corner[order]]
    first = order[starts[:-1]]
    right = _RIGHT_OF[into[first]]
    del order, corner, into, cx, cy
    parts = cv2.connectedComponents(mask.astype(np.uint8), connectivity=4, ltype=cv2.CV_32S)[1]
    labels = parts[ys[starts[:-1]] + right[:, 1], xs[starts[:-1]] + right[:, 0]]
    del parts
    areas = _shoelace(xs, ys, starts)
    return xs, ys, starts, labels, areas, smallest


def _simple_loops(ring: np.ndarray, corner: np.ndarray) -> list[np.ndarray]:
    """A closed walk of passes cut at each corner it meets twice into loops that meet no corner twice."""
    stack: list[int] = []
    where: dict[int, int] = {}
    loops = []
    for step in ring.tolist():
        at = int(corner[step])
        if at in where:
            begin = where[at]
            loops.append(np.array(stack[begin:], dtype=np.int64))
            for earlier in stack[begin:]:
                del where[int(corner[earlier])]
            del stack[begin:]
        where[at] = len(stack)
        stack.append(step)
    loops.append(np.array(stack, dtype=np.int64))
    return loops


def _shoelace(xs: np.ndarray, ys: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Each ring's signed area (positive: clockwise on screen, y down)."""
    following = np.arange(1, xs.size + 1)
    following[starts[1:] - 1] = starts[:-1]
    cross = xs.astype(np.float64) * ys[following] - xs[following].astype(np.float64) * ys
    return np.add.reduceat(cross, starts[:-1]) / 2 if xs.size else np.zeros(0)


def polygons(mask: np.ndarray, tolerance: float = 0.0, budget: FormatBudget | None = None) -> list[dict]:
    """Every 4-connected part of the mask, with its holes: ``[{"exterior": [[x, y], ...], "holes":
    [[[x, y], ...], ...]}, ...]``, largest part (by the area its exterior encloses) first.

    Pixel (x, y) covers the square [x, x+1) × [y, y+1); vertices are the integer corners (0..W,
    0..H) where the boundary turns, each ring listed once (not closed: its first vertex is not
    repeated), exteriors clockwise on screen (positive shoelace area of the [x, y] as given, so
    also GeoJSON's right-hand rule read as x = longitude, y = latitude), holes counter-clockwise.
    At ``tolerance`` 0 each part is a valid OGC / Shapely Polygon: simple rings of at least four
    vertices; a hole may touch its exterior or another hole at one vertex (where two object
    pixels meet only at a corner), parts touch at corners only. Their areas add up to the pixel
    count, and :func:`rasterise` (pixel centres, even-odd) gives back exactly the mask.

    ``tolerance`` > 0 simplifies each ring (Douglas-Peucker: a subset of its vertices, each
    dropped one within that many pixels of the ring kept), and each part stays a valid Polygon: a
    ring that would collapse (fewer than 3 vertices, no area) keeps its exact outline, as do rings
    that would cross or touch another, of the part or of another part (:func:`_simplified`); no
    part and no hole is dropped. Parts are checked against one another in batches of 1024,
    largest first: with more parts than that, two of different batches may overlap where they came
    within the tolerance of each other.
    ``budget``: each part's fields and each ring are charged before they become lists.
    """
    if not mask.any():
        return []
    xs, ys, starts, labels, areas, top_left = _rings(mask)
    exterior = areas > 0
    # Each part's exterior, then its holes, top-left first.
    grouped = np.lexsort((top_left, ~exterior, labels))
    exteriors = grouped[exterior[grouped]]
    part_order = exteriors[np.argsort(-areas[exteriors], kind="stable")]
    # Where each part's rings begin and end in ``grouped``: its exterior, then its holes.
    first_ring = np.searchsorted(labels[grouped], labels, side="left")
    past_ring = np.searchsorted(labels[grouped], labels, side="right")

    points = np.stack([xs, ys], axis=1)
    del xs, ys

    def traced(exteriors: list[int]) -> list[list[np.ndarray]]:
        return [[points[starts[i]:starts[i + 1]] for i in [e, *grouped[first_ring[e] + 1:past_ring[e]].tolist()]]
                for e in exteriors]

    def each_part() -> Iterable[list[np.ndarray]]:
        order = part_order.tolist()
        for begin in range(0, len(order), 1024):  # a batch at a time: checked together, made lazily
            batch = traced(order[begin:begin + 1024])
            yield from _simplified(batch, tolerance) if tolerance > 0 else batch

    parts = []
    for rings in each_part():
        if budget is not None:
            budget.charge(PART_FIELDS_BYTES + HOLE_FIELDS_BYTES * (len(rings) - 1))
            for ring in rings:
                budget.charge(json_bytes(ring))
        parts.append({"exterior": rings[0].tolist(), "holes": [ring.tolist() for ring in rings[1:]]})
    return parts


def _simplified(parts: list[list[np.ndarray]], tolerance: float) -> list[list[np.ndarray]]:
    """Each part's rings (exterior first) simplified by Douglas-Peucker where that leaves a valid
    Polygon. A ring that would collapse (fewer than 3 vertices, no area, turned inside out) keeps
    its exact outline; rings that would then meet (cross or touch, within the part or with another
    part of the batch, or a hole leaving its exterior or entering another) are put back exact too,
    round by round until none does (after 8 rounds, the whole batch as traced). No part or hole is
    dropped."""
    simple = []
    todo = []  # the parts that simplification changed: to be checked
    for number, rings in enumerate(parts):
        fewer_rings = []
        for index, ring in enumerate(rings):
            fewer = cv2.approxPolyDP(ring.reshape(-1, 1, 2).astype(np.int32), tolerance, True)
            area = cv2.contourArea(fewer, oriented=True) if len(fewer) >= 3 else 0.0  # > 0: clockwise on screen
            if len(fewer) == len(ring) or not (area > 0 if index == 0 else area < 0):
                fewer_rings.append(ring)
            else:
                fewer_rings.append(fewer.reshape(-1, 2))
        simple.append(fewer_rings)
        if any(fewer is not ring for fewer, ring in zip(fewer_rings, rings)):
            todo.append(number)
    if not todo:
        return simple
    for _ in range(8):  # each round puts back at least one ring: most batches settle in one or two
        exact = [[fewer is ring for fewer, ring in zip(rings, traced)] for rings, traced in zip(simple, parts)]
        changed = False
        # Every part of the batch: a simplified ring may meet a ring of another part too.
        for number, bad in enumerate(_invalid_rings(simple, exact)):
            if not bad or all(exact[number]):
                continue  # (an exact part met by a simplified one: that one is put back)
            if all(exact[number][index] for index in bad):
                simple[number] = parts[number]  # its exact rings are what is wrong: the part as traced
            else:
                simple[number] = [parts[number][index] if index in bad else ring
                                  for index, ring in enumerate(simple[number])]
            changed = True
        if not changed:
            return simple
    return parts


def _orientation(ax, ay, bx, by, cx, cy):
    return np.sign((bx - ax) * (cy - ay) - (by - ay) * (cx - ax))


def _invalid_rings(parts: list[list[np.ndarray]], exact: list[list[bool]]) -> list[set[int]]:
    """For each part (an exterior and its holes, integer vertices, each ring of at least 3
    vertices and of the right orientation), the rings that keep it from being a valid Polygon with
    room to spare: a vertex repeated, edges that meet other than consecutive ones at their shared
    vertex (edges of other parts of the batch included: so that the parts make a valid
    MultiPolygon), a hole outside the exterior or inside another hole. (Stricter than OGC, which
    lets rings touch at a point.) ``exact``: per ring, whether it is as traced: exact rings are valid
    together as they are (they may touch at points), so what they do to one another is not looked
    at. Empty sets where valid. Vectorised over every edge of every part."""
    bad: list[set[int]] = [set() for _ in parts]
    rings = [ring for part in parts for ring in part]
    sizes = np.array([len(ring) for ring in rings])
    ring_part = np.repeat(np.arange(len(parts)), [len(part) for part in parts])
    per_part = np.array([len(part) for part in parts])
    ring_index = np.arange(per_part.sum()) - np.repeat(np.cumsum(per_part) - per_part, per_part)
    ring_exact = np.concatenate([np.asarray(flags, dtype=bool) for flags in exact])
    starts = np.concatenate([[0], np.cumsum(sizes)])
    points = np.concatenate(rings).astype(np.int64)
    xs, ys = points[:, 0], points[:, 1]
    ring_of = np.repeat(np.arange(len(rings)), sizes)
    # A vertex twice in a ring.
    keyed = np.lexsort((ys, xs, ring_of))
    same = (np.diff(ring_of[keyed]) == 0) & (np.diff(xs[keyed]) == 0) & (np.diff(ys[keyed]) == 0)
    for ring in np.unique(ring_of[keyed[1:][same]]).tolist():
        bad[ring_part[ring]].add(int(ring_index[ring]))
    # Pairs of edges whose boxes overlap (of one part, or of two: parts may not overlap either),
    # found in the cells of an 8-pixel grid that each edge's box covers.
    following = np.arange(1, len(points) + 1)
    following[starts[1:] - 1] = starts[:-1]
    x1, y1, x2, y2 = xs, ys, xs[following], ys[following]
    left, right = np.minimum(x1, x2), np.maximum(x1, x2)
    low, high = np.minimum(y1, y2), np.maximum(y1, y2)
    first_x, first_y = left // 8, low // 8
    across, down = right // 8 - first_x + 1, high // 8 - first_y + 1
    cells = across * down
    entry = np.repeat(np.arange(len(points)), cells)
    k = np.arange(entry.size) - np.repeat(np.cumsum(cells) - cells, cells)
    cell = (first_y[entry] + k // across[entry]) * (int(right.max()) // 8 + 1) + first_x[entry] + k % across[entry]
    del k
    by_cell = np.argsort(cell, kind="stable")
    cell, entry = cell[by_cell], entry[by_cell]
    past = np.searchsorted(cell, cell, side="right")
    counts = past - np.arange(cell.size) - 1
    a = np.repeat(entry, counts)
    b = entry[np.repeat(past - np.cumsum(counts), counts) + np.arange(counts.sum())]
    del cell, entry, by_cell, past, counts
    keep = (low[a] <= high[b]) & (low[b] <= high[a]) & (left[a] <= right[b]) & (left[b] <= right[a])
    keep &= ~(ring_exact[ring_of[a]] & ring_exact[ring_of[b]])
    a, b = a[keep], b[keep]
    consecutive = (following[a] == b) | (following[b] == a)
    d1 = _orientation(x1[a], y1[a], x2[a], y2[a], x1[b], y1[b])
    d2 = _orientation(x1[a], y1[a], x2[a], y2[a], x2[b], y2[b])
    d3 = _orientation(x1[b], y1[b], x2[b], y2[b], x1[a], y1[a])
    d4 = _orientation(x1[b], y1[b], x2[b], y2[b], x2[a], y2[a])
    # Boxes overlap: the edges meet iff neither has both ends strictly on one side of the other's line.
    meet = (d1 * d2 <= 0) & (d3 * d4 <= 0)
    # Consecutive edges share a vertex; they may not fold back onto each other.
    folded = (d1 == 0) & (d2 == 0) & _backwards(x1, y1, x2, y2, a, b)
    wrong = (meet & ~consecutive) | (consecutive & folded)
    for ring in np.unique(np.concatenate([ring_of[a[wrong]], ring_of[b[wrong]]])).tolist():
        bad[ring_part[ring]].add(int(ring_index[ring]))
    # Rings that do not meet: one vertex of a ring tells which rings hold it.
    firsts = np.flatnonzero(ring_index == 0)  # each part's exterior
    counts_of = np.diff(np.append(firsts, len(rings)))  # each part's rings
    widest = int(counts_of.max())

    def odd(qx: np.ndarray, qy: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The (query, ring of its owner part) pairs whose ray from (qx, qy) towards +x crosses that
        ring an odd number of times, over a few million edges at a time."""
        begin, end = starts[firsts[owner]], starts[firsts[owner] + counts_of[owner]]
        found_q, found_r = [], []
        edges = np.cumsum(end - begin)
        chunk = 0
        while chunk < len(qx):
            done = edges[chunk] - (end - begin)[chunk]  # edges of the queries before this chunk
            stop = max(int(np.searchsorted(edges, done + 2**21, side="right")), chunk + 1)
            counts = (end - begin)[chunk:stop]
            q = np.repeat(np.arange(chunk, stop), counts)
            e = np.repeat(begin[chunk:stop] - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
            px, py = qx[q], qy[q]
            crossing = (y1[e] > py) != (y2[e] > py)
            at = x1[e] + (py - y1[e]) * (x2[e] - x1[e]) / np.where(crossing, y2[e] - y1[e], 1)
            hit = crossing & (px < at)
            keys = q[hit] * widest + (ring_of[e[hit]] - firsts[owner[q[hit]]])
            unique, times = np.unique(keys, return_counts=True)
            found_q.append(unique[times % 2 == 1] // widest)
            found_r.append(unique[times % 2 == 1] % widest)
            chunk = stop
        return np.concatenate(found_q), np.concatenate(found_r)

    # Each hole inside its exterior and in no other hole.
    clean = np.array([not found for found in bad])
    holes = np.flatnonzero((ring_index > 0) & clean[ring_part])
    if holes.size:
        owner = ring_part[holes]
        q, r = odd(xs[starts[holes]], ys[starts[holes]], owner)
        hole_exact = ring_exact[holes]
        own = ring_index[holes]
        other_exact = ring_exact[firsts[owner[q]] + r]
        keep = (r != own[q]) & ~(hole_exact[q] & other_exact)  # exact rings hold one another as traced
        q, r = q[keep], r[keep]
        in_exterior = np.zeros(holes.size, dtype=bool)
        in_exterior[q[r == 0]] = True
        in_exterior |= hole_exact & ring_exact[firsts[owner]]
        for hole in np.flatnonzero(~in_exterior).tolist():
            bad[owner[hole]].add(int(own[hole]))
        for hole, other in zip(q[r > 0].tolist(), r[r > 0].tolist()):
            bad[owner[hole]] |= {int(own[hole]), int(other)}
    # No part inside another (their rings do not meet, so one vertex tells): a simplified part may
    # have grown over a small neighbour, or a simplified hole shrunk past an island.
    part_x, part_y = xs[starts[firsts]], ys[starts[firsts]]
    changed = np.array([not all(flags) for flags in exact]) & np.array([not found for found in bad])
    grown = np.flatnonzero(changed)
    if grown.size and len(parts) > 1:
        lows = np.minimum.reduceat(points, starts[firsts].tolist(), axis=0)  # exteriors hold their holes
        highs = np.maximum.reduceat(points, starts[firsts].tolist(), axis=0)
        # (reduceat over each part's rings: its exterior's rows, then its holes', all within the exterior)
        by_x = np.argsort(part_x, kind="stable")
        lo = np.searchsorted(part_x[by_x], lows[grown, 0], side="left")
        hi = np.searchsorted(part_x[by_x], highs[grown, 0], side="right")
        pairs = hi - lo
        holder = np.repeat(grown, pairs)
        held = by_x[np.repeat(lo - np.cumsum(pairs) + pairs, pairs) + np.arange(pairs.sum())]
        near = (held != holder) & (part_y[held] >= lows[holder, 1]) & (part_y[held] <= highs[holder, 1])
        holder, held = holder[near], held[near]
        if holder.size:
            q, r = odd(part_x[held], part_y[held], holder)
            in_exterior = np.zeros(holder.size, dtype=bool)
            in_exterior[q[r == 0]] = True
            in_hole = np.zeros(holder.size, dtype=bool)
            in_hole[q[r > 0]] = True
            for number in np.unique(holder[in_exterior & ~in_hole]).tolist():
                bad[number] |= {index for index, flag in enumerate(exact[number]) if not flag}
    return bad


def _backwards(x1, y1, x2, y2, a, b) -> np.ndarray:
    """Of consecutive collinear edges a, b: whether they run in opposite directions (overlap)."""
    return (x2[a] - x1[a]) * (x2[b] - x1[b]) + (y2[a] - y1[a]) * (y2[b] - y1[b]) < 0


def rasterise(parts: Iterable[dict], height: int, width: int) -> np.ndarray:
    """The ``(H, W)`` bool mask of :func:`polygons`' output: the pixels whose centres (x + ½, y + ½)
    are inside an odd number of rings (even-odd over every exterior and hole of every part). For
    tests, and as the reference of how to read them; exactly the mask at tolerance 0."""
    rings = [np.asarray(ring, dtype=np.float64).reshape(-1, 2)
             for part in parts for ring in [part["exterior"], *part["holes"]]]
    toggles = np.zeros(height * (width + 1), dtype=np.int64)
    if rings:
        x1 = np.concatenate([ring[:, 0] for ring in rings])
        y1 = np.concatenate([ring[:, 1] for ring in rings])
        x2 = np.concatenate([np.roll(ring[:, 0], -1) for ring in rings])
        y2 = np.concatenate([np.roll(ring[:, 1], -1) for ring in rings])
        # Rows whose centre line y + ½ lies in [min(y1, y2), max(y1, y2)): a half-open rule, so a
        # vertex on the line is crossed once.
        first = np.clip(np.ceil(np.minimum(y1, y2) - 0.5), 0, height).astype(np.int64)
        last = np.clip(np.ceil(np.maximum(y1, y2) - 0.5), 0, height).astype(np.int64)
        rows = last - first
        edge = np.repeat(np.arange(x1.size), rows)
        row = np.repeat(first - np.cumsum(rows) + rows, rows) + np.arange(rows.sum())
        centre = row + 0.5
        at = x1[edge] + (centre - y1[edge]) * (x2[edge] - x1[edge]) / (y2[edge] - y1[edge])
        # Every pixel whose centre is right of the crossing flips: from column floor(at - ½) + 1 on.
        column = np.clip(np.floor(at - 0.5).astype(np.int64) + 1, 0, width)
        toggles += np.bincount(row * (width + 1) + column, minlength=toggles.size)
    flips = np.cumsum(toggles.reshape(height, width + 1) & 1, axis=1)
    return (flips[:, :width] & 1).astype(bool)


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
