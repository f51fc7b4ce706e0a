"""The gallery's choice of examples and its area-averaged thumbnails (the montage: tests/report/test_write.py)."""

from __future__ import annotations

import numpy as np

from crystal_dask.report.gallery import choose_examples, thumbnail


def test_gallery_choice_and_thumbnails() -> None:
    """Half the places to crystalline rows when there are enough; spread over the rows; area-averaged thumbnails."""
    cls = np.array(["a"] * 20 + ["b"] * 3)
    crystal = np.array([i % 5 == 0 for i in range(20)] + [True, False, False])
    rows = np.arange(23)[::-1].copy()  # table order need not be row order
    got = choose_examples(cls, crystal, rows, ["b", "a"], per_class=6)
    assert list(got) == ["b", "a"] and got["b"] == [0, 1, 2]
    a_rows = got["a"]
    a_cry = [r for r in a_rows if crystal[np.flatnonzero(rows == r)[0]]]
    assert len(a_rows) == 6 and len(a_cry) == 3 and a_rows == sorted(a_rows)
    patch = np.arange(256 * 256, dtype=np.int64).reshape(256, 256) % 251
    t = thumbnail(patch.astype(np.uint8))
    assert t.shape == (96, 96) and t.dtype == np.uint8
    edges = [*((np.arange(96) * 256) // 96), 256]  # boxes of 2 or 3 input pixels a side
    for i, j in ((0, 0), (1, 40), (95, 95), (50, 7)):
        assert t[i, j] == round(patch[edges[i]:edges[i + 1], edges[j]:edges[j + 1]].mean())
    assert thumbnail(np.full((256, 256), 77, np.uint8)).tolist() == np.full((96, 96), 77).tolist()
