"""Patches: settings validation, window planning, level choice, greyscale reads (banded, block-averaged, masked)
and whole patches, on small real pyramids written here (tifffile, lossless; and the project's SVS writer).

Expected values are computed independently: by hand, with skimage's rgb2gray / block_reduce, or by slicing the
image the slide was written from.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage.color import rgb2gray
from skimage.measure import block_reduce

from crystal_dask.synthetic.slide_writer import downsample, write_slide
from crystal_dask.wsi import patches
from crystal_dask.wsi.patches import PatchSettings, choose_level, plan_windows, read_grey, render_patch, to_grey
from crystal_dask.wsi.slides import Slide

COLOUR = (200, 120, 40)  # uniform slide colour (JPEG round-trips a flat tile exactly)


def luma(rgb: np.ndarray) -> np.ndarray:
    """skimage's grey (ITU-R 709) on the 0..255 scale, in float64."""
    return rgb2gray(np.asarray(rgb, np.uint8)) * 255.0


@pytest.fixture(scope="module")
def noisy(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """Lossless (zlib) tifffile pyramid in SubIFDs, 1024x768 noise at downsamples 1, 2, 4, and its levels."""
    base = np.random.default_rng(11).integers(0, 256, (768, 1024, 3), dtype=np.uint8)
    levels = [base, downsample(base, 2), downsample(base, 4)]
    path = tmp_path_factory.mktemp("patches") / "noise.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(levels[0], tile=(128, 128), subifds=2, compression="zlib", photometric="rgb")
        for lv in levels[1:]:
            tw.write(lv, tile=(64, 64), subfiletype=1, compression="zlib", photometric="rgb")
    return path, levels


@pytest.fixture(scope="module")
def uniform(tmp_path_factory) -> Path:
    """Aperio-style SVS from the project's writer: 2048x1536 of one colour, levels at downsamples 1, 4, 16."""
    path = tmp_path_factory.mktemp("patches") / "uniform.svs"
    write_slide(path, np.full((1536, 2048, 3), COLOUR, np.uint8), 0.5, tile=256, downsamples=(1, 4, 16))
    return path


def region(x0, y0, x1, y1, xs=None, ys=None, *, width=10_000, height=10_000, mpp=0.5) -> dict:
    """A regions-table row: bbox, polygon (default: the bbox itself), slide size and pixel size."""
    return {"x0": x0, "y0": y0, "x1": x1, "y1": y1,
            "polygon_x": xs if xs is not None else [x0, x1, x1, x0],
            "polygon_y": ys if ys is not None else [y0, y0, y1, y1],
            "slide_width": width, "slide_height": height, "mpp": mpp}


# ------------------------------------------------------------------------------------------------ settings
def test_settings_defaults_config_and_round_trip():
    assert PatchSettings.from_config(None) == PatchSettings()
    s = PatchSettings.from_config({"mode": "window", "window_size": 300, "window_unit": "um", "level": 1})
    assert (s.mode, s.window_size, s.window_unit, s.level) == ("window", 300, "um", 1)
    assert PatchSettings(**s.as_dict()) == s
    assert set(s.as_dict()) == {"mode", "patch_size", "min_side", "level", "window_size", "window_step",
                                "window_unit", "magnification", "min_overlap", "mask_outside", "background",
                                "chunk_rows", "decode", "grey"}


@pytest.mark.parametrize("key, value", [
    ("mode", "tile"), ("window_unit", "mm"), ("patch_size", 0), ("patch_size", 256.0), ("min_side", -1),
    ("chunk_rows", 0), ("level", -1), ("level", 1.5), ("window_size", 0), ("window_size", float("nan")),
    ("window_step", -5), ("magnification", 0), ("min_overlap", 0), ("min_overlap", 1.5), ("background", 256),
    ("background", -1), ("decode", "turbo"), ("decode", True), ("grey", "bt2020"), ("grey", None),
])
def test_invalid_settings_name_the_key_and_value(key, value):
    with pytest.raises(ValueError, match=rf"^extract\.{key}: .*got {re.escape(repr(value))}$"):
        PatchSettings(**{key: value})
    with pytest.raises(ValueError, match=rf"^extract\.{key}: "):
        PatchSettings.from_config({key: value})


def test_unknown_config_key_is_named():
    with pytest.raises(ValueError, match=r"^extract: unknown key\(s\) \['patch'\]"):
        PatchSettings.from_config({"patch": 128})


@pytest.mark.parametrize("key, value", [("window_size", "500"), ("min_overlap", "0.5"), ("patch_size", True),
                                        ("background", 12.5), ("window_size", float("inf"))])
def test_wrong_typed_settings_name_the_key(key, value):
    with pytest.raises(ValueError, match=rf"^extract\.{key}: "):
        PatchSettings(**{key: value})


# ------------------------------------------------------------------------------------------------ planning
def test_windows_tile_a_square_region():
    windows, reason = plan_windows(region(100, 50, 700, 650), PatchSettings(mode="window", window_size=200))
    assert reason == ""
    assert windows == [(100 + 200 * i, 50 + 200 * j, 300 + 200 * i, 250 + 200 * j, 1.0)
                       for j in range(3) for i in range(3)]


def test_window_step_makes_overlapping_windows():
    s = PatchSettings(mode="window", window_size=200, window_step=100)
    windows, _ = plan_windows(region(0, 0, 600, 200), s)
    assert windows == [(x, 0, x + 200, 200, 1.0) for x in (0, 100, 200, 300, 400)]


def test_windows_below_min_overlap_are_dropped():
    # L-shaped region: the left column and the bottom row of a 3x3 grid of 200px windows
    xs, ys = [0, 200, 200, 600, 600, 0], [0, 0, 400, 400, 600, 600]
    windows, reason = plan_windows(region(0, 0, 600, 600, xs, ys), PatchSettings(mode="window", window_size=200))
    assert reason == ""
    assert sorted(windows) == sorted([(0, 0, 200, 200, 1.0), (0, 200, 200, 400, 1.0), (0, 400, 200, 600, 1.0),
                                      (200, 400, 400, 600, 1.0), (400, 400, 600, 600, 1.0)])
    for w in plan_windows(region(0, 0, 600, 600, xs, ys), PatchSettings(mode="window", window_size=200,
                                                                        min_overlap=0.01))[0]:
        assert w[4] >= 0.01  # every kept window honours the threshold


def test_windows_never_cross_the_slide_edge():
    row = region(100, 100, 700, 500, width=650, height=480)
    windows, _ = plan_windows(row, PatchSettings(mode="window", window_size=200))
    # x windows at 100, 300 fit; 500..700 crosses x=650. y windows at 100 fits; 300..500 crosses y=480
    assert windows == [(100, 100, 300, 300, 1.0), (300, 100, 500, 300, 1.0)]


def test_window_in_microns_and_at_a_magnification():
    # 100 um at 0.5 um/px is 200 level-0 px
    windows, _ = plan_windows(region(0, 0, 400, 400, mpp=0.5),
                              PatchSettings(mode="window", window_size=100, window_unit="um"))
    assert [w[:4] for w in windows] == [(0, 0, 200, 200), (200, 0, 400, 200), (0, 200, 200, 400),
                                        (200, 200, 400, 400)]
    # mpp 0.25 is 40x at level 0: 100 px at 10x are 400 level-0 px, stepping 50 px at 10x = 200 level-0 px
    windows, _ = plan_windows(region(0, 0, 600, 400, mpp=0.25),
                              PatchSettings(mode="window", window_size=100, window_step=50, magnification=10))
    assert [w[:4] for w in windows] == [(0, 0, 400, 400), (200, 0, 600, 400)]


def test_microns_without_mpp_give_the_reason():
    windows, reason = plan_windows(region(0, 0, 400, 400, mpp=None),
                                   PatchSettings(mode="window", window_size=100, window_unit="um"))
    assert windows == [] and "no MPP" in reason


def test_region_too_small_for_a_window_gives_the_reason():
    windows, reason = plan_windows(region(0, 0, 100, 100), PatchSettings(mode="window", window_size=400))
    assert windows == []
    assert reason == "no 400px window overlaps the region by at least 50% (bbox 100x100px)"


def test_half_covered_window_scores_half():
    s = PatchSettings(mode="window", window_size=400, window_step=300, min_overlap=0.1)
    windows, _ = plan_windows(region(0, 0, 500, 500), s)
    # window 300..700 covers 200 of its 400 px in x, all of y (0..400): overlap 0.5
    assert windows == [(0, 0, 400, 400, 1.0), (300, 0, 700, 400, 0.5), (0, 300, 400, 700, 0.5),
                       (300, 300, 700, 700, 0.25)]


def test_windows_dropped_at_the_slide_edge_say_so():
    windows, reason = plan_windows(region(300, 0, 500, 400, width=500, height=1000),
                                   PatchSettings(mode="window", window_size=400))
    assert windows == [] and "edge" in reason


# ------------------------------------------------------------------------------------------------ levels
@pytest.mark.parametrize("w, h, min_side, level", [
    (1024, 1024, 256, 1),  # 1024/16 = 64 < 256 <= 1024/4
    (4096, 4096, 256, 2),
    (4096, 1000, 256, 0),  # the smaller side decides: 1000/4 = 250 < 256
    (1000, 4096, 256, 0),
    (4096, 1024, 256, 1),
    (200, 200, 256, 0),  # nothing keeps 256 px: level 0
    (1024, 1024, 64, 2),
])
def test_choose_level_is_the_coarsest_keeping_min_side(uniform, w, h, min_side, level):
    with Slide(uniform) as slide:
        assert choose_level(slide, w, h, PatchSettings(min_side=min_side)) == level


def test_choose_level_honours_a_fixed_level(uniform):
    with Slide(uniform) as slide:
        assert choose_level(slide, 50, 50, PatchSettings(level=2)) == 2
        assert choose_level(slide, 8000, 8000, PatchSettings(level=0)) == 0
        with pytest.raises(ValueError, match=rf"^{re.escape(str(uniform))}: extract\.level 3 asked, the slide "
                                             r"has 3 level\(s\)$"):
            choose_level(slide, 50, 50, PatchSettings(level=3))


# ------------------------------------------------------------------------------------------------ pixels
BT709 = PatchSettings(grey="bt709")  # skimage's weights, which `luma` computes independently


def test_to_grey_matches_skimage_for_bt709_and_pil_for_bt601():
    rgb = np.random.default_rng(3).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    grey = to_grey(rgb, "bt709")
    assert grey.dtype == np.float32 and grey.shape == (5, 7)
    np.testing.assert_allclose(grey, luma(rgb), atol=1e-3)
    np.testing.assert_allclose(to_grey(np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8), "bt709"),
                               [0.2125 * 255, 0.7154 * 255, 0.0721 * 255], rtol=1e-6)
    # the default is BT.601: PIL's convert("L") rounds the same sum (ITU-R 601-2: L = R*299/1000 + ...)
    pil = np.asarray(Image.fromarray(rgb).convert("L")).astype(np.float32)
    assert np.abs(to_grey(rgb) - pil).max() <= 0.5 + 1e-3


