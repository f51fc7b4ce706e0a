"""`bench infer` end to end on tiny settings, from a fresh folder: its models come from extract, features and
train; every contender runs; the numbers it reports add up. No timing assertions: the machine is shared."""

from __future__ import annotations

import math

import pytest

from crystal_dask.bench import infer as bench_infer

SMALL = (3000, 2000)


@pytest.mark.slow
def test_bench_infer_runs_from_a_fresh_folder(tmp_path):
    r = bench_infer.run(tmp_path, slide_size=(4000, 3000), source_rows=150, source_slide_size=SMALL, repeats=1,
                        log=lambda _: None)
    assert (tmp_path / "models" / "pixels.skops").exists() and (tmp_path / "models" / "features.skops").exists()
    n = r["windows"]
    assert n > 0 and r["script_windows"] > 0 and r["tiles_touched"] >= n
    for k in bench_infer.CONTENDERS:
        count = r["script_windows"] if k == "script" else n
        assert r["windows_per_s"][k]["median"] == pytest.approx(count / r["seconds"][k]["median"])
    q = r["ratios"]
    assert q["vs_script"] == pytest.approx(r["windows_per_s"]["crystal_dask_2w"]["median"]
                                           / r["windows_per_s"]["script"]["median"])
    assert q["vs_decode_limit"] > 0 and q["scaling"] > 0 and q["decode_scaling"] > 0
    assert set(r["peak_rss"]["crystal_dask_2w"]) == {"client", "worker-0", "worker-1"}
    assert set(r["peak_rss"]["crystal_dask_1w"]) == {"client", "worker-0"}
    b = bench_infer.infer_settings().block
    blocks = math.ceil(3000 / 500 / b) * math.ceil(4000 / 500 / b)
    for run in ("crystal_dask_1w", "crystal_dask_2w", "crystal_dask_2w_features"):
        ph = r["phases"][run]
        from crystal_dask.exports.slide import PICTURES

        assert {k: v["tasks"] for k, v in ph.items()} == {
            "infer-model": 1, "infer-tissue": 1, "infer-windows": blocks, "infer-export": 1,
            **{f"infer-{p}": 1 for p in PICTURES}}
        assert all(v["seconds"] > 0 for v in ph.values())
    c = r["per_window_seconds"]
    assert c["windows"] > 0 and all(c[k] > 0 for k in ("render", "features", "predict_pixels", "predict_features"))
    text = bench_infer.report(r)
    for line in ("OpenSlide script", "decode limit, 1 process", "1 worker", "feature model", "features: read",
                 "infer-export"):
        assert line in text
