"""`crystal-dask scan`: corpus folder -> regions.parquet + rejects.parquet."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from crystal_dask.store.schema import REGIONS, REJECTS, write_table

HELP = "Scan a corpus (NEDC or Fox Chase layout): one row per annotated region, one per rejected input."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", type=Path, help="corpus root (the folder holding svs/)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder for regions.parquet, rejects.parquet")
    p.add_argument("--corpus", help="corpus name recorded in every row (default: the root folder's name)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the patient-level split (layouts without splits)")
    p.add_argument("--strict", action="store_true", help="exit 1 when any input was rejected")


def run(args: argparse.Namespace) -> int:
    from crystal_dask.runtime.lock import hold
    from crystal_dask.stages.scan import scan

    with hold(args.out, "crystal-dask scan"):  # one command per output folder
        try:
            result = scan(args.root, corpus=args.corpus, split_seed=args.split_seed)
        except FileNotFoundError as exc:  # no corpus root: nothing to scan, nothing written
            print(f"scan: {exc}", file=sys.stderr)
            return 2
        write_table(result.regions, args.out / "regions.parquet", REGIONS)
        write_table(result.rejects, args.out / "rejects.parquet", REJECTS)
    print(json.dumps(result.summary(), indent=2))
    for n in result.notes[:20]:
        print(f"note: {n}", file=sys.stderr)
    for row in result.rejects.to_pylist()[:20]:
        print(f"rejected: {row['source']}: {row['location']}: {row['reason']}", file=sys.stderr)
    if result.rejects.num_rows > 20:
        print(f"... and {result.rejects.num_rows - 20} more in {args.out / 'rejects.parquet'}", file=sys.stderr)
    return 1 if args.strict and result.rejects.num_rows else 0
