"""The features stage on real LocalClusters, real zarr and real generated (and scanner) slides: arrays and their
attributes, rejects, resume, 1 vs 2 workers, training and evaluation on a feature set, and the PCA family in a job.

One module-scoped dataset serves most tests: the small generated corpus, with one training slide's MPP removed
(its rows cannot be measured in µm: "no MPP" for the calcification family) and one hand-made region of blank
glass ("no tissue"), extracted once and described once on the 2-worker `client`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import tifffile

from crystal_dask.features import FAMILIES
from crystal_dask.features.region import MIN_TISSUE_FRACTION
from crystal_dask.stages.evaluate import evaluate, predictions_path
from crystal_dask.stages.extract import extract
from crystal_dask.stages.features import MARKERS, FeatureSettings, compute, read_rgb
from crystal_dask.stages.scan import scan
from crystal_dask.stages.train import TrainConfig, dataset_hash, select_rows, train
from crystal_dask.store.dataset import Dataset
from crystal_dask.store.models import load_model, read_manifest
from crystal_dask.store.schema import PREDICTIONS, REJECTS, read_table
from crystal_dask.wsi.patches import PatchSettings
from crystal_dask.wsi.slides import Slide

FAMS = ("stain", "texture", "calcification")
SETTINGS = FeatureSettings(families=FAMS)
CHUNK = 8
GLASS_ID = 999  # region id of the hand-made glass region


def tree_digest(folder: Path, skip: tuple[str, ...] = ()) -> str:
    """sha256 over every file's relative path and bytes (names containing any of `skip` left out)."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not any(s in str(p.relative_to(folder)) for s in skip):
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def feature_digest(ds: Dataset) -> str:
    """What compute() writes: the family arrays, their ok flags, the markers and the rejects table."""
    h = hashlib.sha256()
    for name in (*FAMS, *(f"ok_{f}" for f in FAMS)):
        h.update(tree_digest(ds.zarr / name).encode())
    h.update(tree_digest(ds.root / MARKERS).encode())
    h.update((ds.root / "features_rejects.parquet").read_bytes())
    return h.hexdigest()


def _glass_box(slide: str, side: int = 240) -> tuple[int, int, int, int] | None:
    """A level-0 box at a corner of `slide` that holds only glass (every RGB value >= 230), if one does."""
    with Slide(slide) as s:
        w, h = s.levels[0].width, s.levels[0].height
        for x0, y0 in ((0, 0), (w - side, 0), (0, h - side), (w - side, h - side)):
            if s.read_box(x0, y0, x0 + side, y0 + side, 0).min() >= 230:
                return x0, y0, x0 + side, y0 + side
    return None


@pytest.fixture(scope="module")
def hand_regions(small_scan) -> tuple[pa.Table, str, str]:
    """The scanned regions with (a) the MPP of the training slide with the most plain rows removed and (b) one
    extra region of blank glass on another training slide (with plain rows and a glass corner). Returns (regions,
    no-MPP slide, glass slide)."""
    regions = small_scan.regions
    plain_train = regions.filter(pc.and_(pc.equal(regions["split"], "train"), pc.invert(regions["crystal"])))
    counts = pc.value_counts(plain_train["slide"]).to_pylist()
    ranked = sorted(counts, key=lambda c: (-c["counts"], c["values"]))
    no_mpp = ranked[0]["values"]
    glass_slide, box = next((c["values"], b) for c in ranked[1:] if (b := _glass_box(c["values"])) is not None)
    mpp = pa.array([None if s == no_mpp else m for s, m in zip(regions["slide"].to_pylist(),
                                                                regions["mpp"].to_pylist(), strict=True)],
                   pa.float64())
    regions = regions.set_column(regions.schema.get_field_index("mpp"), "mpp", mpp)
    template = next(r for r in regions.to_pylist() if r["slide"] == glass_slide and not r["crystal"])
    x0, y0, x1, y1 = box
    glass = {**template, "region_id": GLASS_ID, "x0": x0, "y0": y0, "x1": x1, "y1": y1,
             "polygon_x": [x0, x1, x1, x0], "polygon_y": [y0, y0, y1, y1]}
    regions = pa.concat_tables([regions, pa.Table.from_pylist([glass], schema=regions.schema)])
    return regions, no_mpp, glass_slide


