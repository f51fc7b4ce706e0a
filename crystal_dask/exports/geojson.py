"""QuPath GeoJSON of a slide's predicted class map: one annotation per connected region of one class.

Adjacent windows of one class are merged into exact polygons by tracing cell boundaries on the window grid
(crystal_dask.exports.polygons): holes are kept as interior rings, coordinates are level-0 pixels with the origin
at the slide's top-left, as QuPath expects. No shapely: the tracing is exact on the grid and needs none.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crystal_dask.exports import colours_for
from crystal_dask.exports.polygons import lattice_to_px, trace_components, window_square
from crystal_dask.store.files import write_json
from crystal_dask.vocab import CLASSES

PER = ("component", "class")


def _check_grid(classes: np.ndarray, proba: np.ndarray, n_classes: int) -> None:
    if classes.ndim != 2:
        raise ValueError(f"classes must be a (rows, cols) grid, got shape {classes.shape}")
    if proba.shape != (*classes.shape, n_classes):
        raise ValueError(f"proba has shape {proba.shape}, expected {(*classes.shape, n_classes)}")
    if classes.size and (classes.min() < -1 or classes.max() >= n_classes):
        raise ValueError(f"classes must hold -1 (no window) or a class index in [0, {n_classes})")


def geometry(polygons: list[list[list[list[float]]]]) -> dict[str, Any]:
    """The GeoJSON geometry of one feature's polygons ([exterior, *holes] of [x, y] each): a Polygon when there is
    one, else a MultiPolygon."""
    if len(polygons) == 1:
        return {"type": "Polygon", "coordinates": polygons[0]}
    return {"type": "MultiPolygon", "coordinates": polygons}


def class_polygons(classes: np.ndarray, k: int, origin: tuple[float, float], step: float,
                   size: float) -> list[tuple[np.ndarray, list[list[list[list[float]]]]]]:
    """Connected regions of class k: (cells mask, polygons), each polygon [exterior, *holes] of [x, y] lists.

    A region is one polygon when windows touch (step <= size); otherwise one square per window."""
    out = []
    for cells, outer, holes in trace_components(classes == k):
        if step <= size:
            rings = [lattice_to_px(g, origin, step, size) for g in (outer, *holes)]
            polys = [[[list(p) for p in g] for g in rings]]
        else:
            polys = [[[list(p) for p in window_square(r, c, origin, step, size)]] for r, c in np.argwhere(cells)]
        out.append((cells, polys))
    return out


def class_map_to_geojson(classes: np.ndarray, proba: np.ndarray, *, step: float, size: float,
                         origin: tuple[float, float] = (0, 0), class_names: Sequence[str] = CLASSES,
                         colours: dict[str, tuple[int, int, int]] | None = None, per: str = "component",
                         skip: Sequence[str] = (), object_type: str = "annotation") -> dict[str, Any]:
    """A GeoJSON FeatureCollection of a window grid's predicted classes (see the package docstring for the grid).

    `per="component"`: one Feature (Polygon) per 4-connected region of one class; `per="class"`: one Feature
    (MultiPolygon) per class. Each Feature's properties: objectType, classification {name, color [r, g, b]}, and
    measurements {"mean probability": mean of the class's probability over the feature's windows, "windows": n}.
    Classes named in `skip` (e.g. "bckg") get no features. Features run by class index, then region label order.
    """
    classes = np.asarray(classes)
    proba = np.asarray(proba)
    names = tuple(class_names)
    _check_grid(classes, proba, len(names))
    if per not in PER:
        raise ValueError(f"per must be one of {PER}, got {per!r}")
    rgb = colours_for(names, colours)
    features = []
    for k, name in enumerate(names):
        if name in skip or not (classes == k).any():
            continue
        regions = class_polygons(classes, k, origin, step, size)
        groups = [[reg] for reg in regions] if per == "component" else [regions]
        for group in groups:
            cells = np.logical_or.reduce([c for c, _ in group])
            features.append({
                "type": "Feature",
                "geometry": geometry([p for _, ps in group for p in ps]),
                "properties": {
                    "objectType": object_type,
                    "classification": {"name": name, "color": list(rgb[k])},
                    "measurements": {"mean probability": float(proba[..., k][cells].mean()),
                                     "windows": int(cells.sum())},
                },
            })
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | Path, collection: dict[str, Any]) -> Path:
    """Write a FeatureCollection as compact strict JSON, atomically."""
    return write_json(path, collection, indent=None)
