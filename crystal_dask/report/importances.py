"""Feature importances of a saved forest (mean decrease in impurity), with its columns' names."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crystal_dask.report.markdown import TOP_FEATURES

_PIXEL_COLUMN = re.compile(r"pixels\[(\d+)\]")  # how Dataset.columns names the pixels beside feature arrays


def _pixel_names(n: int) -> list[str] | None:
    """`pixel (y, x)` for the n raw pixels of a square patch (row-major, as Dataset.matrix flattens it)."""
    side = int(np.sqrt(n))
    return [f"pixel ({i // side}, {i % side})" for i in range(n)] if side * side == n else None


def feature_names(n_features: int, columns: Sequence[str] | None) -> list[str]:
    """Names of a model's matrix columns: the manifest's `columns` (its `pixels[i]` shown as `pixel (y, x)`),
    else `pixel (y, x)` for a square patch of raw pixels, else `column i`."""
    if columns is not None:
        if len(columns) != n_features:
            raise ValueError(f"the manifest names {len(columns)} columns but the model has {n_features} features")
        names = [str(c) for c in columns]
        pixels = [i for i, c in enumerate(names) if _PIXEL_COLUMN.fullmatch(c)]
        as_yx = _pixel_names(len(pixels))
        if pixels and as_yx:
            for i in pixels:
                names[i] = as_yx[int(_PIXEL_COLUMN.fullmatch(names[i]).group(1))]
        return names
    return _pixel_names(n_features) or [f"column {i}" for i in range(n_features)]


def importances(model_path: str | Path, columns: Sequence[str] | None, top: int = TOP_FEATURES) -> dict[str, Any]:
    """The `top` largest feature_importances_ (mean decrease in impurity) of a saved forest, largest first.

    The model is loaded with store.models.load_model (hash and type checked). Ties keep the column order.
    Returns {"n_features", "top": [{"rank", "column", "name", "importance"}]}.
    """
    from crystal_dask.store.models import load_model  # skops: only when a model is read

    model = load_model(Path(model_path))
    imp = np.asarray(model.feature_importances_, dtype=np.float64)
    names = feature_names(len(imp), columns)
    order = np.argsort(-imp, kind="stable")[:top]
    return {"n_features": len(imp),
            "top": [{"rank": r + 1, "column": int(i), "name": names[i], "importance": float(imp[i])}
                    for r, i in enumerate(order)]}

