"""NEDC region decisions: `<bname>_REGIONDECISIONS.csv` in csv_v1.0.0, written by crystal_dask's annotation writer.

One region per 4-connected region of one predicted class on the window grid, its label the class name and its
confidence the mean probability of that class over the region's windows. csv_v1.0.0 has one ring per region, so
a region with holes is written as one ring with a zero-width slit to each hole (exact area; the even-odd rule
that the readers' rasterisers use gives the same inside). Where windows do not touch (step > size) each window
is its own region.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from crystal_dask.exports.geojson import _check_grid
from crystal_dask.exports.polygons import bridge_holes, lattice_to_px, trace_components, window_square
from crystal_dask.store.files import write_atomic
from crystal_dask.vocab import CLASSES
from crystal_dask.wsi.annotations import Header, Region, format_nedc_csv
from crystal_dask.wsi.polygon import first_crossing

SUFFIX = "_REGIONDECISIONS.csv"


def class_map_to_regions(classes: np.ndarray, proba: np.ndarray, *, step: float, size: float,
                         origin: tuple[float, float] = (0, 0), class_names: Sequence[str] = CLASSES,
                         skip: Sequence[str] = (), tissue: str = "breast") -> list[Region]:
    """Regions (ids 1..n, by class index then region order) of a window grid's predicted classes."""
    classes = np.asarray(classes)
    proba = np.asarray(proba)
    names = tuple(class_names)
    _check_grid(classes, proba, len(names))
    regions: list[Region] = []
    for k, name in enumerate(names):
        if name in skip:
            continue
        for cells, outer, holes in trace_components(classes == k):
            ring = bridge_holes(outer, holes) if step <= size else None
            if ring is not None and first_crossing([p[0] for p in ring[:-1]], [p[1] for p in ring[:-1]]) is None:
                rings = [lattice_to_px(ring, origin, step, size)]
                confs = [float(proba[..., k][cells].mean())]
            elif step <= size:
                # csv_v1.0.0 has one simple ring per region, and the annotation reader rejects any other: a
                # component whose bridged ring touches itself (holes, cells meeting at a corner) is written as
                # rectangles of whole cell rows, which cover exactly the same cells
                rects = _rectangles(cells)
                rings = [lattice_to_px([(c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0)], origin, step, size)
                         for r0, c0, r1, c1 in rects]
                confs = [float(proba[r0:r1, c0:c1, k].mean()) for r0, c0, r1, c1 in rects]
            else:
                where = np.argwhere(cells)
                rings = [window_square(r, c, origin, step, size) for r, c in where]
                confs = [float(proba[r, c, k]) for r, c in where]
            for ring, conf in zip(rings, confs, strict=True):
                pts = ring[:-1]  # csv rows list each vertex once; the ring closes implicitly
                regions.append(Region(len(regions) + 1, name, tissue, tuple(float(p[0]) for p in pts),
                                      tuple(float(p[1]) for p in pts), conf))
    return regions


def _rectangles(cells: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(r0, c0, r1, c1) rectangles covering exactly the true cells: runs of each row, merged with the run of the
    same columns in the row above."""
    open_runs: dict[tuple[int, int], int] = {}  # (c0, c1) -> first row of a rectangle still growing
    out: list[tuple[int, int, int, int]] = []
    for r in range(cells.shape[0] + 1):
        row = np.concatenate([[False], cells[r] if r < cells.shape[0] else np.zeros(cells.shape[1], bool), [False]])
        d = np.flatnonzero(np.diff(row.astype(np.int8)))
        runs = set(zip(d[0::2].tolist(), d[1::2].tolist(), strict=True))
        for run in sorted(set(open_runs) - runs):
            out.append((open_runs.pop(run), run[0], r, run[1]))
        for run in sorted(runs - set(open_runs)):
            open_runs[run] = r
    return sorted(out)


def region_decisions_path(out_dir: str | Path, bname: str) -> Path:
    return Path(out_dir) / f"{bname}{SUFFIX}"


def write_region_decisions(out_dir: str | Path, header: Header, classes: np.ndarray, proba: np.ndarray, *,
                           step: float, size: float, origin: tuple[float, float] = (0, 0),
                           class_names: Sequence[str] = CLASSES, skip: Sequence[str] = ()) -> Path:
    """Write `<out_dir>/<header.bname>_REGIONDECISIONS.csv` (header: the slide's bname, MPP, size) and return
    its path. crystal_dask.annotations.read_nedc_csv reads it back region for region."""
    regions = class_map_to_regions(classes, proba, step=step, size=size, origin=origin, class_names=class_names,
                                   skip=skip, tissue=header.tissue)
    # the annotation writer's own formatter, written atomically (a resumed run never sees half a file)
    return write_atomic(region_decisions_path(out_dir, header.bname), format_nedc_csv(header, regions))
