"""Benchmarks at a tiny scale: the measuring tools measure what they claim, each bench runs end to end and
reports its ratios with sane numbers. No timing assertions: the machine is shared and noisy."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import zarr

from crystal_dask.bench import evaluate as bench_evaluate
from crystal_dask.bench import train as bench_train
from crystal_dask.bench.common import MIB, Stat, peak_rss, reset_peak_rss, run_together, table
from crystal_dask.bench.extract import split_work, touched_tiles
from crystal_dask.cli import main
from crystal_dask.stages.extract import Dataset
from crystal_dask.store.schema import PATCHES, read_table
from crystal_dask.vocab import CLASSES
from crystal_dask.wsi.patches import PatchSettings
from tests.helpers import child_env

GIB = 1024 * MIB
SMALL = (3000, 2000)  # slides of the train/evaluate benches' source corpus: 4x cheaper to paint than the default


def prepare_allocate(megabytes: int, sleep: float):
    """Child target: after the go, touch `megabytes` of memory and sleep."""
    def work() -> dict:
        start = time.monotonic()  # CLOCK_MONOTONIC is one clock for every process of the machine
        block = np.ones(megabytes * MIB, dtype=np.uint8)
        time.sleep(sleep)
        return {"sum": int(block.sum()), "start": start, "end": time.monotonic()}

    return work


def prepare_environ(name: str):
    """Child target: report an environment variable."""
    return lambda: os.environ.get(name)


# ------------------------------------------------------------------------------------------------ tools
def test_stat_median_and_range():
    s = Stat((3.0, 1.0, 10.0))
    assert (s.median, s.min, s.max) == (3.0, 1.0, 10.0)
    assert s.as_dict()["values"] == [3.0, 1.0, 10.0]


def test_peak_rss_sees_an_allocation_and_resets():
    assert reset_peak_rss(), "this Linux must allow resetting the RSS high-water mark"
    before = peak_rss()
    block = np.ones(300 * MIB, dtype=np.uint8)  # touched pages: resident
    grown = peak_rss()
    del block
    assert grown - before >= 290 * MIB
    reset_peak_rss()
    assert peak_rss() < grown - 200 * MIB


def test_children_run_together_and_report_their_own_peak(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", child_env()["PYTHONPATH"])  # so the child can import this module
    wall, results = run_together("tests.bench.test_bench:prepare_allocate", [{"megabytes": 200, "sleep": 0.5},
                                                                 {"megabytes": 20, "sleep": 0.5}])
    big, small = results
    assert big.result["sum"] == 200 * MIB and small.result["sum"] == 20 * MIB
    assert big.peak_rss - small.peak_rss >= 170 * MIB  # each child's peak is its own
    assert all(r.seconds >= 0.5 for r in results) and wall >= 0.5
    # released together: their working intervals overlap (order, not speed, is asserted)
    assert max(r.result["start"] for r in results) < min(r.result["end"] for r in results)


def test_children_run_without_the_environment_dask_sets_for_its_workers(monkeypatch):
    """A LocalCluster writes its workers' MALLOC_TRIM_THRESHOLD_ into this process's environment; a baseline
    child must not inherit it (it slows image code ~1.7x)."""
    monkeypatch.setenv("PYTHONPATH", child_env()["PYTHONPATH"])
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    monkeypatch.setenv("CRYSTAL_DASK_BENCH_PROBE", "kept")
    _, (trim, kept) = run_together("tests.bench.test_bench:prepare_environ", [{"name": "MALLOC_TRIM_THRESHOLD_"},
                                                                  {"name": "CRYSTAL_DASK_BENCH_PROBE"}])
    assert trim.result is None and kept.result == "kept"


def test_table_aligns_text_left_and_numbers_right():
    text = table([("name", "n"), ("a", "1.5"), ("longer", "22.0")]).splitlines()
    assert text[0] == "name       n" and text[2] == "a        1.5" and text[3] == "longer  22.0"


def test_touched_tiles_are_the_tiles_under_each_box(small_scan):
    """A box at level 0 touches exactly the 256 px tiles its pixel range spans; work splits keep every patch."""
    r = small_scan.regions.to_pylist()[0]
    rows = [{"slide": r["slide"], "wx0": 300, "wy0": 10, "wx1": 800, "wy1": 300},  # cols 1-3, rows 0-1
            {"slide": r["slide"], "wx0": 0, "wy0": 0, "wx1": 256, "wy1": 256}]  # exactly tile 0
    tiles, levels = touched_tiles(rows, PatchSettings(level=0))
    nx = math.ceil(r["slide_width"] / 256)
    assert tiles[0][2] == [1, 2, 3, nx + 1, nx + 2, nx + 3] and tiles[1][2] == [0]
    assert levels == {0: 2}
    parts = split_work(tiles, 2)
    assert sorted(len(t[2]) for p in parts for t in p) == [1, 6] and all(parts)


# ------------------------------------------------------------------------------------------------ benches
@pytest.mark.slow
def test_bench_extract_cli_prints_ratios_and_writes_json(tmp_path, capsys):
    out = tmp_path / "extract.json"
    code = main(["bench", "extract", "--corpus", "small", "--modes", "default", "--patients", "2",
                 "--slides-per-patient", "1", "--regions-per-slide", "6",
                 "--slide-size", "2400", "1800", "--chunk-rows", "8", "--repeats", "1",
                 "--workdir", str(tmp_path / "work"), "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    for line in ("crystal_dask 2 workers / openslide script", "crystal_dask 2 workers / decode limit on 2 processes",
                 "crystal_dask 2 workers / openslide Pool(2) script", "openslide Pool(2) script (handle cache",
                 "scaling: crystal_dask 2 workers / 1 worker", "openslide script (1 process, level 0)"):
        assert line in printed
    r = json.loads(out.read_text())
    n = r["patches"]
    assert n == r["corpus"]["regions"] > 0 and sum(r["corpus"]["levels_read"].values()) == n
    for key in ("openslide", "openslide_pool", "decode_1proc", "decode_2proc", "render_1proc", "crystal_dask_1w",
                "crystal_dask_2w"):
        s = r["seconds"][key]
        assert len(s["values"]) == 1 and s["median"] > 0
        assert r["patches_per_s"][key]["median"] == pytest.approx(n / s["median"])
    assert set(r["ratios"]) == {"vs_openslide", "vs_openslide_pool", "vs_decode_limit", "vs_decode_limit_1proc",
                                "scaling",
                                "decode_scaling", "worker_vs_plain_process"}
    assert all(math.isfinite(v) and v > 0 for v in r["ratios"].values())
    assert r["ratios"]["vs_openslide"] == pytest.approx(
        r["patches_per_s"]["crystal_dask_2w"]["median"] / r["patches_per_s"]["openslide"]["median"])
    mem = r["peak_rss"]
    assert set(mem["crystal_dask_2w"]) == {"client", "worker-0", "worker-1"}
    assert set(mem["crystal_dask_1w"]) == {"client", "worker-0"}
    assert set(mem["decode_2proc"]) == {"process-0", "process-1"}
    assert all(30 * MIB < v < 4 * GIB for proc in mem.values() for v in proc.values())
    # the script and crystal_dask read the same boxes: the patches differ only by resampling
    assert r["pixel_mean_abs_diff_vs_openslide"] < 20
    assert r["ratios"]["vs_openslide_pool"] == pytest.approx(
        r["patches_per_s"]["crystal_dask_2w"]["median"] / r["patches_per_s"]["openslide_pool"]["median"])
    assert r["pixel_mean_abs_diff_vs_openslide_pool"] < 20
    assert set(r["modes"]) == {"default"} and r["modes"]["default"]["ratios"] == r["ratios"]
    assert set(r["targets"]) == {"vs_openslide_pool", "vs_decode_limit", "scaling", "worker_mib"}


@pytest.fixture(scope="module")
def bench_work(tmp_path_factory) -> Path:
    """One folder for the train and evaluate benches, so the second reuses the first's corpus and dataset."""
    return tmp_path_factory.mktemp("bench")


