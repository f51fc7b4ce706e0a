"""`crystal-dask bench calcification SLIDE...`: the calcification detector judged on REAL H&E tissue.

A validation painter, written for this harness and independent of the corpus generator (`synthetic/`), paints
known calcium-phosphate deposits onto fields of real slides at the slide's own resolution, as Beer-Lambert
optical density: the deposit replaces the tissue it covers. The field is then resampled to the detector's
resolution exactly as the features stage reads a region (`resample_to`), and the detector's objects are matched
against the painted masks.

Appearance range (routine H&E, docs/calcification.md): haematoxylin 0.5-1.2 decadic OD, the colour interpolated
in stain space between RGB (120, 90, 170) and (40, 20, 90) (their eosin and residual amounts follow the
haematoxylin linearly, so both end points are reproduced exactly); 10-100 µm across; round or irregular
(a radius modulated by harmonics 2-5); glassy (1 % OD noise); some laminated (concentric rings of +-15 %
haematoxylin, 3-6 µm period), some crossed by a microtome crack (a 1.5-4 µm straight gap of bare glass, or two),
some placed against a real nucleus of the field.

Measured: recall against haematoxylin OD (deposits >= 20 µm) and against diameter (H >= 0.5): a deposit is found
when the detector's mask covers at least half of its painted pixels; the target's recall (>= 20 µm, H >= 0.5) also
by the image painted on, so images held out of a decision are read apart. False objects per mm² of tissue on the
same real tissue without deposits, as scanned and with its haematoxylin scaled up by colour deconvolution
(x1.5, x2: a dark-stained slide), and on its densest-nuclei quarter of fields. Calcium oxalate (pale,
birefringent, nearly invisible in H&E) is out of scope, for the painter as for the detector.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from skimage.color import rgb_from_hed

from crystal_dask.bench.common import table
from crystal_dask.features import calcification, resample_to
from crystal_dask.features.region import HED_FROM_RGB, OD_LUT, Region
from crystal_dask.stages.features import FeatureSettings
from crystal_dask.wsi.slides import Slide

H_ODS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.85, 1.0, 1.2)  # 0.3 and 0.4: below the range, to show the curve's foot
DIAMETERS_UM = (10, 15, 20, 30, 50, 100)
PALE_RGB, DARK_RGB = (120, 90, 170), (40, 20, 90)  # the appearance range's two ends
H_SCALES = (1.0, 1.5, 2.0)  # haematoxylin scaling of the deposit-free tissue: as scanned, dark-stained
FIELD_UM = 250.0  # side of a field (OS-1's detail is 250 µm wide)
PAINT_TISSUE = 0.4  # fields painted on are at least this much tissue
GLASS_OD = 0.04  # a crack's bare glass, per RGB channel
TARGET_UM, TARGET_H = 20.0, 0.5  # the issue's target: recall >= 0.9 for deposits >= 20 µm with H >= 0.5


def _hed(rgb: tuple[int, int, int]) -> np.ndarray:
    """Unclipped H, E, D amounts of one RGB colour."""
    return OD_LUT[np.array(rgb)] @ HED_FROM_RGB


_PALE, _DARK = _hed(PALE_RGB), _hed(DARK_RGB)


def deposit_od(h: float) -> np.ndarray:
    """RGB optical density (3,) of a deposit of haematoxylin `h`: E and D follow H linearly between the ends."""
    t = (h - _PALE[0]) / (_DARK[0] - _PALE[0])
    return (_PALE + t * (_DARK - _PALE)) @ rgb_from_hed.astype(np.float32)


def to_rgb(od: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(255 * 10.0 ** -od), 0, 255).astype(np.uint8)


def scale_haematoxylin(rgb: np.ndarray, factor: float) -> np.ndarray:
    """The same tissue with its haematoxylin amount multiplied by `factor` (colour deconvolution, unclipped)."""
    hed = OD_LUT[rgb] @ HED_FROM_RGB
    hed[..., 0] *= factor
    return to_rgb(hed @ rgb_from_hed.astype(np.float32))


@dataclass(frozen=True)
class Deposit:
    """One painted deposit: where (px of the native field), how large and dark, and how it looks."""

    cy: float
    cx: float
    diameter_um: float
    h: float
    irregular: bool
    laminated: bool
    cracks: int
    touching: bool


def paint(rgb: np.ndarray, um: float, d: Deposit, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`rgb` with deposit `d` painted in, and its (H, W) bool mask (cracks included: they are part of it)."""
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = (yy - d.cy) * um, (xx - d.cx) * um  # µm
    rad, theta = np.hypot(dy, dx), np.arctan2(dy, dx)
    edge = np.full_like(rad, d.diameter_um / 2)
    if d.irregular:
        for k in range(2, 6):
            edge *= 1 + rng.uniform(0.04, 0.12) / (k - 1) ** 0.5 * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    cover = np.clip((edge - rad) / um + 0.5, 0, 1)  # anti-aliased rim, one pixel wide
    amount = np.full_like(rad, d.h)
    if d.laminated:
        amount *= 1 + 0.15 * np.cos(2 * np.pi * rad / rng.uniform(3, 6))
    amount *= 1 + 0.01 * rng.standard_normal(rad.shape).astype(np.float32)  # glassy: almost no texture
    od = amount[..., None] / d.h * deposit_od(d.h)
    for _ in range(d.cracks):  # a straight gap through the deposit, near its centre
        a, off = rng.uniform(0, np.pi), rng.uniform(-0.25, 0.25) * d.diameter_um
        gap = np.abs(dy * np.cos(a) - dx * np.sin(a) - off) < rng.uniform(1.5, 4.0) / 2
        od[gap] = GLASS_OD
    tissue = OD_LUT[rgb]
    out = to_rgb(tissue + cover[..., None] * (od - tissue))
    return out, cover >= 0.5


