"""Feature families on hand-made images with known answers, and on real scanner pixels."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from skimage.color import hed2rgb, rgb2hed
from skimage.feature import local_binary_pattern

from crystal_dask.features import FAMILIES, FeatureError, Region, compute_families, resample_to, stain, texture
from crystal_dask.features import calcification as calc

ALL = list(FAMILIES)


def from_hed(h: np.ndarray, e: np.ndarray, d: np.ndarray | None = None) -> np.ndarray:
    """uint8 RGB of stain amounts given in decadic OD (rgb2hed's units x 6), through skimage's hed2rgb."""
    d = np.zeros_like(h) if d is None else d
    rgb = hed2rgb(np.stack([h, e, d], axis=-1) / 6.0)
    return np.rint(rgb * 255).astype(np.uint8)


def col(family: str, vec: np.ndarray, name: str) -> float:
    return float(vec[FAMILIES[family].columns.index(name)])


# ------------------------------------------------------------------------------------------ registry
def test_registry_columns_are_named_versioned_and_unique():
    assert {n: len(f.columns) for n, f in FAMILIES.items()} == {"stain": 16, "texture": 56, "calcification": 12}
    prefixes = {"stain": "stain_", "texture": "texture_", "calcification": "calc_"}
    for name, fam in FAMILIES.items():
        assert fam.name == name and fam.version >= 1
        assert len(set(fam.columns)) == len(fam.columns)
        assert all(c.startswith(prefixes[name]) for c in fam.columns)
    assert FAMILIES["calcification"].needs_mpp and not FAMILIES["stain"].needs_mpp


# ------------------------------------------------------------------------------------------ stain
def test_od_and_unmixing_match_rgb2hed():
    rgb = np.random.default_rng(3).integers(1, 256, (40, 50, 3)).astype(np.uint8)  # no 0: rgb2hed clamps those
    hed = np.moveaxis(Region(rgb, None).hed, 0, -1)
    np.testing.assert_allclose(hed, rgb2hed(rgb) * 6, atol=2e-5)


def test_pure_haematoxylin_and_pure_eosin():
    rng = np.random.default_rng(0)
    amount = rng.uniform(0.4, 0.6, (64, 64))  # decadic OD, mean 0.5
    zero = np.zeros_like(amount)
    h_img, e_img = from_hed(amount, zero), from_hed(zero, amount)
    hv, ev = stain.compute(h_img, None), stain.compute(e_img, None)
    get = dict(zip(stain.COLUMNS, range(len(stain.COLUMNS)), strict=True))
    assert hv[get["stain_h_mean"]] == pytest.approx(0.5, abs=0.02)
    assert hv[get["stain_h_mean"]] > 20 * hv[get["stain_e_mean"]]
    assert ev[get["stain_e_mean"]] == pytest.approx(0.5, abs=0.02)
    assert ev[get["stain_e_mean"]] > 20 * ev[get["stain_h_mean"]]
    # percentiles of a uniform(0.4, 0.6) amount, to uint8 rounding
    assert hv[get["stain_h_p10"]] == pytest.approx(0.42, abs=0.01)
    assert hv[get["stain_h_p50"]] == pytest.approx(0.50, abs=0.01)
    assert hv[get["stain_h_p90"]] == pytest.approx(0.58, abs=0.01)
    assert hv[get["stain_h_std"]] == pytest.approx(0.2 / np.sqrt(12), abs=0.005)
    assert hv[get["stain_tissue_frac"]] == 1.0


def test_tissue_fraction_and_glass_excluded():
    rgb = np.full((100, 100, 3), 245, np.uint8)  # glass
    rgb[:, :30] = from_hed(np.full((100, 30), 0.5), np.full((100, 30), 0.3))
    v = stain.compute(rgb, None)
    assert v[stain.COLUMNS.index("stain_tissue_frac")] == pytest.approx(0.30)
    assert v[stain.COLUMNS.index("stain_h_mean")] == pytest.approx(0.5, abs=0.02)  # glass does not dilute it


def test_hist_percentiles_nearest_rank():
    v = np.arange(1, 101, dtype=np.float32) / 100  # 0.01 .. 1.00
    np.testing.assert_allclose(stain.hist_percentiles(v), [0.10, 0.50, 0.90], atol=stain.PCT_BIN)


# ------------------------------------------------------------------------------------------ texture
def test_known_glcm_by_hand():
    # the 4x4 example of Haralick 1973 (and scikit-image's graycomatrix docs)
    q = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 2, 2, 2], [2, 2, 3, 3]], np.uint8)
    p = texture.glcm(q, levels=4)
    # 0 degrees, d = 1: counted by hand, then made symmetric (P + P.T) and normed by its 24 pairs
    once = np.array([[2, 2, 1, 0], [0, 2, 0, 0], [0, 0, 3, 1], [0, 0, 0, 1]])
    np.testing.assert_allclose(p[:, :, 0, 0], (once + once.T) / 24)
    # 90 degrees (down), d = 1: pairs (r, c) -> (r + 1, c)
    down = np.array([[3, 0, 2, 0], [0, 2, 2, 0], [0, 0, 1, 2], [0, 0, 0, 0]])
    np.testing.assert_allclose(p[:, :, 0, 2], (down + down.T) / 24)
    # 45 degrees at d = 2 is the pair (r, c) -> (r + 2, c + 2) (chessboard distance, as Haralick): 4 pairs
    # (0,0)->(2,2)=0->2, (0,1)->(2,3)=0->2, (1,0)->(3,2)=0->3, (1,1)->(3,3)=0->3
    diag2 = np.zeros((4, 4))
    diag2[0, 2] = diag2[0, 3] = 2
    np.testing.assert_allclose(p[:, :, 1, 1], (diag2 + diag2.T) / 8)
    props = texture.glcm_props(q, levels=4)
    # contrast at d = 1, 0 degrees is 2*(2*1 + 1*4 + 1*1)/24 = 14/24; the column is the mean of four directions
    contrast_d1 = np.mean([np.sum(p[:, :, 0, k] * (np.subtract.outer(np.arange(4), np.arange(4)) ** 2))
                           for k in range(4)])
    assert np.sum(p[:, :, 0, 0] * np.subtract.outer(np.arange(4), np.arange(4)) ** 2) == pytest.approx(14 / 24)
    assert props[texture.PROPS.index("contrast"), 0] == pytest.approx(contrast_d1)


def test_glcm_matches_brute_force_haralick_offsets():
    q = np.random.default_rng(5).integers(0, 32, (23, 19)).astype(np.uint8)
    p = texture.glcm(q)
    h, w = q.shape
    for j, d in enumerate(texture.DISTANCES):
        for k, (dr, dc) in enumerate(((0, d), (d, d), (d, 0), (d, -d))):
            m = np.zeros((32, 32))
            for r in range(h):
                for c in range(w):
                    if 0 <= r + dr < h and 0 <= c + dc < w:
                        m[q[r, c], q[r + dr, c + dc]] += 1
            m = m + m.T
            np.testing.assert_allclose(p[:, :, j, k], m / m.sum(), err_msg=f"d={d} dir={k}")


def test_haralick_equals_graycoprops():
    from skimage.feature import graycoprops

    rng = np.random.default_rng(9)
    for q in (rng.integers(0, 32, (40, 30)).astype(np.uint8), np.full((9, 9), 7, np.uint8),
              np.tile(np.arange(8, dtype=np.uint8), (8, 1)), np.zeros((3, 3), np.uint8)):
        p = texture.glcm(q)
        ours = texture.haralick(p)
        for k, prop in enumerate(texture.PROPS):
            np.testing.assert_allclose(ours[k], graycoprops(p, prop), rtol=1e-12, atol=1e-12, err_msg=prop)
        assert np.isfinite(ours).all()


def test_lbp_is_skimage_bit_for_bit():
    rng = np.random.default_rng(7)
    for shape in [(3, 3), (5, 7), (70, 133)]:
        for top in (2, 4, 256):  # few levels: many ties, decided by the same double arithmetic
            img = rng.integers(0, top, shape).astype(np.uint8)
            ref = local_binary_pattern(img, 8, 1, "uniform").astype(np.uint8)
            np.testing.assert_array_equal(texture.lbp_uniform_8_1(img), ref)


def test_constant_image_texture_is_finite_with_correlation_one():
    pink = np.zeros((32, 32, 3), np.uint8) + np.array([230, 150, 200], np.uint8)
    v = texture.compute(pink, 1.0)
    assert np.isfinite(v).all()
    for im in ("grey", "h"):
        for d in texture.DISTANCES:
            assert col("texture", v, f"texture_{im}_glcm_correlation_d{d}") == 1.0
            assert col("texture", v, f"texture_{im}_glcm_contrast_d{d}") == 0.0
            assert col("texture", v, f"texture_{im}_glcm_energy_d{d}") == pytest.approx(1.0)
        # every interior neighbour equals the centre: all 8 bits set, uniform code 8
        assert col("texture", v, f"texture_{im}_lbp_8") == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ calcification
CENTRES_UM = ((60.0, 60.0), (60.0, 90.0), (220.0, 200.0))  # two 30 µm apart (one cluster), one far away
RADIUS_UM = 10.0  # 20 µm across: above the smallest deposit the detector is built for (CORE_UM)


def deposits_image(um_per_px: float, side_um: float = 300.0) -> np.ndarray:
    """Pink stroma with 3 deep-purple calcium discs of RADIUS_UM and one ordinary nucleus (must not count)."""
    n = int(round(side_um / um_per_px))
    yy, xx = (np.mgrid[0:n, 0:n] + 0.5) * um_per_px  # pixel centres in µm
    h = np.full((n, n), 0.05)
    e = np.full((n, n), 0.35)
    for cy, cx in CENTRES_UM:
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= RADIUS_UM**2
        h[disc], e[disc] = 2.0, 0.4
    nucleus = (yy - 200) ** 2 + (xx - 60) ** 2 <= 4.0**2
    h[nucleus], e[nucleus] = 0.6, 0.2
    return from_hed(h, e)


@pytest.mark.parametrize("um", [0.5, 1.0])
def test_deposits_known_count_area_and_spacing(um):
    rgb = deposits_image(um)
    v = calc.compute(rgb, um)
    area = np.pi * RADIUS_UM**2  # 201 µm²
    tissue_mm2 = (rgb.shape[0] * um) ** 2 / 1e6
    assert col("calcification", v, "calc_count_per_mm2") == pytest.approx(3 / tissue_mm2, rel=1e-4)
    for stat in ("mean", "median", "p90", "max"):
        assert col("calcification", v, f"calc_area_{stat}_um2") == pytest.approx(area, rel=0.04)
    assert col("calcification", v, "calc_area_frac") == pytest.approx(3 * area / (300.0**2), rel=0.04)
    assert col("calcification", v, "calc_eccentricity_mean") < 0.25
    assert col("calcification", v, "calc_solidity_mean") > 0.9
    # a disc's perimeter / area is 2 / r; the digital perimeter estimate is within ~10 %
    assert col("calcification", v, "calc_perimeter_per_area_mean") == pytest.approx(2 / RADIUS_UM, rel=0.12)
    far = np.hypot(220 - 60, 200 - 90)
    assert col("calcification", v, "calc_nn_dist_mean_um") == pytest.approx((30 + 30 + far) / 3, abs=um)
    assert col("calcification", v, "calc_clusters") == 1
    assert col("calcification", v, "calc_clustered_frac") == pytest.approx(2 / 3)


def test_no_deposit_and_single_deposit_sentinels():
    um = 1.0
    plain = from_hed(np.full((100, 100), 0.3), np.full((100, 100), 0.4))
    v = calc.compute(plain, um)
    assert col("calcification", v, "calc_count_per_mm2") == 0
    assert col("calcification", v, "calc_nn_dist_mean_um") == calc.NN_SENTINEL_UM
    one = deposits_image(um, side_um=120.0)  # only the first two centres fit... crop to the first one
    one = one[:80, :70]
    v1 = calc.compute(one, um)
    assert col("calcification", v1, "calc_count_per_mm2") == pytest.approx(1 / (80 * 70 / 1e6), rel=1e-4)
    assert col("calcification", v1, "calc_nn_dist_mean_um") == calc.NN_SENTINEL_UM
    assert col("calcification", v1, "calc_clusters") == 0


def test_specks_below_min_area_are_dropped():
    um = 1.0
    h, e = np.full((60, 60), 0.05), np.full((60, 60), 0.35)
    h[10:12, 10:12], e[10:12, 10:12] = 2.0, 0.4  # 4 µm² speck: below MIN_AREA_UM2
    v = calc.compute(from_hed(h, e), um)
    assert col("calcification", v, "calc_count_per_mm2") == 0


@pytest.fixture(scope="module")
def skin(realdata) -> np.ndarray:
    """CMU-1's level 0 (0.499 µm/px), read once for the tests below."""
    with tifffile.TiffFile(realdata / "CMU-1-Small-Region.svs") as tif:
        return tif.pages[0].asarray()


def _painted_on_skin(skin: np.ndarray, y: int, x: int, dep) -> tuple[Region, np.ndarray]:
    """A 150 µm field of real CMU-1 skin with one deposit painted by the validation painter, at 2 µm/px."""
    from crystal_dask.bench.calcification import paint

    field = np.ascontiguousarray(skin[y : y + 300, x : x + 300])
    painted, truth = paint(field, 0.499, dep, np.random.default_rng(0))
    mask = resample_to(np.repeat(truth[..., None].astype(np.uint8) * 255, 3, 2), 0.499, 2.0)[..., 0] >= 128
    return Region(resample_to(painted, 0.499, 2.0), 2.0), mask


def _found(region: Region, truth: np.ndarray, monkeypatch, **rules) -> bool:
    with monkeypatch.context() as m:
        for name, value in rules.items():
            m.setattr(calc, name, value)
        return np.count_nonzero(calc.deposit_mask(region) & truth) >= 0.5 * np.count_nonzero(truth)


def test_deposit_against_epidermis_is_judged_apart_from_it(skin, monkeypatch):
    """Rule 7: a 30 µm deposit (H 0.85) painted into CMU-1's epidermis merges with its plateau; only judged as
    the darker body inside the rejected object is it found."""
    from crystal_dask.bench.calcification import Deposit

    region, truth = _painted_on_skin(skin, 1503, 1002, Deposit(100, 100, 30.0, 0.85, False, False, 0, False))
    assert _found(region, truth, monkeypatch, GLASS_BORDER_RATIO=-np.inf)  # rule 8 off: rule 7 finds it
    assert not _found(region, truth, monkeypatch, SPLIT_RATIO=np.inf, GLASS_BORDER_RATIO=-np.inf)


def test_pale_glassy_deposit_border_is_read_past_its_rim(skin, monkeypatch):
    """Rule 6b: a pale 40 µm deposit (H 0.5) on CMU-1's purple epidermis blends into its first ring; read one ring
    further out (it is glassy at the pixel scale) it is found, without rule 7."""
    from crystal_dask.bench.calcification import Deposit

    region, truth = _painted_on_skin(skin, 1002, 1002, Deposit(190, 190, 40.0, 0.5, False, False, 0, False))
    assert _found(region, truth, monkeypatch, SPLIT_RATIO=np.inf)
    assert not _found(region, truth, monkeypatch, PIXEL_CV_MAX=-1.0)  # no object passes the glassiness: no 6b


def test_glassy_body_inside_a_rejected_object_is_judged_alone(skin, monkeypatch):
    """Rule 8: in CMU-1's epidermis a pale 30 µm deposit (H 0.6) merges with a plateau as dark as itself (rule 7
    finds no darker body), and a dark one (H 1.0) makes rule 7's body, which takes in the textured epidermis, fail
    the pixel-scale glassiness; their glassy cores, judged alone, are found."""
    from crystal_dask.bench.calcification import Deposit

    for cy, cx, h in ((100, 100, 0.6), (150, 190, 1.0)):
        dep = Deposit(cy, cx, 30.0, h, False, False, 0, False)
        region, truth = _painted_on_skin(skin, 1503, 1002, dep)
        assert _found(region, truth, monkeypatch)
        assert not _found(region, truth, monkeypatch, GLASS_BORDER_RATIO=-np.inf)  # rules 1-7 alone miss it


def test_small_cracked_deposit_is_found_by_its_grown_size(skin, monkeypatch):
    """Rule 9: a 20 µm deposit (H 1.0) crossed by two cracks in CMU-1's dermis has no 12 µm glassy core (rules 2-3),
    uncracked it has one; found with the smaller disc, and only when its glassiness is read away from the cracks."""
    from crystal_dask.bench.calcification import Deposit

    cracked, truth = _painted_on_skin(skin, 1000, 1500, Deposit(150, 150, 20.0, 1.0, False, False, 2, False))
    assert _found(cracked, truth, monkeypatch)
    assert not _found(cracked, truth, monkeypatch, SMALL_MIN_UM=np.inf)  # rule 9 off
    assert not _found(cracked, truth, monkeypatch, CRACK_RATIO=0.0)  # the cracks' edges counted in the CV
    whole, truth = _painted_on_skin(skin, 1000, 1500, Deposit(150, 150, 20.0, 1.0, False, False, 0, False))
    assert _found(whole, truth, monkeypatch, SMALL_MIN_UM=np.inf)


# ------------------------------------------------------------------------------------------ all families
def test_random_and_constant_images_are_finite():
    rng = np.random.default_rng(11)
    images = [rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)]
    for colour in ([230, 150, 200], [90, 40, 120], [0, 0, 0], [255, 0, 0]):
        images.append(np.zeros((48, 40, 3), np.uint8) + np.array(colour, np.uint8))
    for rgb in images:
        out = compute_families(rgb, 1.0, ALL)
        for name, v in out.items():
            assert v.dtype == np.float32 and v.shape == (len(FAMILIES[name].columns),)
            assert np.isfinite(v).all(), name


