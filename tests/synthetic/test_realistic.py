"""Realistic-size synthetic slides (mosaics of glass and a painted tissue pool), at a size a test can afford:
tissue share, reused tile bytes, levels that are exact block means of level 0, determinism, a readable SVS."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from crystal_dask.synthetic.corpus import place_regions
from crystal_dask.synthetic.realistic import TILE, TISSUE_FRACTION, write_realistic_slide
from crystal_dask.synthetic.slide_writer import downsample
from crystal_dask.wsi.slides import Slide

W, H = 8192, 6144
pytestmark = pytest.mark.slow  # painting the tissue pool takes ~10 s on a loaded 2-core machine


def write(path, seed=0):
    rng = np.random.default_rng(seed)
    regions = place_regions(["norm", "indc", "dcis"], W, H, rng)
    return write_realistic_slide(path, W, H, regions, 0.25, "fcbr", rng), regions


def test_mosaic_slide_reads_as_aperio_with_consistent_levels(tmp_path):
    written, regions = write(tmp_path / "a.svs")
    assert TISSUE_FRACTION[0] <= written.tissue_fraction <= 0.9  # regions come on top of the drawn blobs
    with tifffile.TiffFile(tmp_path / "a.svs") as tif:
        counts = tif.pages[0].databytecounts
        offsets = tif.pages[0].dataoffsets
        assert len(set(counts)) < len(counts) // 4  # glass and pool tiles: few distinct encodings
        assert len(counts) == (W // TILE) * (H // TILE) and len(set(offsets)) == len(offsets)
    with Slide(tmp_path / "a.svs") as slide:
        assert slide.format == "svs" and slide.mpp == 0.25
        assert [(lv.width, lv.height) for lv in slide.levels] == [(W, H), (W // 4, H // 4), (W // 16, H // 16)]
        r = regions[0]
        x, y = int(min(r.x)) // 16 * 16, int(min(r.y)) // 16 * 16
        level0 = slide.read(0, x, y, 512, 512)
        level1 = slide.read(1, x // 4, y // 4, 128, 128)
    assert level0.std() > 5  # tissue under the region, not glass
    # level 1 is the 4x4 block mean of level 0 (before JPEG): the two agree within JPEG's error
    assert np.abs(downsample(level0, 4).astype(int) - level1).mean() < 4


def test_same_arguments_same_bytes(tmp_path):
    write(tmp_path / "a.svs")
    write(tmp_path / "b.svs")
    assert (tmp_path / "a.svs").read_bytes() == (tmp_path / "b.svs").read_bytes()
