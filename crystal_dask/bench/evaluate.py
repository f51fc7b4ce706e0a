"""`crystal-dask bench evaluate`: crystal_dask.stages.evaluate on a full-TUBR-scale set (46,666 x 256 x 256 uint8 by
default) on a 2-worker LocalCluster, against predicting the same set loaded whole into memory with plain
scikit-learn (crystal_dask.stages.evaluate.predict_in_memory, in a child process so its peak memory is its own).

The set is written straight into extract's output format (patches.zarr made by extract's own prepare_dataset, plus
patches.parquet, rejects.parquet and extract.json), its pixels cycling through the real patches of a small
extracted corpus, all in the `eval` split. The model is trained on that small corpus. The two contenders must
predict the same classes.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa

from crystal_dask.bench.common import (
    MIB,
    Stat,
    fmt_bytes,
    fmt_stat,
    merge_peaks,
    patch_dataset,
    peaks,
    rate,
    ratio,
    run_together,
    table,
)
from crystal_dask.runtime.cluster import local_client
from crystal_dask.vocab import EVAL_SPLITS

TUBR_ROWS = 46_666
TARGET_PEAK = 2 * 1024**3  # bytes, per process


AUGMENT_SHIFT = 8  # px: the step of augment's circular shifts
VARIANTS = 8 * 9  # augment's distinct variants: the square's 8 symmetries x 9 shifts


def augment(patches: np.ndarray, variants: np.ndarray) -> np.ndarray:
    """Patches (n, p, p) turned as a user's training augmentation turns them: variant v = 8 s + d is the square's
    symmetry d (rotated d % 4 quarter turns, mirrored first when d >= 4) shifted circularly by (s // 3, s % 3) x
    AUGMENT_SHIFT px, s in 0..8; variant 0 is the patch itself, and variants repeat after VARIANTS."""
    out = np.empty_like(patches)
    for i, v in enumerate(np.asarray(variants) % VARIANTS):
        d, s = int(v) % 8, int(v) // 8
        turned = np.rot90(patches[i, :, ::-1] if d >= 4 else patches[i], d % 4)
        out[i] = np.roll(turned, (s // 3 * AUGMENT_SHIFT, s % 3 * AUGMENT_SHIFT), axis=(0, 1))
    return out


def tile_dataset(source, out: Path, rows: int, picks: np.ndarray | None = None, variants: np.ndarray | None = None):
    """A Dataset of `rows` patches in extract's output format made from `source`'s extracted patches, every row in
    the `eval` split: row i is source patch `picks[i]` (a position in source.rows(); default: cycling through
    them), its pixels turned by `augment` variant `variants[i]` (default 0: as extracted), its label and metadata
    the source patch's. Reused when `out` already holds the same one."""
    from crystal_dask.store.dataset import FORMAT_VERSION, PIXELS, Dataset
    from crystal_dask.store.schema import REJECTS, make_table
    from crystal_dask.vocab import CLASSES, SPLITS

    src_manifest = source.read_manifest()
    meta = source.rows()
    src_rows = meta["row"].to_numpy()
    picks = np.arange(rows) % len(src_rows) if picks is None else np.asarray(picks, dtype=np.int64)
    variants = np.zeros(rows, np.int64) if variants is None else np.asarray(variants, dtype=np.int64)
    if picks.shape != (rows,) or variants.shape != (rows,):
        raise ValueError(f"picks and variants need one entry per row ({rows}); got {picks.shape}, {variants.shape}")
    layout = hashlib.sha256(picks.tobytes() + variants.tobytes()).hexdigest()
    digest = hashlib.sha256(f"tiled:{src_manifest['plan_hash']}:{rows}:{layout}".encode()).hexdigest()
    ds = Dataset(Path(out))
    if ds.complete() and ds.read_manifest().get("plan_hash") == digest:
        return ds
    ds.root.mkdir(parents=True, exist_ok=True)
    settings = src_manifest["settings"]
    pixels = source.matrix(src_rows)
    labels = np.array([CLASSES.index(c) for c in meta["cls"].to_pylist()], dtype=np.int16)
    crystal = meta["crystal"].to_numpy(zero_copy_only=False)

    c, p = settings["chunk_rows"], settings["patch_size"]
    ds.create(rows, settings, digest, c, {PIXELS: ((p, p), "uint8")})
    checksums = {}
    for start in range(0, rows, c):  # whole chunks, as extract's tasks write them
        idx = picks[start:start + c]
        turned = augment(pixels[idx].reshape(len(idx), p, p), variants[start:start + c])
        checksums |= ds.write_rows(start, {PIXELS: turned, "label": labels[idx], "crystal": crystal[idx],
                                           "split": np.full(len(idx), SPLITS.index("eval"), np.int8)})
    table_ = meta.take(pa.array(picks))
    table_ = table_.set_column(table_.schema.get_field_index("row"), "row", pa.array(np.arange(rows), pa.int64()))
    table_ = table_.set_column(table_.schema.get_field_index("split"), "split", pa.array(["eval"] * rows))
    manifest = {"plan_hash": digest, "settings": settings, "format_version": FORMAT_VERSION,
                "patches": rows, "planned": rows, "regions_in": src_manifest["regions_in"],
                "regions_written": src_manifest["regions_written"], "rejects_extract": 0, "rejects_total": 0,
                "chunks": -(-rows // c), "chunks_run": -(-rows // c), "tiled_from": str(source.root)}
    ds.finish(table_, make_table(REJECTS, []), manifest, checksums)
    return ds


def predict_in_memory(dataset: str | Path, model_path: str | Path, splits=EVAL_SPLITS) -> np.ndarray:
    """The baseline: load the set whole and predict with plain scikit-learn in one process."""
    from crystal_dask.stages.evaluate import evaluation_rows
    from crystal_dask.store.dataset import Dataset
    from crystal_dask.store.models import load_model

    ds = Dataset(Path(dataset))
    X = ds.matrix(evaluation_rows(ds.rows(), splits))
    model = load_model(Path(model_path))
    model.n_jobs = 2
    return model.predict(X)


def prepare_in_memory(dataset: str, model: str, out: str) -> Callable[[], dict]:
    """Child process: predict_in_memory over the whole `eval` split (load + predict timed), save the classes."""
    def work() -> dict:
        y = predict_in_memory(dataset, model, splits=EVAL_SPLITS)
        np.save(out, y)
        return {"rows": int(len(y))}

    return work


def in_memory_need(rows: int) -> int:
    """Bytes predict_in_memory holds at its peak: the uint8 set plus the forest's float32 copy, and ~0.5 GiB."""
    return rows * 256 * 256 * 5 + 512 * MIB


def _warm() -> None:
    import crystal_dask.stages.evaluate  # noqa: F401  (loaded before the timer starts)


def run(work: Path, *, rows: int = TUBR_ROWS, source_rows: int = 2000, memory_limit: str = "4GiB",
        repeats: int = 3, seed: int = 0, in_memory: bool = True, slide_size: tuple[int, int] = (6000, 4000),
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the evaluation benchmark in `work` (source patches from generated slides of `slide_size`); return every
    number (see `report`)."""
    import pyarrow.parquet as pq

    from crystal_dask.stages.evaluate import evaluate
    from crystal_dask.stages.train import TrainConfig, train

    started = time.perf_counter()
    seconds: dict[str, list[float]] = {"crystal_dask": [], "in_memory": []}
    mem: dict[str, list[dict[str, int]]] = {"crystal_dask": [], "in_memory": []}
    skipped = None
    with local_client(2, memory_limit) as client:
        client.run(_warm)
        source = patch_dataset(work, client, source_rows, seed, slide_size)
        model = work / "model.skops"
        train(source.root, TrainConfig("baseline"), model, client)
        t0 = time.perf_counter()
        big = tile_dataset(source, work / f"tiled-{rows}", rows)
        disk = sum(p.stat().st_size for p in big.zarr.rglob("*") if p.is_file())
        log(f"set {big.root}: {rows} x 256 x 256 uint8 ({fmt_bytes(rows * 65536)}; {fmt_bytes(disk)} on disk as "
            f"zstd zarr) from {source.read_manifest()['patches']} real patches, written in "
            f"{time.perf_counter() - t0:.0f} s (ready in {time.perf_counter() - started:.0f} s)")
        baseline_out = work / "in_memory.npy"
        for rep in range(repeats):
            out = work / "evaluation"
            shutil.rmtree(out, ignore_errors=True)
            with peaks(client) as pk:
                t0 = time.perf_counter()
                summary = evaluate(big.root, model, out, client, splits=EVAL_SPLITS)
                seconds["crystal_dask"].append(time.perf_counter() - t0)
            mem["crystal_dask"].append(pk)
            if summary["n"] != rows:
                raise RuntimeError(f"{out}: evaluate predicted {summary['n']} rows, {rows} expected")
            if in_memory and skipped is None:
                need, free = in_memory_need(rows), psutil.virtual_memory().available
                if free < need * 1.1:
                    skipped = (f"predict_in_memory needs ~{fmt_bytes(need)} and only {fmt_bytes(free)} is available:"
                               " not run (use --rows to compare on a smaller set)")
                else:
                    _, (res,) = run_together("crystal_dask.bench.evaluate:prepare_in_memory", [
                        {"dataset": str(big.root), "model": str(model), "out": str(baseline_out)}])
                    seconds["in_memory"].append(res.seconds)
                    mem["in_memory"].append({"process": res.peak_rss})
            log(f"repeat {rep + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in seconds.items() if v))
    ours = pq.read_table(out / "predictions.parquet", columns=["y_pred"])["y_pred"].to_numpy()
    identical = bool(np.array_equal(ours, np.load(baseline_out))) if seconds["in_memory"] else None

    done = {k: v for k, v in seconds.items() if v}
    rates = {k: rate(rows, v) for k, v in done.items()}
    peak = merge_peaks(mem["crystal_dask"])
    result = {
        "bench": "evaluate", "repeats": repeats, "rows": rows, "set_bytes": rows * 65536, "zarr_bytes": disk,
        "source_patches": source.read_manifest()["patches"], "memory_limit": memory_limit,
        "seconds": {k: Stat(tuple(v)).as_dict() for k, v in done.items()},
        "patches_per_s": {k: v.as_dict() for k, v in rates.items()},
        "ratios": {"speed_vs_in_memory": ratio(rates["crystal_dask"], rates["in_memory"])} if "in_memory" in rates
        else {},
        "targets": {"peak_rss": {"target": TARGET_PEAK, "met": max(peak.values()) <= TARGET_PEAK}},
        "peak_rss": {k: merge_peaks(v) for k, v in mem.items() if v},
        "identical_predictions": identical, "in_memory_skipped": skipped,
        "total_seconds": time.perf_counter() - started,
    }
    return result


def report(r: dict[str, Any]) -> str:
    lines = [f"evaluate: {r['rows']} x 256 x 256 uint8 ({fmt_bytes(r['set_bytes'])}, {fmt_bytes(r['zarr_bytes'])} "
             f"zstd zarr) cycling {r['source_patches']} real patches; LocalCluster 2 workers x 1 thread, "
             f"memory_limit {r['memory_limit']}; {r['repeats']} repeats, median (min-max)", ""]
    rows = [("contender", "seconds", "patches/s", "peak RSS per process")]
    labels = {"crystal_dask": "crystal_dask.stages.evaluate (2 workers)",
              "in_memory": "predict_in_memory (whole set, scikit-learn n_jobs=2)"}
    for k, label in labels.items():
        if k in r["seconds"]:
            rows.append((label, fmt_stat(r["seconds"][k]), fmt_stat(r["patches_per_s"][k]),
                         ", ".join(f"{n} {fmt_bytes(v)}" for n, v in r["peak_rss"][k].items())))
    lines.append(table(rows))
    t = r["targets"]["peak_rss"]
    worst = max(r["peak_rss"]["crystal_dask"].values())
    lines.append(f"\ncrystal_dask's largest process peak: {fmt_bytes(worst)} (target <= {fmt_bytes(t['target'])}: "
                 f"{'met' if t['met'] else 'MISSED'})")
    if r["ratios"]:
        lines.append(f"speed crystal_dask / in-memory (of medians): {r['ratios']['speed_vs_in_memory']:.2f}x; "
                     f"identical predictions: {r['identical_predictions']}")
    if r["in_memory_skipped"]:
        lines.append(f"in-memory baseline: {r['in_memory_skipped']}")
    lines.append(f"bench took {r['total_seconds']:.0f} s")
    return "\n".join(lines)
