"""The report's PNG figures, drawn on bare matplotlib Figures (Agg), never through pyplot, so the caller's backend
and global state are left alone. Only this module imports matplotlib: a report without figures to draw (a
skipped step, `crystal-dask status`) never pays for it. Each function draws one figure from plain data and
writes it atomically, so figures can be drawn on any process (the report draws them on the cluster's workers)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from crystal_dask.report.markdown import pct
from crystal_dask.store.files import write_atomic

# zlib level of every PNG: on the demo's gallery, level 3 took 0.05 s of CPU for 578 kB where PIL's optimize=True
# took 0.55 s for 609 kB (and the default 6, 0.12 s for 661 kB)
PNG_LEVEL = 3


def save(fig: Figure, path: Path, dpi: int = 110) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None}, pil_kwargs={"compress_level": PNG_LEVEL})
    return write_atomic(path, buf.getvalue())


def save_rgb(fig: Figure, path: Path, dpi: int) -> Path:
    """Like save, without the alpha channel (a photographic montage is a quarter smaller as RGB)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    fig.dpi = dpi
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    buf = io.BytesIO()
    Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3]).save(buf, format="png", compress_level=PNG_LEVEL)
    return write_atomic(path, buf.getvalue())


def confusion_png(summary: dict[str, Any], title: str, path: Path) -> Path:
    cm = np.array(summary["confusion"])
    labels = summary["labels"]
    support = cm.sum(axis=1, keepdims=True)
    # rows of an absent class have no fractions: masked, drawn grey
    frac = np.ma.masked_invalid(np.divide(cm, support, out=np.full(cm.shape, np.nan), where=support > 0))
    k = len(labels)
    fig = Figure(figsize=(max(4.8, 1.2 + 0.62 * k), max(4.0, 1.0 + 0.55 * k)), layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="0.88")
    im = ax.imshow(frac, cmap=cmap, vmin=0.0, vmax=1.0)
    dark = frac.filled(0) > 0.55
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{cm[i, j]:,}", ha="center", va="center", fontsize=7,
                    color="white" if dark[i, j] else "black", fontweight="bold" if i == j else "normal")
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), [f"{c} ({s:,})" for c, s in zip(labels, support[:, 0], strict=True)])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (rows)")
    ax.set_title(f"{title}\naccuracy {pct(summary['accuracy'])} of {summary['n']:,}", fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true class's rows")
    return save(fig, path)


def per_class_png(summaries: dict[str, dict[str, Any]], classes: Sequence[str], title: str, path: Path) -> Path:
    k, m = len(classes), len(summaries)
    width = 0.8 / m
    fig = Figure(figsize=(max(6.0, 0.75 * k + 1.5), 4.0), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(k)
    rows = next(iter(summaries.values()))["classes"]  # supports, from the first config
    for j, c in enumerate(classes):
        if rows[c]["support"] == 0:
            ax.text(j, 1, "no rows", ha="center", va="bottom", fontsize=7, color="0.4", rotation=90)
    for i, (config, s) in enumerate(summaries.items()):
        acc = [s["classes"][c]["accuracy"] for c in classes]
        heights = np.array([np.nan if a is None else 100 * a for a in acc])
        bars = ax.bar(x - 0.4 + width * (i + 0.5), heights, width, label=f"{config} (overall {pct(s['accuracy'])})")
        ax.bar_label(bars, labels=["" if a is None else f"{100 * a:.0f}" for a in acc], fontsize=6, padding=1)
    ax.set_xticks(x, [f"{c}\n{rows[c]['support']:,}" for c in classes])
    ax.set_xlabel("class, with its number of rows")
    ax.set_ylim(0, 118)  # headroom: the legend sits above the 100% bars
    ax.set_ylabel("per-class accuracy (recall), %")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", frameon=False, ncols=min(m, 3))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return save(fig, path)



def importances_png(entry: dict[str, Any], title: str, path: Path) -> Path:
    top = entry["top"]
    k = len(top)
    fig = Figure(figsize=(7.0, 1.3 + 0.27 * k), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(k)
    bars = ax.barh(y, [t["importance"] for t in top], color="tab:blue")
    ax.bar_label(bars, labels=[f"{t['importance']:.4f}" for t in top], fontsize=7, padding=2)
    ax.set_yticks(y, [t["name"] for t in top], fontsize=8)
    ax.invert_yaxis()  # the largest on top
    ax.set_xlabel("importance (mean decrease in impurity, normalised over all features)")
    ax.set_title(f"{title}\ntop {k} of {entry['n_features']:,} features", fontsize=10)
    ax.margins(x=0.18)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    return save(fig, path)



def montage_png(canvas: np.ndarray, texts: list[tuple[float, float, str, dict[str, Any]]], path: Path,
                dpi: int) -> Path:
    """An RGB canvas drawn 1:1 (1 canvas pixel = 1 PNG pixel) with its texts: [(x, y, text, Axes.text kwargs)]."""
    height, width = canvas.shape[:2]
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, interpolation="nearest", resample=False)
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_axis_off()
    for x, yy, s, kw in texts:
        ax.text(x, yy, s, color="black", **kw)
    return save_rgb(fig, path, dpi)