def _nucleus_next_to(rgb: np.ndarray, um: float, r_um: float, rng: np.random.Generator, margin: float
                     ) -> tuple[float, float] | None:
    """A centre at r_um + 1 µm from a random nucleus pixel of the field (H >= 0.6), inside the margin."""
    hed = OD_LUT[rgb] @ HED_FROM_RGB
    ys, xs = np.nonzero(hed[..., 0] >= 0.6)
    h, w = rgb.shape[:2]
    for _ in range(20):
        if len(ys) == 0:
            return None
        i = rng.integers(len(ys))
        a = rng.uniform(0, 2 * np.pi)
        cy, cx = ys[i] + np.sin(a) * (r_um + 1) / um, xs[i] + np.cos(a) * (r_um + 1) / um
        if margin <= cy <= h - margin and margin <= cx <= w - margin:
            return float(cy), float(cx)
    return None


Detector = Callable[[np.ndarray, float], np.ndarray]


def detect(rgb: np.ndarray, um_per_px: float) -> np.ndarray:
    """The calcification family's deposit mask of one region."""
    return calcification.deposit_mask(Region(rgb, um_per_px))


Image = tuple[str, np.ndarray, float]  # (name, RGB, µm/px)


def read_images(paths: Sequence[Path]) -> list[Image]:
    """Each slide's level 0, read once: (file name, rgb, µm/px)."""
    out = []
    for path in paths:
        with Slide(path) as slide:
            if slide.mpp is None:
                raise ValueError(f"{path}: no MPP; the harness needs µm")
            out.append((Path(path).name, slide.read(0, 0, 0, slide.width, slide.height), slide.mpp))
    return out


def real_fields(images: Sequence[Image], side_um: float, min_tissue: float) -> list[Image]:
    """Fields of side `side_um` (or the image's shorter side, when smaller) tiled over each image, with at least
    `min_tissue` of tissue: (name@x,y, rgb, µm/px)."""
    out = []
    for name, rgb, um in images:
        side = min(int(round(side_um / um)), *rgb.shape[:2])
        for y in range(0, rgb.shape[0] - side + 1, side):
            for x in range(0, rgb.shape[1] - side + 1, side):
                field = np.ascontiguousarray(rgb[y : y + side, x : x + side])
                if Region(field, um).tissue.mean() >= min_tissue:
                    out.append((f"{name}@{x},{y}", field, um))
    if not out:
        raise ValueError(f"no field of >= {min_tissue:.0%} tissue in " + ", ".join(name for name, _, _ in images))
    return out


def _found(mask: np.ndarray, truth: np.ndarray) -> bool:
    return bool(truth.any() and np.count_nonzero(mask & truth) >= 0.5 * np.count_nonzero(truth))


