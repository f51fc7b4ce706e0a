"""`crystal-dask bench features`: patches per second of each feature family (stain, texture, calcification, and
all together) as the features stage computes them on 2 workers, against (a) pixel extraction of the same regions
(stages.extract.extract on the same scan, same 2 workers) and (b) the same feature code in two plain processes
(read_rgb + compute_families over the dataset's rows, dealt to the processes by estimated pixels).

Targets (issue 10): all families together take at most 5x the time of pixel extraction for the same regions, and
the Dask stage reaches at least 0.9 of the two plain processes' rate. Also reported: the fraction of rows each
family rejects (no tissue, no MPP), and the peak memory of every process.

Everything runs on one generated FCBR-like corpus in one run, each measurement `repeats` times, interleaved so
that a noisy neighbour slows every contender alike. A family measured alone includes the preparation every family
shares (optical density, stain unmixing, tissue mask, grey: features.region.Region), so the families' seconds
add up to more than "all". The plain processes run with a plain environment (bench.common.run_together) and
start their timers after imports and loading, as the workers are warm.
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from crystal_dask.bench.common import (
    Stat,
    corpus,
    fmt_bytes,
    fmt_stat,
    merge_peaks,
    peaks,
    rate,
    ratio,
    run_together,
    table,
)
from crystal_dask.runtime.cluster import local_client

WORKERS = 2
FAMILY_NAMES = ("stain", "texture", "calcification")
ALL = "all"
TARGETS = {"all_vs_extract": 5.0, "vs_plain_processes": 0.9}  # at most 5x extraction's time; at least 0.9


def _warm() -> None:
    """Import what a feature task needs and run it once on a small region (scikit-image loads lazily)."""
    import numpy as np

    from crystal_dask.features import compute_families
    from crystal_dask.stages import features  # noqa: F401

    rgb = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    compute_families(rgb, 2.0, list(FAMILY_NAMES))


# ------------------------------------------------------------------------------------------ plain processes
def feature_rows(ds) -> list[dict]:
    """The dataset's rows as the features stage sees them: slide, level-0 box, MPP."""
    t = ds.rows().select(["row", "slide", "wx0", "wy0", "wx1", "wy1", "mpp"]).to_pylist()
    return [{"row": r["row"], "slide": r["slide"], "box": [r["wx0"], r["wy0"], r["wx1"], r["wy1"]], "mpp": r["mpp"]}
            for r in t]


def cost(row: dict, um_per_px: float, max_side: int) -> float:
    """Pixels the families see for a row: its box at `um_per_px`, at most max_side on each side."""
    scale = row["mpp"] / um_per_px if row["mpp"] else 1.0
    x0, y0, x1, y1 = row["box"]
    return min((x1 - x0) * scale, max_side) * min((y1 - y0) * scale, max_side)


