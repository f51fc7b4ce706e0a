"""Exports of a window grid: exact polygons, QuPath GeoJSON, NEDC REGIONDECISIONS round trip, overlay PNGs; end to
end on a real TIFF pyramid with known regions (labelled and scored by infer/scoring.py)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from crystal_dask.exports import CLASS_COLOURS
from crystal_dask.exports.geojson import class_map_to_geojson, write_geojson
from crystal_dask.exports.overlay import class_overlay, heatmap_png, overlay_png
from crystal_dask.exports.polygons import bridge_holes, signed_area, trace_components
from crystal_dask.exports.region_decisions import write_region_decisions
from crystal_dask.infer.scoring import label_windows, score_windows
from crystal_dask.synthetic.corpus import place_regions
from crystal_dask.synthetic.slide_writer import write_slide
from crystal_dask.synthetic.tissue import paint_slide
from crystal_dask.vocab import CLASSES
from crystal_dask.wsi.annotations import Header, read_nedc_csv
from crystal_dask.wsi.patches import cell_mask
from crystal_dask.wsi.slides import Slide
from crystal_dask.wsi.tissue_mask import thumbnail, tissue_fraction, tissue_mask, window_boxes, window_grid


def _grid(seed: int, rows: int = 14, cols: int = 18) -> tuple[np.ndarray, np.ndarray]:
    """Blocky class map (regions, holes, islands, -1 gaps) and matching probabilities."""
    rng = np.random.default_rng(seed)
    classes = np.kron(rng.integers(-1, 9, (rows // 2, cols // 2)), np.ones((2, 2), np.int64))
    flip = rng.random(classes.shape) < 0.15
    classes[flip] = rng.integers(-1, 9, flip.sum())
    proba = rng.dirichlet(np.ones(9), classes.shape).astype(np.float32)
    return classes, proba


def _rings(geometry: dict) -> list[list[list[float]]]:
    polys = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    return [ring for poly in polys for ring in poly]


def _area(geometry: dict) -> float:
    polys = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    return sum(signed_area(ring) for poly in polys for ring in poly)


@pytest.mark.parametrize("seed", range(40))
def test_traced_polygons_are_exact(seed):
    mask = np.random.default_rng(seed).random((12, 15)) < 0.3 + 0.01 * seed
    total = 0
    for cells, outer, holes in trace_components(mask):
        assert signed_area(outer) > 0 and all(signed_area(h) < 0 for h in holes)
        assert signed_area(outer) + sum(signed_area(h) for h in holes) == cells.sum()
        for ring in (outer, *holes):
            assert ring[0] == ring[-1] and len(set(ring[:-1])) == len(ring) - 1  # closed, never touches itself
        one = bridge_holes(outer, holes)  # the single-ring form: same area, same inside (even-odd)
        assert signed_area(one) == cells.sum()
        inside = cell_mask([p[0] for p in one[:-1]], [p[1] for p in one[:-1]], 0, 0, 1.0, mask.shape)
        np.testing.assert_array_equal(inside, cells)
        total += cells.sum()
    assert total == mask.sum()


@pytest.mark.parametrize(("step", "size"), [(500, 500), (250, 500), (600, 500)])
def test_geojson_feature_collection(step, size):
    classes, proba = _grid(1)
    origin = (40, 30)
    rows, cols = classes.shape
    width, height = origin[0] + (cols - 1) * step + size, origin[1] + (rows - 1) * step + size
    fc = class_map_to_geojson(classes, proba, step=step, size=size, origin=origin)
    json.dumps(fc, allow_nan=False)  # strict JSON
    assert fc["type"] == "FeatureCollection" and fc["features"]
    cell_area = min(step, size) ** 2
    windows = Counter()
    for f in fc["features"]:
        assert f["type"] == "Feature" and set(f) == {"type", "geometry", "properties"}
        assert f["geometry"]["type"] in ("Polygon", "MultiPolygon")
        props = f["properties"]
        name = props["classification"]["name"]
        k = CLASSES.index(name)
        assert props["objectType"] == "annotation"
        assert props["classification"]["color"] == list(CLASS_COLOURS[name])
        n = props["measurements"]["windows"]
        windows[k] += n
        assert 0 <= props["measurements"]["mean probability"] <= 1
        for ring in _rings(f["geometry"]):
            assert ring[0] == ring[-1] and len(ring) >= 4
            xs, ys = [p[0] for p in ring], [p[1] for p in ring]
            assert min(xs) >= origin[0] and max(xs) <= width and min(ys) >= origin[1] and max(ys) <= height
        # merged polygons cover exactly their windows' cells
        assert _area(f["geometry"]) == pytest.approx(n * cell_area)
    assert windows == Counter({k: int((classes == k).sum()) for k in range(9) if (classes == k).any()})


def test_geojson_per_class_and_mean_probability(tmp_path):
    classes = np.full((5, 7), -1)
    classes[0:2, 0:2] = 6  # two separate dcis regions
    classes[3:5, 4:7] = 6
    classes[2, 2] = 8
    proba = np.zeros((5, 7, 9), np.float32)
    proba[..., 6] = np.arange(35).reshape(5, 7) / 35
    fc = class_map_to_geojson(classes, proba, step=500, size=500, per="class")
    dcis = [f for f in fc["features"] if f["properties"]["classification"]["name"] == "dcis"]
    assert len(dcis) == 1 and dcis[0]["geometry"]["type"] == "MultiPolygon"
    assert len(dcis[0]["geometry"]["coordinates"]) == 2
    mean = pytest.approx(proba[..., 6][classes == 6].mean())
    assert dcis[0]["properties"]["measurements"] == {"mean probability": mean, "windows": 10}
    assert dcis[0]["geometry"]["coordinates"][0][0][:2] == [[0, 0], [1000, 0]]  # top-left origin, level-0 px
    skipped = class_map_to_geojson(classes, proba, step=500, size=500, skip=("dcis",))
    assert [f["properties"]["classification"]["name"] for f in skipped["features"]] == ["indc"]
    path = write_geojson(tmp_path / "s.geojson", fc)
    assert json.loads(path.read_text()) == json.loads(json.dumps(fc))


@pytest.mark.parametrize("step", [500, 250])
def test_region_decisions_round_trip(tmp_path, step):
    classes, proba = _grid(2)
    size = 500
    rows, cols = classes.shape
    header = Header("slide_0001", 0.25, (cols - 1) * step + size, (rows - 1) * step + size)
    path = write_region_decisions(tmp_path, header, classes, proba, step=step, size=size)
    assert path.name == "slide_0001_REGIONDECISIONS.csv"
    back = read_nedc_csv(path)
    assert back.errors == []
    assert back.header == header
    comps = [(k, cells) for k in range(9) for cells, _, _ in trace_components(classes == k)]
    assert len(back.regions) == len(comps)
    for region, (k, cells) in zip(back.regions, comps, strict=True):
        assert region.label == CLASSES[k]
        assert region.confidence == float(proba[..., k][cells].mean())  # exact: repr round-trips
        assert region.area == pytest.approx(cells.sum() * step * step)  # holes cut out exactly


def test_overlay_and_heatmap_png(tmp_path):
    classes, proba = _grid(3, 6, 8)
    thumb = np.full((190, 260, 3), 240, np.uint8)  # 8000x6000 level-0 at downsample 32 (partial last cells)
    over = class_overlay(thumb, classes, 32.0, step=1000, size=1000, alpha=0.5)
    assert over.shape == thumb.shape
    k = classes[1, 2]
    expect = np.rint(0.5 * 240 + 0.5 * np.array(CLASS_COLOURS[CLASSES[k]])) if k >= 0 else np.full(3, 240)
    np.testing.assert_array_equal(over[int(1.5 * 1000 / 32), int(2.5 * 1000 / 32)], expect)
    a = overlay_png(tmp_path / "a.png", thumb, classes, 32.0, step=1000, size=1000)
    b = overlay_png(tmp_path / "b.png", thumb, classes, 32.0, step=1000, size=1000)
    assert a.read_bytes() == b.read_bytes()  # same input, same bytes
    h = heatmap_png(tmp_path / "h.png", thumb, proba[..., 6], 32.0, step=1000, size=1000, label="dcis")
    for p in (a, h):
        with Image.open(p) as im:
            assert im.size == (260, 190) and im.mode == "RGB"


@pytest.mark.parametrize("tints", [9, 255, 256, 1200])  # uint16 lookup up to 255 tints, int32 beyond
def test_the_blend_is_the_per_pixel_blend(tints):
    """The lookup-table blend gives the bytes of the per-pixel float32 blend it replaces, whichever index type its
    number of tints needs; the heatmap's cells of one colour share a tint and draw what one tint per cell drew."""
    from crystal_dask.exports.overlay import _blend, heatmap_overlay, rasterize_grid

    rng = np.random.default_rng(tints)
    thumb = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    index = rng.integers(-1, tints, (70, 90))
    tint = (rng.random((tints, 3)) * 150).astype(np.float32)
    alpha = 0.45
    expect = np.where(index[..., None] >= 0, np.rint((1 - alpha) * thumb.astype(np.float32) + tint[index]), thumb)
    np.testing.assert_array_equal(_blend(thumb, index, tint, alpha), expect.astype(np.uint8))
    import matplotlib

    proba = rng.random((7, 9))
    proba[0, :3] = np.nan
    one_per_cell = 0.6 * 255 * matplotlib.colormaps["inferno"](np.nan_to_num(proba.ravel()))[:, :3]
    cells = np.where(np.isfinite(proba), np.arange(proba.size).reshape(proba.shape), -1)
    grid = rasterize_grid(cells, thumb.shape[:2], 10.0, step=100, size=100)
    np.testing.assert_array_equal(heatmap_overlay(thumb, proba, 10.0, step=100, size=100),
                                  _blend(thumb, grid, one_per_cell.astype(np.float32), 0.6))


