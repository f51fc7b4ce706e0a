"""runtime/keys.py: collections computed on a real cluster with every task key named after the stage, the same
values as dask's own compute, and grouped on the dashboard (dask's key_split) by the stage and what the task does."""

from __future__ import annotations

import shutil

import dask.array as da
import dask.bag as db
import numpy as np
import pytest
from dask.utils import key_split
from distributed import get_task_stream

from crystal_dask.runtime.keys import FINAL, compute, stage_key


def _shown(key) -> str:
    """The group the dashboard's task stream and progress bars show `key` under."""
    return key_split(stage_key(key, "features"))


def test_stage_key_reads_stage_then_task_on_the_dashboard():
    assert _shown(("from_sequence-feature_chunk-1318093a612d20b4610a584fe6bc4bce", 5)) == "features-chunk"
    assert _shown(("feature_chunk-1318093a612d20b4610a584fe6bc4bce", 5)) == "features-chunk"  # its alias
    assert _shown("reshape-sum-aggregate-finalize-hlgfinalizecompute-cdb111b0ed") == f"features-{FINAL}"
    assert _shown(("_read_verified_chunk-1e93d469465d41c99765acdb5f05afba", 1, 0)) == "features-read-verified-chunk"
    assert _shown("shuffle-taker-ba4e4d95ab96bfb2569371f8402044d7") == "features-shuffle-taker"
    assert key_split(stage_key("fit_trees-fdfb7de25d2b489e9a814d96d4a6d60c-1-0", "train")) == "train-fit-trees"
    assert key_split(stage_key("extract_chunk-2882a6c238efe933e6fce0cd3261148e", "extract")) == "extract-chunk"


def test_stage_key_keeps_names_apart_and_the_callers_own():
    task, alias = ("from_sequence-feature_chunk-abc1", 5), ("feature_chunk-abc1", 5)
    assert stage_key(task, "features") != stage_key(alias, "features")
    assert stage_key(task, "features")[1:] == (5,)
    assert stage_key(("evaluate-predict", 0, 1), "evaluate") == ("evaluate-predict", 0, 1)
    assert stage_key("report", "report") == "report"


def test_every_task_is_named_after_the_stage_and_values_are_dask_own(client):
    x = da.from_array(np.arange(200.0).reshape(40, 5), chunks=(8, 5))
    rows = x[np.array([0, 3, 9, 17, 33])].reshape(5, 5)  # fancy indexing: shuffle-taker, getitem, ...
    total = (x * 2).sum(axis=0)
    bag = db.from_sequence(range(6), npartitions=3).map(lambda v: v + 1)
    with get_task_stream(client) as stream:
        futures = compute(client, [rows, total, bag], "evaluate")
        got = client.gather(futures)
    assert np.array_equal(got[0], rows.compute()) and np.array_equal(got[1], total.compute())
    assert got[2] == [1, 2, 3, 4, 5, 6]
    prefixes = {key_split(t["key"]) for t in stream.data}
    assert len(prefixes) > 3 and all(p.startswith("evaluate-") for p in prefixes), prefixes
    assert f"evaluate-{FINAL}" in prefixes, prefixes
    assert all(f.key.startswith("evaluate-") for f in futures), [f.key for f in futures]


@pytest.mark.slow
def test_job_steps_show_stage_and_task_on_the_dashboard(small_dataset, client, tmp_path):
    """A real features, train and evaluate step: every task the cluster ran shows under `<stage>-<what>`, never
    the bare stage (the dashboard's word for each of the stage's task kinds) nor a dask internal."""
    from crystal_dask.stages.evaluate import evaluate
    from crystal_dask.stages.features import FeatureSettings
    from crystal_dask.stages.features import compute as features
    from crystal_dask.stages.train import TrainConfig, train
    from crystal_dask.store.dataset import Dataset

    shutil.copytree(small_dataset, tmp_path / "ds")
    seen = {}
    steps = {"features": lambda: features(Dataset(tmp_path / "ds"), FeatureSettings(families=("stain",)), client),
             "train": lambda: train(tmp_path / "ds", TrainConfig("baseline"), tmp_path / "m.skops", client),
             "evaluate": lambda: evaluate(tmp_path / "ds", tmp_path / "m.skops", tmp_path / "eval", client)}
    for stage, run in steps.items():
        with get_task_stream(client) as stream:
            run()
        seen[stage] = {key_split(t["key"]) for t in stream.data}
    assert seen["features"] == {"features-chunk"}, seen
    assert seen["train"] == {"train-fit-trees"}, seen
    assert f"evaluate-{FINAL}" in seen["evaluate"] and "evaluate-predict" in seen["evaluate"], seen
    assert all(p.startswith("evaluate-") for p in seen["evaluate"]), seen


def test_named_renames_a_librarys_own_compute(client):
    """Inside `named`, dask.compute (as a library calls it, naming its own tasks) runs on the client under the
    stage, with dask's own values; outside, naming is dask's again."""
    import dask

    from crystal_dask.runtime.keys import named

    x = da.from_array(np.arange(60.0).reshape(12, 5), chunks=(4, 5))
    before = dask.config.get("scheduler", None)
    with get_task_stream(client) as stream, named(client, "train"):
        got = dask.compute(x.mean(axis=0), (x - 1).sum(), 7)
    assert np.array_equal(got[0], np.arange(60.0).reshape(12, 5).mean(axis=0)) and got[1:] == (1770.0 - 60, 7)
    prefixes = {key_split(t["key"]) for t in stream.data}
    assert prefixes and all(p.startswith("train-") for p in prefixes), prefixes
    assert dask.config.get("scheduler", None) == before
