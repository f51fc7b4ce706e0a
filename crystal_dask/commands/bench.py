"""`crystal-dask bench extract|features|train|evaluate`: measure a stage against its baselines in one run and print the
medians, ranges, ratios and peak memory (optionally every number as JSON)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = ("Benchmark extraction, features, training or evaluation against plain baselines (medians over repeats, "
        "ratios, memory); judge the calcification detector on real tissue.")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeats", type=int, default=3, help="measurements of each contender (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated corpus (default 0)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="folder for corpora and datasets, kept and reused by later runs (default: a temporary "
                        "folder, deleted afterwards)")
    p.add_argument("--json", type=Path, default=None, help="also write every number to this JSON file")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="stage", required=True)
    e = sub.add_parser("extract", help="patches/s on 1 and 2 workers vs an OpenSlide script and the decode limit")
    e.add_argument("--corpus", choices=("realistic", "small"), default="realistic",
                   help="realistic: 50,000x40,000 px slides as real AT2 scans (default); small: 6,000x4,000 px")
    e.add_argument("--modes", nargs="+", choices=("default", "level0"), default=["default", "level0"],
                   help="region mode at the default level and/or at level 0 (default both)")
    e.add_argument("--patients", type=int, default=None,
                   help="patients of the generated corpus (default 2 realistic, 18 small)")
    e.add_argument("--slides-per-patient", type=int, default=2, help="(default 2)")
    e.add_argument("--regions-per-slide", type=int, default=14, help="average, as FCBR's 13.7 (default 14)")
    e.add_argument("--slide-size", type=int, nargs=2, default=None, metavar=("W", "H"),
                   help="largest level-0 slide size in pixels (default 50000 40000 realistic, 6000 4000 small)")
    e.add_argument("--chunk-rows", type=int, default=32,
                   help="patches per zarr chunk and task (default 32: enough tasks for 2 workers on this corpus)")
    e.add_argument("--profile", action="store_true", help="also print a cProfile of rendering the patches")
    _common(e)
    f = sub.add_parser("features", help="patches/s of each feature family on 2 workers vs pixel extraction of the "
                                        "same regions and the same feature code in 2 plain processes")
    f.add_argument("--patients", type=int, default=8, help="patients of the generated corpus (default 8)")
    f.add_argument("--slides-per-patient", type=int, default=2, help="(default 2)")
    f.add_argument("--regions-per-slide", type=int, default=14, help="average, as FCBR's 13.7 (default 14)")
    f.add_argument("--slide-size", type=int, nargs=2, default=(6000, 4000), metavar=("W", "H"),
                   help="largest level-0 slide size in pixels (default 6000 4000)")
    f.add_argument("--chunk-rows", type=int, default=32, help="rows per zarr chunk and task (default 32)")
    f.add_argument("--um-per-px", type=float, default=None,
                   help="resolution the families see (default: the features stage's default)")
    f.add_argument("--max-side", type=int, default=None,
                   help="largest side in px at that resolution (default: the features stage's default)")
    f.add_argument("--profile", action="store_true", help="also print a cProfile of one feature task's chunk")
    _common(f)
    t = sub.add_parser("train", help="the per-tree fit vs the default backend with X in memory (n_jobs=2), and a "
                                     "scale run")
    t.add_argument("--rows", type=int, default=2000, help="training rows of 65,536 features (default 2000)")
    t.add_argument("--scale-rows", type=int, default=0,
                   help="also fit on this many window patches (e.g. 100000; default 0: no scale run)")
    t.add_argument("--scale-smallest", type=int, default=500, help="rows of the scale run's smallest class")
    t.add_argument("--scale-trees", type=int, default=100, help="trees of the scale run's forest (default 100)")
    _common(t)
    v = sub.add_parser("evaluate", help="distributed evaluation of a TUBR-scale set vs an in-memory predict")
    v.add_argument("--rows", type=int, default=46_666, help="rows of the generated set (default 46,666: TUBR)")
    v.add_argument("--source-rows", type=int, default=2000,
                   help="real patches extracted to train the model and tile the set from (default 2000)")
    v.add_argument("--memory-limit", default="4GiB", help="memory_limit of each of the 2 workers (default 4GiB)")
    v.add_argument("--no-in-memory", action="store_true", help="skip the in-memory scikit-learn baseline")
    _common(v)
    i = sub.add_parser("infer", help="whole-slide windows/s on 1 and 2 workers, pixel and feature models, vs an "
                                     "OpenSlide Pool(2) script and the decode limit")
    i.add_argument("--slides", type=int, default=1, help="generated slides (default 1)")
    i.add_argument("--slide-size", type=int, nargs=2, default=(40_000, 30_000), metavar=("W", "H"),
                   help="level-0 size in pixels (default 40000 30000)")
    i.add_argument("--tissue", type=float, default=0.3, help="fraction of the slide that is tissue (default 0.3)")
    i.add_argument("--source-rows", type=int, default=300,
                   help="extracted patches the models are trained on (default 300)")
    _common(i)
    c = sub.add_parser("calcification", help="recall of deposits painted on real H&E vs darkness and size, and "
                                             "false objects per mm² of real tissue without deposits")
    c.add_argument("slides", type=Path, nargs="+", help="real H&E slides with an MPP (e.g. CMU-1-Small-Region.svs)")
    c.add_argument("--um-per-px", type=float, default=None,
                   help="resolution the detector sees (default: the features stage's default)")
    c.add_argument("--per-cell", type=int, default=12, help="painted deposits per (darkness, size) cell (default 12)")
    c.add_argument("--h-ods", type=float, nargs="+", default=None, help="haematoxylin ODs painted (default 0.3-1.2)")
    c.add_argument("--diameters", type=float, nargs="+", default=None, help="diameters painted, µm (default 10-100)")
    c.add_argument("--plots", type=Path, default=None, help="also draw recall vs H OD and vs diameter into this folder")
    c.add_argument("--before", type=Path, default=None,
                   help="JSON of an earlier run (--json), drawn beside this one in the plots")
    _common(c)


def run(args: argparse.Namespace) -> int:
    from crystal_dask.bench.common import workdir
    from crystal_dask.store.files import write_json

    if args.repeats < 1:
        print("bench: --repeats must be >= 1", file=sys.stderr)
        return 2

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    with workdir(args.workdir, f"crystal-dask-bench-{args.stage}-") as work:
        if args.stage == "extract":
            from crystal_dask.bench import extract as bench

            result = bench.run(work, corpus_kind=args.corpus, modes=args.modes, patients=args.patients,
                               slides_per_patient=args.slides_per_patient,
                               regions_per_slide=args.regions_per_slide,
                               slide_size=tuple(args.slide_size) if args.slide_size else None,
                               chunk_rows=args.chunk_rows, repeats=args.repeats, seed=args.seed,
                               profile=args.profile, log=log)
        elif args.stage == "features":
            from crystal_dask.bench import features as bench

            result = bench.run(work, patients=args.patients, slides_per_patient=args.slides_per_patient,
                               regions_per_slide=args.regions_per_slide, slide_size=tuple(args.slide_size),
                               chunk_rows=args.chunk_rows, um_per_px=args.um_per_px, max_side=args.max_side,
                               repeats=args.repeats, seed=args.seed, profile=args.profile, log=log)
        elif args.stage == "train":
            from crystal_dask.bench import train as bench

            result = bench.run(work, rows=args.rows, repeats=args.repeats, seed=args.seed, scale_rows=args.scale_rows,
                               scale_smallest=args.scale_smallest, scale_trees=args.scale_trees, log=log)
        elif args.stage == "infer":
            from crystal_dask.bench import infer as bench

            result = bench.run(work, slides=args.slides, slide_size=tuple(args.slide_size), tissue=args.tissue,
                               repeats=args.repeats, seed=args.seed, source_rows=args.source_rows, log=log)
        elif args.stage == "calcification":
            from crystal_dask.bench import calcification as bench

            result = bench.run(args.slides, um_per_px=args.um_per_px, per_cell=args.per_cell, seed=args.seed,
                               h_ods=args.h_ods or bench.H_ODS, diameters=args.diameters or bench.DIAMETERS_UM,
                               log=log)
            if args.plots is not None:
                bench.plots(result, args.plots, json.loads(args.before.read_text()) if args.before else None)
        else:
            from crystal_dask.bench import evaluate as bench

            result = bench.run(work, rows=args.rows, source_rows=args.source_rows, memory_limit=args.memory_limit,
                               repeats=args.repeats, seed=args.seed, in_memory=not args.no_in_memory, log=log)
    print(bench.report(result))
    if args.json is not None:
        write_json(args.json, result)
    return 0
