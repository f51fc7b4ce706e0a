"""`crystal-dask read-region`: print a slide's levels and pixel size as JSON; with a box, write it as a PNG."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "Show a slide's levels and pixel size as JSON; with --x/--y/--width/--height, save that region as a PNG."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("slide", type=Path, help="whole-slide TIFF (.svs, .ome.tif, .ndpi, tiled .tif)")
    parser.add_argument("--level", type=int, default=0, help="pyramid level the box is given in (default 0)")
    for name in ("x", "y", "width", "height"):
        parser.add_argument(f"--{name}", type=int, help=f"box {name} in the level's pixels")
    parser.add_argument("-o", "--output", type=Path,
                        help="PNG to write (default <slide stem>_L<level>_<x>_<y>_<w>x<h>.png here)")
    parser.add_argument("--info", action="store_true", help="print the JSON summary even when a box is read")


def run(args: argparse.Namespace) -> int:
    # imported here so that other verbs never pay for tifffile/imagecodecs
    import imagecodecs

    from crystal_dask.wsi.slides import Slide, SlideError

    box = (args.x, args.y, args.width, args.height)
    if any(v is not None for v in box) and any(v is None for v in box):
        print("read-region: give all of --x --y --width --height, or none", file=sys.stderr)
        return 2
    try:
        with Slide(args.slide) as slide:
            if args.info or box[0] is None:
                print(json.dumps(slide.info(), indent=2))
            if box[0] is None:
                return 0
            pixels = slide.read(args.level, *box)
    except (SlideError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2
    out = args.output or Path(f"{args.slide.stem}_L{args.level}_{args.x}_{args.y}_{args.width}x{args.height}.png")
    out.write_bytes(imagecodecs.png_encode(pixels))
    print(out)
    return 0
