"""`crystal-dask bench train`: the forest as crystal_dask fits it (crystal_dask.forest.fit_forest: one dask task per
tree on a 2-worker LocalCluster, each tree reading its own rows from zarr) against the same
BalancedRandomForestClassifier(random_state=42) fitted with joblib's default backend and n_jobs=2 in one process on
the matrix in memory, and against the previous design (the float32 matrix broadcast to every worker, then joblib's
dask backend), on the same rows: real patches (256 px windows of a generated FCBR-like corpus), n x 65,536. Fits
alternate, `repeats` times each; each is timed in wall seconds and in CPU seconds of all its processes (client and
scheduler included), which a loaded machine inflates far less; the models must predict identically.

The per-tree fit reads through each machine's decoded copy of the array (store/rowcache.py), kept in a fresh
folder of the bench's work directory: the first fit after emptying it is timed alone ("cold": every chunk decoded
once on the way), the repeats then read a filled copy, as every later tree, configuration and run on those
machines does. Each tree reports its draw (the sampler), reading and fitting seconds.

The scale run (`scale_rows` > 0) fits on a large window set in extract's own format made of the corpus's real
patches and their augmented copies (flips, quarter turns, small shifts), each row with its own patch's label, whose
smallest class has `scale_smallest` rows, as rare classes do in the real corpora (scale_layout): the decoded copy
is filled first (timed, in tasks on both workers), then the forest; it reports wall time, read and fit seconds per
tree, every process's peak memory, and how many chunks each tree touches (why one decode per tree cannot scale,
and why ordering rows by class or batching trees would not be enough). The in-memory path's need is given on
paper.

The cost model: single trees fitted on the workers over a grid of sample rows x features (columns of the same
pixels), fitted as fit seconds = c * rows^a * features^b (least squares in logs) and read seconds = r * rows *
features; checked against the forests' own trees, and turned into a SLURM sizing for 1,000,000 rows.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dask.config
import numpy as np

from crystal_dask.bench.common import (
    Stat,
    cpu_used,
    fmt_bytes,
    fmt_stat,
    merge_peaks,
    patch_dataset,
    peaks,
    ratio,
    table,
)
from crystal_dask.runtime.cluster import local_client
from crystal_dask.store import rowcache

TARGET_OVERHEAD = 1.0  # the per-tree fit broadcasts nothing: it should not be slower than the in-memory fit
TARGET_READ_SHARE = 0.25  # of each tree's time, at most, goes to reading its sample
TARGET_SCALE_SECONDS = 20 * 60  # the 100,000-row forest on 2 workers
GIB = 1024**3
MODEL_ROWS = (250, 500, 1000, 2000, 4500)  # the cost model's grid: sample rows (4,500 = the scale run's sample)
MODEL_FEATURES = (4096, 16384, 65536)  # and features (leading columns of the 256 x 256 pixels)
SIZING = {"rows": 1_000_000, "smallest": 500, "features": 65536, "trees": 100, "workers": 2}  # the docs' example


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
        model_rows: Sequence[int] = MODEL_ROWS, model_features: Sequence[int] = MODEL_FEATURES,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the training benchmark in `work` (patches from generated slides of `slide_size`); return every number
    (see `report`)."""
    from imblearn.ensemble import BalancedRandomForestClassifier

    from crystal_dask.forest import TrainingRows, fit_forest
    from crystal_dask.stages.train import RANDOM_STATE

    started = time.perf_counter()
    cache_dir = work / "rowcache"  # the workers' decoded copies: this run's own, removed with `work`
    with dask.config.set({rowcache.DIRECTORY_KEY: str(cache_dir)}), local_client(2) as client:
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
            f"(ready in {time.perf_counter() - started:.0f} s; load {_load()})")

        reader = TrainingRows(str(ds.root))
        # one small untimed fit each first: imports and first-call costs on the workers and in this process
        fit_forest(reader, chosen[:200], y[:200], client, random_state=RANDOM_STATE)
        broadcast_fit(X[:200], y[:200], client)
        BalancedRandomForestClassifier(random_state=RANDOM_STATE, n_jobs=2).fit(X[:200], y[:200])
        rowcache.evict(cache_dir, 0)  # the first timed fit starts from an empty copy: every chunk decoded once
        cold: list = []
        cold_prepared: list = []
        t0 = time.perf_counter()
        fit_forest(reader, chosen, y, client, random_state=RANDOM_STATE, timings=cold, preparation=cold_prepared)
        cold_seconds = time.perf_counter() - t0
        log(f"cold fit (every chunk decoded once on the way): {cold_seconds:.2f} s")
        trees: list = []
        prepared: list = []
        contenders: dict[str, tuple[Any, Callable[[], Any]]] = {  # name -> (its cluster, the fit)
            "dask": (client, lambda: fit_forest(reader, chosen, y, client, random_state=RANDOM_STATE, timings=trees,
                                                preparation=prepared)),
            "broadcast_fit": (client, lambda X=X: broadcast_fit(X, y, client)),
            "local": (None, lambda X=X: BalancedRandomForestClassifier(random_state=RANDOM_STATE, n_jobs=2).fit(X, y)),
        }
        seconds: dict[str, list[float]] = {k: [] for k in contenders}
        cpu: dict[str, list[float]] = {k: [] for k in contenders}
        mem: dict[str, list[dict[str, int]]] = {k: [] for k in contenders}
        models = {}
        for rep in range(repeats):
            for name, (cluster, fit) in contenders.items():
                with peaks(cluster) as pk, cpu_used(cluster) as used:
                    t0 = time.perf_counter()
                    models[name] = fit()
                    seconds[name].append(time.perf_counter() - t0)
                mem[name].append(pk if cluster is not None else {"process": pk["client"]})
                cpu[name].append(used["total"])
            log(f"repeat {rep + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.2f} s ({cpu[k][-1]:.2f} CPU s)"
                                                            for k, v in seconds.items()) + f" (load {_load()})")

        check = X if not len(held_out) else np.vstack([X, ds.matrix(held_out).astype(np.float32)])
        same_pred = bool(np.array_equal(models["dask"].predict(check), models["local"].predict(check)))
        same_proba = bool(np.array_equal(models["dask"].predict_proba(check), models["local"].predict_proba(check)))
        same_proba = same_proba and bool(np.array_equal(models["broadcast_fit"].predict_proba(check),
                                                         models["local"].predict_proba(check)))
        rows_checked = len(check)
        del X, check, contenders  # the baseline's copies: not held through the cost model's and the scale run's trees
        grid = _calibrate(client, reader, chosen, y, model_rows, model_features, seed)
        log(f"cost model grid: {len(grid)} single trees (load {_load()})")
        scale = _scale_run(work, ds, client, scale_rows, scale_smallest, scale_trees, log) if scale_rows else None
    stats = {k: Stat(tuple(v)) for k, v in seconds.items()}
    overhead = ratio(stats["dask"], stats["local"])
    per_tree = tree_summary(trees, prepared, len(cold))
    model = cost_model(grid)
    checks = [(f"{rows:,}-row forest", per_tree)] + ([("scale forest", scale["per_tree"])] if scale else [])
    model["checks"] = [{"forest": name, "rows": t["rows"], "features": t["features"], "fit_measured": t["fit_cpu"],
                        "fit_predicted": predict_fit(model, t["rows"], t["features"])} for name, t in checks]
    return {
        "bench": "train", "repeats": repeats, "rows": rows, "features": int(models["local"].n_features_in_),
        "x_bytes": int(rows * models["local"].n_features_in_ * 4), "classes": np.bincount(y).tolist(),
        "dataset": str(ds.root), "dataset_patches": int(len(valid)),
        "seconds": {k: v.as_dict() for k, v in stats.items()},
        "cpu_seconds": {k: Stat(tuple(v)).as_dict() for k, v in cpu.items()},
        "cold_seconds": cold_seconds, "cold_per_tree": tree_summary(cold, cold_prepared),
        "per_tree": per_tree,
        "ratios": {"overhead": overhead, "cold_overhead": cold_seconds / stats["local"].median,
                   "overhead_cpu": float(np.median(cpu["dask"]) / np.median(cpu["local"])),
                   "broadcast_overhead": ratio(stats["broadcast_fit"], stats["local"])},
        "targets": {"overhead": {"target": TARGET_OVERHEAD, "met": overhead <= TARGET_OVERHEAD},
                    "read_share": {"target": TARGET_READ_SHARE,
                                   "met": per_tree["read_share_max"] <= TARGET_READ_SHARE}},
        "scale": scale,
        "cost_model": model,
        "sizing": sizing(model, scale, **SIZING),
        "peak_rss": {k: merge_peaks(v) for k, v in mem.items()},
        "identical": {"predict": same_pred, "predict_proba": same_proba, "rows_checked": rows_checked},
        "load_average": list(os.getloadavg()),
        "total_seconds": time.perf_counter() - started,
    }