def recall_grid(fields: list[Image], um_per_px: float, per_cell: int, seed: int,
                detector: Detector = detect, h_ods: Sequence[float] = H_ODS,
                diameters: Sequence[float] = DIAMETERS_UM) -> dict[str, Any]:
    """Found/painted per (H, diameter) cell, one deposit per painted field, appearance drawn per deposit; and, per
    image, found and painted of the target's deposits (>= TARGET_UM, H >= TARGET_H): held-out images apart."""
    rng = np.random.default_rng(seed)
    found = np.zeros((len(h_ods), len(diameters)), int)
    by_image: dict[str, list[int]] = {}
    for i, h in enumerate(h_ods):
        for j, dia in enumerate(diameters):
            for _ in range(per_cell):
                name, field, um = fields[rng.integers(len(fields))]
                margin = (dia / 2 + 4) / um
                # appearance drawn independently per deposit: half irregular, half laminated, half cracked (once
                # or twice) from 20 µm up, a third against a nucleus
                irregular, laminated, touching = rng.random() < 0.5, rng.random() < 0.5, rng.random() < 1 / 3
                cracks = int(rng.choice([0, 0, 1, 2])) if dia >= 20 else 0
                centre = _nucleus_next_to(field, um, dia / 2, rng, margin) if touching else None
                if centre is None:
                    centre = tuple(rng.uniform(margin, s - margin) for s in field.shape[:2])
                dep = Deposit(centre[0], centre[1], float(dia), float(h), irregular, laminated, cracks, touching)
                painted, truth = paint(field, um, dep, rng)
                small = resample_to(painted, um, um_per_px)
                truth_small = resample_to(np.repeat(truth[..., None].astype(np.uint8) * 255, 3, 2), um, um_per_px)
                hit = _found(detector(small, um_per_px), truth_small[..., 0] >= 128)
                found[i, j] += hit
                if h >= TARGET_H and dia >= TARGET_UM:
                    tally = by_image.setdefault(name.split("@")[0], [0, 0])
                    tally[0] += hit
                    tally[1] += 1
    return {"h_ods": list(h_ods), "diameters_um": list(diameters), "per_cell": per_cell, "found": found.tolist(),
            "target_by_image": by_image}


