"""`crystal-dask bench extract`: patches per second of crystal_dask's extraction on 1 and 2 workers, against
(a) the script a user would write with openslide-python (each region's bounding box read at level 0, PIL
greyscale and resize) and (b) the decode limit: only decoding, with imagecodecs, the JPEG tiles each patch
touches at the level crystal_dask reads it, in 1 process and split over 2 processes.

Everything runs on the same generated FCBR-like corpus in the same run, each measurement `repeats` times,
interleaved so that a noisy neighbour slows every contender alike. The baselines run in child processes with a
plain environment (not the one Dask's nanny gives its workers) so that their peak memory is their own; their
timers start after imports and loading, as crystal_dask's do (its workers are warm, its clusters already up).
"crystal_dask's rendering alone" runs the workers' per-patch code in such a plain process: the gap between it and
1 worker is what running inside a Dask worker costs.
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import json
import math
import pstats
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

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

WORKERS = (1, 2)
# on 2 workers: vs the competent Pool(2) script, vs fully decoding every touched tile on 2 processes, and the
# 1 -> 2 worker scaling (shown beside the machine's own: the decode limit's scaling in the same run)
TARGETS = {"vs_openslide_pool": 3.0, "vs_decode_limit": 1.0, "scaling": 1.8}
MAX_WORKER_MIB = 300


# ------------------------------------------------------------------------------------------ the user's script
def openslide_script(boxes: Sequence[tuple[str, int, int, int, int]], size: int = 256) -> np.ndarray:
    """The straightforward single-process script: for each (slide, x0, y0, x1, y1) read the box at level 0 with
    OpenSlide, convert to greyscale and resize with PIL, stack into one uint8 array."""
    import openslide

    patches = []
    slide, opened = None, None
    for path, x0, y0, x1, y1 in boxes:
        if path != opened:  # boxes come sorted by slide: open each slide once
            if slide is not None:
                slide.close()
            slide, opened = openslide.OpenSlide(path), path
        region = slide.read_region((x0, y0), 0, (x1 - x0, y1 - y0))
        patches.append(np.asarray(region.convert("L").resize((size, size))))
    if slide is not None:
        slide.close()
    return np.stack(patches)


def prepare_openslide(boxes: str, out: str) -> Callable[[], dict]:
    """Child process: run `openslide_script` over the boxes in a JSON file, save the patches as .npy."""
    import openslide  # noqa: F401  (imported before the timer starts, like the workers' modules)

    todo = [tuple(b) for b in json.loads(Path(boxes).read_text())]

    def work() -> dict:
        np.save(out, openslide_script(todo))
        return {"patches": len(todo)}

    return work


_POOL_HANDLES: dict[str, Any] = {}  # per pool process: one open OpenSlide per slide, kept for the whole run


def _pool_patch(box: tuple[str, int, int, int, int], size: int = 256) -> np.ndarray:
    """One patch as a competent user's pool worker makes it: cached handle, best level, PIL grey and resize."""
    import openslide

    path, x0, y0, x1, y1 = box
    slide = _POOL_HANDLES.get(path)
    if slide is None:
        slide = _POOL_HANDLES[path] = openslide.OpenSlide(path)
    level = slide.get_best_level_for_downsample(min(x1 - x0, y1 - y0) / size)
    ds = slide.level_downsamples[level]
    w, h = max(1, round((x1 - x0) / ds)), max(1, round((y1 - y0) / ds))
    region = slide.read_region((x0, y0), level, (w, h))
    return np.asarray(region.convert("L").resize((size, size)))


