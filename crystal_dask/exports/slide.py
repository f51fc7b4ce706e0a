"""Every picture and geometry file of one inferred slide, from its window grid: the class overlay and the heatmap
PNGs over the thumbnail, the QuPath GeoJSON and the NEDC region decisions."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from crystal_dask.exports.geojson import class_map_to_geojson, write_geojson
from crystal_dask.exports.overlay import heatmap_png, overlay_png
from crystal_dask.exports.region_decisions import write_region_decisions
from crystal_dask.vocab import CLASSES
from crystal_dask.wsi.annotations import Header


def write_slide_exports(paths: Mapping[str, Path], thumbnail: np.ndarray, downsample: float, proba: np.ndarray,
                        classes: np.ndarray, heatmap_class: str, header: Header, *, size: float,
                        step: float) -> None:
    """Write paths["overlay"], paths["heatmap"] (P(heatmap_class) where a window was scored), paths["geojson"]
    and the region decisions beside paths["region_decisions"]."""
    geo = {"step": step, "size": size}
    overlay_png(paths["overlay"], thumbnail, classes, downsample, **geo)
    heat = np.where(classes >= 0, proba[..., CLASSES.index(heatmap_class)], np.nan)
    heatmap_png(paths["heatmap"], thumbnail, heat, downsample, label=f"P({heatmap_class})", **geo)
    write_geojson(paths["geojson"], class_map_to_geojson(classes, proba, **geo))
    write_region_decisions(Path(paths["region_decisions"]).parent, header, classes, proba, **geo)
