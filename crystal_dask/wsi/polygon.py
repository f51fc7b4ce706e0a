"""Polygon geometry for annotation regions: which pixels lie inside (polygon_mask), and is a polygon simple?

A region's polygon is simple when no two of its edges meet except adjacent edges at their shared vertex. Edges
that cross, touch (a vertex on another edge) or overlap along a line make it non-simple: its area, its inside
and the overlap of a patch with it are then ill-defined, so the readers reject such a region rather than repair
it (repairing would have to guess which of several shapes the annotator meant).

Repeated consecutive vertices (and a last vertex equal to the first, as some exporters write a closed ring) are
not faults: they are dropped before testing. Candidate edge pairs are pruned by sorting edges on their smallest x,
so a typical polygon of n vertices costs far less than the n^2 pairs of the plain test.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_BLOCK = 256  # edges compared at once against their candidates: bounds the temporary arrays to ~BLOCK x n


def _orient(ax, ay, bx, by, cx, cy):
    """Sign of the turn a -> b -> c: >0 left, <0 right, 0 collinear (numpy broadcasting)."""
    return np.sign((bx - ax) * (cy - ay) - (by - ay) * (cx - ax))


def first_crossing(x: Sequence[float], y: Sequence[float]) -> tuple[int, int] | None:
    """Indices (i, j), i < j, of two vertices whose outgoing edges (i -> next, j -> next) meet although they
    are not adjacent, or that of a vertex where the outline folds back onto itself (i, i); None when simple.

    Indices are those of the vertices as given (before repeated vertices are dropped).
    """
    px, py = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = (px != np.roll(px, -1)) | (py != np.roll(py, -1))  # drop a vertex equal to the next (cyclically)
    index = np.flatnonzero(keep)
    px, py = px[keep], py[keep]
    n = len(px)
    if n < 3:
        return None  # fewer than three distinct vertices: the zero-area check reports it
    qx, qy = np.roll(px, -1), np.roll(py, -1)  # edge k runs from p[k] to q[k] = p[k + 1]

    # adjacent edges k, k+1 share q[k]; they overlap beyond it only when the outline turns back by 180 degrees
    rx, ry = np.roll(qx, -1), np.roll(qy, -1)
    back = (_orient(px, py, qx, qy, rx, ry) == 0) & (((px - qx) * (rx - qx) + (py - qy) * (ry - qy)) > 0)
    if back.any():
        k = int(np.flatnonzero(back)[0])
        return int(index[(k + 1) % n]), int(index[(k + 1) % n])

    xmin, xmax = np.minimum(px, qx), np.maximum(px, qx)
    ymin, ymax = np.minimum(py, qy), np.maximum(py, qy)
    order = np.argsort(xmin, kind="stable")
    sxmin = xmin[order]
    for a in range(0, n, _BLOCK):
        ei = order[a : a + _BLOCK]  # this block of edges, by smallest x
        hi = int(np.searchsorted(sxmin, xmax[ei].max(), side="right"))  # edges starting left of the block's end
        ej = order[a:hi]
        i, j = ei[:, None], ej[None, :]
        lo_, hi_ = np.minimum(i, j), np.maximum(i, j)
        candidate = ((hi_ - lo_ > 1) & ~((lo_ == 0) & (hi_ == n - 1))  # not the same edge, not adjacent
                     & (xmin[j] <= xmax[i]) & (xmin[i] <= xmax[j]) & (ymin[j] <= ymax[i]) & (ymin[i] <= ymax[j])
                     & (np.arange(a, a + len(ei))[:, None] < np.arange(a, hi)[None, :]))  # each pair once
        ci, cj = np.nonzero(candidate)
        if not len(ci):
            continue
        i, j = ei[ci], ej[cj]
        o1 = _orient(px[i], py[i], qx[i], qy[i], px[j], py[j])
        o2 = _orient(px[i], py[i], qx[i], qy[i], qx[j], qy[j])
        o3 = _orient(px[j], py[j], qx[j], qy[j], px[i], py[i])
        o4 = _orient(px[j], py[j], qx[j], qy[j], qx[i], qy[i])
        # with overlapping boxes (checked above) this is exact for crossings, touchings and collinear overlaps
        meet = (o1 * o2 <= 0) & (o3 * o4 <= 0)
        if meet.any():
            hits = sorted((int(min(u, v)), int(max(u, v))) for u, v in zip(i[meet], j[meet], strict=True))
            u, v = hits[0]
            return int(index[u]), int(index[v])
    return None


def polygon_mask(x: np.ndarray, y: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels (row, col) whose centre (col, row) lies inside the polygon (even-odd rule), by scanlines.

    Costs one pass over the box instead of skimage.draw.polygon's test of every pixel against every edge.
    """
    h, w = shape
    x0, y0 = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    rows = np.arange(h, dtype=np.float64)[:, None]
    crosses = (y0 <= rows) != (y1 <= rows)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = np.where(crosses, x0 + (rows - y0) / (y1 - y0) * (x1 - x0), np.inf)
    xi.sort(axis=1)
    xi = xi[:, : xi.shape[1] // 2 * 2]
    start, end = xi[:, 0::2], xi[:, 1::2]
    ok = np.isfinite(end)
    r = np.broadcast_to(np.arange(h)[:, None], start.shape)[ok]
    c0 = np.clip(np.ceil(start[ok]), 0, w).astype(np.intp)
    c1 = np.clip(np.floor(end[ok]) + 1, 0, w).astype(np.intp)
    edges = np.zeros((h, w + 1), np.int16)
    np.add.at(edges, (r, c0), 1)
    np.add.at(edges, (r, c1), -1)
    return np.cumsum(edges[:, :w], axis=1, dtype=np.int16) > 0
