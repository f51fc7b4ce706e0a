"""Per-family cost on one core: `python -m crystal_dask.features.timing [SVS] [--sides 256 512 1024]`.

Times, on real pixels (a crop of the given slide's level 0), the shared preparation (optical density, stain
unmixing, tissue mask, grey) and each family computed from a prepared region, plus `compute_families` for all
families together, at several region sides. The minimum CPU time over repeats is reported (the least disturbed
run on a shared machine). BLAS/OpenMP threads are pinned to 1 before numpy loads, so this is single-core cost.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import tifffile  # noqa: E402
from PIL import Image  # noqa: E402
from skimage.color import rgb2gray  # noqa: E402

from crystal_dask.features import FAMILIES, Region, compute_families, resample_to  # noqa: E402


def best_ms(fn: Callable[[], object], repeat: int, clock: Callable[[], float] = time.process_time) -> float:
    """Minimum time of `repeat` calls, in ms, on `clock`: CPU time by default, which a busy machine inflates far
    less than wall time (waiting for a core is not counted)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best * 1000


def _published_patch(rgb: np.ndarray) -> np.ndarray:
    grey = rgb2gray(rgb).astype(np.float32) * 255
    out = np.asarray(Image.fromarray(grey).resize((256, 256), Image.Resampling.BILINEAR))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def table(rgb: np.ndarray, sides: list[int], repeat: int) -> list[dict[str, float]]:
    """One row per side: ms of prep, of each family from a prepared region, and of all families together."""
    rows = []
    for side in sides:
        crop = np.ascontiguousarray(rgb[:side, :side])
        row: dict[str, float] = {"side": side}

        def prep(c: np.ndarray = crop) -> Region:
            r = Region(c, 1.0)
            r.hed, r.tissue, r.grey, r.tissue_pixels  # noqa: B018 - force the cached properties
            return r

        row["prep"] = best_ms(prep, repeat)
        region = prep()
        for name, fam in FAMILIES.items():
            row[name] = best_ms(lambda f=fam, r=region: f.from_region(r), repeat)
        row["all"] = best_ms(lambda c=crop: compute_families(c, 1.0, list(FAMILIES)), repeat)
        # references on the same pixels: the published per-patch work after the read (grey, anti-aliased
        # bilinear resize to 256, uint8: patches.render_patch) and the resampling the feature stage adds
        row["pixels"] = best_ms(lambda c=crop: _published_patch(c), repeat)
        row["resample/2"] = best_ms(lambda c=crop: resample_to(c, 1.0, 2.0), repeat)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[3] / "shared" / "realdata" / "CMU-1-Small-Region.svs"
    ap.add_argument("slide", nargs="?", type=Path, default=default)
    ap.add_argument("--sides", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--y", type=int, default=1600)
    ap.add_argument("--x", type=int, default=800)
    a = ap.parse_args()
    page0 = tifffile.imread(a.slide, key=0)
    rgb = page0[a.y : a.y + max(a.sides), a.x : a.x + max(a.sides)]
    cols = ["side", "prep", *FAMILIES, "all", "pixels", "resample/2"]
    print(" | ".join(f"{c:>13}" for c in cols))  # ms
    for row in table(rgb, a.sides, a.repeat):
        print(" | ".join(f"{row[c]:>13.1f}" if c != "side" else f"{row[c]:>13d}" for c in cols))


if __name__ == "__main__":
    main()
