"""Scoring a slide's window predictions against its annotations: window labels by NEDC's frame rule, the
published tables (crystal_dask.metrics) on the labelled windows, per-class Dice of predicted against annotated
area on the window grid, and the scores of a run's slides added up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from crystal_dask.metrics import confusion, summarize
from crystal_dask.vocab import CLASSES
from crystal_dask.wsi.patches import cell_mask
from crystal_dask.wsi.tissue_mask import window_boxes


def label_windows(boxes: np.ndarray, polygons: Sequence[tuple[Sequence[float], Sequence[float]]],
                  labels: Sequence[int], min_overlap: float = 0.5,
                  cells_per_side: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(label, overlap) per window: the label of the region covering the largest fraction of the window when
    that fraction is >= min_overlap (NEDC's frame rule), else -1; overlap is that largest fraction.

    `boxes` (N, 4: x0, y0, x1, y1) are square level-0 windows of one size on a grid; `polygons` are (xs, ys)
    level-0 vertices with `labels` their class indices. Overlap is measured as extract's window mode measures
    it: the polygon rasterised (patches.cell_mask) on cells of side / cells_per_side, each window covering
    cells_per_side^2 cells from its rounded cell offset, counted through an integral image.
    """
    boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
    best = np.zeros(len(boxes))
    label = np.full(len(boxes), -1, np.int64)
    if len(boxes) == 0 or not len(polygons):
        return label, best
    sides = np.unique(boxes[:, 2] - boxes[:, 0])
    if len(sides) != 1 or (boxes[:, 3] - boxes[:, 1] != sides[0]).any():
        raise ValueError("label_windows needs square windows of one size")
    n = cells_per_side
    cell = float(sides[0]) / n
    ox, oy = boxes[:, 0].min(), boxes[:, 1].min()
    bx = np.round((boxes[:, 0] - ox) / cell).astype(np.int64)
    by = np.round((boxes[:, 1] - oy) / cell).astype(np.int64)
    for (xs, ys), lab in zip(polygons, labels, strict=True):
        xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
        gx0 = max(int(np.floor((xs.min() - ox) / cell)), 0)
        gy0 = max(int(np.floor((ys.min() - oy) / cell)), 0)
        gx1 = int(np.ceil((xs.max() - ox) / cell)) + 1
        gy1 = int(np.ceil((ys.max() - oy) / cell)) + 1
        if gx1 <= gx0 or gy1 <= gy0:
            continue
        near = (bx + n > gx0) & (bx < gx1) & (by + n > gy0) & (by < gy1)
        if not near.any():
            continue
        covered = cell_mask(xs, ys, ox + gx0 * cell, oy + gy0 * cell, cell, (gy1 - gy0, gx1 - gx0))
        integral = np.pad(covered.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        w, h = gx1 - gx0, gy1 - gy0
        x0, x1 = np.clip(bx[near] - gx0, 0, w), np.clip(bx[near] + n - gx0, 0, w)
        y0, y1 = np.clip(by[near] - gy0, 0, h), np.clip(by[near] + n - gy0, 0, h)
        frac = (integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]) / (n * n)
        idx = np.nonzero(near)[0]
        better = frac > best[idx]
        best[idx[better]] = frac[better]
        label[idx[better]] = lab
    label[best < min_overlap] = -1
    return label, best


def window_counts(pred: np.ndarray, truth: np.ndarray, class_names: Sequence[str] = CLASSES) -> dict[str, Any]:
    """What a slide's scores are made of, and what adds up over slides: the confusion of the windows both predicted
    and labelled, and per class Dice's numerator and denominator [2|P & T|, |P| + |T|] over the whole grid
    (-1: no prediction / no annotation; windows have one area, so counts are areas). JSON-able."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} must be one grid")
    pred, truth = pred.ravel(), truth.ravel()
    both = (pred >= 0) & (truth >= 0)
    cm = confusion(truth[both].astype(np.int64), pred[both].astype(np.int64), len(class_names))
    dice = {}
    for k, name in enumerate(class_names):
        p, t = pred == k, truth == k
        dice[name] = [2 * int((p & t).sum()), int(p.sum() + t.sum())]
    return {"confusion": cm.tolist(), "dice_counts": dice}


def scores_of(counts: Mapping[str, Any], class_names: Sequence[str] = CLASSES) -> dict[str, Any]:
    """The published tables of a confusion (metrics.summarize; None when no window is both predicted and labelled)
    and per-class Dice 2|P & T| / (|P| + |T|) (None when a class is neither predicted nor annotated). Over the whole
    grid, predictions outside annotated regions count (restricted to annotated windows, Dice would equal the
    per-class F1 of the tables)."""
    cm = np.asarray(counts["confusion"], np.int64)
    return {"windows_scored": int(cm.sum()), "summary": summarize(cm, class_names) if cm.sum() else None,
            "dice": {c: num / den if den else None for c, (num, den) in counts["dice_counts"].items()}}


def score_windows(pred: np.ndarray, truth: np.ndarray, class_names: Sequence[str] = CLASSES) -> dict[str, Any]:
    """The scores of one grid's predicted against its annotated windows (`scores_of` its `window_counts`)."""
    return scores_of(window_counts(pred, truth, class_names), class_names)


def score_slide(classes: np.ndarray, regions: Sequence[Sequence[Any]], size: float, step: float,
                min_overlap: float) -> dict[str, Any]:
    """Window labels by NEDC's frame rule, then the published tables and per-class Dice, plus the counts that
    add up over slides (confusion; Dice numerators and denominators). `regions`: (xs, ys, class index)."""
    rows, cols = classes.shape
    truth, _ = label_windows(window_boxes(rows, cols, size, step), [(r[0], r[1]) for r in regions],
                             [int(r[2]) for r in regions], min_overlap)
    counts = window_counts(classes, truth.reshape(rows, cols))
    return scores_of(counts) | counts


def combine_scores(scores: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Slides' scores added up: the published tables of the summed confusion and Dice of the summed areas."""
    scores = [s for s in scores if s]
    if not scores:
        return None
    counts = {"confusion": np.sum([np.array(s["confusion"]) for s in scores], axis=0),
              "dice_counts": {c: [sum(s["dice_counts"][c][i] for s in scores) for i in (0, 1)] for c in CLASSES}}
    return {"slides": len(scores), **scores_of(counts)}
