"""The per-process slide cache: one open Slide per file for a stage, reopened when the file changes, closed when
the stage changes or ends, never closed under a task still reading it."""

from __future__ import annotations

import numpy as np
import pytest

from crystal_dask.synthetic.slide_writer import write_slide
from crystal_dask.wsi import slide_cache
from crystal_dask.wsi.slide_cache import cached_slide, close_stage, open_count
from crystal_dask.wsi.slides import SlideError


@pytest.fixture
def two_slides(tmp_path):
    paths = []
    for i, colour in enumerate((40, 200)):
        paths.append(tmp_path / f"s{i}.svs")
        write_slide(paths[-1], np.full((256, 256, 3), colour, np.uint8), 0.5, tile=128, downsamples=(1,))
    yield paths
    close_stage("a"), close_stage("b"), close_stage("c")


def test_one_open_slide_per_file_for_the_stage(two_slides):
    a, b = two_slides
    with cached_slide(a, "a") as s1, cached_slide(b, "a") as s2:
        assert s1 is not s2 and open_count() == 2
    with cached_slide(a, "a") as again:
        assert again is s1
        assert (again.read(0, 0, 0, 4, 4) == 40).all()
    assert close_stage("a") == 0 and open_count() == 0
    with pytest.raises(SlideError, match="reading tiles of level 0 failed"):  # closed: the file handle is gone
        s1.read(0, 0, 0, 4, 4)


def test_a_new_stage_closes_the_last_ones_and_a_changed_file_is_reopened(two_slides):
    a, b = two_slides
    with cached_slide(a, "a") as old:
        pass
    with cached_slide(a, "b") as new:
        assert new is not old and open_count() == 1
    write_slide(a, np.full((256, 256, 3), 90, np.uint8), 0.5, tile=128, downsamples=(1,), quality=95)
    with cached_slide(a, "b") as changed:
        assert changed is not new and (np.abs(changed.read(0, 0, 0, 4, 4).astype(int) - 90) <= 1).all()


def test_slides_in_use_are_not_closed(two_slides, monkeypatch):
    a, b = two_slides
    monkeypatch.setattr(slide_cache, "MAX_OPEN", 0)
    with cached_slide(a, "c") as s:
        with cached_slide(b, "c"):
            pass  # b is evicted at once (over the limit and unused); a is in use and stays
        assert (s.read(0, 0, 0, 4, 4) == 40).all()
        assert close_stage("c") == 1  # a task still reads it
    assert open_count() == 0  # evicted once released


def test_missing_file_is_a_slide_error(tmp_path):
    with pytest.raises(SlideError, match=r"missing\.svs: cannot open"), cached_slide(tmp_path / "missing.svs", "a"):
        pass
