"""`crystal-dask features`: add handcrafted feature families to an extracted dataset, on a Dask cluster."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from crystal_dask.commands._common import add_cluster_argument, locked, progress_bar

HELP = ("Add handcrafted feature families (docs/features.md) to a dataset written by `crystal-dask extract`, chunk "
        "by chunk in parallel; a row a family cannot describe is a reject with its reason.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", type=Path, help="dataset folder written by `crystal-dask extract`; the families' "
                                              "arrays are added to it")
    # Unset options are left out, so the defaults and the checks are the features stage's own (stated once, there;
    # not imported here, so that `--help` stays light).
    opt = {"default": argparse.SUPPRESS}
    p.add_argument("--families", nargs="+", metavar="FAMILY", help="families to add (default: every one)", **opt)
    p.add_argument("--um-per-px", type=float, help="the resolution every family sees (default: the stage's)", **opt)
    p.add_argument("--max-side", type=int, help="largest side in px at that resolution (default: the stage's)",
                   **opt)
    add_cluster_argument(p)


def run(args: argparse.Namespace) -> int:
    with locked(args, args.dataset, "features") as connect:  # one command per folder, extraction's included
        from crystal_dask.features import FAMILIES
        from crystal_dask.stages import features
        from crystal_dask.store.dataset import Dataset
        from crystal_dask.store.files import write_json

        given = {k: v for k, v in vars(args).items() if k in ("families", "um_per_px", "max_side")}
        settings = features.parse({"families": list(FAMILIES)} | given, None, "features")
        ds = Dataset(args.dataset)
        if not ds.complete():
            raise FileNotFoundError(f"{args.dataset}: not a finished dataset (no {ds.manifest.name}); write one "
                                    f"with `crystal-dask extract` first")
        with connect() as client:
            manifest = features.compute(ds, settings, client, progress_bar(args))
        write_json(features.manifest_path(ds), manifest)
    print(json.dumps({k: manifest[k] for k in ("families", "rows", "rejected", "reasons", "chunks", "chunks_run")},
                     indent=2))
    print(f"dataset: {ds.root}")
    return 0
