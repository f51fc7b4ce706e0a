"""Scoring whole-slide windows (infer/scoring.py): NEDC's frame rule, the overlap extract measures, Dice and the
published tables per slide, and slides' scores added up."""

from __future__ import annotations

import numpy as np
import pytest

from crystal_dask.infer.scoring import combine_scores, label_windows, score_slide, score_windows
from crystal_dask.synthetic.corpus import place_regions
from crystal_dask.wsi.patches import plan_windows
from crystal_dask.wsi.tissue_mask import window_boxes


def test_label_windows_frame_rule_and_scores():
    boxes = window_boxes(4, 4, 100, 100)
    square = ([0, 250, 250, 0], [0, 0, 150, 150])  # covers windows fully, or by half / quarter
    label, overlap = label_windows(boxes, [square], [6], min_overlap=0.5)
    grid = overlap.reshape(4, 4)
    np.testing.assert_allclose(grid[0], [1, 1, 0.5, 0])
    np.testing.assert_allclose(grid[1], [0.5, 0.5, 0.25, 0])
    assert label.reshape(4, 4)[:2].tolist() == [[6, 6, 6, -1], [6, 6, -1, -1]]
    pred = np.array([[6, 6, 8, -1], [6, 1, -1, 8]])
    truth = label.reshape(4, 4)[:2]
    scores = score_windows(pred, truth)
    dice = scores["dice"]
    assert dice["dcis"] == pytest.approx(2 * 3 / (3 + 5)) and dice["indc"] == 0.0 and dice["bckg"] is None
    assert scores["windows_scored"] == 5 and scores["summary"]["n"] == 5 and scores["summary"]["correct"] == 3


def test_label_windows_matches_extract_overlap():
    """On extract's own windows of a region, label_windows measures the overlap extract measured."""
    rng = np.random.default_rng(4)
    (region,) = place_regions(["dcis"], 3000, 2400, rng)
    x0, y0, x1, y1 = region.bbox
    row = {"x0": x0, "y0": y0, "x1": x1, "y1": y1, "polygon_x": list(region.x), "polygon_y": list(region.y),
           "mpp": 0.5, "slide_width": 3000, "slide_height": 2400}
    from crystal_dask.wsi.patches import PatchSettings

    windows, _ = plan_windows(row, PatchSettings(mode="window", window_size=200, window_step=200, min_overlap=0.01))
    boxes = np.array([w[:4] for w in windows])
    boxes = np.concatenate([[[x0, y0, x0 + 200, y0 + 200]], boxes])  # extract's lattice starts at the bbox
    _, overlap = label_windows(boxes, [(region.x, region.y)], [6], min_overlap=0.5)
    np.testing.assert_allclose(overlap[1:], [w[4] for w in windows])


def test_slide_scores_add_up_over_slides():
    square = ([0, 250, 250, 0], [0, 0, 150, 150], 6)
    classes = np.array([[6, 6, 8, -1], [6, 1, -1, 8], [-1, -1, -1, -1], [-1, -1, -1, -1]])
    one = score_slide(classes, [square], 100, 100, 0.5)
    assert one["windows_scored"] == 5 and np.array(one["confusion"]).sum() == 5
    assert one["dice_counts"]["dcis"] == [6, 8] and one["dice"]["dcis"] == pytest.approx(6 / 8)
    both = combine_scores([one, one, None])
    assert both["slides"] == 2 and both["windows_scored"] == 10 and both["dice"]["dcis"] == pytest.approx(6 / 8)
    assert both["summary"]["n"] == 10 and combine_scores([]) is None