def _load() -> str:
    return "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def tree_summary(timings: Sequence, preparation: Sequence = (), forest_trees: int | None = None) -> dict[str, Any]:
    """Medians of the trees' draw, read and fit seconds, the share of reading in a tree's time (draw + read +
    fit; of the sum, and of the worst tree), the sample's shape, every tree's timing (`each`: forests of
    `forest_trees` trees one after another, with each tree's index in its forest and whether it was its process's
    first of that forest) and the worst tree's; and the workers' preparation of their sample buffers before their
    trees (forest.prepare_sample_buffer, in each worker thread's first task: the slowest one's wall and CPU
    seconds, part of the forest's wall time)."""
    col = {k: np.array([getattr(t, k) for t in timings]) for k in ("draw", "read", "fit", "draw_cpu", "read_cpu",
                                                                   "fit_cpu")}
    total = col["draw"] + col["read"] + col["fit"]
    total_cpu = col["draw_cpu"] + col["read_cpu"] + col["fit_cpu"]
    per = forest_trees or len(timings)
    first: dict[tuple[int, int], tuple[float, int]] = {}  # (forest, process) -> (start, index) of its first tree
    for i, t in enumerate(timings):
        first[i // per, t.pid] = min(first.get((i // per, t.pid), (t.start, i)), (t.start, i))
    each = [{"forest": i // per, "tree": i % per, **dataclasses.asdict(t),
             "read_share": float(col["read"][i] / total[i]), "first_on_process": first[i // per, t.pid][1] == i}
            for i, t in enumerate(timings)]
    return {"trees": len(timings), **{k: float(np.median(v)) for k, v in col.items()},
            "read_share": float(col["read"].sum() / total.sum()), "read_share_max": float((col["read"] / total).max()),
            "read_share_cpu": float(col["read_cpu"].sum() / total_cpu.sum()),
            "read_share_cpu_max": float((col["read_cpu"] / total_cpu).max()),
            "rows": int(timings[0].rows), "features": int(timings[0].features),
            "processes": len({t.pid for t in timings}),
            "prepare": {"seconds": max((p.seconds for p in preparation), default=0.0),
                        "cpu": max((p.cpu for p in preparation), default=0.0),
                        "bytes": max((p.bytes for p in preparation), default=0),
                        "workers": len({p.pid for p in preparation})},
            "worst": each[int(np.argmax(col["read"] / total))], "each": each}


# ------------------------------------------------------------------------------------------------ cost model
def _grid_tree(reader, rows: np.ndarray, y: np.ndarray, features: int) -> tuple[float, float]:
    """On a worker: read `rows` (through the decoded copy, filled already), keep the leading `features` columns,
    fit one tree as the forest does; CPU seconds of this thread (read, fit): the load-independent cost."""
    from sklearn.tree import DecisionTreeClassifier

    from crystal_dask.forest import release_sample_buffers, sample_buffer

    t0 = time.thread_time()
    if features >= reader.shape[1]:  # as a forest's tree reads (the worker's reused buffer: warm it first)
        reader(rows, out=sample_buffer(len(rows), reader.shape[1]))
        t0 = time.thread_time()
        X = reader(rows, out=sample_buffer(len(rows), reader.shape[1]))
    else:  # the leading columns, cut before the float32 copy (a read not timed as a tree's: see cost_model)
        X = np.ascontiguousarray(reader(rows)[:, :features], dtype=np.float32)
    t1 = time.thread_time()
    DecisionTreeClassifier(max_features="sqrt", random_state=0).fit(X, y)
    release_sample_buffers()
    return t1 - t0, time.thread_time() - t1


def _calibrate(client, reader, rows: np.ndarray, y: np.ndarray, sizes: Sequence[int], features: Sequence[int],
               seed: int) -> list[dict[str, float]]:
    """Single trees over the grid sizes x features on the workers, each on a class-balanced sample drawn with
    replacement (as the forest's sampler draws): [{rows, features, read, fit}]."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    points, futures = [], []
    for n in sizes:
        per = -(-n // len(classes))
        pick = np.concatenate([rng.choice(np.flatnonzero(y == c), per) for c in classes])
        for d in features:
            points.append({"rows": int(len(pick)), "features": int(d)})
            futures.append(client.submit(_grid_tree, reader, rows[pick], y[pick], d, pure=False))
    for point, (read, fit) in zip(points, client.gather(futures), strict=True):
        point |= {"read": read, "fit": fit}
    return points


def cost_model(grid: Sequence[dict[str, float]]) -> dict[str, Any]:
    """fit seconds = c * rows^a * features^b (least squares in logs) and read seconds = r * rows * features
    (least squares through 0, on the full-width points), from the grid's trees; CPU seconds of one thread, i.e. of
    a core of its own."""
    n = np.array([p["rows"] for p in grid], float)
    d = np.array([p["features"] for p in grid], float)
    fit = np.array([p["fit"] for p in grid], float)
    read = np.array([p["read"] for p in grid], float)
    design = np.column_stack([np.ones_like(n), np.log(n), np.log(d)])
    (log_c, a, b), *_ = np.linalg.lstsq(design, np.log(fit), rcond=None)
    whole = d == d.max()  # a tree reads whole rows: only the grid's full-width points time a tree's read
    cells = n[whole] * d[whole]
    r = float(cells @ read[whole] / (cells @ cells))
    residual = np.exp(design @ np.array([log_c, a, b])) / fit
    return {"fit": {"c": float(np.exp(log_c)), "rows_exponent": float(a), "features_exponent": float(b),
                    "worst_ratio": float(max(residual.max(), 1 / residual.min()))},
            "read_seconds_per_value": r, "grid": list(grid)}


def predict_fit(model: dict[str, Any], rows: int, features: int) -> float:
    f = model["fit"]
    return float(f["c"] * rows ** f["rows_exponent"] * features ** f["features_exponent"])


def sizing(model: dict[str, Any], scale: dict[str, Any] | None, rows: int, smallest: int, features: int,
           trees: int, workers: int) -> dict[str, Any]:
    """What a forest on `rows` x `features` uint8 rows whose smallest class has `smallest` rows needs on `workers`
    one-thread workers of one machine: a tree's sample is 9 x smallest rows; each machine decodes the whole array
    once (at the scale run's measured rate, when there is one), then every tree reads and fits its sample."""
    n = 9 * smallest
    tree = predict_fit(model, n, features) + model["read_seconds_per_value"] * n * features
    fill = rows / scale["fill_rows_per_second"] if scale else None
    return {"rows": rows, "smallest": smallest, "features": features, "trees": trees, "workers": workers,
            "sample_rows": n, "seconds_per_tree": tree, "fill_seconds": fill,
            "seconds": (fill or 0.0) + trees * tree / workers,
            "worker_bytes": n * features * 4 + rowcache.BATCH_BYTES,  # the float32 sample, and reading's batch
            "disk_bytes_per_machine": rows * features}


# ------------------------------------------------------------------------------------------------ report
def report(r: dict[str, Any]) -> str:
    s = r["seconds"]
    pt = r["per_tree"]
    lines = [f"train: BalancedRandomForestClassifier(random_state=42) on {r['rows']} x {r['features']} float32 "
             f"({fmt_bytes(r['x_bytes'])}) real patches, classes {r['classes']}; {r['repeats']} repeats, "
             f"median (min-max); load average at the end {r['load_average'][0]:.1f}", ""]
    lines.append(table([
        ("fit", "seconds", "peak RSS per process"),
        ("crystal_dask (forest.fit_forest): a task per tree, rows read from the decoded copy, 2 workers x 1 thread",
         fmt_stat(s["dask"]), ", ".join(f"{k} {fmt_bytes(v)}" for k, v in r["peak_rss"]["dask"].items())),
        ("  the same, first fit after emptying the decoded copy (every chunk decoded once)",
         f"{r['cold_seconds']:.2f}", ""),
        ("joblib default backend, n_jobs=2, one process, X in memory", fmt_stat(s["local"]),
         f"process {fmt_bytes(r['peak_rss']['local']['process'])}"),
        ("previous design: X broadcast to both workers, dask backend", fmt_stat(s["broadcast_fit"]),
         ", ".join(f"{k} {fmt_bytes(v)}" for k, v in r["peak_rss"]["broadcast_fit"].items())),
    ]))
    t = r["targets"]
    same = r["identical"]
    lines.append(f"\noverhead ratio dask / default backend (of medians): {r['ratios']['overhead']:.2f} "
                 f"(target <= {t['overhead']['target']:g}: {'met' if t['overhead']['met'] else 'MISSED'}); "
                 f"cold {r['ratios']['cold_overhead']:.2f}; of CPU seconds (every process of each side) "
                 f"{r['ratios']['overhead_cpu']:.2f} ({r['cpu_seconds']['dask']['median']:.2f} / "
                 f"{r['cpu_seconds']['local']['median']:.2f})")
    lines.append(_trees_line("per tree", pt))
    if r.get("scale"):
        sc = r["scale"]
        lines.append(f"\nscale: {sc['trees']} trees on {sc['rows']:,} x {sc['features']:,} window patches (classes "
                     f"{sc['classes']}): {sc['seconds']:.0f} s wall ({sc['fill_seconds']:.0f} s decoding the array "
                     f"once, {sc['forest_seconds']:.0f} s the forest: {sc['seconds_per_tree']:.1f} s per tree; "
                     f"target {TARGET_SCALE_SECONDS // 60} min: {'met' if sc['under_target'] else 'MISSED'}); "
                     f"load {sc['load_average'][0]:.1f}; peak "
                     + ", ".join(f"{k} {fmt_bytes(v)}" for k, v in sc["peak_rss"].items())
                     + f" (target: every process under 2 GiB: {'met' if sc['under_2gib'] else 'MISSED'}); the "
                     f"in-memory path would hold {fmt_bytes(sc['in_memory_bytes'])} as float32")
        lines.append(_trees_line("scale per tree", sc["per_tree"]))
        tc = sc["touched"]
        lines.append(f"chunks a tree touches (of {tc['chunks']}): {tc['as_stored']:.0f} with classes in blocks, "
                     f"{tc['shuffled']:.0f} with rows shuffled; decoding them per tree would cost "
                     f"{tc['as_stored'] * sc['fill_seconds_per_chunk']:.1f} s of one worker")
    m = r["cost_model"]
    f = m["fit"]
    lines.append(f"\ncost model (CPU seconds of one core): fit seconds = {f['c']:.3g} x "
                 f"rows^{f['rows_exponent']:.2f} x features^{f['features_exponent']:.2f} (grid of {len(m['grid'])} "
                 f"trees, worst off by {f['worst_ratio']:.2f}x); read seconds = {m['read_seconds_per_value']:.3g} x "
                 f"rows x features")
    for c in m["checks"]:
        lines.append(f"  {c['forest']}: {c['rows']} x {c['features']}: fit {c['fit_measured']:.2f} CPU s measured, "
                     f"{c['fit_predicted']:.2f} s predicted")
    z = r["sizing"]
    lines.append(f"sizing {z['rows']:,} rows x {z['features']:,}, smallest class {z['smallest']} ({z['sample_rows']} "
                 f"rows per tree), {z['trees']} trees on {z['workers']} workers: {z['seconds_per_tree']:.1f} s per "
                 f"tree, " + (f"{z['fill_seconds']:.0f} s decoding, " if z["fill_seconds"] is not None else "")
                 + f"{z['seconds'] / 60:.0f} min; {fmt_bytes(z['worker_bytes'])} per worker above its base, "
                 f"{fmt_bytes(z['disk_bytes_per_machine'])} of local disk per machine")
    lines.append(f"identical predictions on {same['rows_checked']} rows (training + held-out): predict "
                 f"{same['predict']}, predict_proba {same['predict_proba']}; bench took {r['total_seconds']:.0f} s")
    return "\n".join(lines)


def _trees_line(what: str, pt: dict[str, Any]) -> str:
    met = pt["read_share_max"] <= TARGET_READ_SHARE
    w, p = pt["worst"], pt["prepare"]
    return (f"{what} ({pt['trees']} trees of {pt['rows']} x {pt['features']}, on {pt['processes']} processes): draw "
            f"{pt['draw']:.3f} s, read {pt['read']:.3f} s, fit {pt['fit']:.3f} s (medians; CPU {pt['draw_cpu']:.3f} / "
            f"{pt['read_cpu']:.3f} / {pt['fit_cpu']:.3f} s); reading {pt['read_share']:.0%} of the time "
            f"({pt['read_share_cpu']:.0%} of the CPU), {pt['read_share_max']:.0%} in the worst tree "
            f"({pt['read_share_cpu_max']:.0%} of its CPU; target <= {TARGET_READ_SHARE:.0%}: "
            f"{'met' if met else 'MISSED'})\n  worst tree: #{w['tree']} of forest {w['forest']} (process {w['pid']}"
            f"{', its first tree of the forest' if w['first_on_process'] else ''}): draw {w['draw']:.3f} s, "
            f"read {w['read']:.3f} s, fit {w['fit']:.3f} s (CPU {w['draw_cpu']:.3f} / {w['read_cpu']:.3f} / "
            f"{w['fit_cpu']:.3f} s)\n"
            f"  before the trees, in the forest's time: each worker's sample buffer faulted in "
            f"({fmt_bytes(p['bytes'])} on each of {p['workers']} workers): {p['seconds']:.2f} s wall, "
            f"{p['cpu']:.2f} CPU s (slowest worker of these forests)")


# ------------------------------------------------------------------------------------------------ scale
def _fill(root: str, start: int, stop: int) -> None:
    """On a worker: decode rows [start, stop) into this machine's copy (reading them through it)."""
    from crystal_dask.forest import TrainingRows

    TrainingRows(root)(np.arange(start, stop))


def touched_chunks(y: np.ndarray, chunk: int, trees: int, rng: np.random.Generator | None = None) -> float:
    """Mean number of row chunks the first `trees` trees' samples touch (rows shuffled first when `rng`)."""
    from crystal_dask.forest import draw, tree_seeds

    position = np.arange(len(y)) if rng is None else rng.permutation(len(y))
    counts = []
    for _, sampler_seed in tree_seeds(trees, 42):
        sampler, _ = draw(y, sampler_seed)  # the rows fit_tree's sampler picks
        counts.append(len(np.unique(position[sampler.sample_indices_] // chunk)))
    return float(np.mean(counts))


def scale_layout(labels: np.ndarray, rows: int, smallest: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scale set made from source patches of classes `labels`: (source patch of each row, its augment variant,
    rows per class present). The source's rarest class gets `smallest` rows, the others share the rest in
    proportion to their source counts (at least `smallest` each). Classes lie in blocks of rows, as extract writes
    a region's windows side by side; a class's rows are its source patches, then their variants 1, 2, ... in turn,
    each keeping its patch's label (a user's augmented training set: no two rows with the same pixels and
    different labels)."""
    present, src_counts = np.unique(labels, return_counts=True)
    share = src_counts.astype(float)
    share[np.argmin(src_counts)] = 0
    counts = np.maximum(smallest, np.floor(share / share.sum() * (rows - smallest))).astype(np.int64)
    counts[np.argmin(src_counts)] = smallest
    counts[np.argmax(src_counts)] += rows - counts.sum()
    if counts.min() < smallest:
        raise ValueError(f"--scale-rows {rows} cannot give each of {len(present)} classes {smallest} rows")
    picks, variants = [], []
    for c, n in zip(present, counts, strict=True):
        members = np.flatnonzero(labels == c)
        copy = np.arange(n)
        picks.append(members[copy % len(members)])
        variants.append(copy // len(members))
    return np.concatenate(picks), np.concatenate(variants), counts


def _scale_run(work: Path, source, client, rows: int, smallest: int, trees: int,
               log: Callable[[str], None]) -> dict[str, Any]:
    """A forest on `rows` window patches in extract's format: `source`'s real patches and their augmented copies,
    each with its own patch's label (scale_layout), the smallest class `smallest` rows; the decoded copy filled
    first, then the forest; wall time, each tree's read and fit seconds and every process's peak memory."""
    from crystal_dask.bench.evaluate import tile_dataset
    from crystal_dask.forest import TrainingRows, fit_forest

    t0 = time.perf_counter()
    picks, variants, counts = scale_layout(source.labels(source.rows()["row"].to_numpy()), rows, smallest)
    ds = tile_dataset(source, work / f"scale-{rows}", rows, picks, variants)
    y = ds.labels(np.arange(rows))
    chunk = int(ds.group()["pixels"].chunks[0])
    touched = {"chunks": -(-rows // chunk), "as_stored": touched_chunks(y, chunk, 10),
               "shuffled": touched_chunks(y, chunk, 10, np.random.default_rng(0))}
    log(f"scale: {rows:,} rows ready in {time.perf_counter() - t0:.0f} s, classes {counts.tolist()} (up to "
        f"{int(variants.max()) + 1} variants of a patch), {trees} trees; "
        f"a tree touches {touched['as_stored']:.0f} of {touched['chunks']} chunks (load {_load()})")
    timings: list = []
    prepared: list = []
    with peaks(client) as pk:
        t0 = time.perf_counter()
        step = 8 * chunk  # tasks of 8 chunks: both workers decode, each chunk once
        client.gather(client.map(_fill, [str(ds.root)] * len(range(0, rows, step)), range(0, rows, step),
                                 [min(s + step, rows) for s in range(0, rows, step)], pure=False))
        fill = time.perf_counter() - t0
        log(f"scale: decoded copy filled in {fill:.0f} s (load {_load()})")
        fit_forest(TrainingRows(str(ds.root)), np.arange(rows), y, client, n_estimators=trees, timings=timings,
                   preparation=prepared)
        seconds = time.perf_counter() - t0
    log(f"scale: forest {seconds - fill:.0f} s (load {_load()})")
    return {"rows": rows, "features": 65536, "classes": counts.tolist(), "trees": trees, "seconds": seconds,
            "fill_seconds": fill, "forest_seconds": seconds - fill, "fill_rows_per_second": rows / fill,
            "fill_seconds_per_chunk": fill * 2 / touched["chunks"],  # 2 workers
            "seconds_per_tree": seconds / trees, "per_tree": tree_summary(timings, prepared), "touched": touched,
            "peak_rss": pk, "under_2gib": all(v < 2 * GIB for v in pk.values()),
            "under_target": seconds <= TARGET_SCALE_SECONDS, "load_average": list(os.getloadavg()),
            "in_memory_bytes": rows * 65536 * 4}
