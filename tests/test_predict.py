"""The one prediction function of evaluation and inference: 9 float32 columns, unseen classes 0, any input dtype."""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import RandomForestClassifier

from crystal_dask.predict import predict_proba
from crystal_dask.vocab import CLASSES


def test_columns_follow_the_vocabulary_and_unseen_classes_stay_zero():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (60, 16), dtype=np.uint8)
    y = np.array([0, 4, 7])[np.arange(60) % 3]
    model = RandomForestClassifier(n_estimators=5, random_state=0).fit(X.astype(np.float32), y)
    out = predict_proba(X, model)
    assert out.shape == (60, len(CLASSES)) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=1), 1, atol=1e-6)
    assert (out[:, [1, 2, 3, 5, 6, 8]] == 0).all()
    np.testing.assert_allclose(out[:, [0, 4, 7]], model.predict_proba(X.astype(np.float32)), rtol=1e-6)
    np.testing.assert_array_equal(predict_proba(X.astype(np.float32), model), out)
    assert predict_proba(X[:0], model).shape == (0, len(CLASSES))
