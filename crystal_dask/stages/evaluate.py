"""Evaluation in distributed partitions: a dask array over the zarr pixels, the model broadcast once.

Every block is predicted where it is read; only per-row predictions (small) and per-block confusion matrices
come back. No process holds the whole set, nor a float copy of more than one block.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import dask.array as da
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import zarr
from distributed import Client

from crystal_dask.metrics import confusion
from crystal_dask.runtime.allocator import roomy_malloc, roomy_stage
from crystal_dask.stages.extract import Dataset, load_patches
from crystal_dask.stages.train import load_rows
from crystal_dask.store.models import load_model
from crystal_dask.store.schema import PREDICTIONS, make_table, write_table
from crystal_dask.vocab import CLASSES

N_CLASSES = len(CLASSES)


def _predict_block(block: np.ndarray, model, stage: str) -> np.ndarray:
    """Class probabilities (rows, 9) of one block; columns for classes the model never saw stay 0."""
    out = np.zeros((block.shape[0], N_CLASSES), dtype=np.float32)
    if len(block):
        roomy_malloc(stage)
        out[:, model.classes_] = model.predict_proba(block.reshape(block.shape[0], -1).astype(np.float32))
    return out


def _confusion_block(y_true: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """One block's confusion matrix, flattened to a (1, 81) row so blocks stack and sum."""
    return confusion(y_true[:, 0], proba.argmax(axis=1), N_CLASSES).reshape(1, -1)


def predict_partitions(pixels: da.Array, labels: da.Array, model, stage: str) -> tuple[da.Array, da.Array]:
    """Per-row class probabilities and the summed confusion matrix, block by block.

    `model` should be a Future of a broadcast model: the graph then refers to it by key, where passing the
    estimator itself (as dask-ml's ParallelPostFit does) pickles it into every task. `stage` is roomy_stage's id.
    """
    proba = pixels.map_blocks(_predict_block, model, stage, dtype=np.float32, drop_axis=2,
                              chunks=(pixels.chunks[0], (N_CLASSES,)), name="evaluate-predict")
    cm_blocks = da.map_blocks(_confusion_block, labels[:, None], proba, dtype=np.int64,
                              chunks=((1,) * proba.numblocks[0], (N_CLASSES * N_CLASSES,)),
                              name="evaluate-confusion")
    return proba, cm_blocks.sum(axis=0).reshape(N_CLASSES, N_CLASSES)


def evaluation_rows(patches: pa.Table, splits: Sequence[str]) -> np.ndarray:
    """Dataset rows of the given splits (all crystalline and non-crystalline rows), sorted."""
    mask = pc.is_in(patches["split"], pa.array(list(splits))).to_numpy(zero_copy_only=False)
    return np.sort(patches["row"].to_numpy()[mask])


def evaluate(
    dataset_root: str | Path,
    model_path: str | Path,
    out: str | Path,
    client: Client,
    *,
    splits: Sequence[str] = ("eval",),
    show_progress: Callable[[list], None] | None = None,
) -> dict:
    """Predict the rows of `splits`, write predictions.parquet and confusion.json into `out`; return the summary."""
    dataset = Dataset(Path(dataset_root).resolve())
    out = Path(out)
    patches = load_patches(dataset.root)
    rows = evaluation_rows(patches, splits)
    if len(rows) == 0:
        raise ValueError(f"evaluate: no rows in splits {list(splits)} of {dataset.root}")
    model = load_model(Path(model_path))
    model_future = client.scatter(model, broadcast=True, hash=False)  # once per worker, not once per task

    group = zarr.open_group(str(dataset.zarr), mode="r")
    pixels = da.from_zarr(group["pixels"])[rows]  # sorted rows: each block stays within its zarr chunks
    labels = da.from_zarr(group["label"])[rows].rechunk((pixels.chunks[0],))
    with roomy_stage(client) as stage:
        proba, cm = predict_partitions(pixels, labels, model_future, stage)
        proba_f, cm_f = client.compute([proba, cm])
        if show_progress is not None:
            show_progress([proba_f, cm_f])
        proba_v, cm_v = client.gather([proba_f, cm_f])

    meta = patches.take(pa.array(np.searchsorted(patches["row"].to_numpy(), rows)))
    y_true = np.array([CLASSES.index(c) for c in meta["cls"].to_pylist()], dtype=np.int64)
    y_pred = proba_v.argmax(axis=1)
    if not np.array_equal(cm_v, confusion(y_true, y_pred, N_CLASSES)):
        raise RuntimeError("evaluate: the reduced confusion matrix disagrees with the per-row predictions")
    pred_table = make_table(PREDICTIONS, (
        {"row": int(r), "patient": p, "cls": c, "crystal": bool(k), "y_true": int(t), "y_pred": int(q),
         "proba": [float(v) for v in pr]}
        for r, p, c, k, t, q, pr in zip(rows, meta["patient"].to_pylist(), meta["cls"].to_pylist(),
                                        meta["crystal"].to_pylist(), y_true, y_pred, proba_v, strict=True)))
    write_table(pred_table, out / "predictions.parquet", PREDICTIONS)
    summary = {"dataset": str(dataset.root), "model": str(model_path), "splits": list(splits),
               "n": int(len(rows)), "confusion": cm_v.tolist(), "classes": list(CLASSES)}
    (out / "confusion.json").write_text(json.dumps(summary, indent=2))
    return summary


def predict_in_memory(dataset_root: str | Path, model_path: str | Path, splits: Sequence[str] = ("eval",)):
    """Baseline for the benchmark: load the set whole and predict with plain scikit-learn in one process."""
    dataset = Dataset(Path(dataset_root).resolve())
    X, _ = load_rows(dataset, evaluation_rows(load_patches(dataset.root), splits))
    model = load_model(Path(model_path))
    model.n_jobs = 2
    return model.predict(X)