@pytest.fixture(scope="module")
def base_ds(hand_regions, client, tmp_path_factory) -> Path:
    """The extracted dataset, before any features (copied by the tests that compute their own)."""
    out = tmp_path_factory.mktemp("features") / "base"
    extract(hand_regions[0], out, PatchSettings(chunk_rows=CHUNK), client)
    return out


@pytest.fixture(scope="module")
def described(base_ds, client) -> tuple[Dataset, dict]:
    """A copy of the base dataset with every family computed on 2 workers, and compute()'s manifest."""
    root = base_ds.parent / "two"
    shutil.copytree(base_ds, root)
    ds = Dataset(root)
    return ds, compute(ds, SETTINGS, client)


@pytest.fixture(scope="module")
def one():
    """A 1-worker cluster made as a job makes it."""
    from crystal_dask.runtime.cluster import local_client

    with local_client(1, "4GiB") as c:
        yield c


def _rows_of(ds: Dataset, slide: str | None = None, region_id: int | None = None) -> np.ndarray:
    t = ds.rows()
    if slide is not None:
        t = t.filter(pc.equal(t["slide"], slide))
    if region_id is not None:
        t = t.filter(pc.equal(t["region_id"], region_id))
    return np.sort(t["row"].to_numpy())


# ------------------------------------------------------------------------------------------ arrays
def test_compute_adds_finite_named_versioned_arrays(described, hand_regions):
    ds, manifest = described
    group = ds.group()
    n = group["label"].shape[0]
    written = np.zeros(n, bool)
    written[ds.rows()["row"].to_numpy()] = True
    rejected = len(_rows_of(ds, hand_regions[1])) + 1  # the no-MPP slide's rows and the glass region
    for f in FAMS:
        a = group[f]
        assert a.dtype == np.float32 and a.shape == (n, len(FAMILIES[f].columns)) and a.chunks[0] == CHUNK
        assert a.attrs["columns"] == list(FAMILIES[f].columns) and a.attrs["version"] == FAMILIES[f].version
        assert a.attrs["um_per_px"] == SETTINGS.um_per_px and a.attrs["key"] == manifest["key"]
        values, ok = a[:], group[f"ok_{f}"][:]
        assert np.isfinite(values).all()
        assert ok.sum() == written.sum() - rejected and not ok[~written].any()
        assert (values[~ok] == 0).all()  # a reject is zeros flagged not ok, never NaN
        if f != "calcification":  # finds no deposit in generated slides (docs/features.md): constant there
            assert (values[ok].std(axis=0) > 0).any()  # real, varying descriptions
    assert ds.columns(["stain"]) == list(FAMILIES["stain"].columns)
    assert manifest["families"] == {f: {"version": FAMILIES[f].version, "columns": len(FAMILIES[f].columns)}
                                    for f in FAMS}
    assert manifest["rows"] == int(written.sum()) and manifest["rejected"] == rejected
    assert manifest["reasons"] == {"no MPP": rejected - 1, "no tissue": 1}
    assert manifest["chunks"] == -(-n // CHUNK) and manifest["chunks_run"] == manifest["chunks"]


def test_rerun_runs_nothing_and_a_lost_marker_recomputes_only_its_chunk(described, client, tmp_path):
    src, _ = described
    ds = Dataset(tmp_path / "ds")
    shutil.copytree(src.root, ds.root)
    before = feature_digest(ds)
    assert compute(ds, SETTINGS, client)["chunks_run"] == 0
    assert feature_digest(ds) == before
    (marker,) = (ds.root / MARKERS).rglob("chunk-000001.json")
    marker.unlink()
    n = CHUNK  # chunk 1 is rows 8..15: wipe them, so only a recomputation can bring them back
    ds.write_rows(CHUNK, {**{f: np.zeros((n, len(FAMILIES[f].columns)), np.float32) for f in FAMS},
                          **{f"ok_{f}": np.zeros(n, bool) for f in FAMS}})
    chunk_files = sorted((ds.zarr / "stain").rglob("c/*/*"))
    mtimes = {p: p.stat().st_mtime_ns for p in chunk_files}
    manifest = compute(ds, SETTINGS, client)
    assert manifest["chunks_run"] == 1
    assert feature_digest(ds) == before  # byte-identical arrays, markers and rejects
    changed = [p.relative_to(ds.zarr).as_posix() for p in chunk_files if p.stat().st_mtime_ns != mtimes[p]]
    assert changed == ["stain/c/1/0"]


def test_identical_on_one_and_two_workers(described, base_ds, one, tmp_path):
    two, manifest_two = described
    ds = Dataset(tmp_path / "one")
    shutil.copytree(base_ds, ds.root)
    manifest = compute(ds, SETTINGS, one)
    assert manifest == manifest_two
    assert tree_digest(ds.zarr) == tree_digest(two.zarr)  # every array, flags and attributes included
    assert feature_digest(ds) == feature_digest(two)


# ------------------------------------------------------------------------------------------ rejects
def test_undescribable_rows_are_rejects_with_reasons_and_unusable(described, hand_regions):
    ds, _ = described
    _, no_mpp, glass_slide = hand_regions
    rejects = read_table(ds.root / "features_rejects.parquet", REJECTS).to_pylist()
    glass = [r for r in rejects if r["region_id"] == GLASS_ID]
    assert len(glass) == 1 and glass[0]["reason"] == "no tissue" and glass[0]["stage"] == "features"
    t = ds.rows()
    assert glass[0]["source"] == t.filter(pc.equal(t["region_id"], GLASS_ID))["annotation"][0].as_py()
    others = [r for r in rejects if r["region_id"] != GLASS_ID]
    assert others and {r["reason"] for r in others} == {"no MPP"}
    mpp_rows = _rows_of(ds, no_mpp)
    assert len(others) == len(mpp_rows)
    glass_row = _rows_of(ds, glass_slide, GLASS_ID)
    bad = np.concatenate([mpp_rows, glass_row])
    group = ds.group()
    for f in FAMS:
        assert not group[f"ok_{f}"].get_orthogonal_selection(bad).any()
    usable = ds.usable(ds.rows())["row"].to_numpy()
    assert set(usable) == set(ds.rows()["row"].to_numpy()) - set(bad)
    # the glass really is glass at the resolution the families see
    with Slide(glass_slide) as s:
        t = ds.rows().filter(pc.equal(ds.rows()["region_id"], GLASS_ID))
        box = tuple(t.select(["wx0", "wy0", "wx1", "wy1"]).to_pylist()[0].values())
        rgb, res = read_rgb(s, box, s.mpp, SETTINGS.um_per_px, SETTINGS.max_side)
    assert res == SETTINGS.um_per_px and rgb.min() >= 200


@pytest.mark.slow
def test_training_on_features_uses_usable_rows_and_evaluation_the_model_features(described, hand_regions, client,
                                                                                 tmp_path):
    ds, _ = described
    cfg = TrainConfig("hand", features=("stain", "texture"))
    model = tmp_path / "hand.skops"
    manifest = train(ds.root, cfg, model, client)
    expected = select_rows(ds.usable(ds.rows()), cfg)
    everything = select_rows(ds.rows(), cfg)
    bad = set(_rows_of(ds, hand_regions[1])) | set(_rows_of(ds, hand_regions[2], GLASS_ID))
    assert bad & set(everything), "rejected rows must be in the training splits for this test to mean anything"
    assert not bad & set(expected)
    assert manifest["train_rows"] == len(expected)
    assert manifest["dataset_hash"] == dataset_hash(ds, expected, cfg.features)
    assert manifest["columns"] == [*FAMILIES["stain"].columns, *FAMILIES["texture"].columns]
    assert read_manifest(model)["config"]["features"] == ["stain", "texture"]  # what evaluation reads
    summary = evaluate(ds.root, model, tmp_path / "eval", client, splits=("train", "dev", "eval"))
    assert summary["n"] == ds.usable(ds.rows()).num_rows  # every usable row, none of the rejects
    assert int(np.sum(summary["confusion"])) == summary["n"]
    # scored on the columns the model was fitted on (its manifest's features): the same as predicting here
    pred = read_table(predictions_path(tmp_path / "eval"), PREDICTIONS)
    rows = pred["row"].to_numpy()
    forest = load_model(model)
    assert np.array_equal(pred["y_pred"].to_numpy(), forest.predict_proba(ds.matrix(rows, cfg.features)).argmax(1))


# ------------------------------------------------------------------------------------------ real files
def _realdata_corpus(realdata: Path, root: Path) -> Path:
    """A one-patient corpus of the two real H&E files with hand-written NEDC csv annotations."""
    from crystal_dask.wsi.annotations import Header, Region, write_nedc_csv

    folder = root / "svs" / "train" / "00000001_aaaaaaaa" / "s000_2015" / "breast"
    folder.mkdir(parents=True)
    files = (("00000001_aaaaaaaa_s000_0hne_0000_a001_lvl000_t000", "CMU-1-Small-Region.svs", ".svs", 0.499,
              [(100, 100, 900, 700), (1200, 1500, 2100, 2900), (0, 0, 2220, 2967), (600, 2000, 856, 2256)]),
             ("00000001_aaaaaaaa_s000_0hne_0000_a001_lvl001_t000", "OS-1-detail.ome.tif", ".ome.tif", 0.227,
              [(0, 0, 1101, 1101), (200, 300, 700, 800), (500, 100, 1000, 600)]))
    for name, src, suffix, mpp, boxes in files:
        os.symlink(realdata / src, folder / f"{name}{suffix}")
        with tifffile.TiffFile(realdata / src) as tif:
            h, w = tif.series[0].shape[:2]
        regions = [Region(i + 1, "indc", "breast", (x0, x1, x1, x0), (y0, y0, y1, y1))
                   for i, (x0, y0, x1, y1) in enumerate(boxes)]
        write_nedc_csv(folder / f"{name}.csv", Header(name, mpp, w, h), regions)
    return root


@pytest.mark.slow
def test_realdata_features_finite_and_identical_on_one_and_two_workers(realdata, client, one, tmp_path):
    result = scan(_realdata_corpus(realdata, tmp_path / "corpus"))
    assert result.regions.num_rows == 7
    assert sorted(set(np.round(result.regions["mpp"].to_numpy(), 3))) == [0.227, 0.499]  # both with an MPP
    extract(result.regions, tmp_path / "base", PatchSettings(chunk_rows=4), client)
    roots = {}
    for name, c in (("two", client), ("one", one)):
        shutil.copytree(tmp_path / "base", tmp_path / name)
        ds = Dataset(tmp_path / name)
        manifest = compute(ds, SETTINGS, c)
        assert manifest["rows"] == 7 and manifest["rejected"] == 0, manifest["reasons"]
        roots[name] = ds
    g = roots["two"].group()
    for f in FAMS:
        values = g[f][:]
        assert g[f"ok_{f}"][:].all() and np.isfinite(values).all()
        if f != "calcification":  # no calcium in these files: its columns may all be the no-deposit values
            assert (values.std(axis=0) > 0).any()
    stain = dict(zip(FAMILIES["stain"].columns, g["stain"][:].T, strict=True))
    frac = stain["stain_tissue_frac"]
    assert ((frac >= MIN_TISSUE_FRACTION) & (frac <= 1)).all()
    t = roots["two"].rows()
    os1 = t.filter(pc.match_substring(t["slide"], ".ome.tif"))["row"].to_numpy()
    assert len(os1) == 3 and (frac[os1] > 0.9).all()  # the OS-1 crop is tissue edge to edge
    assert tree_digest(roots["one"].zarr) == tree_digest(roots["two"].zarr)
    assert feature_digest(roots["one"]) == feature_digest(roots["two"])


# ------------------------------------------------------------------------------------------ the pca family
@pytest.mark.slow
def test_pca_family_in_a_tiny_job_is_fitted_on_the_training_split(small_corpus, tmp_path, client):
    from crystal_dask.pipeline import run_job
    from crystal_dask.stages import extract as extract_stage
    from crystal_dask.stages import load_experiment
    from tests.helpers.jobs import TINY, write_job

    # TINY on the session's generated corpus (painting TINY's own two corpora took 2 of this test's 5 minutes on
    # a busy 2-core machine), once as the training corpus and once as another corpus the PCA is only applied to
    cfg = {**TINY, "out": str(tmp_path / "out"), "features": {"pca": 4},
           "corpora": {"fcbr": {"path": str(small_corpus)}, "other": {"path": str(small_corpus)}},
           "train": {"corpus": "fcbr", "configs": {"pca": {"features": ["pca"]}}},
           "evaluate": {"sets": {"FCBR-eval": {"corpus": "fcbr", "splits": ["dev", "eval"]},
                                 "other": {"corpus": "other", "splits": ["train", "dev", "eval"]}}}}
    exp = load_experiment(write_job(tmp_path, cfg))
    run_job(exp, client)
    record = json.loads((exp.out / "features" / "pca.json").read_text())
    assert record["components"] == 4
    fcbr = extract_stage.dataset(exp, "fcbr")
    t = fcbr.rows()
    train_rows = np.sort(t.filter(pc.equal(t["split"], "train"))["row"].to_numpy())
    assert record["rows"] == len(train_rows) and record["fitted_on"] == str(fcbr.root)
    for corpus in ("fcbr", "other"):
        ds = extract_stage.dataset(exp, corpus)
        g = ds.group()
        assert g["pca"].shape == (g["label"].shape[0], 4) and g["pca"].dtype == np.float32
        assert g["pca"].attrs["columns"] == [f"pca_{i}" for i in range(4)]
        written = np.zeros(g["label"].shape[0], bool)
        written[ds.rows()["row"].to_numpy()] = True
        assert np.array_equal(g["ok_pca"][:], written) and np.isfinite(g["pca"][:]).all()
    proj = fcbr.group()["pca"][:]
    # the other corpus has the same pixels: projected on the same fitted components, the same bytes
    assert extract_stage.dataset(exp, "other").group()["pca"][:].tobytes() == proj.tobytes()
    # fitted on the training rows only: their projections are centred (the fitted mean is theirs), the other
    # rows' are not, and their variance along 4 orthonormal directions is at most the sum of the training
    # pixels' top 4 covariance eigenvalues (Ky Fan), and near it (randomized SVD finds the top directions)
    others = np.setdiff1d(t["row"].to_numpy(), train_rows)
    scale = proj[train_rows].std(axis=0)
    assert (np.abs(proj[train_rows].mean(axis=0)) < 1e-3 * scale).all()
    assert (np.abs(proj[others].mean(axis=0)) > 1e-2 * scale).any()
    pixels = fcbr.matrix(train_rows).astype(np.float64)
    top = np.linalg.eigvalsh(_gram(pixels))[::-1][:4].sum()
    explained = proj[train_rows].astype(np.float64).var(axis=0, ddof=1).sum()
    assert 0.9 * top <= explained <= top * (1 + 1e-4)
    model = json.loads((exp.out / "models" / "pca.json").read_text())
    assert model["config"]["features"] == ["pca"] and model["columns"] == [f"pca_{i}" for i in range(4)]
    results = json.loads((exp.out / "results.json").read_text())
    assert all("confusion" in results["sets"][s]["pca"] for s in ("FCBR-eval", "other"))


def test_pca_fit_tasks_are_named_after_the_stage(small_dataset, client):
    """dask-ml's own PCA.fit runs under the stage's name on the dashboard, and fits what it fits unnamed."""
    from dask.utils import key_split
    from dask_ml.decomposition import PCA as DaskPCA
    from distributed import get_task_stream

    from crystal_dask.stages.features import fit_pca

    ds = Dataset(small_dataset)
    rows = np.sort(ds.rows()["row"].to_numpy())[:24]
    with get_task_stream(client) as stream:
        model = fit_pca(ds, rows, 3, client, "train-pca")
    prefixes = {key_split(t["key"]) for t in stream.data}
    assert prefixes and all(p.startswith("train-pca-") for p in prefixes), prefixes
    plain = DaskPCA(n_components=3, svd_solver="randomized", random_state=0)
    with client.as_current():
        plain.fit(ds.dask_view(rows)[0].astype(np.float32))
    assert np.array_equal(model.components_, plain.components_)
    assert np.array_equal(model.explained_variance_, plain.explained_variance_)


def _gram(x: np.ndarray) -> np.ndarray:
    """The covariance's non-zero eigenvalues through the (rows x rows) Gram matrix: few rows, many pixels."""
    c = x - x.mean(axis=0)
    return c @ c.T / (len(x) - 1)
