"""Model files: round trip, hash check, type allow-list, manifest contents."""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import skops
import skops.io as sio
from imblearn.ensemble import BalancedRandomForestClassifier
from sklearn.dummy import DummyClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.tree import DecisionTreeClassifier

import crystal_dask
from crystal_dask.store.models import (
    TRUSTED_TYPES,
    UntrustedModelError,
    load_model,
    manifest_path,
    model_types,
    save_model,
)


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
    data = sio.dumps(forest)
    assert TRUSTED_TYPES == tuple(sorted(model_types(data)))
    assert set(sio.get_untrusted_types(data=data)) < set(TRUSTED_TYPES)  # skops's own check sees only a part


@pytest.mark.parametrize(("x_dtype", "y_dtype"), [(np.float32, np.int64), (np.uint8, np.int8)])
def test_trained_as_the_train_stage_does_the_forest_holds_only_trusted_types(tmp_path, x_dtype, y_dtype) -> None:
    X, y = _data()
    model = BalancedRandomForestClassifier(random_state=0, n_jobs=-1, n_estimators=5).fit(X.astype(x_dtype),
                                                                                         y.astype(y_dtype))
    model.n_jobs = 1  # as stages/train.py leaves it
    save_model(model, tmp_path / "m.skops", {})
    np.testing.assert_array_equal(load_model(tmp_path / "m.skops").predict(X), model.predict(X))


@pytest.fixture(scope="module")
def small_forest() -> BalancedRandomForestClassifier:
    """Three trees: the same types as the published forest, a fraction of the time to write."""
    return BalancedRandomForestClassifier(n_estimators=3, random_state=0).fit(*_data())


def _rewrite_manifest(path: Path) -> None:
    """What an attacker who can write the folder does: make the manifest's sha256 match the file."""
    manifest = json.loads(manifest_path(path).read_text())
    manifest["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest_path(path).write_text(json.dumps(manifest))


def test_default_trusted_sklearn_type_is_refused(small_forest: BalancedRandomForestClassifier, tmp_path: Path) -> None:
    # skops trusts every scikit-learn estimator by default: a DummyClassifier passes its own check
    X, y = _data()
    dummy = DummyClassifier(strategy="constant", constant=3).fit(X, y)
    assert sio.get_untrusted_types(data=sio.dumps(dummy)) == []
    path = tmp_path / "baseline.skops"
    save_model(small_forest, path, {"config": "baseline"})
    path.write_bytes(sio.dumps(dummy))  # swapped in for the forest, manifest made to match
    _rewrite_manifest(path)
    with pytest.raises(UntrustedModelError) as info:
        load_model(path)
    message = str(info.value)
    assert message.startswith(f"{path}: refusing to load type(s) outside the trusted list")
    assert "'sklearn.dummy.DummyClassifier'" in message and "\n" not in message


def test_pickle_renamed_skops_says_what_it_is_and_which_file(small_forest: BalancedRandomForestClassifier,
                                                              tmp_path: Path) -> None:
    path = tmp_path / "baseline.skops"
    save_model(small_forest, path, {"config": "baseline"})
    path.write_bytes(pickle.dumps(small_forest, protocol=5))
    _rewrite_manifest(path)
    with pytest.raises(ValueError) as info:
        load_model(path)
    assert not isinstance(info.value, zipfile.BadZipFile)
    message = str(info.value)
    assert message.startswith(f"{path}: not a skops model file: a Python pickle (protocol 5)")
    assert "never loaded" in message and "\n" not in message


@pytest.mark.parametrize(("content", "says"), [(b"", "an empty file"), (b"\x1f\x8b\x08\x00rest", "a gzip file"),
                                               (b"PK\x03\x04not really a zip", "a zip archive that is not a skops"),
                                               (b"hello", "unknown content starting with b'hello'")])
def test_other_non_skops_content_is_named(tmp_path: Path, content: bytes, says: str) -> None:
    path = tmp_path / "m.skops"
    path.write_bytes(content)
    manifest_path(path).write_text(json.dumps({"sha256": hashlib.sha256(content).hexdigest()}))
    with pytest.raises(ValueError, match=rf"^{path}: not a skops model file: ") as info:
        load_model(path)
    assert says in str(info.value)


def test_zip_without_a_schema_is_named(tmp_path: Path) -> None:
    path = tmp_path / "m.skops"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("other.txt", "x")
    manifest_path(path).write_text(json.dumps({"sha256": hashlib.sha256(path.read_bytes()).hexdigest()}))
    with pytest.raises(ValueError, match=rf"^{path}: not a skops model file: a zip without a valid schema"):
        load_model(path)


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


def test_the_same_model_gives_the_same_bytes(tmp_path: Path) -> None:
    """Fitted twice (other objects, other memory: skops names nodes and arrays by id(), a tree's node records hold
    uninitialised padding) and once more as a copy, the same forest is the same file, written at other times;
    it loads and predicts as the forest."""
    import copy
    import time

    first = BalancedRandomForestClassifier(random_state=42, n_estimators=10).fit(*_data())
    again = BalancedRandomForestClassifier(random_state=42, n_estimators=10).fit(*_data())
    files = []
    # a copy, and one that travelled as a worker's trees do (pickled: equal values are no longer one object)
    for k, model in enumerate((first, again, copy.deepcopy(first), pickle.loads(pickle.dumps(first)))):
        files.append(tmp_path / f"m{k}.skops")
        save_model(model, files[-1], {})
        time.sleep(1.1 if k == 0 else 0)  # a zip entry's time has 2 s steps: cross one
    data = [f.read_bytes() for f in files]
    assert data[0] == data[1] == data[2] == data[3]
    assert sio.dumps(first) != sio.dumps(again)  # what skops alone writes differs
    X, _ = _data()
    np.testing.assert_array_equal(load_model(files[1]).predict_proba(X), first.predict_proba(X))


def test_canonical_files_keep_shared_objects_and_names() -> None:
    """What the renumbering must not change: an array referenced twice loads as one object, a value shared by
    two attributes loads equal, and a key that looks like an array file's name keeps its name."""
    from crystal_dask.store.models import _canonical

    arr = np.arange(6.0)
    obj = {"a": arr, "b": arr, "2024.npy": 1, "x": float("0.25"), "y": float("0.25")}
    data = _canonical(sio.dumps(obj))
    back = sio.loads(data, trusted=sio.get_untrusted_types(data=data))
    assert back["a"] is back["b"] and back["2024.npy"] == 1 and back["x"] == back["y"] == 0.25
    np.testing.assert_array_equal(back["a"], arr)
    assert _canonical(sio.dumps(obj)) == data


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
    # the project's list is exact: sklearn's Pipeline and FunctionTransformer, trusted by skops by default, are not
    assert "'sklearn.pipeline.Pipeline'" in str(info.value)
    with pytest.raises(UntrustedModelError, match="FunctionTransformer"):
        load_model(path, trusted=[name])
    extra = [name, "sklearn.pipeline.Pipeline", "sklearn.preprocessing._function_transformer.FunctionTransformer"]
    loaded = load_model(path, trusted=extra)
    np.testing.assert_array_equal(loaded.predict(X), pipe.predict(X))
