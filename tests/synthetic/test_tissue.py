"""Painted tissue: deterministic, each class its own greyscale look, calcifications darker, flavours differ."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import polygon as skimage_polygon

from crystal_dask.synthetic.tissue import PAINTERS, paint_slide
from crystal_dask.vocab import CLASSES, CRYSTALLINE
from crystal_dask.wsi.polygon import polygon_mask

SIZE = 900
ANGLES = np.linspace(0, 2 * np.pi, 20, endpoint=False)
X = SIZE / 2 + 380 * np.cos(ANGLES)
Y = SIZE / 2 + 380 * np.sin(ANGLES) * (1 + 0.1 * np.sin(3 * ANGLES))
MASK = polygon_mask(X, Y, (SIZE, SIZE))


def _grey(img: np.ndarray) -> np.ndarray:
    return img @ np.array([0.299, 0.587, 0.114])


def _inside(label: str, seed: int, flavour: str = "fcbr") -> np.ndarray:
    """Greyscale pixels inside one region of `label` painted on a small slide."""
    return _grey(paint_slide(SIZE, SIZE, [(label, X, Y)], flavour, np.random.default_rng(seed)))[MASK]


@pytest.fixture(scope="module")
def looks() -> dict[str, np.ndarray]:
    return {label: np.concatenate([_inside(label, s) for s in (0, 1)]) for label in PAINTERS}


def test_every_label_has_a_painter():
    assert set(PAINTERS) == set(CLASSES) | set(CRYSTALLINE)


def test_same_seed_same_pixels_other_seed_other_pixels():
    regions = [("indc", X, Y)]
    a = paint_slide(SIZE, SIZE, regions, "tubr", np.random.default_rng(7))
    b = paint_slide(SIZE, SIZE, regions, "tubr", np.random.default_rng(7))
    c = paint_slide(SIZE, SIZE, regions, "tubr", np.random.default_rng(8))
    assert a.shape == (SIZE, SIZE, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_tissue_sits_on_glass():
    img = paint_slide(1200, 800, [], "fcbr", np.random.default_rng(3))
    grey = _grey(img)
    assert grey[400, 600] < 225 < grey[0, 0]  # stained centre, bare glass corner


def test_classes_differ_in_greyscale(looks):
    mean = {k: v.mean() for k, v in looks.items()}
    std = {k: v.std() for k, v in looks.items()}
    assert mean["null"] > mean["bckg"] + 15  # washed out
    assert mean["indc"] < mean["bckg"] - 15  # crowded dark nuclei
    assert mean["artf"] < mean["indc"]  # ink
    assert std["bckg"] < std["infl"] and std["bckg"] < std["dcis"] and std["nneo"] < std["norm"]
    # no two of the 9 classes share a look: their (mean, std) pairs are apart
    pairs = np.array([(mean[c], std[c]) for c in CLASSES])
    gaps = np.linalg.norm(pairs[:, None] - pairs[None], axis=-1) + np.eye(len(CLASSES)) * 99
    assert gaps.min() > 2.0


@pytest.mark.parametrize("crystal", sorted(CRYSTALLINE))
def test_calcified_regions_are_dominated_by_their_deposits(looks, crystal):
    base = CRYSTALLINE[crystal]
    dark = {k: (looks[k] < 90).mean() for k in (crystal, base, "artf")}
    share = 0.1 if crystal == "cdcs" else 0.2  # cdcs: small loose specks; cnno/cidc: large deposits
    assert dark[crystal] > dark[base] + share and dark[crystal] > dark["artf"] + share / 2


def test_cnno_deposit_fills_the_middle_of_its_region():
    grey = _grey(paint_slide(SIZE, SIZE, [("cnno", X, Y)], "fcbr", np.random.default_rng(0)))
    middle = grey[SIZE // 2 - 60 : SIZE // 2 + 60, SIZE // 2 - 60 : SIZE // 2 + 60]
    assert (middle < 90).mean() > 0.8


def test_tubr_is_darker_and_more_purple_than_fcbr():
    labels = ["bckg", "norm", "dcis", "indc"]
    regions = [(lab, X / 2 + (i % 2) * SIZE / 2, Y / 2 + (i // 2) * SIZE / 2) for i, lab in enumerate(labels)]
    mean = {fl: paint_slide(SIZE, SIZE, regions, fl, np.random.default_rng(5)).reshape(-1, 3).mean(0)
            for fl in ("fcbr", "tubr")}
    grey = {fl: m @ np.array([0.299, 0.587, 0.114]) for fl, m in mean.items()}
    assert grey["tubr"] < grey["fcbr"] - 5
    assert mean["tubr"][2] - mean["tubr"][0] > mean["fcbr"][2] - mean["fcbr"][0] + 3  # bluer relative to red


def test_unknown_flavour_is_refused():
    with pytest.raises(ValueError, match="unknown flavour 'xyz'"):
        paint_slide(100, 100, [], "xyz", np.random.default_rng(0))


def test_polygon_mask_agrees_with_skimage():
    rng = np.random.default_rng(0)
    for n in (3, 8, 30):
        x, y = rng.uniform(-20, 320, n), rng.uniform(-20, 220, n)
        ref = np.zeros((200, 300), bool)
        ref[skimage_polygon(y, x, ref.shape)] = True
        ours = polygon_mask(x, y, ref.shape)
        assert (ours != ref).sum() <= 0.01 * max(ref.sum(), 1) + 5  # pixels exactly on an edge may differ
