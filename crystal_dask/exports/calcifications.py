"""Calcium-phosphate deposits of a whole slide as QuPath detections, and their count per mm² of tissue.

The slide is read in tiles at the features stage's resolution (the calcification family's detector,
`features.calcification.deposit_mask`, is the one used for the feature columns), each tile with a MARGIN_UM
border of context so a deposit on a tile edge is whole in one tile; a deposit belongs to the tile whose core
holds its first pixel in raster order (no double counts). Only tiles that touch the slide's tissue
(`wsi.tissue_mask`) are read. Each deposit becomes one GeoJSON Feature, objectType "detection", in level-0
pixels (QuPath's frame), traced exactly on the pixel grid (`exports.polygons`), with measurements "area µm2"
and "mean haematoxylin OD". Calcium oxalate is not detected (nearly invisible in H&E).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import find_objects
from skimage.measure import label

from crystal_dask.exports.geojson import geometry
from crystal_dask.exports.polygons import trace_components
from crystal_dask.features.calcification import deposit_mask
from crystal_dask.features.region import Region
from crystal_dask.stages.features import FeatureSettings, read_rgb
from crystal_dask.wsi.slides import Slide
from crystal_dask.wsi.tissue_mask import tissue_mask

TILE_PX = 1024  # core side of a tile at the detection resolution
MARGIN_UM = 256.0  # context around each tile: deposits up to ~500 µm are whole in one tile
CLASS = {"name": "Calcification", "color": [40, 20, 90]}  # the dark end of the deposits' appearance range


class NoMppError(ValueError):
    """A slide without a pixel size: deposits are measured in µm."""


def deposit_polygons(obj: np.ndarray, corner: tuple[int, int], x0: float, y0: float, fx: float,
                     fy: float) -> list[list[list[list[float]]]]:
    """The polygons ([exterior, *holes] of [x, y]) of one 8-connected object's 4-connected parts, level-0 px.

    `obj` is the object's mask on its bounding box, whose top-left pixel is `corner` (row, column) of the read
    that starts at level-0 (x0, y0) with (fx, fy) level-0 px per px: each vertex is placed from its column and row
    in the whole read, so the coordinates are those a trace on the read's whole mask gives."""
    r0, c0 = corner
    return [[[[round(x0 + (c0 + x) * fx, 2), round(y0 + (r0 + y) * fy, 2)] for x, y in ring]
             for ring in (outer, *holes)]
            for _, outer, holes in trace_components(obj)]


def _feature(polys: list, area_um2: float, mean_h: float) -> dict[str, Any]:
    return {"type": "Feature", "geometry": geometry(polys),
            "properties": {"objectType": "detection", "classification": CLASS,
                           "measurements": {"area µm2": round(area_um2, 2), "mean haematoxylin OD": round(mean_h, 4)}}}


def detect_slide(path: str | Path, um_per_px: float | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(GeoJSON FeatureCollection of the deposits, summary {slide, deposits, tissue_mm2, per_mm2, um_per_px}).

    Raises NoMppError for a slide without an MPP, the reader's SlideError for an unreadable one.
    """
    um = FeatureSettings().um_per_px if um_per_px is None else um_per_px
    with Slide(path) as slide:
        mpp = slide.mpp
        if not mpp:
            raise NoMppError(f"{path}: no MPP (pixel size); deposits are measured in µm")
        tissue, down = tissue_mask(slide)
        tissue_mm2 = float(tissue.sum()) * (down * mpp) ** 2 / 1e6
        scale = um / mpp  # level-0 px per detection px
        step, margin = TILE_PX * scale, int(round(MARGIN_UM / um))
        features = []
        for ty in range(int(np.ceil(slide.height / step))):
            for tx in range(int(np.ceil(slide.width / step))):
                x0, y0 = tx * step, ty * step
                x1, y1 = min(x0 + step, slide.width), min(y0 + step, slide.height)
                cells = tissue[int(y0 / down): int(np.ceil(y1 / down)) + 1, int(x0 / down): int(np.ceil(x1 / down)) + 1]
                if not cells.any():
                    continue
                bx0, by0 = max(0, int(x0 - margin * scale)), max(0, int(y0 - margin * scale))
                bx1 = min(slide.width, int(np.ceil(x1 + margin * scale)))
                by1 = min(slide.height, int(np.ceil(y1 + margin * scale)))
                rgb, _ = read_rgb(slide, (bx0, by0, bx1, by1), mpp, um, max(bx1 - bx0, by1 - by0))
                if min(rgb.shape[:2]) < 3:
                    continue
                region = Region(rgb, um)
                lab = label(deposit_mask(region), connectivity=2)
                if lab.max() == 0:
                    continue
                fx, fy = (bx1 - bx0) / rgb.shape[1], (by1 - by0) / rgb.shape[0]  # level-0 px per px of this read
                ys, xs = np.nonzero(lab)
                first = np.unique(lab[ys, xs], return_index=True)[1]  # raster-first pixel of each object
                for i, (k, box) in enumerate(zip(first, find_objects(lab), strict=True), 1):
                    gx, gy = bx0 + xs[k] * fx, by0 + ys[k] * fy
                    if not (x0 <= gx < x1 and y0 <= gy < y1):
                        continue  # its tile is another one
                    obj = lab[box] == i  # traced on its bounding box, not on the whole read
                    polys = deposit_polygons(obj, (box[0].start, box[1].start), bx0, by0, fx, fy)
                    features.append(_feature(polys, float(obj.sum()) * um * um, float(region.hed[0][box][obj].mean())))
    summary = {"slide": str(path), "deposits": len(features), "tissue_mm2": round(tissue_mm2, 4),
               "per_mm2": round(len(features) / tissue_mm2, 3) if tissue_mm2 > 0 else 0.0, "um_per_px": um}
    return {"type": "FeatureCollection", "features": features}, summary
