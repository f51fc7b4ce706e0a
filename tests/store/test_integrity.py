"""Damaged datasets (issue 9, class 2): real deleted, truncated and bit-flipped zarr chunk files are found, refused
by training and evaluation with the array, chunk and file named, flagged before a step is skipped, and re-extracted
by a rerun to the very bytes first written."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from crystal_dask.cli import main
from crystal_dask.pipeline import Planner
from crystal_dask.stages.base import Context, Step
from crystal_dask.stages.extract import extract
from crystal_dask.store.dataset import Dataset
from crystal_dask.store.integrity import DamagedDataError
from crystal_dask.wsi.patches import PatchSettings

SETTINGS = PatchSettings(chunk_rows=8)


def zarr_digest(ds: Dataset) -> str:
    h = hashlib.sha256()
    for p in sorted(ds.zarr.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(ds.zarr)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def pristine(small_dataset) -> tuple[Path, str]:
    """The session's small dataset (extracted with SETTINGS: never written to here) and its zarr digest."""
    return small_dataset, zarr_digest(Dataset(small_dataset))


@pytest.fixture
def damaged(pristine, tmp_path) -> Dataset:
    """A copy of the pristine dataset with pixel chunk 1 deleted, chunk 2 truncated, label chunk 3 bit-flipped."""
    root = tmp_path / "ds"
    shutil.copytree(pristine[0], root)
    ds = Dataset(root)
    (ds.zarr / "pixels/c/1/0/0").unlink()
    chunk2 = ds.zarr / "pixels/c/2/0/0"
    chunk2.write_bytes(chunk2.read_bytes()[:-100])
    chunk3 = ds.zarr / "label/c/3"
    data = bytearray(chunk3.read_bytes())
    data[len(data) // 2] ^= 0x10  # one flipped bit: same size, other contents
    chunk3.write_bytes(bytes(data))
    return ds


def test_pristine_dataset_verifies(pristine):
    assert Dataset(pristine[0]).verify() == []
    assert main(["verify", str(pristine[0])]) == 0


def test_verify_names_every_damaged_chunk(damaged, capsys):
    found = {(d.array, d.chunk): d for d in damaged.verify()}
    assert set(found) == {("pixels", 1), ("pixels", 2), ("label", 3)}
    assert "missing" in found["pixels", 1].problem and found["pixels", 1].file.endswith("pixels/c/1/0/0")
    assert "truncated" in found["pixels", 2].problem
    assert "checksum" in found["label", 3].problem
    # the quick check sees the missing and the truncated file, not the flipped bit
    assert {(d.array, d.chunk) for d in damaged.verify(full=False)} == {("pixels", 1), ("pixels", 2)}
    assert main(["verify", str(damaged.root)]) == 1
    out = capsys.readouterr().out
    assert "array 'pixels' chunk 1" in out and "array 'label' chunk 3" in out and str(damaged.zarr) in out


def test_training_reads_refuse_damaged_chunks(damaged):
    with pytest.raises(DamagedDataError, match=r"array 'pixels' chunk 1 \(.*pixels/c/1/0/0\): file missing"):
        damaged.matrix(np.arange(8, 16))
    with pytest.raises(DamagedDataError, match=r"array 'label' chunk 3 .*checksum"):
        damaged.labels(np.arange(24, 30))
    assert damaged.matrix(np.arange(0, 8)).shape == (8, 256 * 256)  # undamaged chunks still read


def test_evaluation_reads_refuse_damaged_chunks_on_the_workers(damaged, client):
    rows = np.arange(0, 24)
    data, _ = damaged.dask_view(rows)
    with pytest.raises(DamagedDataError, match=r"array 'pixels' chunk (1|2) "):
        client.compute(data.sum()).result()
    ok, labels = damaged.dask_view(np.arange(0, 8))
    assert client.compute(ok).result().shape == (8, 256 * 256)


def test_a_rerun_reextracts_only_the_damaged_chunks(damaged, pristine, small_scan, client):
    extract(small_scan.regions, damaged.root, SETTINGS, client)
    assert damaged.verify() == []
    assert damaged.read_manifest()["chunks_run"] == 3  # chunks 1, 2 and 3, not the whole dataset
    assert zarr_digest(damaged) == pristine[1]  # the very bytes first written


def test_the_runner_does_not_skip_a_step_whose_outputs_are_damaged(damaged, pristine, tmp_path):
    from types import SimpleNamespace


    def step(name: str, ds: Dataset) -> Step:
        return Step(name, (), {}, (ds.manifest,), lambda: None, ds.verify)

    recorder = Planner(Context(SimpleNamespace(out=tmp_path), None))  # the runner's step logic alone: no cluster
    for name, ds in (("extract:good", Dataset(pristine[0])), ("extract:bad", damaged)):
        recorder.record(recorder.decide(step(name, ds)))  # as if each had run
    planner = Planner(Context(SimpleNamespace(out=tmp_path), None))
    assert planner.decide(step("extract:good", Dataset(pristine[0]))).why == "up to date"
    redo = planner.decide(step("extract:bad", damaged))
    assert redo.run and redo.why.startswith("outputs damaged: ")


def test_a_dataset_without_checksums_is_named_unchecked_and_a_rerun_records_them(pristine, small_scan, client,
                                                                                 tmp_path, capsys):
    root = tmp_path / "old"
    shutil.copytree(pristine[0], root)
    ds = Dataset(root)
    ds.checksums.unlink()  # as a dataset written before checksums existed
    assert main(["verify", str(root)]) == 0
    assert "not checked: array 'pixels' has no recorded checksums" in capsys.readouterr().out
    extract(small_scan.regions, root, SETTINGS, client)
    assert ds.checksums.exists() and ds.unchecked() == [] and ds.verify() == []
    assert zarr_digest(ds) == pristine[1]
