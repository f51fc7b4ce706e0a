"""The Aperio-style writer: files tifffile and OpenSlide read as SVS, shaped like a real Aperio file, same bytes."""

from __future__ import annotations

import hashlib

import imagecodecs
import numpy as np
import pytest
import tifffile

from crystal_dask.synthetic.slide_writer import downsample, write_slide
from tests.helpers import REALDATA

REAL_SVS = REALDATA / "CMU-1-Small-Region.svs"


def _image(h: int = 1100, w: int = 1500) -> np.ndarray:
    """Smooth gradients plus blocks: JPEG keeps it close, so decoded pixels can be compared."""
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([200 + 40 * np.sin(xx / 90), 150 + 60 * np.cos(yy / 70), 180 + 0 * xx], axis=-1)
    img[300:600, 400:800] = (90, 40, 140)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    path = tmp_path_factory.mktemp("sw") / "slide.svs"
    img = _image()
    label = np.full((120, 100, 3), 240, np.uint8)
    info = write_slide(path, img, 0.502, label=label, macro=downsample(img, 8), metadata={"Filename": "slide"})
    return path, img, info


def test_tifffile_reads_an_aperio_pyramid(written):
    path, img, info = written
    with tifffile.TiffFile(path) as tif:
        assert tif.is_svs
        assert [s.name for s in tif.series] == ["Baseline", "Thumbnail", "Label", "Macro"]
        levels = tif.series[0].levels
        assert [lv.shape[:2] for lv in levels] == [(1100, 1500), (275, 375), (68, 93)]
        page0 = tif.pages[0]
        desc = page0.description
        assert desc.startswith("Aperio Image Library") and "1500x1100 [0,0 1500x1100] (256x256) JPEG/RGB Q=80" in desc
        assert "|AppMag = 20|" in desc and "|MPP = 0.5020" in desc and "Filename = slide" in desc
        for lv in levels:
            page = lv.keyframe
            assert page.is_tiled and (page.tilewidth, page.tilelength) == (256, 256)
            assert page.compression == 7 and page.photometric == 2  # JPEG, RGB as Aperio writes it
            assert page.jpegtables and page.jpegtables[:2] == b"\xff\xd8"
            tif.filehandle.seek(page.dataoffsets[0])
            tile = tif.filehandle.read(page.databytecounts[0])
            assert b"\xff\xdb" not in tile[:200]  # abbreviated stream: tables live in JPEGTables
        assert tif.pages[1].is_tiled is False and tif.pages[1].shape[1] <= 1024
        assert tif.pages[-2].subfiletype == 1 and tif.pages[-1].subfiletype == 9
        assert tif.pages[-2].description.endswith("label 100x120")
        level0 = levels[0].asarray()
        level1 = levels[1].asarray()
    assert np.abs(level0.astype(int) - img).mean() < 3
    assert np.abs(level1.astype(int) - downsample(img, 4)).mean() < 3
    assert info.levels == ((1500, 1100), (375, 275), (93, 68)) and info.nbytes == path.stat().st_size


def test_openslide_reads_it_like_tifffile(written):
    openslide = pytest.importorskip("openslide", reason="openslide-python is a bench extra")
    path = written[0]
    with openslide.OpenSlide(str(path)) as osr:
        assert osr.detect_format(str(path)) == "aperio"
        assert osr.level_count == 3 and osr.level_dimensions[1] == (375, 275)
        assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(0.502)
        assert set(osr.associated_images) == {"thumbnail", "label", "macro"}
        region = np.asarray(osr.read_region((300, 200), 0, (600, 500)))[..., :3]
    with tifffile.TiffFile(path) as tif:
        same = tif.series[0].levels[0].asarray()[200:700, 300:900]
    assert np.array_equal(region, same)


def test_same_bytes_whatever_the_threads(tmp_path):
    img = _image(700, 900)
    digests = set()
    for workers in (1, 2):
        path = tmp_path / f"w{workers}.svs"
        write_slide(path, img, 0.5, workers=workers)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_no_mpp_and_custom_levels(tmp_path):
    path = tmp_path / "nompp.svs"
    write_slide(path, _image(600, 800), None, downsamples=(1, 2, 8), tile=128)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_svs and "MPP" not in tif.pages[0].description
        assert [lv.shape[:2] for lv in tif.series[0].levels] == [(600, 800), (300, 400), (75, 100)]
        assert tif.pages[0].tilewidth == 128


def test_structure_matches_a_real_aperio_file(written):
    if not REAL_SVS.exists():
        pytest.skip(f"{REAL_SVS} not present (shared real-data folder)")
    path, _, _ = written

    def shape_of(p):
        with tifffile.TiffFile(p) as tif:
            pages = list(tif.pages)
            return ([(pg.is_tiled, pg.subfiletype) for pg in (pages[0], pages[1], pages[-2], pages[-1])],
                    pages[0].photometric, pages[0].compression, bool(pages[0].jpegtables),
                    pages[0].description.split("\r\n")[0].split(" v")[0])

    assert shape_of(path) == shape_of(REAL_SVS)


def test_downsample_is_the_block_mean():
    img = np.random.default_rng(0).integers(0, 256, (37, 50, 3), dtype=np.uint8)
    ref = img[:36, :48].reshape(9, 4, 12, 4, 3).astype(float).mean(axis=(1, 3))
    assert np.abs(downsample(img, 4).astype(float) - ref).max() <= 0.5
    assert downsample(img, 1) is img
    with pytest.raises(ValueError, match="smaller than the downsample"):
        downsample(img, 64)


def test_bad_input_names_the_file(tmp_path):
    with pytest.raises(ValueError, match="bad.svs"):
        write_slide(tmp_path / "bad.svs", np.zeros((10, 10), np.uint8), 0.5)
    with pytest.raises(ValueError, match="downsamples"):
        write_slide(tmp_path / "bad.svs", _image(100, 100), 0.5, downsamples=(1, 3, 4))


def test_tiles_decode_alone_with_the_shared_tables(written):
    path, img, _ = written
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        tif.filehandle.seek(page.dataoffsets[0])
        tile = tif.filehandle.read(page.databytecounts[0])
        decoded = imagecodecs.jpeg8_decode(tile, tables=page.jpegtables, colorspace="RGB", outcolorspace="RGB")
    assert np.abs(decoded.astype(int) - img[:256, :256]).mean() < 3