def false_objects(fields: Sequence[Image], um_per_px: float, detector: Detector = detect,
                  scales: Sequence[float] = H_SCALES) -> dict[str, Any]:
    """Detected objects per mm² of tissue on deposit-free real fields, per haematoxylin scale; and on the quarter
    of the fields with the most nucleus pixels (H >= 0.6), as scanned."""
    from skimage.measure import label

    rows = []
    for name, field, um in fields:
        small = resample_to(field, um, um_per_px)
        region = Region(small, um_per_px)
        tissue_mm2 = region.tissue_pixels * um_per_px**2 / 1e6
        nuclei = float(np.mean(region.hed[0] >= 0.6))
        counts = [int(label(detector(scale_haematoxylin(small, s) if s != 1 else small, um_per_px),
                            connectivity=2).max()) for s in scales]
        rows.append((name, tissue_mm2, nuclei, counts))
    dense = sorted(rows, key=lambda r: -r[2])[: max(1, len(rows) // 4)]
    out: dict[str, Any] = {"fields": len(rows), "tissue_mm2": sum(r[1] for r in rows)}
    for k, s in enumerate(scales):
        out[f"h_x{s:g}"] = sum(r[3][k] for r in rows) / out["tissue_mm2"]
    out["dense_nuclei"] = sum(r[3][0] for r in dense) / sum(r[1] for r in dense)
    return out


def summary(grid: dict[str, Any]) -> dict[str, Any]:
    """Recall vs H over deposits >= TARGET_UM, recall vs diameter over H >= TARGET_H, and the target cell."""
    found = np.array(grid["found"], float) / grid["per_cell"]
    h, d = np.array(grid["h_ods"]), np.array(grid["diameters_um"])
    big, dark = d >= TARGET_UM, h >= TARGET_H
    return {"recall_vs_h": dict(zip(map(float, h), found[:, big].mean(axis=1).round(3).tolist(), strict=True)),
            "recall_vs_diameter": dict(zip(map(float, d), found[dark].mean(axis=0).round(3).tolist(), strict=True)),
            "recall_target": round(float(found[np.ix_(dark, big)].mean()), 3),
            "recall_target_by_image": {k: round(f / n, 3) for k, (f, n) in sorted(grid["target_by_image"].items())}}


def run(slides: Sequence[Path], *, um_per_px: float | None = None, per_cell: int = 12, seed: int = 0,
        h_ods: Sequence[float] = H_ODS, diameters: Sequence[float] = DIAMETERS_UM,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole harness on the given real slides at `um_per_px` (default: the features stage's)."""
    um_per_px = FeatureSettings().um_per_px if um_per_px is None else um_per_px
    t0 = time.perf_counter()
    images = read_images(slides)
    fields = real_fields(images, FIELD_UM, PAINT_TISSUE)
    log(f"{len(fields)} real fields of <= {FIELD_UM:g} µm; painting {per_cell} deposits per cell")
    grid = recall_grid(fields, um_per_px, per_cell, seed, h_ods=h_ods, diameters=diameters)
    log("false objects on deposit-free tissue")
    fp = false_objects(real_fields(images, FIELD_UM, 0.05), um_per_px)
    # the whole images too: the fields' grid cuts an object lying across a field's edge into two smaller ones
    whole = false_objects(images, um_per_px)
    return {"um_per_px": um_per_px, "detector_version": calcification.VERSION, "grid": grid, **summary(grid),
            "false_per_mm2": fp, "false_per_mm2_whole": {k: v for k, v in whole.items() if k != "dense_nuclei"},
            "seconds": round(time.perf_counter() - t0, 1)}


def report(result: dict[str, Any]) -> str:
    """The harness's numbers as plain text tables."""
    g = result["grid"]
    found = np.array(g["found"])
    head = ["H OD \\ diameter µm", *map(str, g["diameters_um"]), f">= {TARGET_UM:g} µm"]
    rows = [head] + [[f"{h:g}", *(f"{f / g['per_cell']:.2f}" for f in found[i]),
                      f"{result['recall_vs_h'][float(h)]:.2f}"] for i, h in enumerate(g["h_ods"])]
    rows.append([f"H >= {TARGET_H:g}", *(f"{result['recall_vs_diameter'][float(d)]:.2f}" for d in g["diameters_um"]),
                 f"{result['recall_target']:.2f}"])
    fp = result["false_per_mm2"]
    by_image = ", ".join(f"{k} {v:.2f} ({g['target_by_image'][k][1]} deposits)"
                         for k, v in result["recall_target_by_image"].items())
    whole = result["false_per_mm2_whole"]
    fps = [["tissue", "false objects / mm²", f"whole images ({whole['tissue_mm2']:.2f} mm²)"]]
    fps += [[k, f"{v:.1f}", f"{whole[k]:.1f}" if k in whole else ""] for k, v in fp.items()
            if k.startswith("h_x") or k == "dense_nuclei"]
    return (f"calcification detector v{result['detector_version']} at {result['um_per_px']:g} µm/px, "
            f"{g['per_cell']} painted deposits per cell (recall):\n{table(rows)}\n\n"
            f"on {fp['fields']} real fields without deposits ({fp['tissue_mm2']:.2f} mm² of tissue):\n{table(fps)}\n"
            f"target: recall >= 0.9 (>= {TARGET_UM:g} µm, H >= {TARGET_H:g}): {result['recall_target']:.2f}; "
            f"<= 5 false objects / mm²: {fp['h_x1']:.1f} as scanned ({whole['h_x1']:.1f} on the whole images)\n"
            f"that recall by the image painted on: {by_image}")


def plots(result: dict[str, Any], folder: Path, before: dict[str, Any] | None = None) -> list[Path]:
    """Two small PNGs: recall vs haematoxylin OD (deposits >= TARGET_UM) and vs diameter (H >= TARGET_H), with an
    earlier run's curve (`before`, e.g. the previous detector version) beside this one's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for key, xlabel, name in (("recall_vs_h", "haematoxylin, decadic OD (deposits >= 20 µm)", "h_od"),
                              ("recall_vs_diameter", "diameter, µm (H >= 0.5)", "diameter")):
        fig, ax = plt.subplots(figsize=(4, 2.6))
        for label, res in (("this run", result), *((("before", before),) if before else ())):
            points = sorted((float(x), y) for x, y in res[key].items())  # keys are strings once read back from JSON
            ax.plot(*zip(*points, strict=True), "o-", label=f"v{res['detector_version']} ({label})")
        ax.axhline(0.9, color="grey", lw=0.8, ls="--")
        ax.set(xlabel=xlabel, ylabel="recall", ylim=(-0.03, 1.03))
        if name == "diameter":
            ax.set_xscale("log")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = folder / f"calcification_recall_vs_{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        out.append(path)
    return out
