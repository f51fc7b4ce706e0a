"""`crystal-dask calcifications SLIDE... -o OUT`: the detected calcium-phosphate deposits of each slide as QuPath
detections (OUT/<slide stem>.geojson) and a per-slide count per mm² of tissue (OUT/calcifications.csv)."""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

HELP = ("Detect calcium-phosphate deposits on whole slides: one QuPath-importable GeoJSON of detections per slide "
        "and a table of deposits per mm² of tissue (calcium oxalate is not detectable in H&E and is not sought).")
COLUMNS = ("slide", "deposits", "tissue_mm2", "per_mm2", "um_per_px", "geojson", "error")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("slides", type=Path, nargs="+", help="whole-slide files with an MPP (.svs, .ome.tif, .ndpi, ...)")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder for the GeoJSON files and the table")
    p.add_argument("--um-per-px", type=float, default=None,
                   help="resolution the detector sees (default: the features stage's default)")


def run(args: argparse.Namespace) -> int:
    from crystal_dask.exports.calcifications import NoMppError, detect_slide
    from crystal_dask.exports.geojson import write_geojson
    from crystal_dask.runtime.lock import hold
    from crystal_dask.stages import features
    from crystal_dask.store.files import write_atomic
    from crystal_dask.wsi.slides import SlideError

    # checked (and defaulted) as the features stage checks its own um_per_px, once, before the lock
    given = {} if args.um_per_px is None else {"um_per_px": args.um_per_px}
    um_per_px = features.parse(given, None, features.SECTION).um_per_px
    with hold(args.output, "crystal-dask calcifications"):  # one command per output folder
        rows, failed = [], 0
        for path in args.slides:
            try:
                collection, summary = detect_slide(path, um_per_px)
            except (NoMppError, SlideError, OSError, ValueError) as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                reason = reason if str(path) in reason else f"{path}: {reason}"
                print(f"calcifications: {reason}", file=sys.stderr)
                rows.append({"slide": str(path), "error": reason})
                failed += 1
                continue
            out = write_geojson(args.output / f"{path.name}.geojson", collection)
            rows.append({**summary, "geojson": str(out)})
            print(f"{path}: {summary['deposits']} deposits, {summary['per_mm2']:g} per mm² of tissue -> {out}")
        text = io.StringIO()
        w = csv.DictWriter(text, COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows({k: r.get(k, "") for k in COLUMNS} for r in rows)
        print(write_atomic(args.output / "calcifications.csv", text.getvalue()))
    return 1 if failed else 0
