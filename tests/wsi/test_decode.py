"""Reduced decoding (jpeg.py, Slide.read_scaled, PatchSettings.decode) and the exact fractional box, on the real
scanner files in ../shared/realdata and on pyramids made here from their pixels.

- fidelity: the fast path's patches stay within FIDELITY grey levels (mean absolute difference) of the exact
  path's, same settings, on CMU-1-Small-Region.svs (Aperio, RGB-coded JPEG) and OS-1-detail.ome.tif (JFIF YCbCr);
- a tile decoded through `splice` (tables + Adobe marker) equals tifffile's own decode of it;
- at a coarser level, the patch of a box correlates better with the level-0 patch of the same box than the patch
  of the box widened to whole level pixels (what extraction did before format 4).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tifffile

from crystal_dask.synthetic.slide_writer import downsample
from crystal_dask.wsi import jpeg
from crystal_dask.wsi.patches import PatchSettings, decode_scale, render_patch
from crystal_dask.wsi.slides import Slide
from tests.helpers import REALDATA

REAL = REALDATA
CMU = REAL / "CMU-1-Small-Region.svs"
OME = REAL / "OS-1-detail.ome.tif"
FIDELITY = 2.0  # grey levels, mean absolute difference per patch (README: "Decoding less")


def real(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (real scanner files live outside the project, in ../shared/realdata)")
    return path


def boxes(width: int, height: int, n: int, lo: int, seed: int) -> list[tuple[int, int, int, int]]:
    """n square boxes of lo..min side px at random places inside a width x height slide."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        size = int(rng.integers(lo, min(width, height)))
        x, y = int(rng.integers(0, width - size)), int(rng.integers(0, height - size))
        out.append((x, y, x + size, y + size))
    return out


@pytest.mark.parametrize("path", [CMU, OME], ids=["cmu1-svs", "os1-ome"])
@pytest.mark.parametrize("grey", ["bt601", "bt709"])
def test_fast_path_is_within_the_fidelity_bound_of_the_exact_path(path, grey):
    with Slide(real(path)) as slide:
        scales = set()
        for box in boxes(slide.width, slide.height, 6, 300, seed=len(grey)):
            s = PatchSettings(level=0, grey=grey, patch_size=128)  # reduced 2x from 512 px, 4x from 1024 px
            scales.add(decode_scale(slide, 0, box, s))
            fast, _ = render_patch(slide, box, s)
            exact, _ = render_patch(slide, box, PatchSettings(level=0, grey=grey, patch_size=128, decode="exact"))
            mad = np.abs(fast.astype(np.int16) - exact.astype(np.int16)).mean()
            assert mad <= FIDELITY, (box, mad)
            assert mad > 0 or decode_scale(slide, 0, box, s) == 1  # the fast path did decode differently
    assert scales & {2, 4}, scales  # the boxes did exercise reduced decoding


@pytest.mark.parametrize("path, index", [(CMU, 5), (OME, 3)], ids=["cmu1-svs", "os1-ome"])
def test_spliced_tile_decodes_as_tifffile_does(path, index):
    with tifffile.TiffFile(real(path)) as tif:
        page = tif.pages[0]
        fh = tif.filehandle
        fh.seek(page.dataoffsets[index])
        data = fh.read(page.databytecounts[index])
        theirs = page.decode(data, index, jpegtables=page.jpegtables, jpegheader=page.jpegheader,
                             _fullsize=True)[0][0][..., :3]
        stream = jpeg.splice(page.jpegtables, data, page.photometric == tifffile.PHOTOMETRIC.RGB)
    assert jpeg.scalable(stream)
    h, w = theirs.shape[:2]
    rgb = jpeg.decode_scaled(stream, 1, False, (h, w))
    assert np.abs(rgb.astype(np.int16) - theirs).max() <= 1  # same libjpeg-turbo, same colour space
    grey = jpeg.decode_scaled(stream, 1, True, (h, w)).astype(np.float64)
    assert np.abs(grey - theirs @ np.array([0.299, 0.587, 0.114])).mean() < 0.5  # BT.601 luma
    quarter = jpeg.decode_scaled(stream, 4, True, (h, w))
    assert quarter.shape == (h // 4, w // 4)
    blocks = grey.reshape(h // 4, 4, w // 4, 4).mean(axis=(1, 3))
    assert np.abs(quarter - blocks).mean() < 2.0  # DCT-domain 1/4 is close to a 4x4 box average


def test_aperio_rgb_tiles_need_the_adobe_marker():
    """Without the marker libjpeg takes Aperio's RGB-coded components for YCbCr: colours come out wrong."""
    with tifffile.TiffFile(real(CMU)) as tif:
        page = tif.pages[0]
        fh = tif.filehandle
        fh.seek(page.dataoffsets[5])
        data = fh.read(page.databytecounts[5])
        theirs = page.decode(data, 5, jpegtables=page.jpegtables, jpegheader=page.jpegheader,
                             _fullsize=True)[0][0][..., :3]
    unmarked = jpeg.decode_scaled(jpeg.splice(page.jpegtables, data, rgb=False), 1, False, theirs.shape[:2])
    assert np.abs(unmarked.astype(np.int16) - theirs).mean() > 10


@pytest.fixture(scope="module")
def cmu_pyramid(tmp_path_factory) -> dict[str, Path]:
    """CMU-1-Small-Region's real pixels as 2-level pyramids (downsample 4, 741 rows from 2967 as Aperio rounds):
    JPEG tiles (the fast path) and zlib tiles (a codec that keeps the full decode)."""
    with Slide(real(CMU)) as slide:
        image = slide.read(0, 0, 0, slide.width, slide.height)
    levels = [image, downsample(image, 4)]
    out = {}
    for codec in ("jpeg", "zlib"):
        path = tmp_path_factory.mktemp("pyramid") / f"cmu1-{codec}.tif"
        with tifffile.TiffWriter(path) as tw:
            tw.write(levels[0], tile=(256, 256), subifds=1, compression=codec, photometric="rgb")
            tw.write(levels[1], tile=(256, 256), subfiletype=1, compression=codec, photometric="rgb")
        out[codec] = path
    return out


@pytest.mark.parametrize("codec, decode", [("jpeg", "fast"), ("jpeg", "exact"), ("zlib", "fast")])
def test_coarser_level_patch_matches_level_0_better_than_the_widened_box(cmu_pyramid, codec, decode):
    exact_box, widened = [], []
    with Slide(cmu_pyramid[codec]) as slide:
        assert [lvl.height for lvl in slide.levels] == [2967, 741]
        for x0, y0, x1, y1 in boxes(slide.width, slide.height, 6, 1030, seed=1):
            box = (x0 + (x0 % 4 == 0), y0 + (y0 % 4 == 0), x1, y1)  # off the level-1 grid
            ref, _ = render_patch(slide, box, PatchSettings(level=0, decode=decode))
            ours, level = render_patch(slide, box, PatchSettings(decode=decode))
            assert level == 1
            # before format 4: the box widened to whole level-1 pixels
            wide = tuple(4 * math.floor(v / 4) for v in box[:2]) + tuple(4 * math.ceil(v / 4) for v in box[2:])
            old, _ = render_patch(slide, wide, PatchSettings(level=1, decode=decode))
            exact_box.append(np.corrcoef(ref.ravel(), ours.ravel())[0, 1])
            widened.append(np.corrcoef(ref.ravel(), old.ravel())[0, 1])
    assert np.mean(exact_box) >= 0.99, exact_box
    assert np.mean(exact_box) >= np.mean(widened) + 0.005, (np.mean(exact_box), np.mean(widened))
