"""A mask as polygons with holes, along its pixels' edges, and back (:func:`rasterise`).

Frame: pixels of the upright image, x to the right and y down; pixel (x, y) covers the square
[x, x+1) × [y, y+1) (the continuous convention of COCO and detectron2). Vertices are pixel corners
(integers, 0..W and 0..H): the rings run along the pixels' edges, so that their area is the pixel
count and the pixels whose centres they hold (even-odd) are the mask. With a tolerance the rings
are simplified where they stay valid (:mod:`sam2_api.polygon_simplify`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import cv2
import numpy as np

from .polygon_simplify import simplified

if TYPE_CHECKING:
    from .maskformats import FormatBudget

# {"exterior":[],"holes":[]} and a comma around a part's rings, and 2 more a hole: a noisy mask has
# as many parts as rings (pixels touching at a corner are parts of their own)
PART_FIELDS_BYTES, HOLE_FIELDS_BYTES = 26, 2


def json_bytes(points: np.ndarray) -> int:
    """The length of ``points`` (non-negative integer ``[x, y]`` pairs) as compact JSON,
    ``[x,y],`` each, as the response writes them."""
    values = points.reshape(-1)
    digits = values.size + sum(int(np.count_nonzero(values >= 10**power)) for power in range(1, 5))
    return digits + 4 * (values.size // 2)


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
    that would cross or touch another, of the part or of another part (:func:`~sam2_api.polygon_simplify.simplified`); no
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
            yield from simplified(batch, tolerance) if tolerance > 0 else batch

    parts = []
    for rings in each_part():
        if budget is not None:
            budget.charge(PART_FIELDS_BYTES + HOLE_FIELDS_BYTES * (len(rings) - 1))
            for ring in rings:
                budget.charge(json_bytes(ring))
        parts.append({"exterior": rings[0].tolist(), "holes": [ring.tolist() for ring in rings[1:]]})
    return parts


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
