"""`crystal-dask verify`: check every stored chunk of a patch dataset against the checksums written with it."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = ("Check every chunk of a patch dataset (or of every dataset in a job's output folder) against its "
        "recorded checksum; list what is damaged. Exit 1 when anything is.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", type=Path, help="a dataset folder (holding patches.zarr) or a job's output folder")
    p.add_argument("--quick", action="store_true", help="sizes only, no hashes (every file present, right size)")


def datasets_in(path: Path) -> list[Path]:
    """`path` itself when it is a dataset, else the datasets of a job's output folder."""
    if (path / "patches.zarr").is_dir():
        return [path]
    found = sorted(p.parent for p in (path / "datasets").glob("*/patches.zarr"))
    if not found:
        raise FileNotFoundError(f"{path}: neither a dataset (no patches.zarr) nor a job output folder with datasets")
    return found


def run(args: argparse.Namespace) -> int:
    from crystal_dask.store.dataset import Dataset

    bad = 0
    for root in datasets_in(args.dataset):
        ds = Dataset(root)
        damage = ds.verify(full=not args.quick)
        group = ds.group()
        n = sum(-(-group[a].shape[0] // group[a].chunks[0]) for a in group.array_keys())
        if not ds.complete():
            print(f"{root}: incomplete (no manifest {ds.manifest.name}): extraction has not finished")
            bad += 1
        for d in damage:
            print(f"{root}: damaged: {d}")
        for name in ds.unchecked():
            print(f"{root}: not checked: array {name!r} has no recorded checksums (written before checksums, or by "
                  f"a writer that records none)")
        print(f"{root}: {n - len(damage)} of {n} chunks ok" + (", sizes only" if args.quick else ""))
        bad += len(damage)
    return 1 if bad else 0
