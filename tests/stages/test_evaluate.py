"""Evaluation in partitions: same answers as a plain in-memory predict, bounded memory on a set larger than a chunk."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster

from crystal_dask.metrics import confusion
from crystal_dask.stages.evaluate import evaluate, evaluation_rows, predict_partitions
from crystal_dask.stages.train import TrainConfig, train
from crystal_dask.store.dataset import Dataset
from crystal_dask.store.models import load_model
from crystal_dask.store.schema import PREDICTIONS, read_table
from crystal_dask.vocab import CLASSES


@pytest.fixture(scope="module")
def trained(small_dataset, client, tmp_path_factory):
    """A folder holding m.skops, a model trained on the session's small dataset."""
    root = tmp_path_factory.mktemp("eval")
    train(small_dataset, TrainConfig("crystal", crystal=True), root / "m.skops", client)
    return root


def test_partitioned_predictions_equal_in_memory_predict(trained, small_dataset, client):
    summary = evaluate(small_dataset, trained / "m.skops", trained / "out", client, splits=("dev", "eval"))
    preds = read_table(trained / "out" / "predictions.parquet", PREDICTIONS)
    rows = evaluation_rows(Dataset(small_dataset).rows(), ("dev", "eval"))
    assert preds["row"].to_numpy().tolist() == rows.tolist() and summary["n"] == len(rows)
    pixels = zarr.open_group(str(small_dataset / "patches.zarr"), mode="r")["pixels"]
    X = pixels.get_orthogonal_selection((rows, slice(None), slice(None))).reshape(len(rows), -1)
    model = load_model(trained / "m.skops")
    assert preds["y_pred"].to_numpy().tolist() == model.predict(X).tolist()
    proba = np.array(preds["proba"].to_pylist())
    assert np.allclose(proba[:, model.classes_], model.predict_proba(X), atol=1e-6)
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    cm = confusion(preds["y_true"].to_numpy(), preds["y_pred"].to_numpy(), len(CLASSES))
    assert np.array_equal(np.array(summary["confusion"]), cm)


def test_the_model_travels_once_not_in_every_task(trained, small_dataset, client):
    """Our graph refers to the broadcast model by key; dask-ml's ParallelPostFit pickles it into each task."""
    import pickle

    from dask_ml.wrappers import ParallelPostFit

    model = load_model(trained / "m.skops")
    model_bytes = len(pickle.dumps(model))
    ds = Dataset(small_dataset)
    pixels, labels = ds.dask_view(np.arange(ds.group()["label"].shape[0]))
    future = client.scatter(model, broadcast=True, hash=False)
    proba, _ = predict_partitions(pixels, labels, future, stage="s")

    def task_bytes(arr, name: str) -> list[int]:
        return [len(pickle.dumps(t)) for k, t in dict(arr.__dask_graph__()).items() if name in str(k)]

    ours = task_bytes(proba, "evaluate-predict")
    theirs = task_bytes(ParallelPostFit(model).predict_proba(pixels.reshape(pixels.shape[0], -1)), "predict")
    assert len(ours) == pixels.numblocks[0] and len(theirs) == pixels.numblocks[0] > 1
    assert max(ours) < model_bytes / 50
    assert min(theirs) > model_bytes


@pytest.mark.slow
def test_memory_stays_bounded_on_a_set_larger_than_its_chunks(trained, small_dataset, tmp_path):
    """A set of many chunks: the peak memory of the workers stays far below the set's float copy.

    The set is the dataset repeated along N (a real zarr on disk); its float32 copy would be ~`set_mb * 4`.
    """
    src = zarr.open_group(str(small_dataset / "patches.zarr"), mode="r")
    n0 = src["pixels"].shape[0]
    reps = 40
    big_root = tmp_path / "big"
    import shutil

    shutil.copytree(small_dataset, big_root)
    shutil.rmtree(big_root / "patches.zarr")
    g = zarr.open_group(str(big_root / "patches.zarr"), mode="w", attributes=dict(src.attrs))
    for name in ("pixels", "label", "crystal", "split"):
        a = src[name]
        new = g.create_array(name, shape=(n0 * reps, *a.shape[1:]), chunks=a.chunks, dtype=a.dtype,
                             fill_value=a.fill_value, compressors=a.compressors,
                             config={"write_empty_chunks": True})  # every chunk a file, as extract writes them
        for k in range(reps):
            new[k * n0:(k + 1) * n0] = a[:]
    # written by hand, so record the chunks' checksums as extract does: evaluation reads check them
    from crystal_dask.store.integrity import record_chunks, write_checksums

    write_checksums(big_root, record_chunks(big_root / "patches.zarr", g, ("pixels", "label", "crystal", "split"), 0,
                                            n0 * reps))
    import pyarrow as pa

    from crystal_dask.store.schema import PATCHES, write_table

    patches = Dataset(small_dataset).rows()
    tables = [patches.set_column(0, "row", pa.array(patches["row"].to_numpy() + k * n0)) for k in range(reps)]
    write_table(pa.concat_tables(tables), big_root / "patches.parquet", PATCHES)
    set_bytes = n0 * reps * 256 * 256
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address="127.0.0.1:0",
                      memory_limit="2GiB") as c, Client(c) as cl:
        import psutil

        def rss() -> int:
            return psutil.Process().memory_info().rss

        # warm up: the workers import scikit-learn, zarr and the model once, on the small set
        evaluate(small_dataset, trained / "m.skops", tmp_path / "warm", cl, splits=("eval",))
        before = cl.run(rss)
        peaks: dict[str, int] = {}
        import threading
        import time

        stop = threading.Event()

        def watch():
            while not stop.is_set():
                for w, v in cl.run(rss).items():
                    peaks[w] = max(peaks.get(w, 0), v)
                time.sleep(0.05)

        t = threading.Thread(target=watch)
        t.start()
        summary = evaluate(big_root, trained / "m.skops", tmp_path / "out", cl, splits=("train", "dev", "eval"))
        stop.set()
        t.join()
    assert summary["n"] == patches.num_rows * reps
    growth = max(peaks[w] - before[w] for w in peaks)
    assert set_bytes * 4 > 100e6, "the set's float copy must dwarf a block for this test to mean anything"
    # no worker ever held a quarter of the uint8 set, let alone its float copy
    assert growth < set_bytes / 4, f"a worker grew by {growth / 1e6:.0f} MB; the uint8 set is {set_bytes / 1e6:.0f} MB"
