"""Slide reading: real scanner files from ../shared/realdata and pyramids written here with tifffile.

Every region read is checked against tifffile's own decoding of the whole level (tifffile.imread), sliced.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import shutil
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile

from crystal_dask.wsi.slides import Level, Slide, SlideError, slide_info
from tests.helpers import REALDATA

needs_realdata = pytest.mark.skipif(not REALDATA.is_dir(), reason=f"real slide files not found at {REALDATA}")

APERIO_HEAD = "Aperio Image Library v10.0.50\r\n"


def expected_region(full: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
    """The box cut from a whole level (H, W, 3), white where it leaves the level."""
    out = np.full((h, w, 3), 255, np.uint8)
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, full.shape[1]), min(y + h, full.shape[0])
    if x0 < x1 and y0 < y1:
        out[y0 - y:y1 - y, x0 - x:x1 - x] = full[y0:y1, x0:x1]
    return out


def boxes_for(width: int, height: int, tile: int) -> list[tuple[int, int, int, int]]:
    """Boxes inside one tile, across tile corners, on the far edges, partly and wholly outside the level."""
    t = tile
    return [
        (3, 5, t // 3, t // 4),
        (t - 7, t - 9, 20, 30),
        (t - 1, 2 * t - 1, 2, 2),
        (t // 2, t // 2, 2 * t + 5, t + 3),
        (width - 11, height - 13, 11, 13),
        (width - 20, height - 25, 60, 70),
        (-15, -9, 40, 33),
        (-5, height // 2, width + 10, 7),
        (width + 5, height + 5, 10, 10),
        (0, 0, width, height),
    ]


def names(path: Path, what: str) -> str:
    """Regex for a SlideError message: the slide's path first, then what failed."""
    return rf"^{re.escape(str(path))}: {what}"


def check_reads(path: Path, level: int, full: np.ndarray, tile: int) -> None:
    with Slide(path) as slide:
        for x, y, w, h in boxes_for(full.shape[1], full.shape[0], tile):
            got = slide.read(level, x, y, w, h)
            assert got.shape == (h, w, 3) and got.dtype == np.uint8
            np.testing.assert_array_equal(got, expected_region(full, x, y, w, h), err_msg=f"{path} {(x, y, w, h)}")


def noise(rng: np.random.Generator, h: int, w: int, c: int = 3) -> np.ndarray:
    """Pixels where any misplaced tile or row shows (smooth gradients could hide an off-by-one)."""
    return rng.integers(0, 256, (h, w, c), dtype=np.uint8)


def shrink(img: np.ndarray, factor: int) -> np.ndarray:
    return np.ascontiguousarray(img[::factor, ::factor])


# ---------------------------------------------------------------- generated files


