"""Whole-slide inference on real LocalClusters: a model trained on generated slides with painted regions, its
predicted class maps, exports, resume and determinism."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr

from crystal_dask.exports.polygons import signed_area
from crystal_dask.infer.run import SlideInput, infer_slides, slides_from_regions
from crystal_dask.infer.settings import InferSettings, model_context, render_context, render_settings
from crystal_dask.infer.windows import window_matrix
from crystal_dask.store.dataset import Dataset
from crystal_dask.store.models import load_model
from crystal_dask.store.schema import INFER_SUMMARY, read_table
from crystal_dask.vocab import CLASSES
from crystal_dask.wsi.patches import PatchSettings, render_patch
from crystal_dask.wsi.slides import Slide

SETTINGS = InferSettings(block=4)


def tree_digest(folder: Path) -> str:
    """sha256 over every file's relative path and bytes, markers excluded."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and ".infer" not in p.parts:
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def held_out(small_scan):
    return slides_from_regions(small_scan.regions, ["dev", "eval"])


@pytest.fixture(scope="module")
def inferred(held_out, window_model, client, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("infer") / "out"
    infer_slides(held_out, window_model, out, client, SETTINGS, corpus="fcbr")
    return out


def test_windows_render_exactly_as_the_dataset(held_out, window_model):
    mm, source = render_context(window_model, InferSettings())
    s = PatchSettings(**mm["render_settings"])
    assert (s.window_size, s.window_step, s.mode) == (256.0, 256.0, "window") and "dataset" in source
    # neighbours (sharing tiles), a lone window far away, and an overlapping one: all as render_patch renders them
    boxes = np.array([[0, 0, 256, 256], [256, 0, 512, 256], [256, 256, 512, 512], [1536, 1280, 1792, 1536],
                      [128, 128, 384, 384]])
    with Slide(held_out[0].slide) as slide:
        X, described = window_matrix(slide, boxes, mm)
        expected = np.stack([render_patch(slide, tuple(b), PatchSettings(**mm["dataset_settings"]))[0].ravel()
                             for b in boxes])
    np.testing.assert_array_equal(X, expected)
    assert described.all()


def test_region_mode_model_defaults_to_500_px():
    s, source = render_settings({"dataset_settings": PatchSettings().as_dict()}, InferSettings())
    assert (s.window_size, s.window_step or s.window_size, s.window_unit) == (500.0, 500.0, "px")
    assert "region mode" in source
    s, _ = render_settings({"dataset_settings": PatchSettings().as_dict()}, InferSettings(window_size=300))
    assert (s.window_size, s.window_step) == (300.0, None)


def test_class_map_recovers_the_painted_regions(inferred, window_model, small_corpus):
    """The threshold: whole-slide windows of held-out slides must be called at least 80% as well as the same
    model calls its own dataset's held-out patches (same pixels pipeline, region-aligned windows), and at least
    twice chance (1/9). The forest on raw grey pixels is weak, so a fixed high bar would test the forest, not
    inference; a broken grid (shifted boxes, wrong rows/cols, wrong class columns) falls to about chance."""
    m = json.loads((inferred / "infer.json").read_text())
    summary = m["score"]["summary"]
    assert m["score"]["windows_scored"] >= 30
    ds = Dataset(model_context(window_model)["dataset"])
    rows = ds.rows()
    held = np.flatnonzero(np.isin(rows["split"].to_numpy(zero_copy_only=False), ["dev", "eval"]))
    sel = np.sort(rows["row"].to_numpy()[held])
    model = load_model(window_model)
    patch_acc = float((model.predict(ds.matrix(sel).astype(np.float32)) == ds.labels(sel)).mean())
    assert summary["accuracy"] >= max(2 / 9, 0.8 * patch_acc), (summary["accuracy"], patch_acc)
    assert set(m["score"]["dice"]) == set(CLASSES)


def test_grid_tissue_and_summary(inferred):
    m = json.loads((inferred / "infer.json").read_text())
    assert m["slides_done"] == m["slides_in"] and m["rejects"] == 0
    total = 0
    for bname, info in m["slides"].items():
        g = zarr.open_group(str(inferred / "slides" / bname / "windows.zarr"), mode="r")
        proba, tissue = g["proba"][...], g["tissue"][...]
        assert proba.shape == (info["rows"], info["cols"], 9) and proba.dtype == np.float32
        assert np.allclose(proba[tissue].sum(-1), 1, atol=1e-5) and (proba[~tissue] == 0).all()
        assert 0 < tissue.sum() < tissue.size  # glass at the edges is skipped
        total += int(tissue.sum())
    summary = read_table(inferred / "summary.parquet", INFER_SUMMARY)
    assert summary["windows"].to_numpy().sum() == total == m["windows"]
    assert summary["area_mm2"].null_count == 0  # generated slides have an MPP
    first = summary.to_pylist()[0]
    info = m["slides"][first["bname"]]
    assert first["area_mm2"] == pytest.approx(first["windows"] * (info["step"] * info["mpp"]) ** 2 / 1e6)


def test_blocks_are_ordered_by_their_tissue_windows(inferred):
    """The tissue task orders a slide's blocks by their tissue windows, most first (ties in plan order): the
    block tasks run in that order, so the last to run are the small ones."""
    from crystal_dask.infer.tasks import grid_blocks

    for bname, info in json.loads((inferred / "infer.json").read_text())["slides"].items():
        d = inferred / "slides" / bname
        order = json.loads(next(d.rglob("tissue.json")).read_text())["order"]
        tissue = zarr.open_group(str(d / "windows.zarr"), mode="r")["tissue"][...]
        b = SETTINGS.block
        blocks = grid_blocks(info["rows"], info["cols"], b)
        windows = [int(tissue[r0:r0 + b, c0:c0 + b].sum()) for r0, c0 in blocks]
        assert sorted(order) == list(range(len(blocks)))
        assert [(-windows[i], i) for i in order] == sorted((-w, i) for i, w in enumerate(windows))
        assert windows[order[0]] > windows[order[-1]]


def test_geojson_is_a_feature_collection_inside_the_slide(inferred):
    m = json.loads((inferred / "infer.json").read_text())
    for bname, info in m["slides"].items():
        doc = json.loads((inferred / "slides" / bname / f"{bname}.geojson").read_text())
        assert doc["type"] == "FeatureCollection" and doc["features"]
        with Slide(info["slide"]) as slide:
            w, h = slide.width, slide.height
        for f in doc["features"]:
            assert f["type"] == "Feature" and f["geometry"]["type"] in ("Polygon", "MultiPolygon")
            props = f["properties"]
            assert props["classification"]["name"] in CLASSES and len(props["classification"]["color"]) == 3
            assert 0 <= props["measurements"]["mean probability"] <= 1
            polys = ([f["geometry"]["coordinates"]] if f["geometry"]["type"] == "Polygon"
                     else f["geometry"]["coordinates"])
            for poly in polys:
                for ring in poly:
                    xy = np.array(ring, float)
                    assert len(ring) >= 4 and ring[0] == ring[-1]
                    assert (xy[:, 0] >= 0).all() and (xy[:, 0] <= w).all()
                    assert (xy[:, 1] >= 0).all() and (xy[:, 1] <= h).all()


def test_region_decisions_round_trip(inferred):
    from crystal_dask.wsi.annotations import read_annotations

    m = json.loads((inferred / "infer.json").read_text())
    for bname, info in m["slides"].items():
        ann = read_annotations(inferred / "slides" / bname / f"{bname}_REGIONDECISIONS.csv")
        assert not ann.errors, ann.errors
        with Slide(info["slide"]) as slide:
            assert (ann.header.bname, ann.header.width, ann.header.height) == (bname, slide.width, slide.height)
        doc = json.loads((inferred / "slides" / bname / f"{bname}.geojson").read_text())
        # the same area per class (a component the csv cannot hold as one simple ring is written as rectangles),
        # and the same area-weighted confidence
        csv_area, csv_conf, geo_area, geo_conf = ({} for _ in range(4))
        for r in ann.regions:
            a = abs(signed_area(list(zip(r.x, r.y, strict=True)) + [(r.x[0], r.y[0])]))
            csv_area[r.label] = csv_area.get(r.label, 0) + a
            csv_conf[r.label] = csv_conf.get(r.label, 0) + a * r.confidence
        for f in doc["features"]:
            g = f["geometry"]
            polys = [g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"]
            a = sum(abs(signed_area(ring[0])) - sum(abs(signed_area(h)) for h in ring[1:]) for ring in polys)
            name = f["properties"]["classification"]["name"]
            geo_area[name] = geo_area.get(name, 0) + a
            geo_conf[name] = geo_conf.get(name, 0) + a * f["properties"]["measurements"]["mean probability"]
        assert csv_area.keys() == geo_area.keys() and ann.regions
        for name in csv_area:
            assert csv_area[name] == pytest.approx(geo_area[name])
            assert csv_conf[name] / csv_area[name] == pytest.approx(geo_conf[name] / geo_area[name], abs=1e-4)


def test_pngs_are_the_thumbnail_size(inferred):
    from PIL import Image

    bname = next(iter(json.loads((inferred / "infer.json").read_text())["slides"]))
    d = inferred / "slides" / bname
    thumb = Image.open(d / "thumbnail.png").size
    assert Image.open(d / f"{bname}_overlay.png").size == thumb == Image.open(d / f"{bname}_heatmap_dcis.png").size


def test_resume_after_lost_blocks_is_byte_identical(inferred, held_out, window_model, client, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(inferred, out)
    (out / "infer.json").unlink()  # the run "died" ...
    b = SETTINGS.block
    for d in sorted((out / "slides").iterdir())[:2]:
        for marker in sorted(d.rglob("block-*.json"))[1::2]:
            marker.unlink()  # ... before these blocks were done: their chunks were never written
            r0, c0 = (int(v) for v in marker.stem.split("-")[1:])
            (d / "windows.zarr" / "proba" / "c" / str(r0 // b) / str(c0 // b) / "0").unlink()
        next(d.rglob("export.json")).unlink()
        (d / f"{d.name}.geojson").unlink()
        (d / "windows.zarr" / "proba" / "c" / "zz.0123.partial").parent.mkdir(parents=True, exist_ok=True)
        (d / "windows.zarr" / "proba" / "c" / "zz.0123.partial").write_bytes(b"half")
    infer_slides(held_out, window_model, out, client, SETTINGS, corpus="fcbr")
    assert not list(out.rglob("*.partial"))
    assert tree_digest(out) == tree_digest(inferred)


def test_a_lost_picture_is_drawn_again_alone(inferred, held_out, window_model, client, tmp_path):
    """The overlay and the heatmap are tasks of their own, each with its marker: a run that died after the heatmap
    but before the overlay draws the overlay again (same bytes) and nothing else."""
    out = tmp_path / "out"
    shutil.copytree(inferred, out)
    (out / "infer.json").unlink()
    d = sorted((out / "slides").iterdir())[0]
    for name in ("overlay", "export"):
        next(d.rglob(f"{name}.json")).unlink()
    (d / f"{d.name}_overlay.png").unlink()
    heatmap = d / f"{d.name}_heatmap_dcis.png"
    stamp = heatmap.stat().st_mtime_ns
    infer_slides(held_out, window_model, out, client, SETTINGS, corpus="fcbr")
    assert heatmap.stat().st_mtime_ns == stamp
    assert tree_digest(out) == tree_digest(inferred)


def test_a_damaged_model_fails_in_one_line_before_any_output(held_out, window_model, client, tmp_path):
    from crystal_dask.store.models import manifest_path

    bad = tmp_path / "model" / window_model.name
    bad.parent.mkdir()
    shutil.copy(manifest_path(window_model), manifest_path(bad))
    bad.write_bytes(window_model.read_bytes() + b"x")
    with pytest.raises(ValueError, match=re.escape(f"{bad}: sha256 ") + r"\w+ differs from the manifest's"):
        infer_slides(held_out[:1], bad, tmp_path / "out", client, SETTINGS)
    assert not (tmp_path / "out" / "infer.json").exists()


def test_an_untrusted_model_is_refused_before_any_task(held_out, window_model, client, tmp_path, capfd):
    """A file whose hash matches its manifest but which names a type outside the allow-list is refused by the
    client, in one line naming the file, before a worker loads it (its failure would print a traceback)."""
    import hashlib

    import skops.io as sio
    from sklearn.dummy import DummyClassifier

    from crystal_dask.store.models import UntrustedModelError, manifest_path

    bad = tmp_path / "model" / window_model.name
    bad.parent.mkdir()
    data = sio.dumps(DummyClassifier().fit([[0], [1]], [0, 1]))
    bad.write_bytes(data)
    manifest = json.loads(manifest_path(window_model).read_text()) | {"sha256": hashlib.sha256(data).hexdigest()}
    manifest_path(bad).write_text(json.dumps(manifest))
    capfd.readouterr()
    with pytest.raises(UntrustedModelError, match=re.escape(f"{bad}: refusing to load type(s)")):
        infer_slides(held_out[:1], bad, tmp_path / "out", client, SETTINGS)
    assert "Traceback" not in capfd.readouterr().err  # no task failed on a worker
    assert not (tmp_path / "out" / "infer.json").exists()


def test_one_worker_gives_the_same_bytes(inferred, held_out, window_model, tmp_path):
    from crystal_dask.runtime.cluster import local_client

    with local_client(1, "4GiB") as one:
        infer_slides(held_out[:2], window_model, tmp_path / "out", one, SETTINGS, corpus="fcbr")
    for e in held_out[:2]:
        assert tree_digest(tmp_path / "out" / "slides" / e.bname) == tree_digest(inferred / "slides" / e.bname)


def test_parse_checks_the_section(tmp_path):
    from crystal_dask.experiment import ExperimentError
    from crystal_dask.stages import load_experiment
    from tests.helpers.jobs import TINY, write_job

    job = write_job(tmp_path, {**TINY, "infer": {"sets": {"TUBR": {"corpus": "tubr", "configs": ["crystal"]}},
                                                 "tissue_threshold": 0.3, "window_size": 250}})
    sec = load_experiment(job).settings["infer"]
    assert sec.sets[0].configs == ("crystal",) and sec.settings.window_size == 250.0
    assert sec.settings.tissue_threshold == 0.3
    for bad, msg in (({"sets": {"x": {"corpus": "nope"}}}, "infer.sets.x.corpus"),
                     ({"sets": {}, "heatmap_class": "cancer"}, "infer.heatmap_class"),
                     ({"sets": {}, "tissue_threshold": 2}, "infer.tissue_threshold"),
                     ({"sets": {}, "window_unit": "mm"}, "infer.window_unit")):
        with pytest.raises(ExperimentError, match=msg.replace(".", r"\.")):
            load_experiment(write_job(tmp_path, {**TINY, "infer": bad}, "bad.yaml"))
    assert load_experiment(write_job(tmp_path, TINY, "none.yaml")).settings["infer"].sets == ()


def test_the_configurations_a_set_names_are_checked_at_load(tmp_path):
    from crystal_dask.experiment import ExperimentError
    from crystal_dask.stages import load_experiment
    from tests.helpers.jobs import TINY, write_job

    unknown = {**TINY, "infer": {"sets": {"x": {"corpus": "tubr", "configs": ["nope"]}}}}
    with pytest.raises(ExperimentError, match=r"infer\.sets\.x\.configs: \['nope'\] are not train configurations"):
        load_experiment(write_job(tmp_path, unknown, "unknown.yaml"))
    pca = {**TINY, "features": {"pca": 4}, "train": {"corpus": "fcbr", "configs": {"p": {"features": ["pca"]}}},
           "infer": {"sets": {"x": {"corpus": "tubr"}}}}
    with pytest.raises(ExperimentError, match=r"infer\.sets\.x\.configs: 'p' trains on \['pca'\]"):
        load_experiment(write_job(tmp_path, pca, "pca.yaml"))


def test_summary_schema_is_declared(inferred):
    assert pq.read_schema(inferred / "summary.parquet").names == INFER_SUMMARY.names


@pytest.mark.slow
def test_a_40000_by_30000_slide_stays_under_1_5_gib_per_process(window_model, tmp_path):
    """A realistic-size pyramid (written from a tile iterator, never held): every process, the client and both
    workers, peaks under 1.5 GiB while inferring it whole."""
    from crystal_dask.bench.common import peaks
    from crystal_dask.bench.infer import big_slide
    from crystal_dask.runtime.cluster import local_client

    slide = big_slide(tmp_path / "big.svs", 40_000, 30_000, tissue=0.3)
    with local_client(2, "4GiB") as client, peaks(client) as pk:
        m = infer_slides([SlideInput(str(slide), "big")], window_model, tmp_path / "out", client,
                         InferSettings(window_size=1024))
    assert m["slides_done"] == 1 and m["windows"] > 200
    assert max(pk.values()) < 1.5 * 1024**3, pk


@pytest.mark.slow
def test_windows_no_feature_can_describe_are_unscored_in_every_export(small_dataset, client, tmp_path):
    """A feature model cannot describe glass ("no tissue"): with every window counted as tissue, the glass
    windows of a slide with an ellipse of tissue (bench infer's) are left unscored. They are no class in the grid,
    the overlay, the GeoJSON or the region decisions (they once showed as class 0)."""
    from PIL import Image

    from crystal_dask.bench.infer import big_slide
    from crystal_dask.stages.features import FeatureSettings, compute
    from crystal_dask.stages.train import TrainConfig, train
    from crystal_dask.wsi.annotations import read_nedc_csv

    root = tmp_path / "ds"
    shutil.copytree(small_dataset, root)
    compute(Dataset(root), FeatureSettings(families=("stain",)), client)
    model = tmp_path / "stain.skops"
    train(root, TrainConfig("stain", features=("stain",)), model, client)
    out = tmp_path / "out"
    slide = big_slide(tmp_path / "ellipse.svs", 4000, 3000)
    m = infer_slides([SlideInput(str(slide), "ellipse")], model, out, client,
                     InferSettings(block=4, tissue_threshold=0.0))
    unscored_total = checked = 0
    for bname, info in m["slides"].items():
        d = out / "slides" / bname
        g = zarr.open_group(str(d / "windows.zarr"), mode="r")
        proba, tissue, scored = g["proba"][...], g["tissue"][...], g["scored"][...]
        assert tissue.all() and scored.any()
        unscored = tissue & ~scored
        unscored_total += int(unscored.sum())
        assert (proba[unscored] == 0).all() and np.allclose(proba[scored].sum(-1), 1, atol=1e-5)
        geo = json.loads((d / f"{bname}.geojson").read_text())
        assert sum(f["properties"]["measurements"]["windows"] for f in geo["features"]) == scored.sum()
        cell = min(info["step"], info["size"]) ** 2
        area = sum(abs(signed_area(list(zip(r.x, r.y, strict=True)) + [(r.x[0], r.y[0])]))
                   for r in read_nedc_csv(d / f"{bname}_REGIONDECISIONS.csv").regions)
        assert area == pytest.approx(scored.sum() * cell)
        # the overlay leaves an unscored window's centre pixel as the thumbnail's (the legend is upper right)
        thumb = np.asarray(Image.open(d / "thumbnail.png").convert("RGB"))
        overlay = np.asarray(Image.open(d / f"{bname}_overlay.png").convert("RGB"))
        ds = g.attrs["width"] / thumb.shape[1]
        centres = [(int((r * info["step"] + info["size"] / 2) / ds), int((c * info["step"] + info["size"] / 2) / ds))
                   for r, c in np.argwhere(unscored)]
        centres = [(y, x) for y, x in centres if x < thumb.shape[1] // 2 or y > thumb.shape[0] // 2]
        assert all((overlay[y, x] == thumb[y, x]).all() for y, x in centres)
        checked += len(centres)
    assert checked > 0 and m["unscored_windows"] == unscored_total, (checked, unscored_total)
    # a model fitted on columns of another family version (the code changed since) is refused in one line, before
    # any output: its windows would be described by columns it was not fitted on
    from crystal_dask.features import FAMILIES

    zarr.open_group(str(root / "patches.zarr"), mode="r+")["stain"].attrs["version"] = FAMILIES["stain"].version - 1
    with pytest.raises(ValueError, match=re.escape(f"{model}: fitted on stain columns of version "
                                                   f"{FAMILIES['stain'].version - 1}, and this crystal_dask computes")):
        infer_slides([SlideInput(str(slide), "ellipse")], model, tmp_path / "out2", client, InferSettings(block=4))
    assert not (tmp_path / "out2").exists()
