"""Every picture and geometry file of one inferred slide, from its window grid: the class overlay and the heatmap
PNGs over the thumbnail (`write_picture`, one call per picture, so each can be its own task), the QuPath GeoJSON
and the NEDC region decisions (`write_geometry`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from crystal_dask.exports.geojson import class_map_to_geojson, write_geojson
from crystal_dask.exports.overlay import heatmap_png, overlay_png
from crystal_dask.exports.region_decisions import write_region_decisions
from crystal_dask.vocab import CLASSES
from crystal_dask.wsi.annotations import Header

PICTURES = ("overlay", "heatmap")  # the keys of `paths` that `write_picture` writes


def write_picture(name: str, paths: Mapping[str, Path], thumbnail: np.ndarray, downsample: float,
                  proba: np.ndarray, classes: np.ndarray, heatmap_class: str, *, size: float, step: float) -> Path:
    """Write paths[name]: the class overlay ("overlay") or P(heatmap_class) where a window was scored
    ("heatmap")."""
    geo = {"step": step, "size": size}
    if name == "overlay":
        return overlay_png(paths["overlay"], thumbnail, classes, downsample, **geo)
    if name != "heatmap":
        raise ValueError(f"no picture {name!r}; the pictures are {', '.join(PICTURES)}")
    heat = np.where(classes >= 0, proba[..., CLASSES.index(heatmap_class)], np.nan)
    return heatmap_png(paths["heatmap"], thumbnail, heat, downsample, label=f"P({heatmap_class})", **geo)


def write_geometry(paths: Mapping[str, Path], proba: np.ndarray, classes: np.ndarray, header: Header, *,
                   size: float, step: float) -> None:
    """Write paths["geojson"] and the region decisions beside paths["region_decisions"]."""
    geo = {"step": step, "size": size}
    write_geojson(paths["geojson"], class_map_to_geojson(classes, proba, **geo))
    write_region_decisions(Path(paths["region_decisions"]).parent, header, classes, proba, **geo)
