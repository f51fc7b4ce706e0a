"""Tissue detection on a low-resolution view of a slide, and the window grid it gates.

`thumbnail` reads the slide at the finest level whose long side fits `max_side` (else the coarsest level,
block-averaged in bands, so a single-level 40,000 px slide is never held whole). `mask_from_rgb` is the CLAM /
HistomicsTK recipe: Otsu on HSV saturation (median-smoothed), an optical-density floor (glass is bright in every
channel), ink removed, then morphological clean-up (closing, small holes filled, small objects dropped).

Ink rule (cheap, colour only): both H&E stains absorb green at least as strongly as red, so a stained pixel has
G <= R (give or take JPEG noise); a saturated pixel clearly greener than it is red (G - R > `pen_margin`) is
green, cyan or blue marker ink. A pixel dark in every channel (max(R, G, B) < `dark_max`) is black ink, dirt or
a fold: H&E keeps blue bright. Ink blobs smaller than `min_pen_px0` level-0 px^2 are JPEG chroma speckle at
nuclear edges and are ignored; the rest is dilated a little (ink edges are faint) and removed from the tissue.
Black ink drawn thinly over tissue keeps the tissue's hue and is not caught: that is the limit of "cheap".

Windows: `window_grid` counts the whole windows of a slide, `window_boxes` lists their level-0 boxes (the same
rounding as extract's window mode) and `tissue_fraction` gives each box's tissue fraction from the low-res mask
through an integral image (bilinear interpolation of the integral image is exact for a piecewise-constant mask).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.morphology import disk

from crystal_dask.wsi.slides import Slide

BAND_PIXELS = 4 * 1024 * 1024  # level pixels decoded at once while block-averaging a thumbnail (~64 MB)

# saturation threshold bounds: Otsu below S_MIN is splitting glass noise (a blank slide), above S_MAX it is
# splitting pale from dark tissue (a slide that is all tissue), so it is clamped into this range
S_MIN, S_MAX = 0.05, 0.12


def thumbnail_level(slide: Slide, max_side: int = 2048) -> tuple[int, int]:
    """(level, k): read `level` and average k x k blocks so the long side is <= max_side.

    The finest level that fits needs k = 1; when none fits, the coarsest level is reduced by the smallest k.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    for lvl in slide.levels:  # finest first
        if max(lvl.width, lvl.height) <= max_side:
            return lvl.index, 1
    lvl = slide.levels[-1]
    return lvl.index, math.ceil(max(lvl.width, lvl.height) / max_side)