@pytest.fixture(scope="session")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small pyramidal and odd TIFFs written once for the whole session."""
    d = tmp_path_factory.mktemp("slides")
    rng = np.random.default_rng(7)
    base = noise(rng, 760, 1000)
    files: dict[str, Path] = {}

    # SVS-like: tiled JPEG level 0, strip thumbnail as page 1, two tiled levels, strip label at the end
    files["svs"] = d / "like.svs"
    with tifffile.TiffWriter(files["svs"]) as tw:
        common = {"compression": "jpeg", "photometric": "rgb", "metadata": None}
        tw.write(base, tile=(128, 128), description=APERIO_HEAD
                 + "1000x760 [0,0 1000x760] (128x128) JPEG/RGB Q=90|AppMag = 20|MPP = 0.2520", **common)
        tw.write(shrink(base, 8), rowsperstrip=16, description=APERIO_HEAD + "1000x760 -> 125x95 - |", **common)
        tw.write(shrink(base, 4), tile=(64, 64), description=APERIO_HEAD + "1000x760 -> 250x190 |", **common)
        tw.write(shrink(base, 16), tile=(16, 16), description=APERIO_HEAD + "1000x760 -> 63x48 |", **common)
        tw.write(noise(rng, 40, 90), rowsperstrip=8, subfiletype=1, description=APERIO_HEAD + "label |",
                 compression="zlib", photometric="rgb", metadata=None)

    # generic pyramid in SubIFDs (tifffile's own pyramid layout), plausible resolution in cm
    files["subifds"] = d / "subifds.tif"
    with tifffile.TiffWriter(files["subifds"]) as tw:
        tw.write(base, tile=(256, 256), subifds=2, compression="jpeg", photometric="rgb",
                 resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
        tw.write(shrink(base, 2), tile=(128, 128), subfiletype=1, compression="jpeg", photometric="rgb")
        tw.write(shrink(base, 4), tile=(64, 64), subfiletype=1, compression="jpeg", photometric="rgb")

    # generic pyramid as plain top-level pages with a factor tifffile does not pyramidize (5), a tiled
    # macro of another aspect ratio and a strip label: only the two same-aspect tiled pages are levels
    files["pages"] = d / "pages.tif"
    with tifffile.TiffWriter(files["pages"]) as tw:
        tw.write(base, tile=(128, 128), compression="zlib", photometric="rgb")
        tw.write(noise(rng, 100, 300), tile=(32, 32), compression="zlib", photometric="rgb")
        tw.write(shrink(base, 5), tile=(64, 64), compression="zlib", photometric="rgb")
        tw.write(noise(rng, 48, 48), rowsperstrip=16, compression="zlib", photometric="rgb")
        tw.write(shrink(base, 25), tile=(16, 16), compression="zlib", photometric="rgb")

    # strip-based (not tiled), LZW, 37 rows per strip so strips straddle every box edge
    files["strips"] = d / "strips.tif"
    tifffile.imwrite(files["strips"], base[:300, :410], rowsperstrip=37, compression="lzw", photometric="rgb")

    files["rgba"] = d / "rgba.tif"
    tifffile.imwrite(files["rgba"], noise(rng, 300, 410, 4), tile=(64, 64), compression="zlib",
                     photometric="rgb", extrasamples=["unassalpha"])

    files["grey"] = d / "grey.tif"
    tifffile.imwrite(files["grey"], noise(rng, 300, 410, 1)[..., 0], tile=(64, 64), photometric="minisblack")

    files["planar"] = d / "planar.tif"
    tifffile.imwrite(files["planar"], np.moveaxis(base[:300, :410], -1, 0).copy(), tile=(64, 64),
                     planarconfig="separate", photometric="rgb", compression="zlib")

    # bogus resolutions written by real software: 72 dpi expressed in cm, the 1/1 inch default, 72 dpi
    for name, res, unit in (("bogus_cm", (4294967295, 151551421), "CENTIMETER"),
                            ("one_inch", (1, 1), "INCH"), ("dpi72", (72, 1), "INCH")):
        files[name] = d / f"{name}.tif"
        tifffile.imwrite(files[name], base[:128, :128], tile=(64, 64), photometric="rgb",
                         resolution=(res, res), resolutionunit=unit)

    # sparse: tile 3 was never written (bytecount 0)
    files["sparse"] = d / "sparse.tif"
    tiles = [None if i == 3 else base[:64, :64].copy() for i in range(5 * 7)]
    tifffile.imwrite(files["sparse"], iter(tiles), shape=(300, 410, 3), dtype=np.uint8, tile=(64, 64),
                     photometric="rgb", compression="zlib")

    # Aperio JPEG 2000 "YCbCr" (33003): the codestream carries full-range YCbCr planes
    files["j2k_ycbcr"] = d / "j2k_ycbcr.svs"
    rgb = base[:200, :300].astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    ycc = np.stack((0.299 * r + 0.587 * g + 0.114 * b,
                    128 - 0.168736 * r - 0.331264 * g + 0.5 * b,
                    128 + 0.5 * r - 0.418688 * g - 0.081312 * b), axis=-1)
    tifffile.imwrite(files["j2k_ycbcr"], np.clip(np.rint(ycc), 0, 255).astype(np.uint8), tile=(64, 64),
                     compression=33003, compressionargs={"reversible": True}, photometric="rgb",
                     description=APERIO_HEAD + "300x200 (64x64) J2K/YUV16 Q=70|AppMag = 20", metadata=None)

    files["float"] = d / "float.tif"
    tifffile.imwrite(files["float"], np.zeros((64, 64), np.float32), tile=(16, 16))
    files["text"] = d / "notes.svs"
    files["text"].write_text("not a slide\n")
    files["base"] = d / "base.npy"
    np.save(files["base"], base)
    return files


def test_svs_like_levels_mpp_and_reads(made):
    with Slide(made["svs"]) as s:
        assert s.format == "svs"
        assert [(lv.width, lv.height) for lv in s.levels] == [(1000, 760), (250, 190), (63, 48)]
        assert s.levels[1] == Level(1, 250, 190, 4.0)
        assert s.levels[2].downsample == pytest.approx((1000 / 63 + 760 / 48) / 2)
        assert (s.mpp, s.mpp_source) == (pytest.approx(0.252), "aperio")
    for level, tile in ((0, 128), (1, 64), (2, 16)):
        check_reads(made["svs"], level, tifffile.imread(made["svs"], series=0, level=level), tile)


def test_generic_pyramid_in_subifds(made):
    with Slide(made["subifds"]) as s:
        assert s.format == "tiff"
        assert [lv.downsample for lv in s.levels] == [1.0, 2.0, 4.0]
        assert (s.mpp, s.mpp_source) == (pytest.approx(0.5), "tiff-resolution")
    check_reads(made["subifds"], 2, tifffile.imread(made["subifds"], series=0, level=2), 64)


def test_generic_pyramid_from_extra_pages(made):
    with tifffile.TiffFile(made["pages"]) as tif:
        assert len(tif.series[0].levels) == 1  # tifffile alone sees no pyramid here
    with Slide(made["pages"]) as s:
        assert [(lv.width, lv.height) for lv in s.levels] == [(1000, 760), (200, 152), (40, 31)]
        assert (s.mpp, s.mpp_source) == (None, "none")
    check_reads(made["pages"], 1, tifffile.imread(made["pages"], key=2), 64)
    check_reads(made["pages"], 2, tifffile.imread(made["pages"], key=4), 16)


def test_strip_based_tiff(made):
    with Slide(made["strips"]) as s:
        assert s.info()["levels"][0]["rows_per_strip"] == 37
    check_reads(made["strips"], 0, tifffile.imread(made["strips"]), 37)


def test_separate_colour_planes(made):
    check_reads(made["planar"], 0, np.moveaxis(tifffile.imread(made["planar"]), 0, -1), 64)


def test_rgba_drops_alpha_and_grey_becomes_rgb(made):
    check_reads(made["rgba"], 0, tifffile.imread(made["rgba"])[..., :3], 64)
    check_reads(made["grey"], 0, np.repeat(tifffile.imread(made["grey"])[..., None], 3, axis=-1), 64)


@pytest.mark.parametrize("name", ["bogus_cm", "one_inch", "dpi72"])
def test_bogus_resolution_means_no_mpp(made, name):
    info = slide_info(made[name])
    assert (info["mpp"], info["mpp_source"]) == (None, "none")
    assert '"mpp": null' in json.dumps(info)


def test_missing_tile_is_white(made):
    full = tifffile.imread(made["sparse"])
    assert not full[:64, 192:256].any()  # tifffile fills the unwritten tile with 0
    with Slide(made["sparse"]) as s:
        got = s.read(0, 150, 10, 150, 80)
    expected = expected_region(full, 150, 10, 150, 80)
    expected[:54, 42:106] = 255
    np.testing.assert_array_equal(got, expected)


def test_aperio_jpeg2000_ycbcr_becomes_rgb(made):
    base = np.load(made["base"])[:200, :300]
    with Slide(made["j2k_ycbcr"]) as s:
        assert s.info()["levels"][0]["compression"] == "APERIO_JP2000_YCBC"
        assert (s.mpp, s.mpp_source) == (None, "none")
        got = s.read(0, 50, 40, 200, 150)
    # lossless codestream: only the 8-bit YCbCr rounding remains
    assert np.abs(got.astype(int) - base[40:190, 50:250]).max() <= 2


def test_only_touched_tiles_are_decoded(made, tmp_path):
    """Wipe one tile of a copy: boxes missing it still read; a box touching it names it."""
    broken = tmp_path / "broken.svs"
    shutil.copyfile(made["svs"], broken)
    with tifffile.TiffFile(broken) as tif:
        page = tif.pages[0]
        last = len(page.dataoffsets) - 1  # bottom-right tile of level 0: (640..768) x (896..1000)
        offset, count = page.dataoffsets[last], page.databytecounts[last]
    with open(broken, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\0" * count)
    with pytest.raises(imagecodecs.Jpeg8Error):
        tifffile.imread(broken, series=0, level=0)  # the whole level really is unreadable now
    full = tifffile.imread(made["svs"], series=0, level=0)
    with Slide(broken) as s:
        np.testing.assert_array_equal(s.read(0, 0, 0, 896, 760), full[:, :896])
        np.testing.assert_array_equal(s.read(0, 100, 100, 1000, 540), expected_region(full, 100, 100, 1000, 540))
        assert s.read(1, 200, 150, 50, 40).shape == (40, 50, 3)  # the other levels are untouched
        with pytest.raises(SlideError, match=names(broken, f"tile {last} of level 0: JPEG decode failed")):
            s.read(0, 890, 630, 20, 20)


def test_read_box_and_best_level(made):
    full1 = tifffile.imread(made["svs"], series=0, level=1)
    with Slide(made["svs"]) as s:
        # [101, 499) x [37, 390) at downsample 4 covers level-1 pixels [25, 125) x [9, 98)
        np.testing.assert_array_equal(s.read_box(101, 37, 499, 390, level=1), full1[9:98, 25:125])
        assert s.read_box(0, 0, 1, 1, level=2).shape == (1, 1, 3)
        assert s.best_level(100, 5000) == 0
        assert s.best_level(2000, 1500) == 1  # 1500 / 4 >= 256 > 1500 / 15.8
        assert s.best_level(8000, 4100) == 2
        assert s.best_level(300, 300, min_side=64) == 1
        with pytest.raises(ValueError, match="no level 3"):
            s.read(3, 0, 0, 1, 1)


def test_slides_refuse_pickling(made):
    with Slide(made["svs"]) as s, pytest.raises(TypeError, match="inside the task"):
        pickle.dumps(s)


def test_unopenable_files_fail_at_open_naming_the_file(made):
    missing = made["text"].with_name("missing.svs")
    for path, message in ((made["text"], "not a readable TIFF file"), (made["float"], "holds float32 samples"),
                          (missing, "cannot open")):
        with pytest.raises(SlideError, match=names(path, f".*{message}")):
            Slide(path)


# ---------------------------------------------------------------- real scanner files


@needs_realdata
@pytest.mark.parametrize(("name", "fmt", "size", "mpp", "source"), [
    ("CMU-1-Small-Region.svs", "svs", (2220, 2967), 0.499, "aperio"),
    ("small.svs", "svs", (16, 16), 0.499, "aperio"),
    ("OS-1-detail.ome.tif", "ome", (1101, 1101), 0.2270972430394695, "ome"),  # OME-XML PhysicalSizeX
    ("unreadable.svs", "svs", (16, 16), 0.499, "aperio"),  # opens: only its pixels are broken
])
def test_real_files_open(name, fmt, size, mpp, source):
    info = slide_info(REALDATA / name)
    assert (info["format"], (info["width"], info["height"])) == (fmt, size)
    assert (info["mpp"], info["mpp_source"]) == (pytest.approx(mpp, abs=1e-12), source)
    assert len(info["levels"]) == 1 and info["levels"][0]["compression"] == "JPEG"
    json.dumps(info)


@needs_realdata
@pytest.mark.parametrize(("name", "tile"), [("CMU-1-Small-Region.svs", 240), ("OS-1-detail.ome.tif", 512),
                                            ("small.svs", 64)])
def test_real_reads_match_tifffile(name, tile):
    path = REALDATA / name
    full = tifffile.imread(path, series=0, level=0)
    check_reads(path, 0, full, tile)


@needs_realdata
def test_real_cmu_single_level_box():
    path = REALDATA / "CMU-1-Small-Region.svs"
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].jpegtables  # its tiles need the shared JPEGTables to decode
    with Slide(path) as s:
        assert s.best_level(2220, 2967) == 0
        np.testing.assert_array_equal(s.read_box(470, 470, 730, 730, level=0),
                                      tifffile.imread(path, series=0)[470:730, 470:730])


@needs_realdata
def test_real_unopenable_compression_fails_at_open():
    path = REALDATA / "unopenable.tiff"
    with pytest.raises(SlideError, match=names(path, "level 0 uses compression 52479, which cannot be decoded")):
        Slide(path)


@needs_realdata
def test_real_unreadable_tile_fails_on_read():
    path = REALDATA / "unreadable.svs"
    with Slide(path) as s:
        with pytest.raises(SlideError, match=names(path, "tile 0 of level 0: JPEG decode failed: Bogus marker")):
            s.read(0, 0, 0, 8, 8)


@needs_realdata
def test_real_box_outside_needs_no_decoding():
    # the only tile is corrupt, yet a box wholly outside the image is plain background
    with Slide(REALDATA / "unreadable.svs") as s:
        assert (s.read(0, 16, 0, 5, 5) == 255).all()


def test_downsample_is_mean_of_axis_ratios(made):
    with Slide(made["pages"]) as s:
        assert math.isclose(s.levels[2].downsample, (1000 / 40 + 760 / 31) / 2)
