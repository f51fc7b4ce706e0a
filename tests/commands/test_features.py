"""`crystal-dask features`: the features stage's verb, on a dataset made by the `scan` and `extract` verbs, on a real
LocalCluster; bad input is a one-line error naming the folder or the key."""

from __future__ import annotations

import json

import pytest

from crystal_dask.cli import main
from crystal_dask.store.dataset import Dataset
from crystal_dask.store.schema import REJECTS, read_table


def test_a_folder_without_a_dataset_is_refused_naming_it(tmp_path, capsys):
    folder = tmp_path / "none"
    assert main(["features", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err == f"crystal-dask: error: {folder}: not a finished dataset (no extract.json); write one with " \
                  f"`crystal-dask extract` first\n"
    assert not folder.exists()  # nothing written, not even the folder


def test_an_unknown_family_is_refused_naming_the_key(tmp_path, capsys):
    assert main(["features", str(tmp_path), "--families", "stain", "colour"]) == 1
    assert capsys.readouterr().err.startswith("crystal-dask: error: features.families: 'colour' is not one of ")


@pytest.mark.slow
def test_scan_extract_then_features_on_the_command_line(small_corpus, tmp_path, capsys):
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("kind: local\nworkers: 2\ndashboard_address: '127.0.0.1:0'\n")
    scan, ds = tmp_path / "scan", tmp_path / "ds"
    assert main(["scan", str(small_corpus), "-o", str(scan)]) == 0
    assert main(["extract", str(scan), "-o", str(ds), "--chunk-rows", "32", "--cluster", str(cluster),
                 "--no-progress"]) == 0
    capsys.readouterr()
    argv = ["features", str(ds), "--families", "stain", "texture", "--cluster", str(cluster), "--no-progress"]
    assert main(argv) == 0
    summary, where = capsys.readouterr().out.split("\ndataset: ")
    printed = json.loads(summary)
    assert where.strip() == str(ds)
    written = json.loads((ds / "features.json").read_text())
    assert printed["families"] == written["families"] and set(written["families"]) == {"stain", "texture"}
    dataset = Dataset(ds)
    group = dataset.group()
    assert group["stain"].shape[0] == group["label"].shape[0] == written["rows"] > 0
    assert group["texture"].attrs["columns"] and "calcification" not in group
    assert read_table(ds / "features_rejects.parquet", REJECTS).num_rows == written["rejected"]
    assert written["chunks_run"] == written["chunks"] > 1
    assert main(argv) == 0  # a second time: every chunk is done already
    assert json.loads((ds / "features.json").read_text())["chunks_run"] == 0
    assert not (ds / ".lock").exists()