def test_blank_white_and_missing_mpp_are_rejected():
    white = np.full((64, 64, 3), 255, np.uint8)
    for fams in (["stain"], ["texture"], ["calcification"], ALL):
        with pytest.raises(FeatureError, match="no tissue"):
            compute_families(white, 1.0, fams)
    tissue = from_hed(np.full((32, 32), 0.4), np.full((32, 32), 0.3))
    with pytest.raises(FeatureError, match="no MPP"):
        compute_families(tissue, None, ALL)
    out = compute_families(tissue, None, ["stain", "texture"])  # no µm in them: level-0 pixels are fine
    assert set(out) == {"stain", "texture"}
    with pytest.raises(KeyError):
        compute_families(tissue, 1.0, ["pixels"])


def test_resample_to():
    rgb = deposits_image(0.5, side_um=100.0)  # 200 px
    half = resample_to(rgb, 0.5, 1.0)
    assert half.shape == (100, 100, 3) and half.dtype == np.uint8
    assert resample_to(rgb, 0.5, 0.5) is rgb
    # a deposit keeps its area in µm² through the resampling within half a pixel of radius: its extent is where the
    # (closed) haematoxylin stays >= DEPOSIT_H_OD, so the blended rim counts while it is at least that dark
    v = calc.compute(resample_to(deposits_image(0.5), 0.5, 1.0), 1.0)
    radius = np.sqrt(col("calcification", v, "calc_area_mean_um2") / np.pi)
    assert RADIUS_UM - 0.5 < radius < RADIUS_UM + 0.5
    assert col("calcification", v, "calc_count_per_mm2") == pytest.approx(3 / 0.09, rel=1e-4)


