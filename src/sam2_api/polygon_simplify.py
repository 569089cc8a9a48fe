"""Polygons simplified (Douglas-Peucker) where they stay valid: no ring collapses, no two rings
meet, no hole leaves its part. :func:`simplified` is what :func:`sam2_api.polygons.polygons` calls
with a tolerance above 0."""

from __future__ import annotations

import cv2
import numpy as np


def simplified(parts: list[list[np.ndarray]], tolerance: float) -> list[list[np.ndarray]]:
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
