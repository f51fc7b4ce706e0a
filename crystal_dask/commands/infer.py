"""`crystal-dask infer`: whole-slide inference of slides, a corpus folder or a scan, with a trained model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from crystal_dask.commands._common import add_cluster_argument, locked, progress_bar

if TYPE_CHECKING:
    from crystal_dask.commands._common import Connect

HELP = ("Predict every tissue window of whole slides with a trained model: per-slide probability grids (zarr), "
        "overlay and heatmap PNGs, QuPath GeoJSON, NEDC REGIONDECISIONS, a summary table and scores.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="model file written by `crystal-dask train` (.skops)")
    p.add_argument("input", type=Path, nargs="+",
                   help="slide files, a corpus folder, or a scan folder (regions.parquet, written by `scan`)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    p.add_argument("--splits", nargs="+", default=None, help="corpus or scan input: only these splits' slides")
    p.add_argument("--tissue-threshold", type=float, default=None,
                   help="minimum tissue fraction of a window (default: the infer settings')")
    p.add_argument("--window-size", type=float, default=None, help="window side (default: the model's dataset's)")
    p.add_argument("--window-step", type=float, default=None, help="step between windows (default: the size)")
    p.add_argument("--window-unit", choices=("px", "um"), default=None, help="unit of size and step")
    p.add_argument("--magnification", type=float, default=None, help="window px are at this magnification")
    p.add_argument("--heatmap-class", default=None,
                   help="class whose probability the heatmap shows (default: the infer settings')")
    p.add_argument("--block", type=int, default=None,
                   help="windows per block side: one task and one zarr chunk per block (default: the infer settings')")
    p.add_argument("--stop-on-error", action="store_true", help="fail on the first bad slide (default: reject it)")
    add_cluster_argument(p)


def collect_inputs(inputs: list[Path], splits: list[str] | None = None) -> tuple[list, str]:
    """SlideInputs of the command's INPUT (files, one corpus folder or one scan folder) and a corpus name."""
    from crystal_dask.infer.run import SlideInput, slide_stem, slides_from_regions
    from crystal_dask.store.schema import REGIONS, read_table
    from crystal_dask.wsi.layout import SLIDE_SUFFIXES

    def is_slide(p: Path) -> bool:
        return p.is_file() and (p.suffix.lower() in SLIDE_SUFFIXES or p.name.lower().endswith(".ome.tif"))

    if len(inputs) == 1 and inputs[0].is_dir():
        folder = inputs[0].resolve()
        if (folder / "regions.parquet").exists():  # a scan folder
            return slides_from_regions(read_table(folder / "regions.parquet", REGIONS), splits), folder.name
        from crystal_dask.stages.scan import scan

        entries = slides_from_regions(scan(folder).regions, splits)
        if splits is None:  # slides without usable annotations are inferred too (and rejected if unreadable)
            known = {e.slide for e in entries}
            entries += [SlideInput(str(p), slide_stem(p)) for p in sorted(folder.rglob("*"))
                        if is_slide(p) and str(p) not in known]
        return entries, folder.name
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        raise FileNotFoundError(f"no such file: {', '.join(missing)}")
    return [SlideInput(str(p.resolve()), slide_stem(p)) for p in inputs], "input"


def run(args: argparse.Namespace) -> int:
    with locked(args, args.out, "infer") as connect:  # the stage imports inside it
        return _infer(args, connect)


def _infer(args: argparse.Namespace, connect: Connect) -> int:
    from crystal_dask.infer.run import infer_slides
    from crystal_dask.infer.settings import InferSettings

    given = {k: getattr(args, k) for k in ("tissue_threshold", "heatmap_class", "block")}
    settings = InferSettings(window_size=args.window_size, window_step=args.window_step, window_unit=args.window_unit,
                             magnification=args.magnification, skip_errors=not args.stop_on_error,
                             **{k: v for k, v in given.items() if v is not None})  # else InferSettings' defaults
    slides, corpus = collect_inputs(args.input, args.splits)
    with connect() as client:
        m = infer_slides(slides, args.model, args.out, client, settings, corpus=corpus,
                         show_progress=progress_bar(args))
    score = m["score"]["summary"] if m["score"] else None
    print(json.dumps({"slides": m["slides_in"], "done": m["slides_done"], "rejects": m["rejects"],
                      "windows": m["windows"], "window": m["window_source"],
                      "accuracy": round(score["accuracy"], 4) if score else None}))
    print(f"outputs: {args.out / 'slides'}; summary: {args.out / 'summary.parquet'}")
    return 0