def test_end_to_end_on_a_real_pyramid(tmp_path):
    """Known regions painted on a real TIFF: tissue-gated windows labelled by the regions, a perfect 'prediction'
    exported; polygons inside the slide, REGIONDECISIONS read back, overlay of the thumbnail's size."""
    rng = np.random.default_rng(9)
    width, height, size = 2400, 1800, 200
    regions = place_regions(["dcis", "indc", "norm", "infl"], width, height, rng)
    image = paint_slide(width, height, [(r.label, r.x, r.y) for r in regions], "fcbr", rng)
    write_slide(tmp_path / "s.svs", image, 0.5)
    with Slide(tmp_path / "s.svs") as slide:
        mask, ds = tissue_mask(slide)
        thumb, tds = thumbnail(slide)
    rows, cols = window_grid(width, height, size, size)
    boxes = window_boxes(rows, cols, size, size)
    keep = tissue_fraction(mask, ds, boxes) >= 0.5
    label, _ = label_windows(boxes, [(r.x, r.y) for r in regions], [CLASSES.index(r.label) for r in regions])
    classes = np.where(keep & (label >= 0), label, -1).reshape(rows, cols)
    assert {CLASSES[k] for k in np.unique(classes[classes >= 0])} == {"dcis", "indc", "norm", "infl"}
    proba = np.eye(9, dtype=np.float32)[np.maximum(classes, 0)]
    fc = class_map_to_geojson(classes, proba, step=size, size=size)
    for f in fc["features"]:
        for ring in _rings(f["geometry"]):
            assert all(0 <= x <= width and 0 <= y <= height for x, y in ring)
        assert f["properties"]["measurements"]["mean probability"] == 1.0
    header = Header("s", 0.5, width, height)
    back = read_nedc_csv(write_region_decisions(tmp_path, header, classes, proba, step=size, size=size))
    assert back.errors == [] and {r.label for r in back.regions} == {"dcis", "indc", "norm", "infl"}
    assert sum(r.area for r in back.regions) == (classes >= 0).sum() * size * size
    png = overlay_png(tmp_path / "o.png", thumb, classes, tds, step=size, size=size)
    with Image.open(png) as im:
        assert im.size == (thumb.shape[1], thumb.shape[0])
    assert score_windows(classes, label.reshape(rows, cols))["dice"]["dcis"] > 0.9
