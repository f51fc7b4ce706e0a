"""A block of whole-slide windows as the model's input rows, made as its training rows were: pixels through
extraction's rendering (wsi/windows.py: the block's area decoded once, byte-identical to `render_patch`), feature
families through the features stage's reading at the dataset's resolution."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from crystal_dask.store.dataset import PIXELS
from crystal_dask.store.models import model_arrays
from crystal_dask.wsi.patches import PatchSettings
from crystal_dask.wsi.slides import Slide
from crystal_dask.wsi.windows import render_windows


def window_matrix(slide: Slide, boxes: np.ndarray, model_manifest: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The model's input rows for level-0 windows of one slide, and which windows they describe (a window a
    feature family cannot describe, e.g. no tissue, is left unscored, never a NaN)."""
    boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
    arrays = model_arrays(model_manifest)
    if arrays == (PIXELS,):
        s = PatchSettings(**model_manifest["render_settings"])
        return render_windows(slide, boxes, s).reshape(len(boxes), -1), np.ones(len(boxes), bool)
    from crystal_dask.features import FeatureError, compute_families
    from crystal_dask.stages.features import read_rgb

    made = model_manifest.get("feature_settings") or {}
    missing = [a for a in arrays if a not in made or a == PIXELS or "um_per_px" not in made[a]]
    if missing:  # pixels beside features, or PCA: its components are not kept with the model
        raise ValueError(f"whole-slide windows can be described by handcrafted families only; the model also "
                         f"uses {missing}")
    first = made[arrays[0]]
    X = np.zeros((len(boxes), sum(len(made[a]["columns"]) for a in arrays)), np.float32)
    ok = np.zeros(len(boxes), bool)
    for i, box in enumerate(boxes.tolist()):
        try:
            rgb, res = read_rgb(slide, tuple(box), slide.mpp, first["um_per_px"], first["max_side"])
            values = compute_families(rgb, res, arrays)
        except FeatureError:
            continue
        X[i] = np.concatenate([values[a] for a in arrays])
        ok[i] = True
    return X, ok
