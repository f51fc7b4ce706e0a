"""Patches: which boxes to cut from each region (region or window mode), and how one box becomes 256x256 uint8.

Planning is arithmetic on the regions table (runs on the client, no pixels); `render_patch` runs on the
workers with a slide the task opened itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from PIL import Image

from crystal_dask.checks import is_integer, is_number, reject_unknown_keys
from crystal_dask.wsi import jpeg
from crystal_dask.wsi.polygon import polygon_mask
from crystal_dask.wsi.slides import Slide

MODES = ("region", "window")
WINDOW_UNITS = ("px", "um")
DECODES = ("fast", "exact")
# luma weights: BT.601 is PIL's convert("L"), OpenCV's and a JPEG's own Y channel; BT.709 is skimage's rgb2gray
GREY_WEIGHTS = {"bt601": (0.299, 0.587, 0.114), "bt709": (0.2125, 0.7154, 0.0721)}


@dataclass(frozen=True)
class PatchSettings:
    """How regions become patches. Every field changes the pixels, so all of them enter the dataset's hash."""

    mode: str = "region"  # region: the region's bbox (published method); window: fixed windows across it
    patch_size: int = 256  # output side in pixels
    min_side: int = 256  # read at the coarsest level that keeps this many pixels across the box's smaller side
    level: int | None = None  # a fixed pyramid level instead (0 reproduces the published method exactly)
    window_size: float = 500.0  # window mode: window side in `window_unit`
    window_step: float | None = None  # window mode: step between windows (default: window_size, no overlap)
    window_unit: str = "px"  # px (level-0 pixels, or pixels at `magnification`) or um
    magnification: float | None = None  # window px are at this magnification (level 0 is 10/mpp x)
    min_overlap: float = 0.5  # window mode: keep a window when this fraction of it lies inside the region
    mask_outside: bool = False  # fill pixels outside the polygon with `background`
    background: int = 255  # fill value (RGB white glass)
    chunk_rows: int = 64  # patches per zarr chunk, and per task
    decode: str = "fast"  # fast: JPEG tiles decoded reduced (1/2..1/8) and luma-only; exact: every tile in full
    grey: str = "bt601"  # luma weights: bt601 (PIL, OpenCV, JPEG's Y) or bt709 (scikit-image, before format 4)

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"extract.{key}: {why}; got {getattr(self, key)!r}")

        if self.mode not in MODES:
            raise bad("mode", f"must be one of {', '.join(MODES)}")
        if self.decode not in DECODES:
            raise bad("decode", f"must be one of {', '.join(DECODES)}")
        if self.grey not in GREY_WEIGHTS:
            raise bad("grey", f"must be one of {', '.join(GREY_WEIGHTS)}")
        if self.window_unit not in WINDOW_UNITS:
            raise bad("window_unit", f"must be one of {', '.join(WINDOW_UNITS)}")
        def number(v: Any) -> bool:
            return is_number(v) and math.isfinite(v)

        for key in ("patch_size", "min_side", "chunk_rows"):
            if not is_integer(getattr(self, key)) or getattr(self, key) < 1:
                raise bad(key, "must be a positive integer")
        if self.level is not None and (not is_integer(self.level) or self.level < 0):
            raise bad("level", "must be null or a level index >= 0")
        for key in ("window_size", "window_step", "magnification"):
            value = getattr(self, key)
            if (value is not None or key == "window_size") and not (number(value) and value > 0):
                raise bad(key, "must be a positive number")
        if not (number(self.min_overlap) and 0 < self.min_overlap <= 1):
            raise bad("min_overlap", "must be a number in (0, 1]")
        if not (is_integer(self.background) and 0 <= self.background <= 255):
            raise bad("background", "must be an integer 0..255")
        if not isinstance(self.mask_outside, bool):
            raise bad("mask_outside", "must be true or false")
        # One value, one hash: 160 from a job file and 160.0 from the command line are the same setting.
        for key in ("window_size", "window_step", "magnification", "min_overlap"):
            if getattr(self, key) is not None:
                object.__setattr__(self, key, float(getattr(self, key)))

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> PatchSettings:
        cfg = dict(cfg or {})
        reject_unknown_keys(cfg, cls.keys(), "extract")
        return cls(**cfg)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ planning