def thumbnail(slide: Slide, max_side: int = 2048) -> tuple[np.ndarray, float]:
    """(RGB uint8 (h, w, 3), downsample): a low-res view of the whole slide; pixel (r, c) covers level-0
    [c * d, (c + 1) * d) x [r * d, (r + 1) * d). Bounded memory: at most BAND_PIXELS level pixels at once."""
    index, k = thumbnail_level(slide, max_side)
    lvl = slide.levels[index]
    if k == 1:
        return slide.read(index, 0, 0, lvl.width, lvl.height), lvl.downsample
    out_w, out_h = math.ceil(lvl.width / k), math.ceil(lvl.height / k)
    out = np.empty((out_h, out_w, 3), np.uint8)
    # rows per read: a multiple of k and, where it fits the budget, of the tile (or strip) height, so no tile
    # is decoded twice
    info = slide.info()["levels"][index]
    seg_h = info["tile"][1] if info["tile"] else info["rows_per_strip"]
    unit = math.lcm(k, int(seg_h)) if seg_h else k
    unit = unit if unit * out_w * k <= BAND_PIXELS else k
    band = max(1, BAND_PIXELS // (out_w * k * unit)) * unit
    for y in range(0, out_h * k, band):
        rows = min(band, out_h * k - y)
        # reading past the level's edge gives white glass, so trailing partial blocks average with glass
        rgb = slide.read(index, 0, y, out_w * k, rows).astype(np.uint32)
        block = rgb.reshape(rows // k, k, out_w, k, 3).sum(axis=(1, 3))
        out[y // k: (y + rows) // k] = ((block + k * k // 2) // (k * k)).astype(np.uint8)
    return out, lvl.downsample * k


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation (max - min) / max in [0, 1], float32."""
    mx, mn = _channels(np.maximum, rgb), _channels(np.minimum, rgb)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1.0), 0.0).astype(np.float32)


def _channels(op: np.ufunc, rgb: np.ndarray) -> np.ndarray:
    """op over the 3 channels as float32, pairwise (a reduction over a length-3 last axis is ~10x slower)."""
    return op(op(rgb[..., 0], rgb[..., 1]), rgb[..., 2]).astype(np.float32)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Per-channel optical density -log10((I + 1) / 256), float32 (0 for white, ~2.4 for black)."""
    return -np.log10((rgb.astype(np.float32) + 1.0) / 256.0)


def pen_mask(rgb: np.ndarray, downsample: float, *, pen_margin: int = 20, dark_max: int = 50,
             min_pen_px0: float = 128 * 128, sat: np.ndarray | None = None) -> np.ndarray:
    """Marker ink (green/cyan/blue by G - R, black by darkness): see the module docstring for the rule. `sat`:
    the image's `saturation`, when the caller has it already."""
    sat = saturation(rgb) if sat is None else sat
    coloured = (rgb[..., 1].astype(np.int16) - rgb[..., 0] > pen_margin) & (sat >= 0.15)
    dark = np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2]) < dark_max  # pairwise: see _channels
    ink = coloured | dark
    min_px = max(1, round(min_pen_px0 / downsample**2))
    ink = drop_small_objects(ink, min_px)
    if ink.any():
        ink = ndi.binary_dilation(ink, iterations=max(1, round(16 / downsample)))
    return ink


def mask_from_rgb(rgb: np.ndarray, downsample: float, *, od_min: float = 0.05, exclude_pen: bool = True,
                  close_px0: float = 32.0, min_hole_px0: float = 512 * 512,
                  min_object_px0: float = 256 * 256) -> np.ndarray:
    """Boolean tissue mask of a low-res RGB view whose pixels are `downsample` level-0 px wide.

    Tissue = saturation above the clamped Otsu threshold and max-channel optical density >= od_min, minus ink;
    then a closing of radius close_px0, holes < min_hole_px0 filled (lumens, tears) and objects < min_object_px0
    dropped (dust). Sizes are in level-0 pixels so the result does not depend on the level read.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be (h, w, 3) uint8, got {rgb.shape} {rgb.dtype}")
    raw = saturation(rgb)
    sat = ndi.median_filter(raw, size=3)  # JPEG chroma noise at nuclear edges, as CLAM's blur
    spread = float(sat.max() - sat.min())
    thr = threshold_otsu(sat) if spread > 1e-6 else S_MAX
    thr = min(max(thr, S_MIN), S_MAX)
    # the densest channel is the darkest: the log of the darkest alone (OD falls as intensity rises)
    tissue = (sat > thr) & (optical_density(_channels(np.minimum, rgb)) >= od_min)
    if exclude_pen:
        tissue &= ~pen_mask(rgb, downsample, sat=raw)
    radius = max(1, round(close_px0 / downsample))
    tissue = ndi.binary_closing(np.pad(tissue, radius), structure=disk(radius))[radius:-radius, radius:-radius]
    tissue = fill_small_holes(tissue, max(1, round(min_hole_px0 / downsample**2)))
    return drop_small_objects(tissue, max(1, round(min_object_px0 / downsample**2)))


def drop_small_objects(mask: np.ndarray, max_size: int) -> np.ndarray:
    """Remove 4-connected components of at most `max_size` pixels (skimage's remove_small_objects changed its
    keyword between 0.25 and 0.26; this works with both)."""
    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    keep = np.bincount(labels.ravel(), minlength=n + 1) > max_size
    keep[0] = False
    return keep[labels]


def fill_small_holes(mask: np.ndarray, max_size: int) -> np.ndarray:
    """Fill background components of at most `max_size` pixels that do not touch the border.

    skimage's remove_small_holes also fills glass in a corner cut off by tissue; glass at the edge is not a hole."""
    labels, n = ndi.label(~mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill = sizes <= max_size
    fill[0] = False
    fill[edge] = False
    return mask | fill[labels]


def tissue_mask(slide: Slide, max_side: int = 2048, **options) -> tuple[np.ndarray, float]:
    """(mask, downsample): the tissue of a slide on a low-res view (see `thumbnail`, `mask_from_rgb`).
    Unreadable slides raise the Slide reader's SlideError."""
    rgb, downsample = thumbnail(slide, max_side)
    return mask_from_rgb(rgb, downsample, **options), downsample


# ------------------------------------------------------------------------------------------- windows
def window_grid(width: int, height: int, size: float, step: float) -> tuple[int, int]:
    """(rows, cols) of whole windows of side `size`, `step` apart, from the slide's top-left (level-0 px).
    A window's box is [round(c * step), round(c * step) + round(size)), as in extract's window mode."""
    if not (size > 0 and step > 0):
        raise ValueError(f"window size and step must be positive, got {size} and {step}")
    side = round(size)

    def count(extent: int) -> int:
        if extent < side:
            return 0
        n = math.floor((extent - side) / step) + 1
        while n > 0 and round((n - 1) * step) + side > extent:  # rounding may push the last one out
            n -= 1
        return n

    return count(height), count(width)


def window_boxes(rows: int, cols: int, size: float, step: float,
                 origin: tuple[float, float] = (0, 0), first: tuple[int, int] = (0, 0)) -> np.ndarray:
    """(rows * cols, 4) int64 level-0 boxes (x0, y0, x1, y1), row-major (window (r, c) is row r * cols + c), of
    the grid's windows from (row, col) `first` on: a block of the grid has the boxes the whole grid has there."""
    xs = origin[0] + np.round(np.arange(first[1], first[1] + cols) * step)
    ys = origin[1] + np.round(np.arange(first[0], first[0] + rows) * step)
    x0 = np.broadcast_to(xs[None, :], (rows, cols)).ravel()
    y0 = np.broadcast_to(ys[:, None], (rows, cols)).ravel()
    side = round(size)
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1).astype(np.int64)


def tissue_fraction(mask: np.ndarray, downsample: float, boxes: np.ndarray) -> np.ndarray:
    """Fraction in [0, 1] of each level-0 box (N, 4: x0, y0, x1, y1) covered by tissue, float64 (N,).

    Boxes are mapped to fractional mask coordinates; the covered area is read from the mask's integral image by
    bilinear interpolation, exact for a mask whose pixels are constant squares. Area outside the mask is glass.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return np.zeros(0)
    h, w = mask.shape
    integral = np.zeros((h + 1, w + 1))
    integral[1:, 1:] = mask.astype(np.float64).cumsum(0).cumsum(1)

    def at(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x, y = np.clip(x, 0, w), np.clip(y, 0, h)
        i, j = np.minimum(np.floor(x).astype(np.intp), w - 1), np.minimum(np.floor(y).astype(np.intp), h - 1)
        a, b = x - i, y - j
        return (integral[j, i] * (1 - a) * (1 - b) + integral[j, i + 1] * a * (1 - b)
                + integral[j + 1, i] * (1 - a) * b + integral[j + 1, i + 1] * a * b)

    x0, y0, x1, y1 = (boxes[:, k] / downsample for k in range(4))
    area = (x1 - x0) * (y1 - y0)
    inside = at(x1, y1) - at(x0, y1) - at(x1, y0) + at(x0, y0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(area > 0, np.clip(inside / area, 0.0, 1.0), 0.0)
