"""Stage extract: a Dask bag of chunk-aligned groups of patches -> a patch dataset (store/dataset.py).

Each task owns whole zarr chunks (zarr 3 has no synchronizer), opens its slides itself, and leaves a done-marker
holding its rows' outcome. A rerun skips chunks with markers; a change of plan or settings discards them all.
The zarr rows follow the plan, so the bytes do not depend on the number of workers or on task order.
Outputs: <out>/datasets/<corpus>/ (the dataset format), complete once its manifest extract.json exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from crystal_dask.experiment import Experiment
from crystal_dask.runtime.allocator import roomy_malloc
from crystal_dask.runtime.tasks import resumable, run_remaining
from crystal_dask.stages import scan
from crystal_dask.stages.base import Context, Step
from crystal_dask.store.dataset import FORMAT_VERSION, PIXELS, ROW_ARRAYS, Dataset
from crystal_dask.store.integrity import check_chunk
from crystal_dask.store.schema import PATCHES, REGIONS, REJECTS, conform, make_table, reject_row
from crystal_dask.vocab import CLASSES, SPLITS
from crystal_dask.wsi.patches import PatchSettings, plan_windows, render_patch
from crystal_dask.wsi.slide_cache import cached_slide, close_stage
from crystal_dask.wsi.slides import SlideError

if TYPE_CHECKING:
    from distributed import Client

EXTRACT_ARRAYS = (PIXELS, *ROW_ARRAYS)  # the arrays this stage writes (and checks); later stages may add more
_PLAN_KEYS = [f.name for f in PATCHES if f.name not in ("row", "level", "downsample")]
NAME = "extract"
log = logging.getLogger("crystal_dask.pipeline")


# ----------------------------------------------------------------------------------------------- the plan
def plan(regions: pa.Table, s: PatchSettings) -> tuple[list[dict], list[dict]]:
    """Patch rows in dataset order (PATCHES fields but row/level/downsample, plus the polygon) and rejects."""
    regions = conform(regions, REGIONS, "regions table")
    rows, rejects = [], []
    for r in regions.to_pylist():
        base = {k: r[k] for k in _PLAN_KEYS if k in r} | {"polygon": (r["polygon_x"], r["polygon_y"])}
        if s.mode == "region":
            rows.append(base | {"wx0": r["x0"], "wy0": r["y0"], "wx1": r["x1"], "wy1": r["y1"], "overlap": 1.0})
            continue
        windows, reason = plan_windows(r, s)
        if not windows:
            rejects.append(reject_row(NAME, r["annotation"], f"region {r['region_id']}", reason, r["region_id"]))
        for wx0, wy0, wx1, wy1, overlap in windows:
            rows.append(base | {"wx0": wx0, "wy0": wy0, "wx1": wx1, "wy1": wy1, "overlap": overlap})
    return rows, rejects


def plan_hash(rows: list[dict], s: PatchSettings) -> str:
    """Identity of what the dataset will hold: settings, format version, every planned row as the patch table will
    have it, and each slide file's size and mtime (a regenerated slide is read again)."""
    h = hashlib.sha256(json.dumps({"v": FORMAT_VERSION, "settings": s.as_dict()}, sort_keys=True).encode())
    files: dict[str, list[int]] = {}
    for r in rows:
        if r["slide"] not in files:
            p = Path(r["slide"])
            files[r["slide"]] = [(st := p.stat()).st_size, st.st_mtime_ns] if p.exists() else [-1, -1]
        h.update(json.dumps([r.get(k) for k in _PLAN_KEYS] + files[r["slide"]]
                            + [r["polygon"] if s.mask_outside else None], default=str).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- the tasks
@resumable
def extract_chunk(task: dict) -> dict:
    """Render one chunk of patches on a worker and write its whole zarr chunks (then its done-marker)."""
    roomy_malloc(task["stage"])
    s = PatchSettings(**task["settings"])
    rows = task["rows"]
    n, p = len(rows), s.patch_size
    pixels = np.zeros((n, p, p), dtype=np.uint8)
    label = np.full(n, -1, dtype=np.int16)
    outcome: list[dict] = []
    by_slide: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_slide[r["slide"]].append(i)
    results: dict[int, dict] = {}
    for path, idx in by_slide.items():
        held = contextlib.ExitStack()
        try:  # open across the stage's tasks on this worker
            slide = held.enter_context(cached_slide(path, task["stage"]))
        except SlideError as exc:
            results |= {i: {"reject": f"slide unreadable: {exc}"} for i in idx}
            continue
        with held:
            for i in idx:
                r = rows[i]
                try:
                    pixels[i], level = render_patch(slide, (r["wx0"], r["wy0"], r["wx1"], r["wy1"]), s, r["polygon"])
                except (SlideError, ValueError, OSError, MemoryError) as exc:
                    results[i] = {"reject": f"{type(exc).__name__}: {exc}"}
                    continue
                label[i] = CLASSES.index(r["cls"])
                results[i] = {"level": level, "downsample": slide.levels[level].downsample}
    for i in range(n):
        outcome.append({"row": task["start"] + i, **results[i]})
    valid = label >= 0
    crystal = np.array([r["crystal"] for r in rows], dtype=bool) & valid
    split = np.array([SPLITS.index(r["split"]) for r in rows], dtype=np.int8)
    written = Dataset(task["dataset"]).write_rows(task["start"], {PIXELS: pixels, "label": label, "crystal": crystal,
                                                                 "split": split})
    # the marker records each chunk file's size and hash: a rerun redoes a chunk whose files no longer match
    return {"chunk": task["chunk"], "rows": outcome, "files": written}


# ----------------------------------------------------------------------------------------------- the run
def extract(
    regions: pa.Table,
    out: str | Path,
    settings: PatchSettings,
    client: Client,
    *,
    scan_rejects: pa.Table | None = None,
    show_progress: Callable[[list], None] | None = None,
) -> Dataset:
    """Extract every planned patch into <out>; resumes where a previous run of the same plan stopped."""
    ds = Dataset(Path(out))
    ds.root.mkdir(parents=True, exist_ok=True)
    rows, rejects = plan(regions, settings)
    digest = plan_hash(rows, settings)
    if ds.complete() and ds.read_manifest().get("plan_hash") == digest:
        damage = ds.verify(EXTRACT_ARRAYS) if ds.checksums.exists() else ["no checksums.json (an older dataset)"]
        if not damage:
            return ds
        log.warning("extract %s: %d damaged chunk(s), re-extracting them: %s", ds.root, len(damage),
                    "; ".join(map(str, damage[:5])))
        ds.manifest.unlink(missing_ok=True)  # incomplete until the damaged chunks are written again
    c, p = settings.chunk_rows, settings.patch_size
    markers = ds.create(len(rows), settings.as_dict(), digest, c, {PIXELS: ((p, p), "uint8")})
    tasks = [
        {"chunk": k, "start": start, "rows": rows[start:start + c], "settings": settings.as_dict(),
         "dataset": str(ds.root), "marker": str(markers / f"chunk-{k:06d}.json")}
        for k, start in enumerate(range(0, len(rows), c))
    ]
    # a chunk is done only while its files are as its marker recorded them; the workers' cached slides are closed
    # with the stage
    results, chunks_run = run_remaining(client, extract_chunk, tasks, show_progress, stage=NAME,
                                        usable=lambda done: not _damaged(ds, done), then_on_workers=close_stage)

    patches, checksums = [], {}
    for t, done in zip(tasks, results, strict=True):
        checksums |= done["files"]
        for r, o in zip(t["rows"], done["rows"], strict=True):
            if "reject" in o:
                rejects.append(reject_row(NAME, r["annotation"], f"region {r['region_id']}", o["reject"],
                                          r["region_id"]))
            else:
                patches.append({k: r[k] for k in _PLAN_KEYS} | o)
    all_rejects = make_table(REJECTS, rejects)
    if scan_rejects is not None:
        all_rejects = pa.concat_tables([conform(scan_rejects, REJECTS, "scan rejects"), all_rejects])
    n_regions = regions.num_rows
    placed = len({(p["slide"], p["region_id"]) for p in patches})
    manifest = {
        "plan_hash": digest, "settings": settings.as_dict(), "format_version": FORMAT_VERSION,
        "patches": len(patches), "planned": len(rows), "regions_in": n_regions, "regions_written": placed,
        "rejects_extract": len(rejects), "rejects_total": all_rejects.num_rows, "chunks": len(tasks),
        "chunks_run": chunks_run,
    }
    ds.finish(make_table(PATCHES, patches), all_rejects, manifest, checksums)
    return ds


def _damaged(ds: Dataset, done: dict) -> bool:
    """Whether a done-marker's chunk files are missing or differ from what it recorded (or it recorded none)."""
    if "files" not in done:
        return True
    return any(check_chunk(ds.zarr, key, rec, full=True) for key, rec in done["files"].items())


# ----------------------------------------------------------------------------------------------- the stage
def dataset(exp: Experiment, corpus: str) -> Dataset:
    """The dataset this stage makes of `corpus` (its step's product)."""
    return Dataset(exp.out / "datasets" / corpus)


def steps(ctx: Context) -> Iterator[Step]:
    exp = ctx.experiment
    for c in exp.corpora.values():
        ds = dataset(exp, c.name)
        reads = (f"{scan.NAME}:{c.name}",)

        def run(c=c, ds=ds, reads=reads) -> None:
            scanned = scan.read_output(ctx.output(reads[0]))
            extract(scanned.regions, ds.root, c.extract, ctx.client, scan_rejects=scanned.rejects,
                    show_progress=ctx.show_progress)
            log.info("extract %s: %s", c.name, json.dumps(ds.read_manifest()))

        # every chunk's hash, checked before the step may be skipped (xxh3: the cost of reading the files)
        yield Step(f"{NAME}:{c.name}", reads, {"extract": c.extract.as_dict(), "format_version": FORMAT_VERSION},
                   (ds.manifest, ds.checksums), run, damage=lambda ds=ds: ds.verify(EXTRACT_ARRAYS), product=ds)
