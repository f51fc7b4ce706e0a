"""Class probabilities of a fitted model over the 9 classes: the one prediction path of evaluation (a dataset's
blocks of rows) and whole-slide inference (a block of windows)."""

from __future__ import annotations

from typing import Any

import numpy as np

from crystal_dask.vocab import CLASSES


def predict_proba(X: np.ndarray, model: Any) -> np.ndarray:
    """(n, 9) float32 class probabilities of the rows of X, in one `predict_proba` call; columns for classes the
    model never saw stay 0. The forest is fitted on float32, so rows are handed over as float32."""
    out = np.zeros((X.shape[0], len(CLASSES)), np.float32)
    if len(X):
        out[:, model.classes_] = model.predict_proba(X if X.dtype == np.float32 else X.astype(np.float32))
    return out
