"""`crystal-dask bench train`: the forest as crystal_dask fits it (crystal_dask.forest.fit_forest: one task per tree
through joblib's dask backend on a 2-worker LocalCluster, each tree reading its own rows from zarr) against the same
BalancedRandomForestClassifier(random_state=42) fitted with joblib's default backend and n_jobs=2 in one process on
the matrix in memory, and against the previous design (the float32 matrix broadcast to every worker, then joblib's
dask backend), on the same rows: real patches (256 px windows of a generated FCBR-like corpus), n x 65,536. Fits
alternate, `repeats` times each; the models must predict identically.

The scale run (`scale_rows` > 0) fits on a large window set in extract's own format whose smallest class has
`scale_smallest` rows, as rare classes do in the real corpora, and reports wall time and every process's peak
memory; the in-memory path's need is given on paper.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from crystal_dask.bench.common import Stat, fmt_bytes, fmt_stat, merge_peaks, patch_dataset, peaks, ratio, table
from crystal_dask.runtime.cluster import local_client

TARGET_OVERHEAD = 1.0  # the per-tree fit broadcasts nothing: it should not be slower than the in-memory fit


def _warm() -> None:
    import imblearn.ensemble  # noqa: F401  (loaded before the timer starts)


def broadcast_fit(X: np.ndarray, y: np.ndarray, client):
    """The previous design, kept as a baseline: the float32 matrix broadcast to every worker once (joblib's
    `scatter`), then the forest under joblib's dask backend."""
    from imblearn.ensemble import BalancedRandomForestClassifier
    from joblib import parallel_config

    X = np.ascontiguousarray(X, dtype=np.float32)
    model = BalancedRandomForestClassifier(random_state=42, n_jobs=-1)
    with parallel_config(backend="dask", client=client, scatter=[X]):
        model.fit(X, y)
    return model


