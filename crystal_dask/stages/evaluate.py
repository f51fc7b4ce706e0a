"""Stage evaluate: each model on each evaluation set, in distributed partitions, the model broadcast once.

Every block is predicted where it is read; only per-row predictions (small) and per-block confusion matrices
come back. No process holds the whole set, nor a float copy of more than one block.
Settings: the job file's `evaluate.sets.<name>: {corpus, splits}`. Outputs: <out>/eval/<set>/<config>/
predictions.parquet and confusion.json; redone when the splits or a step it reads (the model's training, the
set's corpus's extract and features steps) change.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from crystal_dask.checks import ConfigError, need, section, text, texts
from crystal_dask.experiment import Experiment
from crystal_dask.metrics import confusion
from crystal_dask.predict import predict_proba
from crystal_dask.runtime import keys
from crystal_dask.runtime.allocator import roomy_malloc, roomy_stage
from crystal_dask.stages import train
from crystal_dask.stages.base import Context, Step
from crystal_dask.store.dataset import Dataset
from crystal_dask.store.files import write_json
from crystal_dask.store.models import load_model, model_arrays, read_manifest
from crystal_dask.store.schema import PREDICTIONS, make_table, write_table
from crystal_dask.vocab import CLASSES, EVAL_SPLITS, SPLITS

if TYPE_CHECKING:  # a dry run declares this stage's steps without importing distributed
    from distributed import Client

NAME = "evaluate"
SECTION = "evaluate"
N_CLASSES = len(CLASSES)


def _predict_block(block: np.ndarray, model, stage: str) -> np.ndarray:
    """Class probabilities (rows, 9) of one block (crystal_dask.predict, as whole-slide inference predicts)."""
    if len(block):
        roomy_malloc(stage)
    return predict_proba(block, model)


def _confusion_block(y_true: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """One block's confusion matrix, flattened to a (1, 81) row so blocks stack and sum."""
    return confusion(y_true[:, 0], proba.argmax(axis=1), N_CLASSES).reshape(1, -1)


def predict_partitions(pixels: da.Array, labels: da.Array, model, stage: str) -> tuple[da.Array, da.Array]:
    """Per-row class probabilities and the summed confusion matrix, block by block.

    `model` should be a Future of a broadcast model: the graph then refers to it by key, where passing the
    estimator itself (as dask-ml's ParallelPostFit does) pickles it into every task. `stage` is roomy_stage's id.
    """
    proba = pixels.map_blocks(_predict_block, model, stage, dtype=np.float32,
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
    splits: Sequence[str] = EVAL_SPLITS,
    show_progress: Callable[[list], None] | None = None,
) -> dict:
    """Predict the rows of `splits`, write predictions.parquet and confusion.json into `out`; return the summary."""
    dataset = Dataset(Path(dataset_root))
    out = Path(out)
    patches = dataset.usable(dataset.rows())
    rows = evaluation_rows(patches, splits)
    if len(rows) == 0:
        raise ValueError(f"evaluate: no rows in splits {list(splits)} of {dataset.root}")
    model = load_model(Path(model_path))
    model_future = client.scatter(model, broadcast=True, hash=False)  # once per worker, not once per task

    features = model_arrays(read_manifest(Path(model_path)))  # as the model was fitted
    pixels, labels = dataset.dask_view(rows, features)  # sorted rows: each block stays within its zarr chunks
    with roomy_stage(client) as stage:
        proba, cm = predict_partitions(pixels, labels, model_future, stage)
        proba_f, cm_f = keys.compute(client, [proba, cm], NAME)  # the dashboard shows evaluate-..., not getitem
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
    write_table(pred_table, predictions_path(out), PREDICTIONS)
    summary = {"dataset": str(dataset.root), "model": str(model_path), "splits": list(splits),
               "n": int(len(rows)), "confusion": cm_v.tolist(), "classes": list(CLASSES)}
    write_json(out / "confusion.json", summary)
    return summary


