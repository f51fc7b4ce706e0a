"""`crystal-dask extract`: scanned regions -> patches.zarr, patches.parquet, rejects.parquet on a Dask cluster."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from crystal_dask.commands._common import add_cluster_argument, client_for, progress_bar

HELP = "Extract patches from a scanned corpus into a chunked zarr dataset, in parallel with Dask bags."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scan", type=Path, help="folder written by `crystal-dask scan` (regions.parquet, rejects.parquet)")
    p.add_argument("-o", "--out", type=Path, required=True, help="dataset folder")
    p.add_argument("--mode", choices=("region", "window"), default="region")
    p.add_argument("--level", type=int, default=None, help="fixed pyramid level (0: the published method)")
    p.add_argument("--min-side", type=int, default=256, help="coarsest level keeping this many px across the box")
    p.add_argument("--window-size", type=float, default=500.0)
    p.add_argument("--window-step", type=float, default=None)
    p.add_argument("--window-unit", choices=("px", "um"), default="px")
    p.add_argument("--magnification", type=float, default=None)
    p.add_argument("--min-overlap", type=float, default=0.5)
    p.add_argument("--mask-outside", action="store_true", help="fill pixels outside the polygon with background")
    p.add_argument("--chunk-rows", type=int, default=64)
    p.add_argument("--strict", action="store_true", help="exit 1 when any input was rejected")
    add_cluster_argument(p)


def run(args: argparse.Namespace) -> int:
    from crystal_dask.stages.extract import extract
    from crystal_dask.store.schema import REGIONS, REJECTS, read_table
    from crystal_dask.wsi.patches import PatchSettings

    settings = PatchSettings(
        mode=args.mode, level=args.level, min_side=args.min_side, window_size=args.window_size,
        window_step=args.window_step, window_unit=args.window_unit, magnification=args.magnification,
        min_overlap=args.min_overlap, mask_outside=args.mask_outside, chunk_rows=args.chunk_rows)
    regions = read_table(args.scan / "regions.parquet", REGIONS)
    scan_rejects = read_table(args.scan / "rejects.parquet", REJECTS)
    with client_for(args) as client:
        ds = extract(regions, args.out, settings, client, scan_rejects=scan_rejects,
                     show_progress=progress_bar(args))
    manifest = ds.read_manifest()
    print(json.dumps({k: manifest[k] for k in ("patches", "regions_in", "regions_written", "rejects_total",
                                               "chunks", "chunks_run")}, indent=2))
    print(f"dataset: {ds.root}")
    return 1 if args.strict and manifest["rejects_total"] else 0
