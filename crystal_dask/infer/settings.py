"""What inference is told (InferSettings) and what it takes from the model: the window its dataset was cut with
(`render_settings`) and how its dataset's arrays were made (`model_context`); both at once: `render_context`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from crystal_dask.store.dataset import PIXELS
from crystal_dask.vocab import CLASSES
from crystal_dask.wsi.patches import WINDOW_UNITS, PatchSettings

DEFAULT_WINDOW = {"window_size": 500.0, "window_step": 500.0, "window_unit": "px", "magnification": None}


@dataclass(frozen=True)
class InferSettings:
    """How slides are cut into windows and what is exported; every field enters each slide's digest."""

    tissue_threshold: float = 0.5  # a window is scored when at least this fraction of it is tissue
    window_size: float | None = None  # None: the window of the model's dataset (region mode: 500 px)
    window_step: float | None = None  # None: the dataset's step (or the window size)
    window_unit: str | None = None  # px or um; None: the dataset's
    magnification: float | None = None  # window px at this magnification; None: the dataset's
    heatmap_class: str = "dcis"  # the class whose probability the heatmap shows
    # windows per block side: one task and one zarr chunk per block x block windows. 8 (64 windows, ~0.3 s of one
    # core) keeps 2 workers evenly busy to the end of a slide; 16 left one idle on a 356-window slide (6 blocks)
    block: int = 8
    min_overlap: float = 0.5  # scoring: a window takes a region's label when the region covers this fraction
    thumbnail_side: int = 2048  # long side of the low-res view for tissue and overlays
    skip_errors: bool = True  # a slide that fails is a reject with its reason and the rest completes

    def __post_init__(self) -> None:
        if self.heatmap_class not in CLASSES:
            raise ValueError(f"heatmap_class: {self.heatmap_class!r} is not one of {', '.join(CLASSES)}")
        if self.window_unit is not None and self.window_unit not in WINDOW_UNITS:
            raise ValueError(f"window_unit: must be one of {', '.join(WINDOW_UNITS)}; got {self.window_unit!r}")
        if not 0 <= self.tissue_threshold <= 1:
            raise ValueError(f"tissue_threshold: must be in [0, 1]; got {self.tissue_threshold!r}")
        if not 0 < self.min_overlap <= 1:
            raise ValueError(f"min_overlap: must be in (0, 1]; got {self.min_overlap!r}")
        for key in ("window_size", "window_step", "magnification"):
            v = getattr(self, key)
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise ValueError(f"{key}: must be a positive number; got {v!r}")
            if v is not None:
                object.__setattr__(self, key, float(v))  # 500 and 500.0: one setting, one digest
        if self.block < 1 or self.thumbnail_side < 64:
            raise ValueError("block must be >= 1 and thumbnail_side >= 64")


def render_settings(model_manifest: Mapping[str, Any], settings: InferSettings) -> tuple[PatchSettings, str]:
    """The model's dataset's PatchSettings with the inference window, and where the window came from.

    `model_manifest` carries the dataset's settings under "dataset_settings" (see `model_context`). Region-mode
    datasets have no window: then 500 px, step 500, unless the infer settings give one."""
    ds = PatchSettings(**model_manifest["dataset_settings"])
    if ds.mode == "window":
        base = {k: getattr(ds, k) for k in DEFAULT_WINDOW}
        source = "the model's dataset (window mode)"
    else:
        base = dict(DEFAULT_WINDOW)
        source = "default 500 px, step 500 (the model's dataset is region mode: it has no window)"
    given = {k: getattr(settings, k) for k in DEFAULT_WINDOW if getattr(settings, k) is not None}
    if given:
        source = "the infer settings" + (f" over {source}" if len(given) < len(DEFAULT_WINDOW) else "")
    window = {**base, **given}
    if "window_size" in given and "window_step" not in given:
        window["window_step"] = None  # a new size without a step: the step is the size
    return replace(ds, mode="window", **window), source


def model_context(model_path: Path) -> dict[str, Any]:
    """The model's manifest plus its dataset's patch settings ("dataset_settings"), for `render_settings`, and
    how each feature array it uses was made ("feature_settings"), for windows.window_matrix."""
    from crystal_dask.features import FAMILIES
    from crystal_dask.store.dataset import Dataset
    from crystal_dask.store.models import model_arrays, read_manifest

    manifest = dict(read_manifest(Path(model_path)))
    ds = Dataset(Path(manifest["dataset"]))
    manifest["dataset_settings"] = ds.read_manifest()["settings"]
    group = ds.group()
    manifest["feature_settings"] = {a: dict(group[a].attrs) for a in model_arrays(manifest)
                                    if a in ds.array_names() and a != PIXELS}
    for a, made in manifest["feature_settings"].items():  # windows are described by this code's families
        if a in FAMILIES and made.get("version") != FAMILIES[a].version:
            raise ValueError(f"{model_path}: fitted on {a} columns of version {made.get('version')}, and this "
                             f"crystal_dask computes version {FAMILIES[a].version}: retrain the model (its job's "
                             "train step reruns) before inferring with it")
    return manifest


def render_context(model_path: Path, settings: InferSettings) -> tuple[dict[str, Any], str]:
    """What infer renders and predicts a slide's windows with: the model's `model_context` with the windows'
    PatchSettings under "render_settings" (a dict, as the tasks take it), and where the window came from."""
    manifest = model_context(model_path)
    s, source = render_settings(manifest, settings)
    manifest["render_settings"] = s.as_dict()
    return manifest, source