# ----------------------------------------------------------------------------------------------- the stage
@dataclass(frozen=True)
class EvalSet:
    """One `evaluate.sets.<name>`: a corpus's dataset, restricted to some splits."""

    name: str
    corpus: str
    splits: tuple[str, ...] = EVAL_SPLITS


def parse(cfg: Mapping[str, Any], exp: Experiment, where: str) -> tuple[EvalSet, ...]:
    """Check the `evaluate:` section against the experiment's corpora; errors name the key."""
    if cfg is None:
        raise ConfigError(f"{where}: is required")
    cfg = section(cfg, where, ("sets",))
    sets = []
    for name, s in section(need(cfg, "sets", where), f"{where}.sets").items():
        at = f"{where}.sets.{name}"
        s = section(s, at, ("corpus", "splits"))
        corpus = text(need(s, "corpus", at), f"{at}.corpus")
        if corpus not in exp.corpora:
            raise ConfigError(f"{at}.corpus: {corpus!r} is not one of the corpora ({', '.join(exp.corpora)})")
        sets.append(EvalSet(name, corpus, texts(s.get("splits", list(EVAL_SPLITS)), f"{at}.splits", SPLITS)))
    return tuple(sets)


def output_dir(exp: Experiment, set_name: str, config: str) -> Path:
    return exp.out / "eval" / set_name / config


def step_name(set_name: str, config: str) -> str:
    """The step that evaluates configuration `config` on set `set_name`; its product is its output folder."""
    return f"{NAME}:{set_name}:{config}"


def predictions_path(folder: Path) -> Path:
    """The per-row predictions table of one evaluation folder (schema PREDICTIONS)."""
    return Path(folder) / "predictions.parquet"


def steps(ctx: Context) -> Iterator[Step]:
    exp = ctx.experiment
    for s in exp.settings[SECTION]:
        data = train.dataset_reads(exp, s.corpus)
        for cfg in exp.settings[train.SECTION].configs:
            out = output_dir(exp, s.name, cfg.name)
            reads = (train.step_name(cfg.name), *data)
            yield Step(step_name(s.name, cfg.name), reads, {"splits": list(s.splits)},
                       (out / "confusion.json", predictions_path(out)),
                       lambda out=out, s=s, reads=reads: evaluate(
                           ctx.output(reads[1]).root, ctx.output(reads[0]), out, ctx.client, splits=s.splits,
                           show_progress=ctx.show_progress), product=out)


def report_inputs(ctx: Context, results: Mapping[str, Any]) -> dict[str, Any]:
    """set -> config -> {confusion, n, predictions, dataset}: every evaluation; with a model trained on the
    calcification family, also how often each set's calcification columns are non-zero."""
    exp = ctx.experiment
    sets: dict[str, dict[str, dict[str, Any]]] = {}
    for s in exp.settings[SECTION]:
        for cfg in exp.settings[train.SECTION].configs:
            folder = ctx.output(step_name(s.name, cfg.name))
            summary = json.loads((folder / "confusion.json").read_text())
            sets.setdefault(s.name, {})[cfg.name] = {"confusion": summary["confusion"], "n": summary["n"],
                                                     "predictions": str(predictions_path(folder)),
                                                     "dataset": summary["dataset"]}
    if not any("calcification" in m["features"] for m in results["models"].values()):
        return {"sets": sets}
    return {"sets": sets, "calcification": calcification_signal(exp, sets)}


def calcification_signal(exp: Experiment, sets: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """set -> how often its rows' calcification columns are non-zero, per class and crystalline/other row (read
    beside the importances: did calcification signal reach the forest at all?)."""
    from crystal_dask.features.calcification_summary import from_dataset

    splits = {s.name: s.splits for s in exp.settings[SECTION]}
    out = {}
    for set_name, by_config in sets.items():
        dataset = next(iter(by_config.values()))["dataset"]  # one dataset per set, whatever the configuration
        if "calcification" in Dataset(Path(dataset)).array_names():
            out[set_name] = from_dataset(dataset, splits[set_name])
    return out
