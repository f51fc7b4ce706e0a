"""Overlay and heatmap PNGs of a slide's window grid over its low-resolution thumbnail.

The blending is numpy on the thumbnail's own pixels (each thumbnail pixel takes the cell under its centre, see
the package docstring for cells); matplotlib only adds the legend or colour bar, on a bare Figure (never pyplot)
whose canvas is exactly the thumbnail's size, so the PNG has the thumbnail's width and height.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image

from crystal_dask.exports import colours_for
from crystal_dask.store.files import write_atomic
from crystal_dask.vocab import CLASSES

_DPI = 100


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
                   origin: tuple[float, float] = (0, 0), fill: float = -1) -> np.ndarray:
    """A (h, w) image of a (rows, cols) grid's values on thumbnail pixels; `fill` where no cell lies."""
    rows = cell_index(shape[0], downsample, origin[1], step, size, values.shape[0])
    cols = cell_index(shape[1], downsample, origin[0], step, size, values.shape[1])
    out = values[np.maximum(rows, 0)[:, None], np.maximum(cols, 0)[None, :]]
    return np.where((rows[:, None] >= 0) & (cols[None, :] >= 0), out, fill)


def class_overlay(thumbnail: np.ndarray, classes: np.ndarray, downsample: float, *, step: float, size: float,
                  origin: tuple[float, float] = (0, 0), class_names: Sequence[str] = CLASSES,
                  colours: dict[str, tuple[int, int, int]] | None = None, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 thumbnail with each scored cell alpha-blended in its class's colour (unscored cells untouched)."""
    grid = rasterize_grid(np.asarray(classes), thumbnail.shape[:2], downsample, step=step, size=size,
                          origin=origin).astype(np.int64)
    table = np.asarray(colours_for(tuple(class_names), colours), np.float32)
    colour = table[np.maximum(grid, 0)]
    blended = (1 - alpha) * thumbnail.astype(np.float32) + alpha * colour
    return np.where((grid >= 0)[..., None], np.rint(blended), thumbnail).astype(np.uint8)


def heatmap_overlay(thumbnail: np.ndarray, proba: np.ndarray, downsample: float, *, step: float, size: float,
                    origin: tuple[float, float] = (0, 0), cmap: str = "inferno", alpha: float = 0.6) -> np.ndarray:
    """RGB uint8 thumbnail with a (rows, cols) probability grid in [0, 1] blended through a colour map; NaN
    probabilities and cells without a window leave the thumbnail untouched."""
    grid = rasterize_grid(np.asarray(proba, np.float64), thumbnail.shape[:2], downsample, step=step, size=size,
                          origin=origin, fill=np.nan)
    rgba = matplotlib.colormaps[cmap](np.nan_to_num(np.clip(grid, 0, 1)))
    blended = (1 - alpha) * thumbnail.astype(np.float32) + alpha * 255 * rgba[..., :3].astype(np.float32)
    return np.where(np.isfinite(grid)[..., None], np.rint(blended), thumbnail).astype(np.uint8)


def _figure(image: np.ndarray) -> tuple[Figure, object]:
    h, w = image.shape[:2]
    fig = Figure(figsize=(w / _DPI, h / _DPI), dpi=_DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(image, interpolation="nearest")
    ax.set_axis_off()
    return fig, ax


def _png(fig: Figure, shape: tuple[int, int]) -> bytes:
    """Render the figure and encode exactly `shape` pixels (figsize * dpi can round one pixel short)."""
    canvas = FigureCanvasAgg(fig)  # the Agg canvas of this figure only: no pyplot, no global backend
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())[..., :3]
    h, w = shape
    out = np.full((h, w, 3), 255, np.uint8)
    out[: min(h, rgba.shape[0]), : min(w, rgba.shape[1])] = rgba[:h, :w]
    buf = io.BytesIO()
    Image.fromarray(out).save(buf, format="PNG")  # no timestamps or software tags: same input, same bytes
    return buf.getvalue()


def _fontsize(shape: tuple[int, int]) -> float:
    return float(np.clip(min(shape) / 45, 4, 10))


def overlay_png(path: str | Path, thumbnail: np.ndarray, classes: np.ndarray, downsample: float, *, step: float,
                size: float, origin: tuple[float, float] = (0, 0), class_names: Sequence[str] = CLASSES,
                colours: dict[str, tuple[int, int, int]] | None = None, alpha: float = 0.45,
                legend: str = "present") -> Path:
    """Write the class overlay as a PNG of the thumbnail's size, with a legend of the classes ("present": those
    on the map; "all": every class; "none")."""
    names = tuple(class_names)
    image = class_overlay(thumbnail, classes, downsample, step=step, size=size, origin=origin, class_names=names,
                          colours=colours, alpha=alpha)
    fig, ax = _figure(image)
    present = set(np.unique(classes[classes >= 0]).tolist())
    shown = {"present": [k for k in range(len(names)) if k in present], "all": list(range(len(names))),
             "none": []}[legend]
    if shown:
        rgb = colours_for(names, colours)
        handles = [Patch(facecolor=np.array(rgb[k]) / 255, edgecolor="black", linewidth=0.3, label=names[k])
                   for k in shown]
        ax.legend(handles=handles, loc="upper right", fontsize=_fontsize(image.shape[:2]), framealpha=0.85)
    return write_atomic(path, _png(fig, image.shape[:2]))


def heatmap_png(path: str | Path, thumbnail: np.ndarray, proba: np.ndarray, downsample: float, *, step: float,
                size: float, origin: tuple[float, float] = (0, 0), label: str = "probability",
                cmap: str = "inferno", alpha: float = 0.6) -> Path:
    """Write one class's probability grid as a heatmap PNG of the thumbnail's size, with a colour bar."""
    image = heatmap_overlay(thumbnail, proba, downsample, step=step, size=size, origin=origin, cmap=cmap,
                            alpha=alpha)
    fig, ax = _figure(image)
    cax = ax.inset_axes((0.90, 0.55, 0.025, 0.4))
    mappable = matplotlib.cm.ScalarMappable(Normalize(0, 1), matplotlib.colormaps[cmap])
    bar = fig.colorbar(mappable, cax=cax)
    fs = _fontsize(image.shape[:2])
    bar.ax.tick_params(labelsize=fs)
    bar.ax.yaxis.set_ticks_position("left")
    bar.set_label(label, fontsize=fs)
    bar.ax.yaxis.set_label_position("left")
    return write_atomic(path, _png(fig, image.shape[:2]))
