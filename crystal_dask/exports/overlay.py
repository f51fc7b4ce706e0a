"""Overlay and heatmap PNGs of a slide's window grid over its low-resolution thumbnail.

Each thumbnail pixel takes the cell under its centre (see the package docstring for cells) and is blended through
a lookup table per colour (`_blend`), so the cost is one index per pixel. The legend and the colour bar are drawn
with Pillow on the blended image itself, so the PNG has the thumbnail's width and height; matplotlib gives only
the colour map's values. No figure is rendered: that was most of the export task's time (docs/benchmarks_infer.md).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from crystal_dask.exports import colours_for
from crystal_dask.store.files import write_atomic
from crystal_dask.vocab import CLASSES


def cell_index(n_px: int, downsample: float, origin: float, step: float, size: float, n_cells: int) -> np.ndarray:
    """For each thumbnail pixel along one axis, the grid index of the cell under its centre (-1 for none)."""
    centre = (np.arange(n_px) + 0.5) * downsample - origin
    if step <= size:
        idx = np.floor((centre - (size - step) / 2) / step).astype(np.int64)
        ok = (idx >= 0) & (idx < n_cells)
    else:  # windows with gaps: inside window idx only when within `size` of its start
        idx = np.floor(centre / step).astype(np.int64)
        ok = (idx >= 0) & (idx < n_cells) & (centre - idx * step < size)
    return np.where(ok, idx, -1)


def rasterize_grid(values: np.ndarray, shape: tuple[int, int], downsample: float, *, step: float, size: float,
                   origin: tuple[float, float] = (0, 0)) -> np.ndarray:
    """A (h, w) image of a (rows, cols) grid's integer values on thumbnail pixels; -1 where no cell lies (the
    index `_blend` leaves untouched)."""
    rows = cell_index(shape[0], downsample, origin[1], step, size, values.shape[0])
    cols = cell_index(shape[1], downsample, origin[0], step, size, values.shape[1])
    out = values[np.maximum(rows, 0)[:, None], np.maximum(cols, 0)[None, :]]
    return np.where((rows[:, None] >= 0) & (cols[None, :] >= 0), out, -1)


def _blend(thumbnail: np.ndarray, index: np.ndarray, tint: np.ndarray, alpha: float) -> np.ndarray:
    """Each thumbnail pixel blended as rint((1 - alpha) * pixel + tint[index]) where index >= 0, else untouched.

    Computed through a lookup table per channel: row k + 1 holds tint k's 256 blended values (in float32, as a
    per-pixel blend computes them, so the bytes are the same) and row 0 the identity, indexed by (index + 1) * 256
    + pixel. The thumbnail's pixels are only indexed, never converted to float; with at most 255 tints the index
    fits in uint16, which halves the memory the gather walks (int32 beyond that)."""
    lut = np.rint((1 - alpha) * np.arange(256, dtype=np.float32)[None, None, :] + tint.T[:, :, None])
    lut = np.concatenate([np.broadcast_to(np.arange(256, dtype=np.float32), (3, 1, 256)), lut], axis=1)
    lut = lut.astype(np.uint8).reshape(3, -1)
    row = ((index + 1) * 256).astype(np.uint16 if lut.shape[1] <= 1 << 16 else np.int32)
    out = np.empty_like(thumbnail)
    for c in range(3):
        np.take(lut[c], row + thumbnail[..., c], out=out[..., c])
    return out


def class_overlay(thumbnail: np.ndarray, classes: np.ndarray, downsample: float, *, step: float, size: float,
                  origin: tuple[float, float] = (0, 0), class_names: Sequence[str] = CLASSES,
                  colours: dict[str, tuple[int, int, int]] | None = None, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 thumbnail with each scored cell alpha-blended in its class's colour (unscored cells untouched)."""
    grid = rasterize_grid(np.asarray(classes), thumbnail.shape[:2], downsample, step=step, size=size,
                          origin=origin)
    table = np.asarray(colours_for(tuple(class_names), colours), np.float32)
    return _blend(thumbnail, grid, alpha * table, alpha)


def heatmap_overlay(thumbnail: np.ndarray, proba: np.ndarray, downsample: float, *, step: float, size: float,
                    origin: tuple[float, float] = (0, 0), cmap: str = "inferno", alpha: float = 0.6) -> np.ndarray:
    """RGB uint8 thumbnail with a (rows, cols) probability grid in [0, 1] blended through a colour map; NaN
    probabilities and cells without a window leave the thumbnail untouched."""
    import matplotlib  # its colour maps only; imported where a heatmap is drawn

    values = np.asarray(proba, np.float64)
    rgba = matplotlib.colormaps[cmap](np.nan_to_num(np.clip(values.ravel(), 0, 1)))  # one colour per cell
    # cells of one colour share a tint (a colour map has 256 colours): fewer lookup rows than cells
    tint, colour = np.unique(alpha * 255 * rgba[:, :3].astype(np.float32), axis=0, return_inverse=True)
    cells = np.where(np.isfinite(values), colour.reshape(values.shape), -1)
    grid = rasterize_grid(cells, thumbnail.shape[:2], downsample, step=step, size=size, origin=origin)
    return _blend(thumbnail, grid, tint, alpha)


