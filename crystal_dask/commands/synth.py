"""`crystal-dask synth`: write a synthetic corpus in the NEDC (or Fox Chase) layout and print its counts."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HELP = "Generate a synthetic corpus (painted H&E-like .svs slides with NEDC csv / ImageScope xml annotations)."


def _size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"slide size {text!r} is not WIDTHxHEIGHT (e.g. 6000x4000)")
    return int(m.group(1)), int(m.group(2))


def _slides(text: str) -> int | tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if not m or (m.group(2) and int(m.group(2)) < int(m.group(1))) or int(m.group(1)) < 1:
        raise argparse.ArgumentTypeError(f"slides per patient {text!r} is not N or LO-HI (e.g. 2 or 1-3)")
    return (int(m.group(1)), int(m.group(2))) if m.group(2) else int(m.group(1))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="corpus root to write (svs/... and corpus.json)")
    parser.add_argument("--flavour", choices=("fcbr", "tubr"), default="fcbr",
                        help="staining: fcbr (Fox Chase, lighter) or tubr (Temple, darker, more purple)")
    parser.add_argument("--patients", type=int, default=8, help="number of patients (default 8)")
    parser.add_argument("--slides-per-patient", type=_slides, default=2, metavar="N|LO-HI",
                        help="slides per patient, fixed or a range (default 2)")
    parser.add_argument("--regions-per-slide", type=int, default=10, help="average regions per slide (default 10)")
    parser.add_argument("--crystalline", type=int, default=0,
                        help="crystalline regions (cdcs/cnno/cidc) added over some patients (default 0)")
    parser.add_argument("--slide-size", type=_size, default=(6000, 4000), metavar="WxH",
                        help="largest level-0 slide size in pixels (default 6000x4000)")
    parser.add_argument("--mpp", type=float, default=0.5, help="microns per pixel (default 0.5)")
    parser.add_argument("--seed", type=int, default=0, help="seed: same arguments, same bytes (default 0)")
    parser.add_argument("--layout", choices=("nedc", "foxchase"), default="nedc",
                        help="nedc: svs/{train,dev,eval}/... (50/25/25 by patient); foxchase: no split folders")
    parser.add_argument("--xml-fraction", type=float, default=0.2,
                        help="fraction of slides annotated in ImageScope xml instead of NEDC csv (default 0.2)")
    parser.add_argument("--quality", type=int, default=80, help="JPEG quality of the tiles (default 80)")
    parser.add_argument("--workers", type=int, default=2, help="processes painting slides (default 2)")
    parser.add_argument("--kind", choices=("small", "realistic"), default="small",
                        help="small: each slide painted whole (default); realistic: glass-and-tissue mosaics that "
                             "write slides of real scanners' size (e.g. --slide-size 50000x40000) in seconds")


def run(args: argparse.Namespace) -> int:
    from crystal_dask.synthetic.corpus import generate_corpus
    from crystal_dask.vocab import CLASSES, CRYSTALLINE

    try:
        summary = generate_corpus(
            args.out, flavour=args.flavour, patients=args.patients, slides_per_patient=args.slides_per_patient,
            regions_per_slide=args.regions_per_slide, crystalline=args.crystalline, slide_size=args.slide_size,
            mpp=args.mpp, seed=args.seed, xml_fraction=args.xml_fraction,
            splits=None if args.layout == "foxchase" else (0.5, 0.25, 0.25), quality=args.quality,
            workers=args.workers, kind=args.kind)
    except ValueError as exc:
        print(f"synth: {exc}", file=sys.stderr)
        return 2
    labels = (*CLASSES, *CRYSTALLINE)
    rows = [("split", "slides", *labels, "total")]
    if summary["layout"] == "nedc":
        for split, counts in summary["by_split"].items():
            rows.append((split, summary["slides_by_split"][split], *(counts[c] for c in labels),
                         sum(counts.values())))
    rows.append(("total", summary["slides"], *(summary["by_label"][c] for c in labels), summary["regions"]))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(v).rjust(w) for v, w in zip(r, widths, strict=True)))
    mb = summary["bytes"] / 1e6
    print(f"{summary['root']}: {summary['patients']} patients, {summary['slides']} slides, {mb:.1f} MB "
          f"({summary['layout']} layout, {summary['flavour']}) in {summary['seconds']:.1f} s "
          f"(paint {summary['paint_seconds']:.1f} s, write {summary['write_seconds']:.1f} s summed over slides; "
          f"JPEG {summary['encode_mb_per_s_per_thread']:.0f} MB/s per thread)")
    return 0
