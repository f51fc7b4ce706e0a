"""Class probabilities of a fitted model over the 9 classes: the one prediction path of evaluation (a dataset's
blocks of rows) and whole-slide inference (a block of windows)."""

from __future__ import annotations

from typing import Any

import numpy as np

from crystal_dask.vocab import CLASSES


def predict_proba(X: np.ndarray, model: Any) -> np.ndarray:
    """(n, 9) float32 class probabilities of the rows of X, in one call; columns for classes the model never saw
    stay 0. The forest is fitted on float32, so rows are handed over as float32."""
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier  # here: a dry run loads no sklearn

    out = np.zeros((X.shape[0], len(CLASSES)), np.float32)
    if len(X):
        rows = np.ascontiguousarray(X, dtype=np.float32)
        # a forest's own path on NaN or inf (a ValueError, or missing-value routing where it was fitted with
        # them); a float64 sum of float32 values is finite exactly when every value is
        plain = X.dtype.kind in "biu" or np.isfinite(rows.sum(dtype=np.float64))
        forest = plain and isinstance(model, RandomForestClassifier | ExtraTreesClassifier) and model.n_outputs_ == 1
        out[:, model.classes_] = forest_proba(rows, model) if forest else model.predict_proba(rows)
    return out


def forest_proba(X: np.ndarray, forest: Any) -> np.ndarray:
    """A single-output forest's `predict_proba` of C-contiguous, finite float32 rows, bit for bit: the trees'
    predictions summed in the forest's order and divided by their number, as scikit-learn sums them. Without its joblib
    dispatch, which costs ~28 us per tree per call (2.8 ms for 100 trees): as much as the trees themselves on
    inference's blocks of ~20 windows, and ~1/3 of a call on evaluation's 64-row blocks."""
    if X.ndim != 2 or X.shape[1] != forest.n_features_in_:
        raise ValueError(f"X has {X.shape[-1]} features, but the model expects {forest.n_features_in_}")
    proba = np.zeros((X.shape[0], forest.n_classes_), np.float64)
    for tree in forest.estimators_:
        proba += tree.predict_proba(X, check_input=False)  # X checked once above, as the forest checks it
    proba /= len(forest.estimators_)
    return proba