def _font(shape: tuple[int, int]) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font at the legend's size: 1/32 of the image's shorter side, 6 to 14 px."""
    return ImageFont.load_default(size=float(np.clip(min(shape) / 32, 6, 14)))


def _text_box(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont
              ) -> tuple[int, int]:
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    return x1 - x0, y1 - y0


def png_bytes(image: Image.Image | np.ndarray) -> bytes:
    """An RGB image as PNG bytes, with no timestamps or software tags: same input, same bytes. zlib level 1: a
    third of level 6's time on a thumbnail for files ~20% larger (whole-slide exports are written once per slide,
    on the critical path)."""
    buf = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def overlay_png(path: str | Path, thumbnail: np.ndarray, classes: np.ndarray, downsample: float, *, step: float,
                size: float, origin: tuple[float, float] = (0, 0), class_names: Sequence[str] = CLASSES,
                colours: dict[str, tuple[int, int, int]] | None = None, alpha: float = 0.45,
                legend: str = "present") -> Path:
    """Write the class overlay as a PNG of the thumbnail's size, with a legend of the classes ("present": those
    on the map; "all": every class; "none") in its upper right corner: a swatch and the name of each."""
    names = tuple(class_names)
    image = Image.fromarray(class_overlay(thumbnail, classes, downsample, step=step, size=size, origin=origin,
                                          class_names=names, colours=colours, alpha=alpha))
    present = set(np.unique(classes[classes >= 0]).tolist())
    shown = {"present": [k for k in range(len(names)) if k in present], "all": list(range(len(names))),
             "none": []}[legend]
    if shown:
        rgb = colours_for(names, colours)
        font = _font(image.size[::-1])
        draw = ImageDraw.Draw(image)
        line = max(_text_box(draw, "Mg", font)[1], 4) + 3
        text_w = max(_text_box(draw, names[k], font)[0] for k in shown)
        pad, swatch = 4, line - 3
        x1, y0 = image.width - pad, pad
        x0 = x1 - (pad + swatch + pad + text_w + pad)
        draw.rectangle((x0, y0, x1, y0 + pad + line * len(shown) + pad), fill=(255, 255, 255), outline=(0, 0, 0))
        for i, k in enumerate(shown):
            y = y0 + pad + i * line
            draw.rectangle((x0 + pad, y + 1, x0 + pad + swatch, y + 1 + swatch), fill=rgb[k], outline=(0, 0, 0))
            draw.text((x0 + 2 * pad + swatch, y), names[k], fill=(0, 0, 0), font=font)
    return write_atomic(path, png_bytes(image))


def heatmap_png(path: str | Path, thumbnail: np.ndarray, proba: np.ndarray, downsample: float, *, step: float,
                size: float, origin: tuple[float, float] = (0, 0), label: str = "probability",
                cmap: str = "inferno", alpha: float = 0.6) -> Path:
    """Write one class's probability grid as a heatmap PNG of the thumbnail's size, with a colour bar in its
    upper right corner: the colour map from 1 (top) to 0, ticks 0, 0.5 and 1 and the label, on white."""
    import matplotlib

    image = Image.fromarray(heatmap_overlay(thumbnail, proba, downsample, step=step, size=size, origin=origin,
                                            cmap=cmap, alpha=alpha))
    font = _font(image.size[::-1])
    draw = ImageDraw.Draw(image)
    bar_h = max(8, int(0.4 * image.height))
    bar_w = max(3, int(0.025 * image.width))
    bx1, by0 = image.width - 6, 6
    bx0, by1 = bx1 - bar_w, by0 + bar_h
    ticks = ("1", "0.5", "0")
    tick_w = max(_text_box(draw, t, font)[0] for t in ticks)
    label_w, label_h = _text_box(draw, label, font)
    x0 = bx0 - 4 - tick_w - 4 - label_h - 4
    draw.rectangle((x0, by0 - 4, bx1 + 2, by1 + 4), fill=(255, 255, 255))
    ramp = matplotlib.colormaps[cmap](np.linspace(1, 0, bar_h))[:, :3]
    bar = np.repeat(np.rint(255 * ramp).astype(np.uint8)[:, None, :], bar_w, axis=1)
    image.paste(Image.fromarray(bar), (bx0, by0))
    draw.rectangle((bx0 - 1, by0 - 1, bx1, by1), outline=(0, 0, 0))
    for t, frac in zip(ticks, (0.0, 0.5, 1.0), strict=True):
        y = by0 + round(frac * (bar_h - 1))
        draw.line((bx0 - 3, y, bx0 - 1, y), fill=(0, 0, 0))
        draw.text((bx0 - 4, y), t, fill=(0, 0, 0), font=font, anchor="rm")
    text = Image.new("RGB", (label_w + 2, label_h + 4), (255, 255, 255))
    ImageDraw.Draw(text).text((1, 0), label, fill=(0, 0, 0), font=font, anchor="lt")
    text = text.rotate(90, expand=True)
    image.paste(text.crop((0, 0, text.width, min(text.height, by1 - by0 + 8))), (x0 + 2, by0 - 4))
    return write_atomic(path, png_bytes(image))
