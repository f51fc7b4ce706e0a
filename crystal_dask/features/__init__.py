"""Handcrafted feature families computed from one RGB region: `stain`, `texture`, `calcification`.

Each family is a versioned, documented tuple of named float32 columns (docs/features.md). The caller hands
every family the region already resampled to a fixed physical resolution (`resample_to`), so sizes in µm and
distances in pixels mean the same on every slide and scanner. `compute_families` prepares the region once
(optical density, stain unmixing, tissue mask, grey: `region.Region`) and shares it between the families.

A region whose features cannot be computed raises FeatureError with a short reason ("no tissue", "no MPP"):
it must become a reject, never a NaN row. Returned vectors are checked to be finite.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from crystal_dask.features import calcification, stain, texture
from crystal_dask.features.region import FeatureError, Region

__all__ = ["FAMILIES", "Family", "FeatureError", "Region", "compute_families", "resample_to"]


@dataclass(frozen=True)
class Family:
    """One feature family: its columns, version, and how to compute them.

    `compute(rgb, um_per_px)` is the standalone entry point; `from_region(region)` computes from a prepared
    `Region` so several families share one colour deconvolution. `needs_mpp`: the family measures µm and
    rejects a region without a resolution ("no MPP").
    """

    name: str
    version: int
    columns: tuple[str, ...]
    compute: Callable[[np.ndarray, float | None], np.ndarray]
    needs_mpp: bool
    from_region: Callable[[Region], np.ndarray]


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("stain", stain.VERSION, stain.COLUMNS, stain.compute, False, stain.from_region),
        Family("texture", texture.VERSION, texture.COLUMNS, texture.compute, False, texture.from_region),
        Family("calcification", calcification.VERSION, calcification.COLUMNS, calcification.compute, True,
               calcification.from_region),
    )
}


def _checked(fam: Family, v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32)
    if v.shape != (len(fam.columns),):
        raise AssertionError(f"{fam.name}: {v.shape} values for {len(fam.columns)} columns")
    if not np.isfinite(v).all():
        # a bug, not a property of the region; rejecting keeps a NaN out of the forest and shows up in the counts
        raise FeatureError(f"non-finite {fam.name}")
    return v


def compute_families(rgb: np.ndarray, um_per_px: float | None, families: Sequence[str]) -> dict[str, np.ndarray]:
    """Each named family's float32 vector for one (H, W, 3) uint8 region at `um_per_px` (None: no MPP).

    Raises FeatureError (first failing family's reason) when any family cannot describe the region, KeyError
    for an unknown family name.
    """
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise KeyError(f"unknown feature families {unknown}; known: {sorted(FAMILIES)}")
    region = Region(rgb, um_per_px)
    out: dict[str, np.ndarray] = {}
    for name in families:
        fam = FAMILIES[name]
        if fam.needs_mpp and um_per_px is None:
            raise FeatureError("no MPP")
        out[name] = _checked(fam, fam.from_region(region))
    return out


def resample_to(rgb: np.ndarray, from_um_per_px: float, to_um_per_px: float) -> np.ndarray:
    """The (H, W, 3) uint8 region resampled from one resolution to another (Lanczos: anti-aliased when shrinking).

    The output side is round(side * from / to), at least 1; equal resolutions return the input unchanged.
    """
    if not (from_um_per_px > 0 and to_um_per_px > 0):
        raise ValueError(f"resolutions must be positive, got {from_um_per_px} -> {to_um_per_px}")
    scale = from_um_per_px / to_um_per_px
    h, w = rgb.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        return rgb
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize(size, Image.Resampling.LANCZOS))
