"""Model files: round trip, hash check, type allow-list, manifest contents."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import skops
import skops.io as sio
from imblearn.ensemble import BalancedRandomForestClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.tree import DecisionTreeClassifier

import crystal_dask
from crystal_dask.store.models import TRUSTED_TYPES, UntrustedModelError, load_model, manifest_path, save_model


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (90, 64), dtype=np.uint8)
    y = np.repeat(np.arange(9), 10)
    return X, y


def _halve(X: np.ndarray) -> np.ndarray:
    """A custom function: skops cannot know it is harmless."""
    return X / 2


@pytest.fixture(scope="module")
def forest() -> BalancedRandomForestClassifier:
    return BalancedRandomForestClassifier(random_state=42).fit(*_data())  # default params, as published


def test_trusted_types_are_exactly_a_fitted_forests(forest: BalancedRandomForestClassifier) -> None:
    assert TRUSTED_TYPES == tuple(sorted(sio.get_untrusted_types(data=sio.dumps(forest))))


def test_round_trip_identical_predictions(forest: BalancedRandomForestClassifier, tmp_path: Path) -> None:
    path = tmp_path / "models" / "baseline.skops"
    written = save_model(forest, path, {"config": "baseline", "train_rows": 90})
    on_disk = json.loads(manifest_path(path).read_text())
    assert on_disk == written
    assert written["config"] == "baseline" and len(written["sha256"]) == 64
    assert written["skops_version"] == skops.__version__
    assert set(written["packages"]) == {"numpy", "scikit-learn", "imbalanced-learn", "skops", "dask",
                                        "distributed", "crystal_dask"}
    assert written["packages"]["crystal_dask"] == crystal_dask.__version__
    assert all(written["packages"].values())
    assert sorted(p.name for p in path.parent.iterdir()) == ["baseline.json", "baseline.skops"]  # no tmp left
    loaded = load_model(path)
    X, _ = _data()
    X2 = np.random.default_rng(5).integers(0, 256, (40, 64), dtype=np.uint8)
    for x in (X, X2):
        np.testing.assert_array_equal(loaded.predict(x), forest.predict(x))
        np.testing.assert_array_equal(loaded.predict_proba(x), forest.predict_proba(x))


def test_tampered_file_refused(forest: BalancedRandomForestClassifier, tmp_path: Path) -> None:
    path = tmp_path / "m.skops"
    save_model(forest, path, {})
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"m\.skops.*sha256"):
        load_model(path)


def test_missing_manifest_refused(forest: BalancedRandomForestClassifier, tmp_path: Path) -> None:
    path = tmp_path / "m.skops"
    save_model(forest, path, {})
    manifest_path(path).unlink()
    with pytest.raises(ValueError, match=r"m\.json is missing"):
        load_model(path)


def test_reserved_and_unjsonable_manifest_keys(tmp_path: Path) -> None:
    tree = DecisionTreeClassifier().fit(*_data())
    with pytest.raises(ValueError, match="reserved"):
        save_model(tree, tmp_path / "t.skops", {"sha256": "x"})
    with pytest.raises(ValueError, match="JSON"):
        save_model(tree, tmp_path / "t.skops", {"when": object()})
    assert not list(tmp_path.iterdir())  # nothing written on a refused manifest


def test_untrusted_type_refused_then_trusted(tmp_path: Path) -> None:
    X, y = _data()
    pipe = Pipeline([("halve", FunctionTransformer(_halve)), ("tree", DecisionTreeClassifier(random_state=0))])
    pipe.fit(X, y)
    path = tmp_path / "pipe.skops"
    save_model(pipe, path, {})
    name = f"{_halve.__module__}.{_halve.__qualname__}"
    with pytest.raises(UntrustedModelError, match=r"pipe\.skops") as info:
        load_model(path)
    assert name in str(info.value)
    loaded = load_model(path, trusted=[name])
    np.testing.assert_array_equal(loaded.predict(X), pipe.predict(X))