def split_rows(rows: Sequence[dict], parts: int, chunk_rows: int, um_per_px: float,
               max_side: int) -> list[list[dict]]:
    """The rows in the stage's chunks, whole chunks dealt to `parts` processes, costliest first to the least
    loaded (what Dask's scheduler does dynamically, done statically with the cost known in advance)."""
    chunks: dict[int, list[dict]] = {}
    for r in rows:
        chunks.setdefault(r["row"] // chunk_rows, []).append(r)
    out: list[list[dict]] = [[] for _ in range(parts)]
    load = [0.0] * parts
    for rs in sorted(chunks.values(), key=lambda rs: (-sum(cost(r, um_per_px, max_side) for r in rs), rs[0]["row"])):
        k = load.index(min(load))
        out[k] += rs
        load[k] += sum(cost(r, um_per_px, max_side) for r in rs)
    return out


def describe_all(rows: Sequence[dict], families: Sequence[str], um_per_px: float, max_side: int) -> dict:
    """read_rgb + compute_families of every row in this process, each slide opened once per run of its rows, as
    feature_chunk does in a task. Returns the rows done and rejected."""
    from crystal_dask.features import FeatureError, compute_families
    from crystal_dask.stages.features import read_rgb
    from crystal_dask.wsi.slides import Slide

    by_slide: dict[str, list[dict]] = {}
    for r in rows:
        by_slide.setdefault(r["slide"], []).append(r)
    rejected = 0
    for path, rs in by_slide.items():
        with Slide(path) as slide:
            for r in rs:
                try:
                    rgb, res = read_rgb(slide, tuple(r["box"]), r["mpp"], um_per_px, max_side)
                    compute_families(rgb, res, families)
                except FeatureError:
                    rejected += 1
    return {"rows": len(rows), "rejected": rejected}


def prepare_plain(rows: str, families: list[str], um_per_px: float, max_side: int) -> Callable[[], dict]:
    """Child process: the feature code over the rows in a JSON file, in one plain process, no Dask."""
    _warm()
    todo = json.loads(Path(rows).read_text())
    return lambda: describe_all(todo, families, um_per_px, max_side)


def profile_chunk(ds, families: Sequence[str], um_per_px: float, max_side: int, chunk_rows: int, marker: Path,
                  top: int = 15) -> str:
    """cProfile of stages.features.feature_chunk on the dataset's costliest chunk, in this process, by own time."""
    from crystal_dask.stages.features import feature_chunk

    rows = feature_rows(ds)
    chunks: dict[int, list[dict]] = {}
    for r in rows:
        chunks.setdefault(r["row"] // chunk_rows, []).append(r)
    k = max(chunks, key=lambda c: sum(cost(r, um_per_px, max_side) for r in chunks[c]))
    start = k * chunk_rows
    by_row = {r["row"]: r for r in chunks[k]}
    n = min(chunk_rows, ds.group()["label"].shape[0] - start)
    task = {"start": start, "families": list(families), "um_per_px": um_per_px, "max_side": max_side,
            "dataset": str(ds.root), "marker": str(marker), "stage": "bench-profile",
            "rows": [by_row.get(start + i) or {"slide": "", "box": [0, 0, 1, 1], "mpp": None, "absent": True}
                     for i in range(n)]}
    marker.unlink(missing_ok=True)
    prof = cProfile.Profile()
    prof.runcall(feature_chunk, task)  # rewrites the chunk with the values it already holds
    marker.unlink(missing_ok=True)
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(top)
    return f"chunk {k} ({len(by_row)} rows):\n" + text.getvalue()


# ------------------------------------------------------------------------------------------ the benchmark
def run(work: Path, *, patients: int = 8, slides_per_patient: int = 2, regions_per_slide: int = 14,
        slide_size: tuple[int, int] = (6000, 4000), chunk_rows: int = 32, um_per_px: float | None = None,
        max_side: int | None = None, repeats: int = 3, seed: int = 0, profile: bool = False,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the features benchmark in `work`; return every number (see `report` for the tables)."""
    from crystal_dask.stages.extract import extract
    from crystal_dask.stages.features import MARKERS, FeatureSettings, compute
    from crystal_dask.stages.scan import scan
    from crystal_dask.wsi.patches import PatchSettings

    started = time.perf_counter()
    defaults = FeatureSettings()
    um_per_px = defaults.um_per_px if um_per_px is None else um_per_px
    max_side = defaults.max_side if max_side is None else max_side
    folder, manifest = corpus(work, flavour="fcbr", patients=patients, slides_per_patient=slides_per_patient,
                              regions_per_slide=regions_per_slide, crystalline=patients, slide_size=slide_size,
                              seed=seed)
    regions = scan(folder).regions
    settings = PatchSettings(chunk_rows=chunk_rows)
    contenders = (*FAMILY_NAMES, ALL)
    seconds: dict[str, list[float]] = {k: [] for k in ("extract", *contenders, "plain_2proc")}
    mem: dict[str, list[dict[str, int]]] = {k: [] for k in seconds}
    rejects: dict[str, Counter] = {}
    with local_client(WORKERS) as client:
        client.run(_warm)
        _warm()
        ds = extract(regions, work / "dataset", settings, client)
        rows = feature_rows(ds)
        n = len(rows)
        parts = []
        for k, part in enumerate(split_rows(rows, 2, chunk_rows, um_per_px, max_side)):
            parts.append(work / f"rows-{k}.json")
            parts[-1].write_text(json.dumps(part))
        log(f"corpus {folder}: {manifest['counts']['slides']} slides, {n} regions -> {n} patches "
            f"(ready in {time.perf_counter() - started:.0f} s)")
        for rep in range(repeats):
            out = work / "extract-timed"
            shutil.rmtree(out, ignore_errors=True)
            with peaks(client) as pk:
                t0 = time.perf_counter()
                timed = extract(regions, out, settings, client)
                seconds["extract"].append(time.perf_counter() - t0)
            mem["extract"].append(pk)
            if timed.read_manifest()["patches"] != n:
                raise RuntimeError(f"{out}: extract wrote {timed.read_manifest()['patches']} patches, {n} before")
            for name in contenders:
                families = FAMILY_NAMES if name == ALL else (name,)
                shutil.rmtree(ds.root / MARKERS, ignore_errors=True)  # compute every chunk again
                fs = FeatureSettings(families=families, um_per_px=um_per_px, max_side=max_side)
                with peaks(client) as pk:
                    t0 = time.perf_counter()
                    done = compute(ds, fs, client)
                    seconds[name].append(time.perf_counter() - t0)
                mem[name].append(pk)
                if done["chunks_run"] != done["chunks"] or done["rows"] != n:
                    raise RuntimeError(f"features {name}: ran {done['chunks_run']} of {done['chunks']} chunks")
                rejects[name] = Counter(done["reasons"])
            wall, results = run_together("crystal_dask.bench.features:prepare_plain",
                                         [{"rows": str(p), "families": list(FAMILY_NAMES), "um_per_px": um_per_px,
                                           "max_side": max_side} for p in parts])
            seconds["plain_2proc"].append(wall)
            mem["plain_2proc"].append({f"process-{k}": r.peak_rss for k, r in enumerate(results)})
            plain_rejected = sum(r.result["rejected"] for r in results)
            if plain_rejected != sum(rejects[ALL].values()):
                raise RuntimeError(f"plain processes rejected {plain_rejected} rows, the stage "
                                   f"{sum(rejects[ALL].values())}")
            log(f"repeat {rep + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in seconds.items()))
        profiled = (profile_chunk(ds, FAMILY_NAMES, um_per_px, max_side, chunk_rows, work / "profile-marker.json")
                    if profile else None)

    rates = {k: rate(n, v) for k, v in seconds.items()}
    ratios = {"all_vs_extract": ratio(Stat(tuple(seconds[ALL])), Stat(tuple(seconds["extract"]))),
              "vs_plain_processes": ratio(rates[ALL], rates["plain_2proc"]),
              **{f"{f}_vs_extract": ratio(Stat(tuple(seconds[f])), Stat(tuple(seconds["extract"])))
                 for f in FAMILY_NAMES}}
    targets = {"all_vs_extract": {"target": TARGETS["all_vs_extract"], "at_most": True,
                                  "met": ratios["all_vs_extract"] <= TARGETS["all_vs_extract"]},
               "vs_plain_processes": {"target": TARGETS["vs_plain_processes"], "at_most": False,
                                      "met": ratios["vs_plain_processes"] >= TARGETS["vs_plain_processes"]}}
    result = {
        "bench": "features", "repeats": repeats, "patches": n, "workers": WORKERS,
        "corpus": {"root": str(folder), **{k: manifest["counts"][k] for k in ("slides", "regions")},
                   "slide_size": list(slide_size)},
        "settings": {"extract": settings.as_dict(), "um_per_px": um_per_px, "max_side": max_side},
        "seconds": {k: Stat(tuple(v)).as_dict() for k, v in seconds.items()},
        "patches_per_s": {k: v.as_dict() for k, v in rates.items()},
        "ratios": ratios,
        "targets": targets,
        "rejected": {k: {"fraction": sum(c.values()) / n if n else 0.0, "reasons": dict(sorted(c.items()))}
                     for k, c in rejects.items()},
        "peak_rss": {k: merge_peaks(v) for k, v in mem.items()},
        "total_seconds": time.perf_counter() - started,
    }
    if profiled is not None:
        result["profile"] = profiled
    return result


_LABELS = {
    "extract": "pixel extraction (stages.extract), 2 workers",
    "stain": "features: stain alone, 2 workers",
    "texture": "features: texture alone, 2 workers",
    "calcification": "features: calcification alone, 2 workers",
    ALL: "features: all families, 2 workers",
    "plain_2proc": "all families, 2 plain processes",
}


def report(r: dict[str, Any]) -> str:
    """The benchmark's tables: medians with (min-max) over the repeats, rejects, ratios, and peak memory."""
    c, s = r["corpus"], r["settings"]
    lines = [f"features: {r['patches']} region patches from {c['regions']} regions on {c['slides']} generated "
             f"FCBR-like slides of up to {c['slide_size'][0]}x{c['slide_size'][1]} px; families at "
             f"{s['um_per_px']:g} um/px, at most {s['max_side']} px a side; {s['extract']['chunk_rows']} rows per "
             f"task; {r['repeats']} repeats, median (min-max)", ""]
    rows = [("contender", "seconds", "patches/s", "rows rejected", "peak RSS per process")]
    for k, label in _LABELS.items():
        rej = r["rejected"].get(k if k != "plain_2proc" else ALL)
        rej_text = "" if k == "extract" or rej is None else f"{100 * rej['fraction']:.1f}%"
        if rej and rej["reasons"] and k != "plain_2proc":
            rej_text += " (" + ", ".join(f"{why}: {v}" for why, v in rej["reasons"].items()) + ")"
        mem = ", ".join(f"{name} {fmt_bytes(v)}" for name, v in r["peak_rss"][k].items())
        rows.append((label, fmt_stat(r["seconds"][k]), fmt_stat(r["patches_per_s"][k]), rej_text or "-", mem))
    lines.append(table(rows))
    q, t = r["ratios"], r["targets"]
    lines += ["", table([
        ("ratio (of medians)", "value", "target"),
        ("time of all families / time of pixel extraction", f"{q['all_vs_extract']:.2f}x",
         _target(t["all_vs_extract"])),
        *((f"time of {f} alone / time of pixel extraction", f"{q[f'{f}_vs_extract']:.2f}x", "")
          for f in FAMILY_NAMES),
        ("rate of the Dask stage / 2 plain processes", f"{q['vs_plain_processes']:.2f}",
         _target(t["vs_plain_processes"])),
    ])]
    lines.append(f"\nbench took {r['total_seconds']:.0f} s")
    if "profile" in r:
        lines += ["", "where a task's time goes (cProfile of feature_chunk on the costliest chunk, one process):",
                  r["profile"]]
    return "\n".join(lines)


def _target(t: dict[str, Any]) -> str:
    return f"{'<=' if t['at_most'] else '>='} {t['target']:g}: {'met' if t['met'] else 'MISSED'}"
