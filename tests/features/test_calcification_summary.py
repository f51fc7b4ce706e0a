"""The fraction of rows with a detected deposit, per class and crystalline / other row."""

from __future__ import annotations

import numpy as np
import pytest

from crystal_dask.features import calcification
from crystal_dask.features.calcification_summary import markdown, nonzero_by_group


def test_nonzero_by_group_counts_rows_with_a_deposit():
    empty = calcification.EMPTY
    hit = empty.copy()
    hit[0] = 12.5  # one deposit's count per mm²
    matrix = np.stack([hit, empty, hit, hit, empty])
    out = nonzero_by_group(["indc", "indc", "indc", "dcis", "dcis"], [True, True, False, False, False], matrix)
    assert out == [
        {"cls": "dcis", "crystal": False, "rows": 2, "with_deposit": 1, "fraction": 0.5},
        {"cls": "indc", "crystal": False, "rows": 1, "with_deposit": 1, "fraction": 1.0},
        {"cls": "indc", "crystal": True, "rows": 2, "with_deposit": 1, "fraction": 0.5},
    ]
    lines = markdown(out)
    assert lines[2] == "| dcis | – | 50% (1/2) |" and lines[3] == "| indc | 50% (1/2) | 100% (1/1) |"


def test_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="calcification columns"):
        nonzero_by_group(["a"], [True], np.zeros((1, 3)))
