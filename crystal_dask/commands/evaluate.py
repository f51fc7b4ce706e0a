"""`crystal-dask evaluate`: predict a dataset's held-out rows in distributed partitions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from crystal_dask.commands._common import add_cluster_argument, locked, progress_bar

HELP = "Evaluate a model on a dataset's splits, partition by partition; writes predictions and confusion."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", type=Path, help="dataset folder written by `crystal-dask extract`")
    p.add_argument("model", type=Path, help="model file written by `crystal-dask train`")
    p.add_argument("-o", "--out", type=Path, required=True, help="folder for predictions.parquet, confusion.json")
    p.add_argument("--splits", nargs="+", default=["eval"], help="splits to evaluate (all three: the whole corpus)")
    add_cluster_argument(p)


def run(args: argparse.Namespace) -> int:
    with locked(args, args.out, "evaluate") as connect:
        from crystal_dask.stages.evaluate import evaluate

        with connect() as client:
            summary = evaluate(args.dataset, args.model, args.out, client, splits=args.splits,
                               show_progress=progress_bar(args))
    cm = np.array(summary["confusion"])
    print(json.dumps({"n": summary["n"], "correct": int(cm.trace()), "accuracy": round(cm.trace() / cm.sum(), 4)}))
    print(f"predictions: {args.out / 'predictions.parquet'}")
    return 0
