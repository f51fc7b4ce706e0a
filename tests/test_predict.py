"""The one prediction function of evaluation and inference: 9 float32 columns, unseen classes 0, any input dtype."""

from __future__ import annotations

import numpy as np
import pytest
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


def test_forests_are_predicted_bit_for_bit_as_scikit_learn_predicts_them():
    from imblearn.ensemble import BalancedRandomForestClassifier
    from sklearn.ensemble import ExtraTreesClassifier

    from crystal_dask.predict import forest_proba

    rng = np.random.default_rng(1)
    X = rng.normal(size=(90, 12)).astype(np.float32)
    y = np.array([0, 2, 4, 8])[rng.integers(0, 4, 90)]
    for model in (RandomForestClassifier(n_estimators=30, random_state=0),
                  ExtraTreesClassifier(n_estimators=30, random_state=0),
                  BalancedRandomForestClassifier(n_estimators=30, random_state=0, sampling_strategy="all",
                                                 replacement=True, bootstrap=False)):
        model.fit(X, y)
        for rows in (X, X[:1], np.asfortranarray(X[::2])):
            expected = model.predict_proba(rows)
            np.testing.assert_array_equal(forest_proba(np.ascontiguousarray(rows), model), expected)
            np.testing.assert_array_equal(predict_proba(rows, model)[:, model.classes_], expected.astype(np.float32))
    with pytest.raises(ValueError, match="X has 11 features, but the model expects 12"):
        predict_proba(X[:, :11], model)


def test_rows_with_nan_or_inf_take_scikit_learns_own_path():
    X = np.random.default_rng(2).normal(size=(40, 6)).astype(np.float32)
    model = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, np.arange(40) % 2)
    X[3, 2] = np.nan  # routed as a missing value by scikit-learn's forest
    np.testing.assert_array_equal(predict_proba(X, model)[:, :2], model.predict_proba(X).astype(np.float32))
    X[7, 1] = np.inf  # refused by it
    with pytest.raises(ValueError, match="infinity"):
        predict_proba(X, model)