def window_px(row: Mapping[str, Any], s: PatchSettings) -> tuple[float, float] | str:
    """Window side and step in level-0 pixels for a region's slide, or why they cannot be known."""
    step = s.window_step or s.window_size
    if s.window_unit == "um" or s.magnification is not None:
        mpp = row["mpp"]
        if not mpp:
            return "slide has no MPP, so a window given in microns or at a magnification has no pixel size"
        scale = 1.0 / mpp if s.window_unit == "um" else (10.0 / mpp) / s.magnification
        return s.window_size * scale, step * scale
    return s.window_size, step


def cell_mask(xs, ys, x0: float, y0: float, cell: float, shape: tuple[int, int]) -> np.ndarray:
    """Boolean grid of the cells (each `cell` level-0 pixels wide, origin at x0, y0) whose centre lies inside a
    polygon: cell (r, c) spans [c, c + 1) cells, so its centre is half a cell in."""
    return polygon_mask((np.asarray(xs, np.float64) - x0) / cell - 0.5, (np.asarray(ys, np.float64) - y0) / cell - 0.5,
                        shape)

def plan_windows(row: Mapping[str, Any], s: PatchSettings) -> tuple[list[tuple[int, int, int, int, float]], str]:
    """Windows (x0, y0, x1, y1, overlap) stepping across a region's bbox that overlap it by >= min_overlap.

    Overlap is measured on a grid of 8x8 cells per window (polygon rasterised at window/8 pixels per cell).
    Windows run from the bbox's top-left corner; those reaching past the slide's edge are dropped.
    Returns (windows, reason when there are none).
    """
    size_step = window_px(row, s)
    if isinstance(size_step, str):
        return [], size_step
    size, step = size_step
    cell = size / 8.0
    bx0, by0, bx1, by1 = row["x0"], row["y0"], row["x1"], row["y1"]
    nx = max(1, math.ceil((bx1 - bx0 - size) / step) + 1)
    ny = max(1, math.ceil((by1 - by0 - size) / step) + 1)
    grid = (math.ceil(((ny - 1) * step + size) / cell) + 1, math.ceil(((nx - 1) * step + size) / cell) + 1)
    covered = cell_mask(row["polygon_x"], row["polygon_y"], bx0, by0, cell, grid)
    integral = np.pad(covered.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    out, past_edge = [], 0
    for j in range(ny):
        for i in range(nx):
            cx, cy = round(i * step / cell), round(j * step / cell)
            inside = integral[cy + 8, cx + 8] - integral[cy, cx + 8] - integral[cy + 8, cx] + integral[cy, cx]
            overlap = inside / 64.0
            wx0, wy0 = bx0 + round(i * step), by0 + round(j * step)
            wx1, wy1 = wx0 + round(size), wy0 + round(size)
            if overlap < s.min_overlap:
                continue
            if wx1 > row["slide_width"] or wy1 > row["slide_height"]:
                past_edge += 1
                continue
            out.append((wx0, wy0, wx1, wy1, float(overlap)))
    if not out:
        why = f"no {size:.0f}px window overlaps the region by at least {s.min_overlap:.0%}"
        if past_edge:
            why = (f"every {size:.0f}px window overlapping the region by at least {s.min_overlap:.0%} "
                   f"({past_edge}) crosses the slide's edge")
        return [], f"{why} (bbox {bx1 - bx0}x{by1 - by0}px)"
    return out, ""


# --------------------------------------------------------------------------------------------------- pixels
def choose_level(slide: Slide, box_w: int, box_h: int, s: PatchSettings) -> int:
    if s.level is not None:
        if s.level >= len(slide.levels):
            raise ValueError(f"{slide.path}: extract.level {s.level} asked, the slide has {len(slide.levels)} level(s)")
        return s.level
    return slide.best_level(box_w, box_h, s.min_side)


def to_grey(rgb: np.ndarray, weights: str = "bt601") -> np.ndarray:
    """Luma of an RGB array as float32 in 0..255 with the weights named in GREY_WEIGHTS."""
    return rgb.astype(np.float32) @ np.array(GREY_WEIGHTS[weights], dtype=np.float32)


# Bound on the pixels decoded at once for one box: larger boxes are read in bands and block-averaged first,
# so memory stays predictable even at level 0 for a region the size of a slide.
BAND_PIXELS = 16 * 1024 * 1024


def level_scale(slide: Slide, level: int) -> tuple[float, float]:
    """Level-0 pixels per pixel of `level` along x and y. A level whose size is level 0's divided by a whole
    number n and rounded (as scanners make them: Aperio's 4x level of a 2967 px side has 741) has exactly n;
    the mean of the two size ratios (`Level.downsample`) would shift its far side by up to half a pixel."""
    lvl, w0, h0 = slide.levels[level], slide.width, slide.height
    n = round(lvl.downsample)
    if n >= 1 and lvl.width in (w0 // n, -(-w0 // n)) and lvl.height in (h0 // n, -(-h0 // n)):
        return float(n), float(n)
    return w0 / lvl.width, h0 / lvl.height


def decode_scale(slide: Slide, level: int, box: tuple[int, int, int, int], s: PatchSettings) -> int:
    """How many times the JPEG decoder may reduce `level` for this box: the largest of 8, 4, 2 that still leaves
    at least twice the output resolution across the box's shorter side (as the block averaging does), 1 when
    none does, when `decode` is exact, or when the level is not JPEG-tiled."""
    if s.decode != "fast":
        return 1
    sx, sy = level_scale(slide, level)
    room = min((box[2] - box[0]) / sx, (box[3] - box[1]) / sy) / (2 * s.patch_size)
    return next((f for f in jpeg.SCALES if f <= room and slide.can_scale(level, f)), 1)


@dataclass(frozen=True)
class GreyRead:
    """Where one level-0 box lies in the pixels `read_grey` decodes for it: decoded at 1/`f` of `level`, pixel
    (`ix0`, `iy0`) first, `w` x `h` pixels wanted (whole `k` x `k` blocks) of which `rw` x `rh` come from the
    slide (the rest repeats the edge), and the exact box at `where` in the k-reduced image."""

    level: int
    f: int
    fast: bool
    ux: float
    uy: float
    ix0: int
    iy0: int
    w: int
    h: int
    rw: int
    rh: int
    k: int
    where: tuple[float, float, float, float]


def grey_read(slide: Slide, level: int, box: tuple[int, int, int, int], s: PatchSettings) -> GreyRead:
    """The decoded pixels `read_grey` takes for a box: scale, origin, size, pre-reduction and the exact box."""
    f = decode_scale(slide, level, box, s)
    fast = s.decode == "fast" and slide.can_scale(level, f)
    sx, sy = level_scale(slide, level)
    ux, uy = sx * f, sy * f  # level-0 pixels per decoded pixel
    gx0, gy0, gx1, gy1 = box[0] / ux, box[1] / uy, box[2] / ux, box[3] / uy
    ix0, iy0 = math.floor(gx0), math.floor(gy0)
    w, h = max(1, math.ceil(gx1) - ix0), max(1, math.ceil(gy1) - iy0)
    k = max(1, min(w, h) // (2 * s.patch_size))  # integer pre-reduction keeps >= 2x the output resolution
    # whole blocks that cover the exact box; their extra pixels come from the slide where it has them, else they
    # repeat the edge (white from beyond the level's edge would bleed into the last block)
    lvl = slide.levels[level]
    rw = max(w, min(-(-w // k) * k, -(-lvl.width // f) - ix0))
    rh = max(h, min(-(-h // k) * k, -(-lvl.height // f) - iy0))
    where = ((gx0 - ix0) / k, (gy0 - iy0) / k, (gx1 - ix0) / k, (gy1 - iy0) / k)
    return GreyRead(level, f, fast, ux, uy, ix0, iy0, -(-w // k) * k, -(-h // k) * k, rw, rh, k, where)


def luma_only(g: GreyRead, s: PatchSettings) -> bool:
    """True when the decoder itself gives the grey (`decode_pixels` returns 2-D uint8)."""
    return g.fast and s.grey == "bt601"


def decode_pixels(slide: Slide, g: GreyRead, x: int, y: int, width: int, height: int, s: PatchSettings,
                  out: np.ndarray | None = None) -> np.ndarray:
    """Decoded pixels [x, x + width) x [y, y + height) at `g`'s level and scale, uint8: grey (2-D) straight from
    the decoder on the fast BT.601 path (a JPEG's Y channel, or BT.601 of RGB data; DCT-scaled), else RGB.
    `out`: a white array of that shape to decode into (the fast path) or to copy into."""
    if g.fast:
        return slide.read_scaled(g.level, x, y, width, height, g.f, grey=luma_only(g, s), out=out)
    rgb = slide.read(g.level, x, y, width, height)
    if out is None:
        return rgb
    out[...] = rgb
    return out


def as_grey(pixels: np.ndarray, s: PatchSettings) -> np.ndarray:
    """float32 grey of `decode_pixels`' output."""
    return pixels.astype(np.float32) if pixels.ndim == 2 else to_grey(pixels, s.grey)


def finish_band(grey: np.ndarray, bh: int, w: int, k: int) -> np.ndarray:
    """A band of decoded grey padded by edge repetition to `bh` x `w` and block-averaged k x k."""
    if grey.shape != (bh, w):
        grey = np.pad(grey, ((0, bh - grey.shape[0]), (0, w - grey.shape[1])), mode="edge")
    if k > 1:
        grey = grey.reshape(bh // k, k, w // k, k).mean(axis=(1, 3))
    return grey


def read_grey(slide: Slide, level: int, box: tuple[int, int, int, int], s: PatchSettings,
              polygon: tuple[list[float], list[float]] | None,
              keep_bytes: bool = False) -> tuple[np.ndarray, tuple[float, ...]]:
    """Greyscale float32 image covering a level-0 box read at `level`, block-averaged in bands when it is large,
    and where the exact box lies in it: (image, (left, top, right, bottom)) in the image's fractional pixels.
    `keep_bytes`: uint8 instead where the grey is the decoder's own luma (`grey_is_bytes`), as `resize_grey`
    takes it.

    The fast path decodes JPEG tiles reduced in the DCT domain (`decode_scale`) and, for BT.601, luma only.
    """
    g = grey_read(slide, level, box, s)
    as_bytes = keep_bytes and grey_is_bytes(g, s, polygon is not None)
    k, w, h = g.k, g.w, g.h
    band = max(k, (BAND_PIXELS // max(w, 1)) // k * k)
    if polygon is not None:  # in x-units throughout, so that one cell size serves both axes
        polygon = (polygon[0], [v * g.ux / g.uy for v in polygon[1]])
    parts = []
    for by in range(0, h, band):
        bh = min(band, h - by)
        pixels = decode_pixels(slide, g, g.ix0, g.iy0 + by, g.rw, min(bh, g.rh - by), s)
        grey = pixels if as_bytes else as_grey(pixels, s)
        if polygon is not None:
            grey = _mask_outside(grey, polygon, g.ix0, g.iy0 + by, g.ux, s.background)
        parts.append(finish_band(grey, bh, w, k))
    return np.concatenate(parts, axis=0), g.where


def _mask_outside(grey: np.ndarray, polygon, lx0: int, ly0: int, unit: float, background: int) -> np.ndarray:
    inside = cell_mask(polygon[0], polygon[1], lx0 * unit, ly0 * unit, unit, grey.shape[:2])
    out = np.full_like(grey, background)
    out[inside] = grey[inside]
    return out


def render_patch(slide: Slide, box: tuple[int, int, int, int], s: PatchSettings,
                 polygon: tuple[list[float], list[float]] | None = None) -> tuple[np.ndarray, int]:
    """One patch: read the box at the chosen level, greyscale, anti-aliased resize to patch_size, uint8.

    The resize samples the exact box, fractional origin and size included, at the read level (format 4; before,
    the box was widened to whole level pixels, which shifted coarser levels by a fraction of a pixel). The resize
    is Pillow's bilinear filter, whose support widens with the reduction (anti-aliased): 4x faster than
    scikit-image's Gaussian pre-filter plus zoom, within 0.6 grey levels of it on average. The decoder's own
    luma is resized as bytes (format 5, `resize_grey`).
    """
    level = choose_level(slide, box[2] - box[0], box[3] - box[1], s)
    masked = polygon is not None and s.mask_outside
    grey, where = read_grey(slide, level, box, s, polygon if masked else None, keep_bytes=True)
    return resize_grey(grey, where, s.patch_size), level


def resize_grey(grey: np.ndarray, where: tuple[float, ...], size: int) -> np.ndarray:
    """The exact box `where` of a grey image, Pillow's bilinear (anti-aliased) resize to size x size, uint8.

    A uint8 image (the decoder's own luma, see `grey_is_bytes`) is resized in Pillow's 8-bit mode "L": fixed
    point, about 2x faster than mode "F", within 1 grey level of it (tests/wsi/test_patches.py measures the
    mean). Any other grey (RGB's luma, block averages, masks) is float32 and resized in mode "F", then rounded."""
    if grey.dtype == np.uint8:
        image = Image.fromarray(np.ascontiguousarray(grey))  # mode "L"
        return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR, box=where))
    image = Image.fromarray(np.ascontiguousarray(grey, dtype=np.float32))  # mode "F"
    out = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR, box=where))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def grey_is_bytes(g: GreyRead, s: PatchSettings, masked: bool) -> bool:
    """True when a read's grey is exactly the decoder's uint8 luma (no block averaging, no mask), so it is
    resized as bytes (`resize_grey`)."""
    return luma_only(g, s) and g.k == 1 and not masked
