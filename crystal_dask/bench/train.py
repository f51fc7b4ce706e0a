"""`crystal-dask bench train`: crystal_dask.stages.train.fit (joblib's dask backend on a 2-worker LocalCluster, the
training matrix broadcast once) against the same BalancedRandomForestClassifier(random_state=42) fitted with
joblib's default backend and n_jobs=2 in one process, on the same X: real patches (256 px windows of a generated
FCBR-like corpus), float32, n x 65,536. Fits alternate between the two, `repeats` times each; the two models must
predict identically. The time to broadcast X alone is measured too, because it is most of the difference.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from crystal_dask.bench.common import Stat, fmt_bytes, fmt_stat, merge_peaks, patch_dataset, peaks, ratio, table
from crystal_dask.runtime.cluster import local_client

TARGET_OVERHEAD = 1.15


def _warm() -> None:
    import imblearn.ensemble  # noqa: F401  (loaded before the timer starts)


def run(work: Path, *, rows: int = 2000, repeats: int = 3, seed: int = 0, slide_size: tuple[int, int] = (6000, 4000),
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the training benchmark in `work` (patches from generated slides of `slide_size`); return every number
    (see `report`)."""
    from imblearn.ensemble import BalancedRandomForestClassifier

    from crystal_dask.stages.train import RANDOM_STATE, fit

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

        # one small untimed fit each first: imports and first-call costs on the workers and in this process
        fit(X[:200], y[:200], client)
        BalancedRandomForestClassifier(random_state=RANDOM_STATE, n_jobs=2).fit(X[:200], y[:200])
        seconds: dict[str, list[float]] = {"dask": [], "local": [], "broadcast": []}
        mem: dict[str, list[dict[str, int]]] = {"dask": [], "local": []}
        models = {}
        for rep in range(repeats):
            with peaks(client) as pk:
                t0 = time.perf_counter()
                models["dask"] = fit(X, y, client)
                seconds["dask"].append(time.perf_counter() - t0)
            mem["dask"].append(pk)
            with peaks() as pk:
                t0 = time.perf_counter()
                models["local"] = BalancedRandomForestClassifier(random_state=RANDOM_STATE, n_jobs=2).fit(X, y)
                seconds["local"].append(time.perf_counter() - t0)
            mem["local"].append({"process": pk["client"]})
            t0 = time.perf_counter()
            future = client.scatter(X, broadcast=True, hash=False)  # what fit's scatter=[X] does first
            seconds["broadcast"].append(time.perf_counter() - t0)
            client.cancel(future)
            del future
            log(f"repeat {rep + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in seconds.items()))

    check = X if not len(held_out) else np.vstack([X, ds.matrix(held_out).astype(np.float32)])
    same_pred = bool(np.array_equal(models["dask"].predict(check), models["local"].predict(check)))
    same_proba = bool(np.array_equal(models["dask"].predict_proba(check), models["local"].predict_proba(check)))
    stats = {k: Stat(tuple(v)) for k, v in seconds.items()}
    overhead = ratio(stats["dask"], stats["local"])
    return {
        "bench": "train", "repeats": repeats, "rows": rows, "features": int(X.shape[1]),
        "x_bytes": int(X.nbytes), "classes": np.bincount(y).tolist(), "dataset": str(ds.root),
        "dataset_patches": int(len(valid)),
        "seconds": {k: v.as_dict() for k, v in stats.items()},
        "ratios": {"overhead": overhead},
        "targets": {"overhead": {"target": TARGET_OVERHEAD, "met": overhead <= TARGET_OVERHEAD}},
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
        ("crystal_dask.stages.train.fit: dask backend, 2 workers x 1 thread", fmt_stat(s["dask"]),
         ", ".join(f"{k} {fmt_bytes(v)}" for k, v in r["peak_rss"]["dask"].items())),
        ("joblib default backend, n_jobs=2, one process", fmt_stat(s["local"]),
         f"process {fmt_bytes(r['peak_rss']['local']['process'])}"),
        ("dask: broadcasting X to both workers, measured alone", fmt_stat(s["broadcast"]), ""),
    ]))
    t = r["targets"]["overhead"]
    same = r["identical"]
    lines.append(f"\noverhead ratio dask / default backend (of medians): {r['ratios']['overhead']:.2f} "
                 f"(target <= {t['target']:g}: {'met' if t['met'] else 'MISSED'})")
    lines.append(f"identical predictions on {same['rows_checked']} rows (training + held-out): predict "
                 f"{same['predict']}, predict_proba {same['predict_proba']}; bench took {r['total_seconds']:.0f} s")
    return "\n".join(lines)