@pytest.mark.slow
def test_bench_train_reports_overhead_and_identical_models(bench_work):
    r = bench_train.run(bench_work, rows=150, repeats=1, slide_size=SMALL, scale_rows=400, scale_smallest=20,
                        scale_trees=4, model_rows=(20, 60), model_features=(1024, 65536), log=lambda _: None)
    assert r["rows"] == 150 and r["features"] == 256 * 256 and sum(r["classes"]) == 150
    assert all(r["seconds"][k]["median"] > 0 for k in ("dask", "local", "broadcast_fit"))
    assert r["ratios"]["overhead"] == pytest.approx(r["seconds"]["dask"]["median"] / r["seconds"]["local"]["median"])
    assert r["identical"]["predict"] and r["identical"]["predict_proba"]
    assert r["identical"]["rows_checked"] == min(300, r["dataset_patches"]) > 150  # training rows + held-out ones
    assert set(r["peak_rss"]["dask"]) == {"client", "worker-0", "worker-1"}
    assert "overhead ratio dask / default backend" in bench_train.report(r)
    # every tree's read and fit seconds, from both workers, the warm repeat's 100 trees and the cold fit's
    pt = r["per_tree"]
    assert pt["trees"] == 100 and r["cold_per_tree"]["trees"] == 100 and pt["processes"] == 2
    assert pt["read"] > 0 and pt["fit"] > 0 and 0 < pt["read_share"] <= pt["read_share_max"] < 1
    assert 0 < pt["fit_cpu"] and 0 < pt["read_share_cpu"] < 1
    assert pt["features"] == 256 * 256 and pt["rows"] == 9 * min(r["classes"])
    # every tree kept, the worst one named, the buffers' preparation before the trees reported
    assert len(pt["each"]) == 100 and [e["tree"] for e in pt["each"]] == list(range(100))
    assert pt["worst"]["read_share"] == pytest.approx(pt["read_share_max"])
    assert sum(e["first_on_process"] for e in pt["each"]) == 2
    assert pt["prepare"]["workers"] == 2 and pt["prepare"]["bytes"] == pt["rows"] * pt["features"] * 4
    assert "worst tree: #" in bench_train.report(r) and "sample buffer faulted in" in bench_train.report(r)
    sc = r["scale"]
    assert sc["rows"] == 400 and min(sc["classes"]) == 20 and sum(sc["classes"]) == 400
    assert sc["per_tree"]["trees"] == 4 and sc["per_tree"]["rows"] == 9 * 20
    assert sc["seconds"] == pytest.approx(sc["fill_seconds"] + sc["forest_seconds"])
    assert set(sc["peak_rss"]) == {"client", "worker-0", "worker-1"} and sc["under_2gib"]
    assert 1 <= sc["touched"]["as_stored"] <= sc["touched"]["shuffled"] <= sc["touched"]["chunks"]
    # the cost model is fitted to its grid and predicts a tree's fit within the grid's spread
    m = r["cost_model"]
    assert len(m["grid"]) == 4 and m["fit"]["worst_ratio"] >= 1 and m["read_seconds_per_value"] > 0
    assert bench_train.predict_fit(m, 60, 65536) > 0 and [c["forest"] for c in m["checks"]] == [
        "150-row forest", "scale forest"]
    z = r["sizing"]
    assert z["rows"] == 1_000_000 and z["sample_rows"] == 9 * z["smallest"]
    assert z["seconds"] == pytest.approx(z["fill_seconds"] + z["trees"] * z["seconds_per_tree"] / z["workers"])
    assert "cost model" in bench_train.report(r) and "scale per tree" in bench_train.report(r)


