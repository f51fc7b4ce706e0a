"""Tissue mask on real TIFF pyramids (painted section on glass, marker ink) and on the real scanner files; window
grid and per-window tissue fraction against brute force."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crystal_dask.synthetic.corpus import place_regions
from crystal_dask.synthetic.slide_writer import downsample, write_slide
from crystal_dask.synthetic.tissue import paint_slide
from crystal_dask.wsi.slides import Slide, SlideError
from crystal_dask.wsi.tissue_mask import (
    mask_from_rgb,
    pen_mask,
    thumbnail,
    thumbnail_level,
    tissue_fraction,
    tissue_mask,
    window_boxes,
    window_grid,
)

W, H = 2400, 1800


def test_pen_mask_thresholds_per_pixel():
    # blocks of 3 x 3 px at downsample 64 (objects of more than 4 px kept, dilated by 1 px): darkness is the
    # brightest channel below 50, coloured ink G - R above 20 with saturation >= 0.15
    colours = [((49, 10, 0), True), ((50, 10, 0), False), ((10, 49, 30), True), ((100, 121, 110), True),
               ((100, 120, 110), False), ((200, 230, 226), False), ((0, 255, 255), True)]
    rgb = np.full((9, 9 * len(colours), 3), 255, np.uint8)
    for i, (c, _) in enumerate(colours):
        rgb[3:6, 9 * i + 3:9 * i + 6] = c
    ink = pen_mask(rgb, 64)
    assert [bool(ink[4, 9 * i + 4]) for i in range(len(colours))] == [want for _, want in colours]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.fixture(scope="module")
def painted(tmp_path_factory):
    """A 1600x1100 painted section on a 2400x1800 glass slide, a blue and a green marker stroke on the glass and
    a black dot; returns (path, level-0 tissue truth, ink truth)."""
    rng = np.random.default_rng(11)
    regions = place_regions(["norm", "dcis", "indc", "infl", "null"], 1600, 1100, rng)
    section = paint_slide(1600, 1100, [(r.label, r.x, r.y) for r in regions], "tubr", rng)
    glass = section[0, 0].copy()  # the section's corner is glass: its exact colour
    image = np.empty((H, W, 3), np.uint8)
    image[:] = glass
    image[300:1400, 500:2100] = section
    truth = (image != glass).any(axis=-1)  # painted, not glass (before JPEG)
    ink = np.zeros((H, W), bool)
    yy, xx = np.mgrid[:H, :W]
    strokes = [((yy - 0.25 * xx - 1450) ** 2 < 30**2) & (xx < 1200), ((xx - 2250) ** 2 < 35**2) & (yy > 400),
               (yy - 150) ** 2 + (xx - 200) ** 2 < 60**2]
    for stroke, od in zip(strokes, [(0.8, 0.4, 0.07), (0.75, 0.13, 0.6), (1.8, 1.8, 1.7)], strict=True):
        stroke &= ~truth
        image[stroke] = (image[stroke] * np.exp(-np.array(od))).astype(np.uint8)
        ink |= stroke
    path = tmp_path_factory.mktemp("mask") / "painted.svs"
    write_slide(path, image, 0.5)
    return path, truth, ink


def _at(mask0: np.ndarray, ds: float, shape: tuple[int, int]) -> np.ndarray:
    """A level-0 boolean map at a mask's resolution (majority of each block)."""
    k = round(ds)
    small = downsample(mask0.astype(np.uint8) * 255, k) > 127
    out = np.zeros(shape, bool)
    h, w = min(shape[0], small.shape[0]), min(shape[1], small.shape[1])
    out[:h, :w] = small[:h, :w]
    return out


def test_mask_recovers_painted_tissue_and_skips_ink(painted):
    path, truth, ink = painted
    with Slide(path) as slide:
        mask, ds = tissue_mask(slide)  # level 1 (600x450) is the finest that fits 2048
    assert ds == 4.0 and mask.shape == (450, 600)
    # boundary blocks can go either way: at 4 px per mask pixel, a one-pixel band around the 1600x1100 section's
    # wavy outline (~8,000 px long) is ~3% of its ~1.5 Mpx; 0.95 leaves room for that, not for missed regions
    assert _iou(mask, _at(truth, ds, mask.shape)) > 0.95
    ink_small = _at(ink, ds, mask.shape)
    assert ink_small.sum() > 1000
    assert (mask & ink_small).sum() / ink_small.sum() < 0.02  # marker ink never reaches the forest