def test_read_grey_small_box_at_level_0(noisy):
    path, levels = noisy
    with Slide(path) as slide:
        got, where = read_grey(slide, 0, (37, 51, 127, 121), BT709, None)
    assert got.dtype == np.float32 and got.shape == (70, 90) and where == (0, 0, 90, 70)
    np.testing.assert_allclose(got, luma(levels[0][51:121, 37:127]), atol=1e-3)


def test_read_grey_covers_the_exact_box_at_a_coarser_level(noisy):
    path, levels = noisy
    with Slide(path) as slide:
        got, where = read_grey(slide, 2, (10, 6, 203, 101), BT709, None)
    # downsample 4: columns floor(10/4)=2 .. ceil(203/4)=51, rows floor(6/4)=1 .. ceil(101/4)=26
    np.testing.assert_allclose(got, luma(levels[2][1:26, 2:51]), atol=1e-3)
    # and the box itself, fractional, inside those pixels: 10/4 - 2, 6/4 - 1, 203/4 - 2, 101/4 - 1
    np.testing.assert_allclose(where, (0.5, 0.5, 48.75, 24.25))


def test_read_grey_block_averages_large_boxes(noisy):
    path, levels = noisy
    with Slide(path) as slide:
        got, where = read_grey(slide, 0, (20, 30, 350, 230), PatchSettings(patch_size=16, grey="bt709"), None)
    # box 330x200, k = 200 // (2 * 16) = 6: mean of 6x6 blocks, rows padded to whole blocks (204)
    crop = luma(levels[0][30:30 + 204, 20:20 + 330])
    assert got.shape == (34, 55)
    np.testing.assert_allclose(got, block_reduce(crop, (6, 6), np.mean), atol=1e-3)
    np.testing.assert_allclose(where, (0, 0, 55, 200 / 6))


