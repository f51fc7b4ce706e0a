"""`crystal-dask calcifications`: QuPath detections of deposits and their count per mm² of tissue, on real slides
and on a tiny generated slide with a calcified region."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from crystal_dask.cli import main
from crystal_dask.exports.calcifications import NoMppError, deposit_polygons, detect_slide
from crystal_dask.synthetic.slide_writer import write_slide
from crystal_dask.synthetic.tissue import paint_slide


@pytest.fixture(scope="module")
def calcified_slide(tmp_path_factory):
    """A 1200 x 900 px slide at 0.5 µm/px: one cnno region (a large deposit and smaller ones) in stroma."""
    xs, ys = [300.0, 800.0, 800.0, 300.0], [200.0, 200.0, 700.0, 700.0]
    rgb = paint_slide(1200, 900, [("cnno", xs, ys)], "fcbr", np.random.default_rng(3))
    path = tmp_path_factory.mktemp("calc") / "cnno.svs"
    write_slide(path, rgb, 0.5, downsamples=(1, 4))
    return path, (xs, ys)


def _inside(features, box):
    (x0, x1), (y0, y1) = box
    for f in features:
        g = f["geometry"]
        polys = [g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"]
        pts = np.array([p for poly in polys for p in poly[0]])
        if not (x0 <= pts[:, 0].min() and pts[:, 0].max() <= x1 and y0 <= pts[:, 1].min() and pts[:, 1].max() <= y1):
            return False
    return True


@pytest.mark.slow  # paints and writes a slide, reads it whole
def test_generated_deposits_are_found_inside_their_region(calcified_slide):
    path, (xs, ys) = calcified_slide
    collection, summary = detect_slide(path)
    feats = collection["features"]
    assert summary["deposits"] == len(feats) >= 1 and summary["per_mm2"] > 0
    assert _inside(feats, ((min(xs), max(xs)), (min(ys), max(ys))))
    big = max(f["properties"]["measurements"]["area µm2"] for f in feats)
    assert big > np.pi * 50**2  # the region's central deposit: 30-38 % of its 250 µm side as radius
    for f in feats:
        p = f["properties"]
        assert p["objectType"] == "detection" and p["classification"]["name"] == "Calcification"
        assert 0.4 <= p["measurements"]["mean haematoxylin OD"] <= 1.5
        ring = (f["geometry"]["coordinates"] if f["geometry"]["type"] == "Polygon" else
                f["geometry"]["coordinates"][0])[0]
        assert ring[0] == ring[-1]


@pytest.mark.slow
def test_command_on_real_slides_writes_geojson_table_and_rejects(realdata, calcified_slide, tmp_path, capsys):
    slides = [calcified_slide[0], realdata / "OS-1-detail.ome.tif", realdata / "unreadable.svs"]
    assert main(["calcifications", *map(str, slides), "-o", str(tmp_path)]) == 1  # one slide failed
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unreadable.svs" in err[0] and "Traceback" not in err[0]
    rows = list(csv.DictReader((tmp_path / "calcifications.csv").open()))
    assert [r["slide"] for r in rows] == list(map(str, slides))  # every input accounted for
    assert rows[2]["error"] and not rows[0]["error"] and int(rows[0]["deposits"]) >= 1
    assert float(rows[1]["tissue_mm2"]) > 0.03  # OS-1 detail: 0.25 x 0.25 mm, mostly tissue
    gj = json.loads((tmp_path / "OS-1-detail.ome.tif.geojson").read_text())
    assert gj["type"] == "FeatureCollection"


def test_a_deposit_traced_on_its_bounding_box_has_the_whole_reads_coordinates():
    """Each deposit is traced on its bounding box only; its level-0 polygons are, to the byte, the ones a trace on
    the whole read's mask gives: with holes, parts touching at a corner, at the read's edges."""
    from scipy.ndimage import find_objects
    from skimage.measure import label

    m = np.zeros((60, 80), bool)
    m[5:20, 10:30] = True
    m[9:14, 15:22] = False  # a hole
    m[20:25, 30:34] = True  # touches the first at a corner: one 8-connected deposit of two parts
    m[0:7, 70:80] = True  # on the read's top and right edges
    m[50:60, 0:3] = True  # bottom-left corner
    m[40, 40] = True  # one pixel
    lab = label(m, connectivity=2)
    x0, y0, fx, fy = 1234.5, 987.25, 4.0 / 3, 2.5
    for i, box in enumerate(find_objects(lab), 1):
        whole = deposit_polygons(lab == i, (0, 0), x0, y0, fx, fy)
        on_box = deposit_polygons(lab[box] == i, (box[0].start, box[1].start), x0, y0, fx, fy)
        assert json.dumps(on_box) == json.dumps(whole)
    assert lab.max() == 4 and len(deposit_polygons(lab == lab[5, 10], (0, 0), x0, y0, fx, fy)) == 2


def test_slide_without_mpp_is_refused(tmp_path):
    path = tmp_path / "nompp.tif"
    write_slide(path, np.full((300, 300, 3), 200, np.uint8), None, downsamples=(1,))
    with pytest.raises(NoMppError, match="nompp.tif: no MPP"):
        detect_slide(path)
