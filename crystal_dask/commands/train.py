"""`crystal-dask train`: fit one configuration's BalancedRandomForestClassifier, one dask task per tree."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from crystal_dask.commands._common import add_cluster_argument, locked

HELP = "Train a balanced random forest (random_state=42) on a dataset's rows for one configuration."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", type=Path, help="dataset folder written by `crystal-dask extract`")
    p.add_argument("-o", "--out", type=Path, required=True, help="model file to write (.skops; manifest beside it)")
    p.add_argument("--config", default="baseline", help="configuration name: baseline, crystal, or your own")
    p.add_argument("--crystal", action=argparse.BooleanOptionalAction, default=None,
                   help="add the crystalline rows (default: on for 'crystal', off otherwise)")
    p.add_argument("--crystal-all-splits", action="store_true",
                   help="take crystalline rows from every split: the published, leaky choice (warns, recorded)")
    p.add_argument("--splits", nargs="+", default=["train"])
    p.add_argument("--sample-n", type=int, default=None, help="sample the non-crystalline rows down to n")
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--no-stratify", action="store_true", help="sample uniformly instead of per class")
    add_cluster_argument(p)


def run(args: argparse.Namespace) -> int:
    # the model's folder is locked: two trainings into one folder could write the same files
    with locked(args, args.out.parent, "train") as connect:
        from crystal_dask.stages.train import TrainConfig, train

        crystal = args.crystal if args.crystal is not None else args.config == "crystal"
        cfg = TrainConfig.from_config(args.config, {
            "crystal": crystal, "crystal_all_splits": args.crystal_all_splits, "splits": args.splits,
            "sample_n": args.sample_n, "sample_seed": args.sample_seed, "stratified": not args.no_stratify})
        with connect() as client:
            manifest = train(args.dataset, cfg, args.out, client)
    print(json.dumps({k: manifest[k] for k in ("train_rows", "crystal_rows", "class_counts", "sha256")}, indent=2))
    print(f"model: {args.out}")
    return 0
