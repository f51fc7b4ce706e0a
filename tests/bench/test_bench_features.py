"""`crystal-dask bench features` at a tiny scale: it runs end to end, its numbers are consistent, the plain
processes get whole chunks with balanced work. No timing assertions: the machine is shared and noisy."""

from __future__ import annotations

import json
import math

import pytest

from crystal_dask.bench.common import MIB
from crystal_dask.bench.features import FAMILY_NAMES, cost, split_rows
from crystal_dask.cli import main


def test_split_rows_deals_whole_chunks_balanced_by_cost():
    rows = [{"row": i, "slide": "s", "box": [0, 0, 100 * (1 + i % 5), 400], "mpp": 0.5} for i in range(40)]
    parts = split_rows(rows, 2, 8, 2.0, 1024)
    assert sorted(r["row"] for p in parts for r in p) == list(range(40))
    for p in parts:  # whole chunks of the stage: chunk k is rows 8k..8k+7
        chunks = {r["row"] // 8 for r in p}
        assert sum(len([r for r in rows if r["row"] // 8 == k]) for k in chunks) == len(p)
    loads = [sum(cost(r, 2.0, 1024) for r in p) for p in parts]
    assert abs(loads[0] - loads[1]) <= max(sum(cost(r, 2.0, 1024) for r in rows[8 * k:8 * k + 8]) for k in range(5))
    assert cost({"box": [0, 0, 8000, 100], "mpp": 0.5}, 2.0, 1024) == 1024 * 25  # capped at max_side
    assert cost({"box": [0, 0, 30, 40], "mpp": None}, 2.0, 1024) == 1200  # no MPP: level-0 pixels


@pytest.mark.slow
def test_bench_features_cli_prints_ratios_and_writes_json(tmp_path, capsys):
    out = tmp_path / "features.json"
    code = main(["bench", "features", "--patients", "2", "--slides-per-patient", "1", "--regions-per-slide", "6",
                 "--slide-size", "2400", "1800", "--chunk-rows", "4", "--repeats", "1", "--profile",
                 "--workdir", str(tmp_path / "work"), "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    for line in ("time of all families / time of pixel extraction", "rate of the Dask stage / 2 plain processes",
                 "all families, 2 plain processes", "cProfile of feature_chunk"):
        assert line in printed
    r = json.loads(out.read_text())
    n = r["patches"]
    assert n == r["corpus"]["regions"] > 0
    keys = ("extract", *FAMILY_NAMES, "all", "plain_2proc")
    for key in keys:
        s = r["seconds"][key]
        assert len(s["values"]) == 1 and s["median"] > 0
        assert r["patches_per_s"][key]["median"] == pytest.approx(n / s["median"])
    assert set(r["ratios"]) == {"all_vs_extract", "vs_plain_processes", *(f"{f}_vs_extract" for f in FAMILY_NAMES)}
    assert all(math.isfinite(v) and v > 0 for v in r["ratios"].values())
    assert r["ratios"]["all_vs_extract"] == pytest.approx(r["seconds"]["all"]["median"] / r["seconds"]["extract"]
                                                          ["median"])
    assert r["ratios"]["vs_plain_processes"] == pytest.approx(
        r["patches_per_s"]["all"]["median"] / r["patches_per_s"]["plain_2proc"]["median"])
    assert r["targets"]["all_vs_extract"]["met"] == (r["ratios"]["all_vs_extract"] <= 5.0)
    assert set(r["rejected"]) == {*FAMILY_NAMES, "all"}
    assert all(0 <= v["fraction"] <= 1 for v in r["rejected"].values())
    assert r["rejected"]["all"]["fraction"] >= max(r["rejected"][f]["fraction"] for f in FAMILY_NAMES)
    mem = r["peak_rss"]
    assert set(mem["all"]) == {"client", "worker-0", "worker-1"}
    assert set(mem["plain_2proc"]) == {"process-0", "process-1"}
    assert all(30 * MIB < v < 4 * 1024 * MIB for proc in mem.values() for v in proc.values())
    assert "function calls" in r["profile"] and "tottime" in r["profile"]