@pytest.mark.slow
def test_bench_evaluate_reports_memory_and_matches_in_memory(bench_work):
    r = bench_evaluate.run(bench_work, rows=700, source_rows=150, memory_limit="2GiB", repeats=1, slide_size=SMALL,
                           log=lambda _: None)
    assert r["rows"] == 700 and r["identical_predictions"] is True and r["in_memory_skipped"] is None
    for key in ("crystal_dask", "in_memory"):
        assert r["patches_per_s"][key]["median"] == pytest.approx(700 / r["seconds"][key]["median"])
    assert set(r["peak_rss"]["crystal_dask"]) == {"client", "worker-0", "worker-1"}
    assert r["targets"]["peak_rss"]["met"] is (max(r["peak_rss"]["crystal_dask"].values()) <= 2 * GIB)
    # the in-memory child holds the uint8 set and its float32 copy: at least 5 bytes per pixel
    assert r["peak_rss"]["in_memory"]["process"] > 700 * 65536 * 5
    text = bench_evaluate.report(r)
    assert "speed crystal_dask / in-memory" in text and "identical predictions: True" in text


@pytest.mark.slow
def test_tiled_set_has_extract_output_format(bench_work):
    """The generated set reads like an extracted one: same arrays, chunks and attributes, schema-conform tables,
    every row in eval, pixels cycling through the source's real patches."""
    tiled = Dataset(next(bench_work.glob("tiled-700")))
    source = Dataset(Path(tiled.read_manifest()["tiled_from"]))
    src, big = (zarr.open_group(str(d.zarr), mode="r") for d in (source, tiled))
    for name in ("pixels", "label", "crystal", "split"):
        assert big[name].chunks == src[name].chunks and big[name].dtype == src[name].dtype
        assert big[name].shape[0] == 700
    assert {k: v for k, v in big.attrs.items() if k != "plan_hash"} == \
        {k: v for k, v in src.attrs.items() if k != "plan_hash"}
    patches = read_table(tiled.patches, PATCHES)
    assert patches["row"].to_pylist() == list(range(700))
    assert pc.all(pc.equal(patches["split"], "eval")).as_py()
    assert [CLASSES[i] for i in big["label"][:]] == patches["cls"].to_pylist()
    src_rows = Dataset(source.root).rows()["row"].to_numpy()
    k = len(src_rows)
    first = src["pixels"].get_orthogonal_selection((src_rows[:3], slice(None), slice(None)))
    assert np.array_equal(big["pixels"][k:k + 3], first)  # cycled
    assert tiled.read_manifest()["patches"] == 700


