"""Training under joblib's dask backend: row selection, sampling, determinism across worker counts, manifests."""

from __future__ import annotations

import json

import numpy as np
import pytest
from distributed import Client, LocalCluster

from crystal_dask.stages.train import LEAKAGE_WARNING, TrainConfig, select_rows, train
from crystal_dask.store.dataset import Dataset
from crystal_dask.store.models import load_model


@pytest.fixture(scope="module")
def dataset(small_dataset):
    return small_dataset


def test_configurations_select_the_right_rows(dataset):
    patches = Dataset(dataset).rows()
    split = np.array(patches["split"].to_pylist())
    crystal = patches["crystal"].to_numpy(zero_copy_only=False)
    rows = patches["row"].to_numpy()
    base = select_rows(patches, TrainConfig("baseline"))
    assert set(base) == set(rows[(split == "train") & ~crystal])
    cryst = select_rows(patches, TrainConfig("crystal", crystal=True))
    assert set(cryst) == set(rows[split == "train"])
    assert (crystal & (split == "train")).any(), "the corpus needs crystalline training rows"
    leaky = select_rows(patches, TrainConfig("crystal", crystal=True, crystal_all_splits=True))
    assert set(leaky) == set(base) | set(rows[crystal])
    assert len(leaky) > len(cryst)


def test_stratified_sample_keeps_class_shares(dataset):
    patches = Dataset(dataset).rows()
    full = select_rows(patches, TrainConfig("baseline"))
    n = len(full) // 2
    cfg = TrainConfig("baseline", sample_n=n, sample_seed=3)
    picked = select_rows(patches, cfg)
    assert len(picked) == n and set(picked) <= set(full)
    assert np.array_equal(picked, select_rows(patches, cfg))  # seeded
    cls = dict(zip(patches["row"].to_pylist(), patches["cls"].to_pylist(), strict=True))
    for c in {cls[r] for r in full}:
        share_full = sum(cls[r] == c for r in full) / len(full)
        share_pick = sum(cls[r] == c for r in picked) / n
        assert abs(share_full - share_pick) <= 1.0 / n + 1e-9
    other = select_rows(patches, TrainConfig("baseline", sample_n=n, sample_seed=4))
    assert not np.array_equal(picked, other)


def test_training_is_the_same_on_one_and_two_workers(dataset, client, tmp_path):
    ds = Dataset(dataset)
    rows = select_rows(ds.rows(), TrainConfig("crystal", crystal=True))
    X = ds.matrix(rows)
    train(dataset, TrainConfig("crystal", crystal=True), tmp_path / "two.skops", client)
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0") as c, Client(c) as one_c:
        train(dataset, TrainConfig("crystal", crystal=True), tmp_path / "one.skops", one_c)
    one, two = load_model(tmp_path / "one.skops"), load_model(tmp_path / "two.skops")
    assert np.array_equal(one.predict_proba(X), two.predict_proba(X))
    for a, b in zip(one.estimators_, two.estimators_, strict=True):  # the same trees, not just the same answers
        assert np.array_equal(a.tree_.feature, b.tree_.feature) and np.array_equal(a.tree_.threshold, b.tree_.threshold)
        assert np.array_equal(a.tree_.value, b.tree_.value)
    assert len(two.estimators_) == 100 and two.random_state == 42


def test_balance_by_label_draws_each_raw_label_equally(dataset, client, tmp_path):
    """Each tree's sample holds as many cdcs as dcis rows (12 raw labels balanced); the trees learn the 9 classes."""
    ds = Dataset(dataset)
    cfg = TrainConfig("crystal", crystal=True, balance="label")
    manifest = train(dataset, cfg, tmp_path / "label.skops", client)
    model = load_model(tmp_path / "label.skops")
    table = ds.rows()
    rows = select_rows(table, cfg)
    raw = dict(zip(table["row"].to_pylist(), table["label"].to_pylist(), strict=True))
    labels = np.array([raw[int(r)] for r in rows])
    for sampler in model.samplers_[:5]:
        drawn = np.unique(labels[sampler.sample_indices_], return_counts=True)[1]
        assert len(set(drawn.tolist())) == 1 and len(drawn) == len(set(labels))  # every raw label, equally
    assert set(model.classes_.tolist()) <= set(range(9)) and manifest["config"]["balance"] == "label"
    train(dataset, TrainConfig("crystal", crystal=True), tmp_path / "c.skops", client)
    plain = load_model(tmp_path / "c.skops")
    X = ds.matrix(rows)
    assert not np.array_equal(model.predict_proba(X), plain.predict_proba(X))


def test_train_writes_a_safe_model_with_manifest(dataset, client, tmp_path, capsys):
    path = tmp_path / "crystal.skops"
    manifest = train(dataset, TrainConfig("crystal", crystal=True, crystal_all_splits=True), path, client)
    assert LEAKAGE_WARNING in capsys.readouterr().err
    on_disk = json.loads(path.with_suffix(".json").read_text())
    assert on_disk == manifest
    assert manifest["leakage"] == LEAKAGE_WARNING and manifest["config"]["crystal_all_splits"] is True
    assert sum(manifest["class_counts"].values()) == manifest["train_rows"]
    assert manifest["crystal_rows"] > 0 and manifest["packages"]["scikit-learn"]
    model = load_model(path)
    assert model.random_state == 42


def test_unknown_config_key_is_named():
    with pytest.raises(ValueError, match=r"train.configs.mine: unknown key\(s\) \['crystall'\]"):
        TrainConfig.from_config("mine", {"crystall": True})
    with pytest.raises(ValueError, match="train.configs.x.crystal_all_splits: needs crystal: true"):
        TrainConfig.from_config("x", {"crystal_all_splits": True})