def openslide_pool_script(boxes: Sequence[tuple[str, int, int, int, int]], processes: int = 2) -> np.ndarray:
    """The script a competent user writes: multiprocessing.Pool(2) over the boxes (in slide order, in chunks so
    each process keeps to a few slides), one OpenSlide handle per slide per process, the best level for the
    downsample, PIL convert("L") and resize."""
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(processes) as pool:
        return np.stack(pool.map(_pool_patch, boxes, chunksize=max(1, len(boxes) // (4 * processes))))


def prepare_openslide_pool(boxes: str, out: str) -> Callable[[], dict]:
    """Child process: run `openslide_pool_script` over the boxes in a JSON file, save the patches as .npy."""
    import openslide  # noqa: F401

    todo = [tuple(b) for b in json.loads(Path(boxes).read_text())]

    def work() -> dict:
        np.save(out, openslide_pool_script(todo))
        return {"patches": len(todo)}

    return work


# ------------------------------------------------------------------------------------------ the decode limit
def touched_tiles(rows: Sequence[dict], settings) -> tuple[list[tuple[str, int, list[int]]], Counter]:
    """For each planned patch: (slide, level crystal_dask reads, indices of the tiles its box touches there),
    and how many patches each level serves. Boxes are mapped to level pixels as patches.read_grey does."""
    from crystal_dask.wsi.patches import choose_level
    from crystal_dask.wsi.slides import Slide

    out, levels = [], Counter()
    by_slide: dict[str, list[dict]] = {}
    for r in rows:
        by_slide.setdefault(r["slide"], []).append(r)
    for path, rs in by_slide.items():
        with Slide(path) as slide:
            info = slide.info()["levels"]
            for r in rs:
                level = choose_level(slide, r["wx1"] - r["wx0"], r["wy1"] - r["wy0"], settings)
                lv = info[level]
                if lv["tile"] is None or lv["compression"] != "JPEG":
                    raise ValueError(f"{path}: level {level} is not JPEG-tiled; the decode limit needs JPEG tiles")
                tw, th = lv["tile"]
                ds = lv["downsample"]
                lx0, ly0 = math.floor(r["wx0"] / ds), math.floor(r["wy0"] / ds)
                lx1, ly1 = min(math.ceil(r["wx1"] / ds), lv["width"]), min(math.ceil(r["wy1"] / ds), lv["height"])
                nx = math.ceil(lv["width"] / tw)
                tiles = [ty * nx + tx for ty in range(ly0 // th, (ly1 - 1) // th + 1)
                         for tx in range(lx0 // tw, (lx1 - 1) // tw + 1)]
                out.append((path, level, tiles))
                levels[level] += 1
    return out, levels


def split_work(items: list[tuple[str, int, list[int]]], parts: int) -> list[list[tuple[str, int, list[int]]]]:
    """Patches dealt to `parts` processes, largest first to the least loaded (balanced tile counts)."""
    out: list[list] = [[] for _ in range(parts)]
    load = [0] * parts
    for item in sorted(items, key=lambda it: -len(it[2])):
        k = load.index(min(load))
        out[k].append(item)
        load[k] += len(item[2])
    return out


def prepare_decode(tiles: str) -> Callable[[], dict]:
    """Child process: read the JPEG bytes of every listed tile into memory, then (timed) decode each one."""
    import imagecodecs
    import tifffile

    jobs = []
    for path, level, indices in json.loads(Path(tiles).read_text()):
        with tifffile.TiffFile(path) as tif:
            page = tif.series[0].levels[level].pages[0]  # the page crystal_dask's Slide reads for an SVS level
            # as tifffile decodes them for slides.py: Aperio's RGB-coded JPEG (no JFIF marker) stays RGB, YCbCr
            # becomes RGB
            colorspace = "RGB" if page.photometric == tifffile.PHOTOMETRIC.RGB and not page.is_jfif else None
            fh = tif.filehandle
            for i in indices:
                fh.seek(page.dataoffsets[i])
                jobs.append((fh.read(page.databytecounts[i]), page.jpegtables, colorspace))

    def work() -> dict:
        for data, tables, colorspace in jobs:
            imagecodecs.jpeg_decode(data, tables=tables, colorspace=colorspace, outcolorspace="RGB")
        return {"tiles": len(jobs)}

    return work


# ------------------------------------------------------------------------------------------ crystal_dask
def _warm() -> None:
    import crystal_dask.stages.extract  # noqa: F401  (the modules a task needs, loaded before the timer starts)


def render_all(rows: Sequence[dict], settings) -> None:
    """Render every planned patch in this process, each slide opened once, as extract_chunk does in a task."""
    from crystal_dask.wsi.patches import render_patch
    from crystal_dask.wsi.slides import Slide

    by_slide: dict[str, list[dict]] = {}
    for r in rows:
        by_slide.setdefault(r["slide"], []).append(r)
    for path, rs in by_slide.items():
        with Slide(path) as slide:
            for r in rs:
                render_patch(slide, (r["wx0"], r["wy0"], r["wx1"], r["wy1"]), settings, r["polygon"])


def prepare_render(rows: str, settings: dict) -> Callable[[], dict]:
    """Child process: crystal_dask's rendering of the planned rows (a JSON file) in one plain process, no Dask."""
    from crystal_dask.wsi.patches import PatchSettings

    todo, s = json.loads(Path(rows).read_text()), PatchSettings(**settings)

    def work() -> dict:
        render_all(todo, s)
        return {"patches": len(todo)}

    return work


def profile_render(rows: Sequence[dict], settings, top: int = 12) -> str:
    """cProfile of `render_all` in this process: the functions that cost the time, by own time."""
    prof = cProfile.Profile()
    prof.runcall(render_all, rows, settings)
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


# ------------------------------------------------------------------------------------------ the benchmark
CORPORA = {  # generate_corpus arguments of the two benchmark corpora
    "small": {"slide_size": (6000, 4000), "mpp": 0.5, "kind": "small"},
    "realistic": {"slide_size": (50000, 40000), "mpp": 0.25, "kind": "realistic"},  # AT2-like at 40x
}
MODES = {"default": {}, "level0": {"level": 0}}  # region mode at the default level, and at level 0 (published)


def run(work: Path, *, corpus_kind: str = "realistic", patients: int | None = None, slides_per_patient: int = 2,
        regions_per_slide: int = 14, slide_size: tuple[int, int] | None = None, chunk_rows: int = 32,
        repeats: int = 3, seed: int = 0, profile: bool = False, modes: Sequence[str] = ("default", "level0"),
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the extraction benchmark in `work`; return every number (see `report` for the table). The top-level
    numbers are those of the first mode; `modes` holds each mode's."""
    from crystal_dask.stages.scan import scan

    started = time.perf_counter()
    spec = CORPORA[corpus_kind]
    size = tuple(slide_size or spec["slide_size"])
    patients = patients or (18 if corpus_kind == "small" else 2)
    folder, manifest = corpus(work, flavour="fcbr", patients=patients, slides_per_patient=slides_per_patient,
                              regions_per_slide=regions_per_slide, crystalline=patients, slide_size=size,
                              seed=seed, mpp=spec["mpp"], **({"kind": spec["kind"]} if corpus_kind != "small" else {}))
    regions = scan(folder).regions
    log(f"corpus {folder} ({corpus_kind}): {manifest['counts']['slides']} slides, {regions.num_rows} regions "
        f"(ready in {time.perf_counter() - started:.0f} s)")
    results: dict[str, dict] = {}
    level0_script: dict[str, Any] = {}  # the level-0 OpenSlide script reads the same boxes in every mode: once
    for mode in modes:
        results[mode] = _run_mode(work / mode, folder, manifest, regions, MODES[mode], chunk_rows, repeats,
                                  profile, log, level0_script)
        results[mode]["corpus"] |= {"kind": corpus_kind, "slide_size": list(size)}
    first = results[modes[0]]
    return {**first, "mode": modes[0], "modes": results, "total_seconds": time.perf_counter() - started}


def _run_mode(work: Path, folder: Path, manifest: dict, regions, mode: dict, chunk_rows: int, repeats: int,
              profile: bool, log: Callable[[str], None], level0_script: dict[str, Any]) -> dict[str, Any]:
    from crystal_dask.stages.extract import extract, plan
    from crystal_dask.wsi.patches import PatchSettings

    started = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    settings = PatchSettings(chunk_rows=chunk_rows, **mode)
    rows, _ = plan(regions, settings)
    n = len(rows)
    tiles, levels = touched_tiles(rows, settings)
    log(f"mode {mode or 'default level'}: {n} patches, {sum(len(t) for _, _, t in tiles)} tiles touched; "
        f"levels read {dict(sorted(levels.items()))}")

    boxes = work / "boxes.json"
    boxes.write_text(json.dumps([[r["slide"], r["wx0"], r["wy0"], r["wx1"], r["wy1"]] for r in rows]))
    parts = []
    for k, part in enumerate(split_work(tiles, 2)):
        parts.append(work / f"tiles-2proc-{k}.json")
        parts[-1].write_text(json.dumps(part))
    whole = work / "tiles-1proc.json"
    whole.write_text(json.dumps(tiles))
    openslide_out, pool_out = work / "openslide.npy", work / "openslide-pool.npy"

    planned = work / "rows.json"
    planned.write_text(json.dumps(rows))
    seconds: dict[str, list[float]] = {k: [] for k in ("openslide", "openslide_pool", "decode_1proc", "decode_2proc",
                                                       "render_1proc", *(f"crystal_dask_{w}w" for w in WORKERS))}
    mem: dict[str, list[dict[str, int]]] = {k: [] for k in seconds}
    with contextlib.ExitStack() as stack:
        clients = {}
        for w in WORKERS:
            clients[w] = stack.enter_context(local_client(w))
            clients[w].run(_warm)
        for rep in range(repeats):
            if "seconds" in level0_script:  # measured in an earlier mode on the same boxes
                seconds["openslide"].append(level0_script["seconds"][rep])
                mem["openslide"].append(level0_script["mem"][rep])
                shutil.copyfile(level0_script["out"], openslide_out)
            else:
                _, (res,) = run_together("crystal_dask.bench.extract:prepare_openslide",
                                         [{"boxes": str(boxes), "out": str(openslide_out)}])
                seconds["openslide"].append(res.seconds)
                mem["openslide"].append({"script": res.peak_rss})
            _, (res,) = run_together("crystal_dask.bench.extract:prepare_openslide_pool",
                                     [{"boxes": str(boxes), "out": str(pool_out)}])
            seconds["openslide_pool"].append(res.seconds)
            mem["openslide_pool"].append({"script (parent)": res.peak_rss})
            _, (res,) = run_together("crystal_dask.bench.extract:prepare_decode", [{"tiles": str(whole)}])
            seconds["decode_1proc"].append(res.seconds)
            mem["decode_1proc"].append({"process": res.peak_rss})
            wall, results = run_together("crystal_dask.bench.extract:prepare_decode",
                                         [{"tiles": str(p)} for p in parts])
            seconds["decode_2proc"].append(wall)
            mem["decode_2proc"].append({f"process-{k}": r.peak_rss for k, r in enumerate(results)})
            _, (res,) = run_together("crystal_dask.bench.extract:prepare_render",
                                     [{"rows": str(planned), "settings": settings.as_dict()}])
            seconds["render_1proc"].append(res.seconds)
            mem["render_1proc"].append({"process": res.peak_rss})
            for w, client in clients.items():
                out = work / f"dataset-{w}w"
                shutil.rmtree(out, ignore_errors=True)
                with peaks(client) as pk:
                    t0 = time.perf_counter()
                    ds = extract(regions, out, settings, client)
                    seconds[f"crystal_dask_{w}w"].append(time.perf_counter() - t0)
                mem[f"crystal_dask_{w}w"].append(pk)
                if ds.read_manifest()["patches"] != n:
                    raise RuntimeError(f"{out}: extract wrote {ds.read_manifest()['patches']} patches, {n} planned")
            log(f"repeat {rep + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in seconds.items()))

    if "seconds" not in level0_script:
        level0_script.update(seconds=seconds["openslide"], mem=mem["openslide"], out=openslide_out)
    # both read the same boxes: their patches differ only by resampling (and level, where not 0)
    from crystal_dask.store.dataset import Dataset

    done = Dataset(work / f"dataset-{WORKERS[-1]}w")
    ours = done.group()["pixels"][:]
    diff = float(np.abs(ours.astype(np.int16) - np.load(openslide_out).astype(np.int16)).mean())
    diff_pool = float(np.abs(ours.astype(np.int16) - np.load(pool_out).astype(np.int16)).mean())
    read_levels = Counter(done.rows()["level"].to_pylist())

    rates = {k: rate(n, v) for k, v in seconds.items()}
    w1, w2 = (rates[f"crystal_dask_{w}w"] for w in WORKERS)
    ratios = {"vs_openslide": ratio(w2, rates["openslide"]), "vs_openslide_pool": ratio(w2, rates["openslide_pool"]),
              "vs_decode_limit": ratio(w2, rates["decode_2proc"]),
              "vs_decode_limit_1proc": ratio(w1, rates["decode_1proc"]), "scaling": ratio(w2, w1),
              "decode_scaling": ratio(rates["decode_2proc"], rates["decode_1proc"]),
              "worker_vs_plain_process": ratio(w1, rates["render_1proc"])}
    peak = merge_peaks(mem["crystal_dask_2w"])
    worker_mib = max(v for k, v in peak.items() if k.startswith("worker")) / 2**20
    targets = {k: {"target": t, "met": ratios[k] >= t} for k, t in TARGETS.items()}
    targets["worker_mib"] = {"target": MAX_WORKER_MIB, "met": worker_mib <= MAX_WORKER_MIB, "value": worker_mib}
    result = {
        "bench": "extract", "repeats": repeats, "patches": n,
        "corpus": {"root": str(folder), **{k: manifest["counts"][k] for k in ("slides", "regions")},
                   "tiles_touched": sum(len(t) for _, _, t in tiles),
                   "levels_read": {str(k): v for k, v in sorted(read_levels.items())}},
        "settings": settings.as_dict(),
        "seconds": {k: Stat(tuple(v)).as_dict() for k, v in seconds.items()},
        "patches_per_s": {k: v.as_dict() for k, v in rates.items()},
        "ratios": ratios,
        "targets": targets,
        "peak_rss": {k: merge_peaks(v) for k, v in mem.items()},
        "pixel_mean_abs_diff_vs_openslide": diff,
        "pixel_mean_abs_diff_vs_openslide_pool": diff_pool,
        "total_seconds": time.perf_counter() - started,
    }
    if profile:
        result["profile"] = profile_render(rows, settings)
    return result


_LABELS = {
    "openslide": "openslide script (1 process, level 0)",
    "openslide_pool": "openslide Pool(2) script (handle cache, best level)",
    "decode_1proc": "decode limit, 1 process",
    "decode_2proc": "decode limit, 2 processes",
    "render_1proc": "crystal_dask's rendering alone, 1 plain process",
    "crystal_dask_1w": "crystal_dask, 1 worker",
    "crystal_dask_2w": "crystal_dask, 2 workers",
}


def report(r: dict[str, Any]) -> str:
    """The benchmark's tables, one per mode: medians with (min-max) over the repeats, the ratios, peak memory."""
    return "\n\n".join(_report_mode(name, m) for name, m in r.get("modes", {r.get("mode", ""): r}).items()) + (
        f"\n\nbench took {r['total_seconds']:.0f} s")


def _report_mode(name: str, r: dict[str, Any]) -> str:
    c = r["corpus"]
    lines = [f"extract [{name}]: {r['patches']} patches (region mode, level {r['settings']['level']}, "
             f"{r['settings']['chunk_rows']} per task) from {c['regions']} regions on {c['slides']} generated "
             f"FCBR-like slides ({c.get('kind', 'small')} corpus) of up to {c['slide_size'][0]}x{c['slide_size'][1]} "
             f"px; crystal_dask read levels {c['levels_read']} (patches per level); {c['tiles_touched']} JPEG tiles "
             f"touched; {r['repeats']} repeats, median (min-max)", ""]
    rows = [("contender", "seconds", "patches/s", "peak RSS per process")]
    for k, label in _LABELS.items():
        s, p = r["seconds"][k], r["patches_per_s"][k]
        mem = ", ".join(f"{name} {fmt_bytes(v)}" for name, v in r["peak_rss"][k].items())
        rows.append((label, fmt_stat(s), fmt_stat(p), mem))
    lines.append(table(rows))
    t = r["targets"]
    q = r["ratios"]
    lines += ["", table([
        ("ratio (of medians)", "value", "target"),
        ("crystal_dask 2 workers / openslide Pool(2) script", f"{q['vs_openslide_pool']:.2f}x",
         _target(t["vs_openslide_pool"])),
        ("crystal_dask 2 workers / openslide script", f"{q['vs_openslide']:.2f}x", ""),
        ("crystal_dask 2 workers / decode limit on 2 processes", f"{q['vs_decode_limit']:.2f}",
         _target(t["vs_decode_limit"])),
        ("crystal_dask 1 worker / decode limit on 1 process", f"{q['vs_decode_limit_1proc']:.2f}", ""),
        ("scaling: crystal_dask 2 workers / 1 worker", f"{q['scaling']:.2f}x", _target(t["scaling"])),
        ("scaling of the decode limit, 2 / 1 process (the machine's)", f"{q['decode_scaling']:.2f}x", ""),
        ("crystal_dask 1 worker / its rendering alone in a plain process", f"{q['worker_vs_plain_process']:.2f}", ""),
        ("peak RSS of a crystal_dask worker (MiB)", f"{t['worker_mib']['value']:.0f}", f"<= {MAX_WORKER_MIB}: "
         f"{'met' if t['worker_mib']['met'] else 'MISSED'}"),
    ])]
    lines.append(f"\nmean |crystal_dask - openslide| per pixel: {r['pixel_mean_abs_diff_vs_openslide']:.1f} grey "
                 f"levels (level 0 script), {r['pixel_mean_abs_diff_vs_openslide_pool']:.1f} (Pool script); same "
                 f"boxes, resampling differs")
    if "profile" in r:
        lines += ["", "where a worker's time goes (cProfile of rendering every patch in one process):", r["profile"]]
    return "\n".join(lines)


def _target(t: dict[str, Any]) -> str:
    return f">= {t['target']:g}: {'met' if t['met'] else 'MISSED'}"
