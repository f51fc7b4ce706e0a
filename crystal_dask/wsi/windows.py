"""Many windows of one slide rendered from one read of the area they cover, byte for byte as `render_patch`
renders each alone.

Whole-slide inference renders a block of grid windows at once. Rendering them one by one (`render_patch`) decodes
every JPEG tile a window touches, so neighbouring and overlapping windows decode the tiles they share again (500 px
windows on 256 px tiles: ~2.3 decodes per tile). Here the windows' decoded pixels are computed as `grey_read`
plans them for each window, the area covering a band of windows is decoded once (DCT-scaled and luma-only on the
same path as `read_grey`), and each window is cut from it, padded, block-averaged and resized exactly as
`read_grey` and `render_patch` do. The bytes are therefore identical wherever windows share a level and scale.

Memory: a band holds at most `BLOCK_PIXELS` decoded bytes (uint8 grey on the luma-only path, else uint8 RGB); each
window becomes float32 grey only once cut, as `read_grey` converts what it decoded. A window larger than a band
alone is rendered through `render_patch`, in its own bands.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from crystal_dask.wsi.patches import (
    GreyRead,
    PatchSettings,
    as_grey,
    choose_level,
    decode_pixels,
    finish_band,
    grey_is_bytes,
    grey_read,
    luma_only,
    render_patch,
    resize_grey,
)
from crystal_dask.wsi.slides import Slide

__all__ = ["BLOCK_PIXELS", "render_windows"]

BLOCK_PIXELS = 64 * 1024 * 1024  # decoded bytes held at once: one 16 x 16 block of 500 px windows, luma only


def render_windows(slide: Slide, boxes: np.ndarray, s: PatchSettings, budget: int = BLOCK_PIXELS) -> np.ndarray:
    """(n, p, p) uint8: each level-0 box (n, 4: x0, y0, x1, y1) rendered as `render_patch(slide, box, s)` renders
    it (no polygon), reading each band of windows' covering area once."""
    boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
    out = np.empty((len(boxes), s.patch_size, s.patch_size), np.uint8)
    groups: dict[tuple, list[tuple[int, GreyRead]]] = defaultdict(list)
    for i, box in enumerate(boxes.tolist()):
        g = grey_read(slide, choose_level(slide, box[2] - box[0], box[3] - box[1], s), tuple(box), s)
        groups[(g.level, g.f, g.fast, g.k)].append((i, g))
    for members in groups.values():
        limit = budget if luma_only(members[0][1], s) else budget // 3  # uint8 grey, or RGB
        members.sort(key=lambda m: (m[1].iy0, m[1].ix0))
        band: list[tuple[int, GreyRead]] = []
        for member in members:
            i, g = member
            if g.rw * min(g.h, g.rh) > limit:  # one window larger than a band: read_grey reads it in bands
                out[i], _ = render_patch(slide, tuple(boxes[i].tolist()), s)
                continue
            if band and _area([*band, member]) > limit:
                _render_band(slide, band, s, out)
                band = []
            band.append(member)
        if band:
            _render_band(slide, band, s, out)
    return out


def _extent(band: list[tuple[int, GreyRead]]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the decoded pixels a band of windows takes."""
    return (min(g.ix0 for _, g in band), min(g.iy0 for _, g in band),
            max(g.ix0 + g.rw for _, g in band), max(g.iy0 + min(g.h, g.rh) for _, g in band))


def _area(band: list[tuple[int, GreyRead]]) -> int:
    x0, y0, x1, y1 = _extent(band)
    return (x1 - x0) * (y1 - y0)


def _render_band(slide: Slide, band: list[tuple[int, GreyRead]], s: PatchSettings, out: np.ndarray) -> None:
    """Decode the area under a band of windows once, then cut, pad, reduce and resize each window from it."""
    area = _band_pixels(slide, band, s)
    x0, y0 = _extent(band)[:2]
    for i, g in band:
        cut = area[g.iy0 - y0:g.iy0 - y0 + min(g.h, g.rh), g.ix0 - x0:g.ix0 - x0 + g.rw]
        grey = finish_band(cut if grey_is_bytes(g, s, False) else as_grey(cut, s), g.h, g.w, g.k)
        out[i] = resize_grey(grey, g.where, s.patch_size)


def _band_pixels(slide: Slide, band: list[tuple[int, GreyRead]], s: PatchSettings) -> np.ndarray:
    """The decoded pixels of a band's extent, tile row by tile row, each row only across the windows that reach
    into it: at the ragged edge of the tissue, glass beside the windows is not decoded. Pixels no window takes
    are left white."""
    x0, y0, x1, y1 = _extent(band)
    g0 = band[0][1]
    info = slide.info()["levels"][g0.level]
    seg = (info["tile"][1] if info["tile"] else info["rows_per_strip"]) // g0.f
    seg = seg if seg >= 1 and info["tile"] else y1 - y0  # strips: one piece (a strip is decoded whole anyway)
    area = np.full((y1 - y0, x1 - x0) if luma_only(g0, s) else (y1 - y0, x1 - x0, 3), 255, np.uint8)
    for r in range(y0 // seg, (y1 - 1) // seg + 1):
        ry0, ry1 = max(y0, r * seg), min(y1, (r + 1) * seg)
        spans = [(g.ix0, g.ix0 + g.rw) for _, g in band if g.iy0 < ry1 and g.iy0 + min(g.h, g.rh) > ry0]
        if spans:  # decoded straight into the band's array
            rx0, rx1 = min(a for a, _ in spans), max(b for _, b in spans)
            decode_pixels(slide, g0, rx0, ry0, rx1 - rx0, ry1 - ry0, s, area[ry0 - y0:ry1 - y0, rx0 - x0:rx1 - x0])
    return area