def counted_reads(slide: Slide, monkeypatch) -> list[tuple]:
    """Record the real reads a Slide makes (the calls still go to tifffile)."""
    calls: list[tuple] = []
    real = slide.read

    def read(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(slide, "read", read)
    return calls


@pytest.mark.parametrize("patch_size, rows_per_band, bands", [(16, 7, 34), (256, 7, 29), (16, 13, 17)])
@pytest.mark.parametrize("masked", [False, True])
def test_banded_read_equals_one_band(noisy, monkeypatch, patch_size, rows_per_band, bands, masked):
    path, _ = noisy
    box = (20, 30, 350, 230)  # 330x200 at level 0; k = 6 for patch_size 16, 1 for 256
    s = PatchSettings(patch_size=patch_size, background=40)
    polygon = ([40, 330, 200, 25], [35, 60, 225, 150]) if masked else None
    with Slide(path) as slide:
        whole, _ = read_grey(slide, 0, box, s, polygon)
        monkeypatch.setattr(patches, "BAND_PIXELS", 330 * rows_per_band + 5)
        calls = counted_reads(slide, monkeypatch)
        banded, _ = read_grey(slide, 0, box, s, polygon)
    # band rows: rows_per_band rounded down to a multiple of k (6 -> 6 and 12 rows, 1 -> 7 rows)
    assert len(calls) == bands
    assert banded.shape == whole.shape
    np.testing.assert_allclose(banded, whole, atol=1e-4)
    if masked:  # the mask really applied: some pixels are the background, some are not
        assert np.isclose(whole, 40, atol=1e-3).any() and not np.isclose(whole, 40, atol=1e-3).all()


def true_mask_outside(rgb: np.ndarray, rect: tuple[int, int, int, int], background: int) -> np.ndarray:
    """Keep the pixels of `rgb` inside the half-open rectangle (in `rgb`'s own pixels), fill the rest."""
    x0, y0, x1, y1 = rect
    out = np.full_like(rgb, background)
    out[y0:y1, x0:x1] = rgb[y0:y1, x0:x1]
    return out


@pytest.mark.parametrize("level, ds", [(0, 1), (1, 2)])
def test_mask_outside_keeps_inside_and_fills_outside(noisy, level, ds):
    path, levels = noisy
    box, polygon = (100, 100, 300, 260), ([150, 250, 250, 150], [120, 120, 200, 200])
    with Slide(path) as slide:
        got, _ = read_grey(slide, level, box, PatchSettings(background=17, grey="bt709"), polygon)
    b = [v // ds for v in box]
    rgb = levels[level][b[1]:b[3], b[0]:b[2]]
    rect = (50 // ds, 20 // ds, 150 // ds, 100 // ds)  # the polygon in the box's level pixels
    expected = luma(true_mask_outside(rgb, rect, 17))
    np.testing.assert_allclose(got, expected, atol=1e-3)
    assert (expected == 17).sum() > got.size // 2  # most of the box is outside, filled


# ------------------------------------------------------------------------------------------------ patches
@pytest.mark.parametrize("box, s, level", [
    ((0, 0, 1024, 1024), PatchSettings(), 1),
    ((48, 36, 2048, 1536), PatchSettings(patch_size=64), 1),  # k = 375 // 128 = 2: block-averaged
    ((1700, 1200, 2000, 1500), PatchSettings(level=0), 0),  # 300 px upsized to 256
    ((0, 0, 2048, 1536), PatchSettings(min_side=64, patch_size=32), 2),
])
@pytest.mark.parametrize("decode", ["fast", "exact"])
def test_uniform_slide_renders_its_grey_everywhere(uniform, box, s, level, decode):
    grey = round(0.299 * COLOUR[0] + 0.587 * COLOUR[1] + 0.114 * COLOUR[2])  # BT.601: 134.8 -> 135
    with Slide(uniform) as slide:
        assert (slide.read(0, 0, 0, 8, 8) == COLOUR).all()  # JPEG kept the flat colour exactly
        patch, got_level = render_patch(slide, box, PatchSettings(**{**s.as_dict(), "decode": decode}))
    assert got_level == level
    assert patch.dtype == np.uint8 and patch.shape == (s.patch_size, s.patch_size)
    assert (patch == grey).all(), np.unique(patch)


def test_patch_of_patch_size_at_level_0_is_the_rounded_grey(noisy):
    path, levels = noisy
    with Slide(path) as slide:
        patch, level = render_patch(slide, (300, 200, 364, 264), PatchSettings(patch_size=64, level=0,
                                                                              grey="bt709"))
    expected = luma(levels[0][200:264, 300:364])
    assert level == 0
    off = np.abs(patch.astype(float) - np.rint(expected))
    assert off.max() <= 1  # float32 vs float64 luma can round the other way only at .5
    clear = np.abs(expected - np.floor(expected) - 0.5) > 1e-3
    assert (off[clear] == 0).all()


def test_render_patch_masks_only_when_asked(uniform):
    box, polygon = (0, 0, 512, 512), ([0, 256, 256, 0], [0, 0, 512, 512])  # the box's left half
    with Slide(uniform) as slide:
        masked, _ = render_patch(slide, box, PatchSettings(mask_outside=True, background=255), polygon)
        plain, _ = render_patch(slide, box, PatchSettings(background=255), polygon)
    assert (plain == 135).all()  # BT.601 grey of COLOUR
    assert (masked[:, :120] == 135).all() and (masked[:, 136:] == 255).all()


def test_equal_settings_hash_equal_however_written():
    """Issue 9 class 8: `--window-size 160` on the command line (a float) and `window_size: 160` in a job file (an
    int) are one setting: the same dict, so the same plan hash and no re-extraction."""
    import json

    from crystal_dask.stages.extract import plan_hash

    a = PatchSettings.from_config({"mode": "window", "window_size": 160, "window_step": 80, "min_overlap": 1})
    b = PatchSettings.from_config({"mode": "window", "window_size": 160.0, "window_step": 80.0, "min_overlap": 1.0})
    assert json.dumps(a.as_dict(), sort_keys=True) == json.dumps(b.as_dict(), sort_keys=True)
    assert plan_hash([], a) == plan_hash([], b)