def test_augment_gives_distinct_variants_and_the_patch_itself_first():
    patch = np.random.default_rng(0).integers(0, 256, (1, 32, 32), dtype=np.uint8)
    turned = bench_evaluate.augment(np.repeat(patch, bench_evaluate.VARIANTS, 0), np.arange(bench_evaluate.VARIANTS))
    assert np.array_equal(turned[0], patch[0])
    assert len({t.tobytes() for t in turned}) == bench_evaluate.VARIANTS  # no two variants alike
    assert np.array_equal(bench_evaluate.augment(patch, [bench_evaluate.VARIANTS + 3]),
                          bench_evaluate.augment(patch, [3]))  # variants repeat after VARIANTS


def test_tree_summary_names_the_worst_tree_and_each_process_first_per_forest():
    from crystal_dask.forest import BufferTiming, TreeTiming

    def tree(read: float, pid: int, start: float) -> TreeTiming:
        return TreeTiming(0.01, read, 0.1, 0.01, read, 0.1, 9, 4, pid, start)

    # two forests of 3 trees on processes 1 and 2; forest 1's tree 2 started first on process 1
    timings = [tree(0.02, 1, 10.0), tree(0.02, 2, 10.1), tree(0.02, 1, 10.5),
               tree(0.02, 1, 20.5), tree(0.02, 2, 20.1), tree(0.3, 1, 20.0)]
    pt = bench_train.tree_summary(timings, [BufferTiming(0.5, 0.4, 144, 1), BufferTiming(0.7, 0.3, 144, 2)] * 2, 3)
    assert [(e["forest"], e["tree"]) for e in pt["each"]] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert [e["first_on_process"] for e in pt["each"]] == [True, True, False, False, True, True]
    assert (pt["worst"]["forest"], pt["worst"]["tree"]) == (1, 2)
    assert pt["worst"]["read_share"] == pytest.approx(0.3 / 0.41) == pytest.approx(pt["read_share_max"])
    assert pt["prepare"] == {"seconds": 0.7, "cpu": 0.4, "bytes": 144, "workers": 2}


def test_scale_layout_keeps_each_patchs_label_and_sizes_the_smallest_class():
    labels = np.repeat([4, 0, 7], [30, 5, 12])  # the rarest source class is 0
    picks, variants, counts = bench_train.scale_layout(labels, 600, 40)
    assert counts.tolist() == [40, 400, 160]  # the rest shared as the source shares it: 30 : 12
    assert len(picks) == len(variants) == 600 and counts.sum() == 600
    y = labels[picks]
    assert np.array_equal(y, np.repeat([0, 4, 7], counts))  # classes in blocks, each row its patch's label
    pairs = set(zip(picks.tolist(), variants.tolist(), strict=True))
    assert len(pairs) == 600  # no row repeats another's pixels while there are variants left
    with pytest.raises(ValueError, match="cannot give each"):
        bench_train.scale_layout(labels, 100, 40)