def test_real_pixels_finite_and_deterministic(realdata):
    with tifffile.TiffFile(realdata / "CMU-1-Small-Region.svs") as tif:
        page0 = tif.pages[0].asarray()
    crop = page0[1600:2112, 800:1312]  # mostly tissue (epidermis and dermis)
    assert crop.shape == (512, 512, 3)
    mpp = 0.499  # the file's MPP
    region = resample_to(crop, mpp, 1.0)
    a = compute_families(region, 1.0, ALL)
    b = compute_families(region.copy(), 1.0, ALL)
    for name in ALL:
        assert np.isfinite(a[name]).all()
        assert a[name].tobytes() == b[name].tobytes()
    assert col("stain", a["stain"], "stain_tissue_frac") > 0.5
    assert col("stain", a["stain"], "stain_h_mean") > col("stain", a["stain"], "stain_d_mean")


def test_vectorised_morphology_equals_regionprops():
    from skimage.measure import label, regionprops_table

    rng = np.random.default_rng(2)
    mask = np.zeros((120, 150), bool)
    for _ in range(25):  # blobs of assorted shapes, some touching the image border
        cy, cx = rng.integers(0, 120), rng.integers(0, 150)
        ry, rx = rng.uniform(1, 9, 2)
        yy, xx = np.ogrid[:120, :150]
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    mask[5, 5] = True  # a single pixel
    lab, n = label(mask, connectivity=2, return_num=True)
    ref = regionprops_table(lab, properties=("area", "eccentricity", "perimeter", "solidity", "centroid"))
    ys, xs = np.nonzero(lab)
    cent, ecc = calc._moments(lab[ys, xs], ys.astype(float), xs.astype(float), n)
    from scipy.ndimage import binary_erosion

    border = mask & ~binary_erosion(mask, calc._CROSS, border_value=0)
    np.testing.assert_allclose(ecc, ref["eccentricity"], atol=1e-9)
    np.testing.assert_allclose(cent[:, 0], ref["centroid-0"], atol=1e-9)
    np.testing.assert_allclose(calc._perimeters(lab, border, n), ref["perimeter"], atol=1e-9)
    area = np.bincount(lab.ravel())[1:].astype(float)
    sol = calc._solidities(lab, border, area, n)
    order = np.argsort(-area, kind="stable")[: calc.MAX_SHAPE]
    np.testing.assert_allclose(sol, ref["solidity"][order], atol=1e-9)
