"""Exact polygons of cell-grid masks: boundary tracing on the cell lattice, holes, a single-ring form, and the
map from lattice to level-0 pixels of a window grid.

A lattice vertex (i, j) is the corner x = i, y = j of the cells; cell (r, c) spans [c, c + 1) x [r, r + 1).
Components are 4-connected (scipy.ndimage.label's default). Rings are closed (last vertex == first), with no
collinear vertices; an exterior ring has positive shoelace area in (x, y) as numbers (counter-clockwise in a
y-up frame, the RFC 7946 rule; clockwise on screen, where y grows downwards) and a hole negative. Where two cells
of a component meet only at a corner the tracer joins them, so a ring never touches itself; a hole may touch its
exterior ring at such a corner, which OGC/JTS (QuPath) accept.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy import ndimage as ndi

Ring = list[tuple[float, float]]


def _edges(mask: np.ndarray) -> np.ndarray:
    """Directed boundary edges (x0, y0, x1, y1, r, c) of every cell, interior on the left in a y-up frame."""
    m = np.pad(mask, 1)
    inner = m[1:-1, 1:-1]
    parts = []
    # (neighbour offset, edge start, edge end) relative to the cell's top-left corner (c, r)
    for (dr, dc), (sx, sy), (ex, ey) in (((-1, 0), (0, 0), (1, 0)),  # top: left to right
                                         ((0, 1), (1, 0), (1, 1)),  # right: top to bottom
                                         ((1, 0), (1, 1), (0, 1)),  # bottom: right to left
                                         ((0, -1), (0, 1), (0, 0))):  # left: bottom to top
        nb = m[1 + dr: m.shape[0] - 1 + dr, 1 + dc: m.shape[1] - 1 + dc]
        r, c = np.nonzero(inner & ~nb)
        parts.append(np.stack([c + sx, r + sy, c + ex, r + ey, r, c], axis=1))
    return np.concatenate(parts).astype(np.int64)


def _simplify(ring: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Drop vertices where the direction does not change; close the ring."""
    n = len(ring)
    keep = []
    for k in range(n):
        (ax, ay), (bx, by), (cx, cy) = ring[k - 1], ring[k], ring[(k + 1) % n]
        if (bx - ax) * (cy - by) - (by - ay) * (cx - bx) != 0:
            keep.append(ring[k])
    return [*keep, keep[0]]


def signed_area(ring: Ring) -> float:
    """Shoelace area of a closed ring (positive for an exterior ring here)."""
    xs = np.asarray([p[0] for p in ring], np.float64)
    ys = np.asarray([p[1] for p in ring], np.float64)
    return float((xs[:-1] * ys[1:] - xs[1:] * ys[:-1]).sum() / 2)


def trace_components(mask: np.ndarray) -> list[tuple[np.ndarray, Ring, list[Ring]]]:
    """For each 4-connected component of a boolean cell mask, in label order: (its cells' boolean mask,
    exterior ring, holes), rings in lattice coordinates."""
    labels, n = ndi.label(np.asarray(mask, bool))
    edges = _edges(labels > 0)
    owner_label = labels[edges[:, 4], edges[:, 5]]
    out = []
    for lab in range(1, n + 1):
        e = edges[owner_label == lab]
        starts: dict[tuple[int, int], list[int]] = defaultdict(list)
        for k, (x0, y0, *_rest) in enumerate(e.tolist()):
            starts[(x0, y0)].append(k)
        used = np.zeros(len(e), bool)
        rings = []
        for first in range(len(e)):
            if used[first]:
                continue
            ring, k = [], first
            while not used[k]:
                used[k] = True
                x0, y0, x1, y1, r, c = e[k].tolist()
                ring.append((x0, y0))
                # every edge has one successor, so rings are the cycles of that map; the rule looks at used
                # edges too, else a ring that started at a diagonal corner would run on into the other ring
                nxt = starts[(x1, y1)]
                if len(nxt) == 1:
                    k = nxt[0]
                else:  # a corner where two cells meet diagonally: join them (take the other cell's edge)
                    k = next(j for j in nxt if (e[j, 4], e[j, 5]) != (r, c))
            rings.append(_simplify(ring))
        outer = [g for g in rings if signed_area(g) > 0]
        holes = [g for g in rings if signed_area(g) < 0]
        if len(outer) != 1:
            raise AssertionError(f"component {lab}: {len(outer)} exterior rings traced")  # a tracer bug
        out.append((labels == lab, outer[0], holes))
    return out


def bridge_holes(outer: Ring, holes: list[Ring]) -> Ring:
    """One closed ring for a polygon with holes: each hole joined to the ring by a zero-width horizontal slit.

    The hole's rightmost (then lowest-y) vertex M is joined to the nearest ring edge hit by a ray towards +x
    (Eberly's hole elimination): on rectilinear rings, the first vertical edge spanning M's y. The ring keeps
    the polygon's area (shoelace) and, under the even-odd rule, its inside; formats without holes (NEDC csv)
    can then carry the polygon exactly.
    """
    ring = [tuple(p) for p in outer[:-1]]
    for hole in sorted(holes, key=lambda h: -max(p[0] for p in h)):
        pts = [tuple(p) for p in hole[:-1]]
        mi = max(range(len(pts)), key=lambda k: (pts[k][0], -pts[k][1]))
        mx, my = pts[mi]
        best, at = None, -1
        for k in range(len(ring)):
            (ax, ay), (bx, by) = ring[k], ring[(k + 1) % len(ring)]
            if ax == bx and ax >= mx and min(ay, by) <= my <= max(ay, by) and (best is None or ax < best):
                best, at = ax, k
        if at < 0:
            raise ValueError("a hole lies outside its exterior ring")
        p = (best, my)
        loop = pts[mi:] + pts[:mi] + [pts[mi]]
        ring = ring[: at + 1] + [p] + loop + [p] + ring[at + 1:]
    dedup = [q for k, q in enumerate(ring) if q != ring[k - 1]] if len(ring) > 1 else ring
    return [*dedup, dedup[0]]


def lattice_to_px(ring: Ring, origin: tuple[float, float], step: float, size: float) -> Ring:
    """Lattice ring of a window grid's cells to level-0 pixels: window (r, c)'s cell is its centre square of side
    min(step, size) (used when windows touch or overlap: step <= size)."""
    off = (size - step) / 2 if step <= size else 0.0
    return [(_clean(origin[0] + off + x * step), _clean(origin[1] + off + y * step)) for x, y in ring]


def window_square(r: int, c: int, origin: tuple[float, float], step: float, size: float) -> Ring:
    """Closed exterior ring of window (r, c)'s own box (used when windows do not touch: step > size)."""
    x0, y0 = origin[0] + c * step, origin[1] + r * step
    x1, y1 = x0 + size, y0 + size
    return [(_clean(x), _clean(y)) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0))]


def _clean(v: float) -> float | int:
    """Integers as int (compact, exact JSON/csv), other values as float."""
    v = float(v)
    return int(v) if v.is_integer() else v