def run(work: Path, *, rows: int = 2000, repeats: int = 3, seed: int = 0, slide_size: tuple[int, int] = (6000, 4000),
        scale_rows: int = 0, scale_smallest: int = 500, scale_trees: int = 100,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the training benchmark in `work` (patches from generated slides of `slide_size`); return every number
    (see `report`)."""
    from imblearn.ensemble import BalancedRandomForestClassifier

    from crystal_dask.forest import TrainingRows, fit_forest
    from crystal_dask.stages.train import RANDOM_STATE

    started = time.perf_counter()
    with local_client(2) as client:
        client.run(_warm)
        ds = patch_dataset(work, client, rows, seed, slide_size)
        valid = ds.rows()["row"].to_numpy()
        if len(valid) < rows:
            raise ValueError(f"{ds.root}: the generated corpus gave {len(valid)} patches, fewer than --rows {rows}")
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(valid, rows, replace=False))
        held_out = np.setdiff1d(valid, chosen)[:rows]
        X, y = ds.matrix(chosen), ds.labels(chosen)
        X = np.ascontiguousarray(X, dtype=np.float32)  # what both fits train on (the forest's own dtype)
        log(f"dataset {ds.root}: {len(valid)} patches; training on {rows} x {X.shape[1]} float32 "
            f"({fmt_bytes(X.nbytes)}), classes {np.bincount(y).tolist()} "
            f"(ready in {time.perf_counter() - started:.0f} s)")

        reader = TrainingRows(str(ds.root))
        # one small untimed fit each first: imports and first-call costs on the workers and in this process
        fit_forest(reader, chosen[:200], y[:200], client, random_state=RANDOM_STATE)
        broadcast_fit(X[:200], y[:200], client)
        BalancedRandomForestClassifier(random_state=RANDOM_STATE, n_jobs=2).fit(X[:200], y[:200])
        seconds: dict[str, list[float]] = {"dask": [], "local": [], "broadcast_fit": []}
        mem: dict[str, list[dict[str, int]]] = {"dask": [], "local": [], "broadcast_fit": []}
        models = {}
        for rep in range(repeats):
            with peaks(client) as pk:
                t0 = time.perf_counter()
                models["dask"] = fit_forest(reader, chosen, y, client, random_state=RANDOM_STATE)
                seconds["dask"].append(time.perf_counter() - t0)
            mem["dask"].append(pk)
            with peaks(client) as pk:
                t0 = time.perf_counter()
                models["broadcast_fit"] = broadcast_fit(X, y, client)
                seconds["broadcast_fit"].append(time.perf_counter() - t0)
            mem["broadcast_fit"].append(pk)
            with peaks() as pk:
                t0 = time.perf_counter()
                models["local"] = BalancedRandomForestClassifier(random_state=RANDOM_STATE, n_jobs=2).fit(X, y)
                seconds["local"].append(time.perf_counter() - t0)
            mem["local"].append({"process": pk["client"]})
            log(f"repeat {rep + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in seconds.items()))

        check = X if not len(held_out) else np.vstack([X, ds.matrix(held_out).astype(np.float32)])
        same_pred = bool(np.array_equal(models["dask"].predict(check), models["local"].predict(check)))
        same_proba = bool(np.array_equal(models["dask"].predict_proba(check), models["local"].predict_proba(check)))
        same_proba = same_proba and bool(np.array_equal(models["broadcast_fit"].predict_proba(check),
                                                         models["local"].predict_proba(check)))
        scale = _scale_run(work, ds, client, scale_rows, scale_smallest, scale_trees, log) if scale_rows else None
    stats = {k: Stat(tuple(v)) for k, v in seconds.items()}
    overhead = ratio(stats["dask"], stats["local"])
    return {
        "bench": "train", "repeats": repeats, "rows": rows, "features": int(X.shape[1]),
        "x_bytes": int(X.nbytes), "classes": np.bincount(y).tolist(), "dataset": str(ds.root),
        "dataset_patches": int(len(valid)),
        "seconds": {k: v.as_dict() for k, v in stats.items()},
        "ratios": {"overhead": overhead, "broadcast_overhead": ratio(stats["broadcast_fit"], stats["local"])},
        "targets": {"overhead": {"target": TARGET_OVERHEAD, "met": overhead <= TARGET_OVERHEAD}},
        "scale": scale,
        "peak_rss": {k: merge_peaks(v) for k, v in mem.items()},
        "identical": {"predict": same_pred, "predict_proba": same_proba, "rows_checked": int(len(check))},
        "total_seconds": time.perf_counter() - started,
    }


def report(r: dict[str, Any]) -> str:
    s = r["seconds"]
    lines = [f"train: BalancedRandomForestClassifier(random_state=42) on {r['rows']} x {r['features']} float32 "
             f"({fmt_bytes(r['x_bytes'])}) real patches, classes {r['classes']}; {r['repeats']} repeats, "
             f"median (min-max)", ""]
    lines.append(table([
        ("fit", "seconds", "peak RSS per process"),
        ("crystal_dask (forest.fit_forest): a task per tree, rows read from zarr, 2 workers x 1 thread",
         fmt_stat(s["dask"]), ", ".join(f"{k} {fmt_bytes(v)}" for k, v in r["peak_rss"]["dask"].items())),
        ("joblib default backend, n_jobs=2, one process, X in memory", fmt_stat(s["local"]),
         f"process {fmt_bytes(r['peak_rss']['local']['process'])}"),
        ("previous design: X broadcast to both workers, dask backend", fmt_stat(s["broadcast_fit"]),
         ", ".join(f"{k} {fmt_bytes(v)}" for k, v in r["peak_rss"]["broadcast_fit"].items())),
    ]))
    t = r["targets"]["overhead"]
    same = r["identical"]
    lines.append(f"\noverhead ratio dask / default backend (of medians): {r['ratios']['overhead']:.2f} "
                 f"(target <= {t['target']:g}: {'met' if t['met'] else 'MISSED'})")
    if r.get("scale"):
        sc = r["scale"]
        lines.append(f"\nscale: {sc['trees']} trees on {sc['rows']:,} x {sc['features']:,} window patches (classes "
                     f"{sc['classes']}): {sc['seconds']:.0f} s wall ({sc['seconds_per_tree']:.1f} s per tree); peak "
                     + ", ".join(f"{k} {fmt_bytes(v)}" for k, v in sc["peak_rss"].items())
                     + f" (target: every process under 2 GiB: {'met' if sc['under_2gib'] else 'MISSED'}); the "
                     f"in-memory path would hold {fmt_bytes(sc['in_memory_bytes'])} as float32")
    lines.append(f"identical predictions on {same['rows_checked']} rows (training + held-out): predict "
                 f"{same['predict']}, predict_proba {same['predict_proba']}; bench took {r['total_seconds']:.0f} s")
    return "\n".join(lines)


def _scale_run(work: Path, source, client, rows: int, smallest: int, trees: int,
               log: Callable[[str], None]) -> dict[str, Any]:
    """A forest on `rows` window patches (extract's format, pixels tiled from `source`) whose classes are blocks
    of rows, the smallest `smallest` rows: wall time and every process's peak memory."""
    from crystal_dask.bench.evaluate import tile_dataset
    from crystal_dask.forest import TrainingRows, fit_forest

    ds = tile_dataset(source, work / f"scale-{rows}", rows)
    # classes as contiguous blocks (windows of one region are neighbours in extract's order): the smallest has
    # `smallest` rows, the others share the rest unequally
    weights = np.array([1, 2, 3, 4, 6, 8, 10, 12, 14], float)
    counts = np.maximum(smallest, np.floor(weights / weights.sum() * rows)).astype(int)
    counts[0] = smallest
    counts[-1] += rows - counts.sum()
    y = np.repeat(np.arange(9), counts)
    log(f"scale: {rows:,} rows, classes {counts.tolist()}, {trees} trees")
    with peaks(client) as pk:
        t0 = time.perf_counter()
        fit_forest(TrainingRows(str(ds.root)), np.arange(rows), y, client, n_estimators=trees)
        seconds = time.perf_counter() - t0
    return {"rows": rows, "features": 65536, "classes": counts.tolist(), "trees": trees, "seconds": seconds,
            "seconds_per_tree": seconds / trees, "peak_rss": pk,
            "under_2gib": all(v < 2 * 1024**3 for v in pk.values()), "in_memory_bytes": rows * 65536 * 4}
