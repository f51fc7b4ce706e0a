"""`crystal-dask extract`: scanned regions -> patches.zarr, patches.parquet, rejects.parquet on a Dask cluster."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from crystal_dask.commands._common import add_cluster_argument, locked, progress_bar
from crystal_dask.wsi.patches import PatchSettings

HELP = "Extract patches from a scanned corpus into a chunked zarr dataset, in parallel with Dask bags."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scan", type=Path, help="folder written by `crystal-dask scan` (regions.parquet, rejects.parquet)")
    p.add_argument("-o", "--out", type=Path, required=True, help="dataset folder")
    # Unset options are left out, so the defaults are PatchSettings' own (stated once, there).
    d = PatchSettings()
    opt = {"default": argparse.SUPPRESS}
    p.add_argument("--mode", choices=("region", "window"), help=f"(default {d.mode})", **opt)
    p.add_argument("--level", type=int, help="fixed pyramid level (0: the published method)", **opt)
    p.add_argument("--min-side", type=int, help=f"coarsest level keeping this many px across the box "
                   f"(default {d.min_side})", **opt)
    p.add_argument("--window-size", type=float, help=f"(default {d.window_size:g})", **opt)
    p.add_argument("--window-step", type=float, help="(default: the window size)", **opt)
    p.add_argument("--window-unit", choices=("px", "um"), help=f"(default {d.window_unit})", **opt)
    p.add_argument("--magnification", type=float, **opt)
    p.add_argument("--min-overlap", type=float, help=f"(default {d.min_overlap:g})", **opt)
    p.add_argument("--mask-outside", action="store_true", help="fill pixels outside the polygon with background",
                   **opt)
    p.add_argument("--chunk-rows", type=int, help=f"(default {d.chunk_rows})", **opt)
    p.add_argument("--strict", action="store_true", help="exit 1 when any input was rejected")
    add_cluster_argument(p)


def run(args: argparse.Namespace) -> int:
    settings = PatchSettings.from_config({k: v for k, v in vars(args).items() if k in PatchSettings.keys()})
    with locked(args, args.out, "extract") as connect:
        from crystal_dask.stages.extract import extract
        from crystal_dask.store.schema import REGIONS, REJECTS, read_table

        regions = read_table(args.scan / "regions.parquet", REGIONS)
        scan_rejects = read_table(args.scan / "rejects.parquet", REJECTS)
        with connect() as client:
            ds = extract(regions, args.out, settings, client, scan_rejects=scan_rejects,
                         show_progress=progress_bar(args))
    manifest = ds.read_manifest()
    print(json.dumps({k: manifest[k] for k in ("patches", "regions_in", "regions_written", "rejects_total",
                                               "chunks", "chunks_run")}, indent=2))
    print(f"dataset: {ds.root}")
    return 1 if args.strict and manifest["rejects_total"] else 0