def test_ink_kept_when_asked(painted):
    path, _, ink = painted
    with Slide(path) as slide:
        mask, ds = tissue_mask(slide, exclude_pen=False)
    ink_small = _at(ink, ds, mask.shape)
    assert (mask & ink_small).sum() / ink_small.sum() > 0.5  # blue/green ink is saturated: only the rule drops it


def test_coarse_levels_and_banded_reduction(painted):
    path, truth, _ = painted
    with Slide(path) as slide:
        assert thumbnail_level(slide, 500) == (2, 1)
        assert thumbnail_level(slide, 100) == (2, 2)  # no level fits: the coarsest, 2x2 blocks
        rgb, ds = thumbnail(slide, 100)
        full = slide.read(2, 0, 0, 150, 112)
        assert ds == pytest.approx(slide.levels[2].downsample * 2)
        assert rgb.shape == (56, 75, 3)
        np.testing.assert_array_equal(rgb, downsample(full, 2))
        mask, ds = tissue_mask(slide, 500)
    assert _iou(mask, _at(truth, ds, mask.shape)) > 0.9  # 16 px per mask pixel: a wider boundary band


def test_band_reads_equal_one_read(painted, monkeypatch):
    import crystal_dask.wsi.tissue_mask as tm

    path, _, _ = painted
    with Slide(path) as slide:
        whole, _ = thumbnail(slide, 300)  # level 1 reduced 2x
        monkeypatch.setattr(tm, "BAND_PIXELS", 5000)  # many bands of a few rows
        banded, _ = thumbnail(slide, 300)
    np.testing.assert_array_equal(whole, banded)


def test_blank_glass_has_no_tissue():
    rgb = np.full((300, 400, 3), 243, np.uint8)
    rgb += np.random.default_rng(0).integers(0, 4, rgb.shape, dtype=np.uint8)  # scanner noise
    assert not mask_from_rgb(rgb, 16.0).any()


def test_all_tissue_is_all_tissue():
    """A view that is all tissue (pale pink and dark purple): Otsu would split the tissue, the clamp keeps it."""
    rgb = np.zeros((200, 200, 3), np.uint8)
    rgb[:] = (235, 190, 215)
    rgb[:, 100:] = (120, 60, 160)
    assert mask_from_rgb(rgb, 4.0).mean() > 0.99


def test_window_grid_and_boxes():
    assert window_grid(2400, 1800, 500, 500) == (3, 4)
    assert window_grid(2400, 1800, 500, 250) == (6, 8)
    assert window_grid(400, 1800, 500, 250) == (6, 0)
    rows, cols = window_grid(1000, 1000, 333.3, 333.3)
    boxes = window_boxes(rows, cols, 333.3, 333.3)
    assert (rows, cols) == (3, 3) and boxes[:, 2].max() <= 1000 and boxes[:, 3].max() <= 1000
    assert boxes[cols + 1].tolist() == [333, 333, 666, 666]  # row-major, rounded as extract rounds


def test_tissue_fraction_matches_brute_force():
    rng = np.random.default_rng(5)
    mask = rng.random((40, 60)) < 0.4
    ds = 8.0
    full = np.kron(mask, np.ones((8, 8), bool))  # the mask at level 0
    x0 = rng.integers(-50, 470, 200)
    y0 = rng.integers(-50, 310, 200)
    side = rng.integers(10, 120, 200)
    boxes = np.stack([x0, y0, x0 + side, y0 + side], axis=1)
    got = tissue_fraction(mask, ds, boxes)
    want = [full[max(b, 0):max(d, 0), max(a, 0):max(c, 0)].sum() / ((c - a) * (d - b)) for a, b, c, d in boxes]
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_real_files(realdata: Path):
    """Every real file: readable slides give a bounded mask (tissue where the section is); the others raise the
    reader's SlideError."""
    expect = {"CMU-1-Small-Region.svs": (0.2, 0.7), "OS-1-detail.ome.tif": (0.9, 1.0), "small.svs": (0.0, 1.0)}
    seen = set()
    for path in sorted(realdata.iterdir()):
        if path.suffix == ".md":
            continue
        if path.name in ("unreadable.svs", "unopenable.tiff"):
            with pytest.raises(SlideError, match=str(path)):
                with Slide(path) as slide:
                    tissue_mask(slide)
            continue
        with Slide(path) as slide:
            mask, ds = tissue_mask(slide, max_side=2048)
            assert max(mask.shape) <= 2048
            assert mask.shape == (round(slide.height / ds + 0.49), round(slide.width / ds + 0.49))
        lo, hi = expect[path.name]
        assert lo <= mask.mean() <= hi, (path.name, mask.mean())
        seen.add(path.name)
    assert seen == set(expect)
