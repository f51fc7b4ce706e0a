"""`crystal-dask bench infer`: windows per second of whole-slide inference (`infer_slides`: tissue, windows,
exports) on 1 and 2 workers, in one run against
  (a) the script a competent user would write: OpenSlide under `multiprocessing.Pool(2)`, its tissue mask from
      `get_thumbnail` (Otsu on saturation), one slide handle per process, each window read with `read_region` at
      `get_best_level_for_downsample`, PIL grey and resize to 256, the model loaded once per process (skops; inside
      the timer, as infer's load and broadcast are) and one `predict_proba` per chunk of windows;
  (b) the decode limit: only decoding, once each, the JPEG tiles crystal_dask's tissue windows touch at the level
      it reads them, split over 2 processes.
A pixel model and a feature model (stain + texture + calcification) are both run; the per-window cost of the
steps (rendering, features, predict) is measured on its own on one block. Also every process's peak memory and
the compute time of each kind of task (model load, tissue, windows, the two PNGs, export).

The slides are realistic in size, generated here from a tile iterator (`big_slide`): a 40,000 x 30,000 px Aperio
-style pyramid is mostly one repeated glass tile with an ellipse of tissue tiles drawn from a small pool, so it
is written in seconds and never held in memory. The models come from the project's own path (`bench_models`): a
generated corpus extracted into 256 px windows, its feature families computed, each model fitted by the train
stage; inference is told to use 500 px windows, as the script does.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import shutil
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crystal_dask.bench.common import (
    Stat,
    fmt_bytes,
    fmt_stat,
    merge_peaks,
    patch_dataset,
    peak_rss,
    peaks,
    rate,
    ratio,
    run_together,
    table,
)

TARGETS = {"vs_script": 2.0, "vs_decode_limit": 0.7, "scaling": 1.7}
MAX_PEAK = 1.5 * 1024**3  # bytes, every process
SIZE = 500  # window side and step in level-0 px, for every contender
FAMILIES = ("stain", "texture", "calcification")
CONTENDERS = ("script", "decode_1proc", "decode_2proc", "crystal_dask_1w", "crystal_dask_2w",
              "crystal_dask_2w_features")


# ------------------------------------------------------------------------------------------ the slides
def _tissue_pool(rng: np.random.Generator, tile: int, n: int) -> list[np.ndarray]:
    """n H&E-like tiles: pink stroma with purple nuclei blobs (smoothed noise), each different."""
    from scipy import ndimage as ndi

    out = []
    for _ in range(n):
        h = ndi.gaussian_filter(rng.random((tile, tile)), 3)
        nuclei = (h > np.quantile(h, 0.8)).astype(np.float32)
        e = ndi.gaussian_filter(rng.random((tile, tile)), 6)
        base = np.stack([225 - 20 * e, 160 - 30 * e, 195 - 15 * e], -1)
        purple = np.array([95.0, 60.0, 150.0])
        rgb = base * (1 - nuclei[..., None]) + purple * nuclei[..., None] + rng.normal(0, 6, (tile, tile, 3))
        out.append(np.clip(rgb, 0, 255).astype(np.uint8))
    return out


def big_slide(path: str | Path, width: int = 40_000, height: int = 30_000, *, tissue: float = 0.3, seed: int = 0,
              tile: int = 256, quality: int = 80, mpp: float = 0.25, downsamples: Sequence[int] = (1, 4, 16, 64),
              pool: int = 12) -> Path:
    """Write an Aperio-style JPEG-tiled pyramid of any size from a tile iterator: glass everywhere but an ellipse
    covering about `tissue` of the slide, whose level-0 tiles come from a pool of `pool` tissue tiles. Lower levels
    are composed from the pool's downsampled tiles. Nothing larger than one tile of each level is held."""
    import tifffile

    from crystal_dask.synthetic.slide_writer import _RGB_JPEG, APERIO_HEADER, _encode, _split_tables, downsample

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tiles = [np.clip(np.full((tile, tile, 3), 242.0) + rng.normal(0, 2, (tile, tile, 3)), 0, 255).astype(np.uint8)]
    tiles += _tissue_pool(rng, tile, pool)  # id 0 is glass, 1.. tissue
    nx, ny = math.ceil(width / tile), math.ceil(height / tile)
    alpha = math.sqrt(4 * tissue / math.pi)  # an ellipse of semi-axes alpha * (W/2, H/2) covers `tissue`
    cx, cy = (np.arange(nx) + 0.5) * tile / width - 0.5, (np.arange(ny) + 0.5) * tile / height - 0.5
    inside = (cx[None, :] / (alpha / 2)) ** 2 + (cy[:, None] / (alpha / 2)) ** 2 <= 1
    ids = np.where(inside, rng.integers(1, len(tiles), (ny, nx)), 0)
    tables, _ = _split_tables(_encode(tiles[0], quality))

    def stream(img: np.ndarray) -> bytes:
        t, s = _split_tables(_encode(np.ascontiguousarray(img), quality))
        return s if t == tables else _encode(np.ascontiguousarray(img), quality)

    level0 = [stream(t) for t in tiles]

    def level_tiles(d: int) -> Iterator[bytes]:
        if d == 1:
            for k in ids.ravel():
                yield level0[k]
            return
        small = [downsample(t, d) for t in tiles]  # (tile/d)^2 per level-0 tile
        s = tile // d
        for ty in range(math.ceil(ny / d)):
            for tx in range(math.ceil(nx / d)):
                img = np.full((tile, tile, 3), 255, np.uint8)
                block = ids[ty * d:(ty + 1) * d, tx * d:(tx + 1) * d]
                for (j, i), k in np.ndenumerate(block):
                    img[j * s:(j + 1) * s, i * s:(i + 1) * s] = small[k]
                yield stream(img)

    desc = (f"{APERIO_HEADER}{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) JPEG/RGB Q={quality}"
            f"|AppMag = 40|MPP = {mpp:.4f}")
    common = {"photometric": "rgb", "software": False, "metadata": None, "dtype": np.uint8, "tile": (tile, tile),
              "compression": "jpeg", "compressionargs": _RGB_JPEG, "subsampling": (1, 1), "jpegtables": tables}
    tmp = path.with_name(f".{path.name}.tmp")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        tif.write(level_tiles(1), shape=(height, width, 3), description=desc, subfiletype=0, **common)
        thumb = np.full((max(1, height // 64), max(1, width // 64), 3), 242, np.uint8)
        tif.write(thumb, photometric="rgb", software=False, metadata=None, rowsperstrip=16, compression="jpeg",
                  compressionargs={**_RGB_JPEG, "level": quality}, subsampling=(1, 1),
                  description=f"{APERIO_HEADER}{width}x{height} -> {thumb.shape[1]}x{thumb.shape[0]} - |")
        for d in downsamples[1:]:
            w, h = math.ceil(width / d), math.ceil(height / d)
            tif.write(level_tiles(d), shape=(h, w, 3), subfiletype=0,
                      description=f"{APERIO_HEADER}{width}x{height} -> {w}x{h} JPEG/RGB Q={quality}", **common)
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------------------ the models
def bench_models(work: Path, client: Any, rows: int = 300, seed: int = 0,
                 slide_size: tuple[int, int] = (6000, 4000)) -> dict[str, Path]:
    """A pixel model and a feature model (FAMILIES) made the way a job makes them: a generated corpus extracted
    into windows (bench.common.patch_dataset), the features stage run on it, each model fitted by the train
    stage. Returns {"pixels": model path, "features": model path}."""
    from crystal_dask.stages.features import FeatureSettings, compute
    from crystal_dask.stages.train import TrainConfig, train
    from crystal_dask.store.dataset import PIXELS

    folder = work / "models"
    ds = patch_dataset(folder, client, rows, seed, slide_size)
    compute(ds, FeatureSettings(families=FAMILIES), client)
    out = {}
    for name, arrays in (("pixels", (PIXELS,)), ("features", FAMILIES)):
        out[name] = folder / f"{name}.skops"
        train(ds.root, TrainConfig(name, features=arrays), out[name], client)
    return out


def infer_settings() -> Any:
    """What every crystal_dask run is told: SIZE px windows, SIZE apart (the script's grid)."""
    from crystal_dask.infer.settings import InferSettings

    return InferSettings(window_size=float(SIZE), window_step=float(SIZE), window_unit="px")


# ------------------------------------------------------------------------------------------ the plan
def tissue_windows(slides: Sequence[Path], model: Path) -> tuple[list[list], list[tuple[str, int, list[int]]]]:
    """The tissue windows infer will predict (as its tissue task finds them) and, per slide, the unique tiles they
    touch at the level it reads them: ([slide, x0, y0, x1, y1] boxes, [(slide, level, tile indices)])."""
    from crystal_dask.infer.settings import render_context
    from crystal_dask.wsi.patches import PatchSettings, choose_level
    from crystal_dask.wsi.slides import Slide
    from crystal_dask.wsi.tissue_mask import mask_from_rgb, thumbnail, tissue_fraction, window_boxes, window_grid

    settings = infer_settings()
    s = PatchSettings(**render_context(model, settings)[0]["render_settings"])
    boxes, tiles = [], []
    for path in slides:
        with Slide(path) as sl:
            rgb, ds = thumbnail(sl, settings.thumbnail_side)
            rows, cols = window_grid(sl.width, sl.height, SIZE, SIZE)
            b = window_boxes(rows, cols, SIZE, SIZE)
            b = b[tissue_fraction(mask_from_rgb(rgb, ds), ds, b) >= settings.tissue_threshold]
            level = choose_level(sl, SIZE, SIZE, s)
            lv = sl.info()["levels"][level]
            tw, th = lv["tile"]
            d = lv["downsample"]
            nx = math.ceil(lv["width"] / tw)
            touched: set[int] = set()
            for x0, y0, x1, y1 in b.tolist():
                lx0, ly0 = math.floor(x0 / d), math.floor(y0 / d)
                lx1, ly1 = min(math.ceil(x1 / d), lv["width"]), min(math.ceil(y1 / d), lv["height"])
                touched |= {ty * nx + tx for ty in range(ly0 // th, (ly1 - 1) // th + 1)
                            for tx in range(lx0 // tw, (lx1 - 1) // tw + 1)}
        boxes += [[str(path), *map(int, box)] for box in b]
        tiles.append((str(path), level, sorted(touched)))
    return boxes, tiles


# ------------------------------------------------------------------------------------------ the user's script
_STATE: dict[str, Any] = {}


def _pool_init(model_path: str) -> None:
    """Modules imported before the timer (infer's client and workers have theirs warm too); the model is not."""
    import sklearn.ensemble  # noqa: F401
    import skops.io  # noqa: F401

    _STATE["model_path"], _STATE["slides"] = model_path, {}


def _pool_chunk(boxes: list[list]) -> tuple[int, int, int]:
    """One chunk of windows in a pool process: read each at the best level with OpenSlide, grey, resize to 256,
    predict_proba on the chunk. Returns (pid, windows, peak RSS)."""
    import openslide
    from PIL import Image

    if "model" not in _STATE:  # loaded once per process, on its first chunk: inside the timer, as infer's is
        from crystal_dask.store.models import load_model

        _STATE["model"] = load_model(Path(_STATE["model_path"]))
    X = []
    for path, x0, y0, x1, _y1 in boxes:
        slide = _STATE["slides"].get(path)
        if slide is None:  # one handle per slide per process
            slide = _STATE["slides"][path] = openslide.OpenSlide(path)
        side = x1 - x0
        level = slide.get_best_level_for_downsample(side / 256)
        d = slide.level_downsamples[level]
        n = math.ceil(side / d)
        region = slide.read_region((x0, y0), level, (n, n)).convert("L").resize((256, 256), Image.Resampling.BILINEAR)
        X.append(np.asarray(region, np.float32).ravel())
    _STATE["model"].predict_proba(np.stack(X))
    return os.getpid(), len(boxes), peak_rss()


def script_windows(path: str, threshold: float = 0.5, size: int = SIZE) -> list[list]:
    """The user's tissue mask and grid: a 1024 px `get_thumbnail`, Otsu on its HSV saturation, and every whole
    size x size window whose share of mask pixels is at least `threshold`."""
    import openslide
    from skimage.filters import threshold_otsu

    with openslide.OpenSlide(path) as slide:
        sat = np.asarray(slide.get_thumbnail((1024, 1024)).convert("HSV"))[..., 1]
        width, height = slide.dimensions
    mask = sat > threshold_otsu(sat)
    fy, fx = mask.shape[0] / height, mask.shape[1] / width
    out = []
    for y in range(0, height - size + 1, size):
        for x in range(0, width - size + 1, size):
            r0, c0 = int(y * fy), int(x * fx)
            m = mask[r0:max(r0 + 1, int((y + size) * fy)), c0:max(c0 + 1, int((x + size) * fx))]
            if m.mean() >= threshold:
                out.append([path, x, y, x + size, y + size])
    return out


def prepare_script(slides: list[str], model: str, chunk: int = 64) -> Callable[[], dict]:
    """Child process: a Pool(2) started (untimed, as infer's cluster is); then (timed) each slide's tissue mask
    and windows, each process's model load (once, as infer loads and broadcasts its model inside its timer), and
    every window read and predicted in the pool."""
    pool = multiprocessing.get_context("fork").Pool(2, initializer=_pool_init, initargs=(model,))
    pool.map(abs, range(4))  # both processes are up

    def work() -> dict:
        todo = [box for path in slides for box in script_windows(path)]
        chunks = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]
        out = pool.map(_pool_chunk, chunks, chunksize=1)
        pool.close()
        pool.join()
        peaks_by_pid: dict[int, int] = {}
        for pid, _, pk in out:
            peaks_by_pid[pid] = max(peaks_by_pid.get(pid, 0), pk)
        return {"windows": sum(n for _, n, _ in out), "pool_peaks": sorted(peaks_by_pid.values())}

    return work


# ------------------------------------------------------------------------------------------ crystal_dask
def _warm() -> None:
    """The modules an infer task needs, imported before the timer starts (the script's are, in its prepare)."""
    import matplotlib.cm  # noqa: F401  (the heatmap's colour map)
    import skimage.filters  # noqa: F401
    import skops.io  # noqa: F401
    import zarr  # noqa: F401

    import crystal_dask.exports.slide  # noqa: F401
    import crystal_dask.features  # noqa: F401
    import crystal_dask.infer.tasks  # noqa: F401
    import crystal_dask.infer.windows  # noqa: F401
    import crystal_dask.stages.features  # noqa: F401
    import crystal_dask.wsi.tissue_mask  # noqa: F401


# every kind of task infer_slides runs (infer/tasks.py), as the dashboard groups them
def _phases() -> tuple[str, ...]:
    """The kinds of infer's tasks, as key_split groups them: the model, the tissue, the windows, each picture
    (exports.slide.PICTURES: a new picture is timed too), the export."""
    from crystal_dask.exports.slide import PICTURES

    return ("infer-model", "infer-tissue", "infer-windows", *(f"infer-{p}" for p in PICTURES), "infer-export")


def timed_infer(client: Any, entries: list, model: Path, out: Path) -> tuple[float, dict[str, int], dict, int]:
    """One `infer_slides` run into a fresh `out`: (wall seconds, peak RSS per process, compute seconds and task
    count per kind of task, tissue windows: those predicted and those no feature could describe)."""
    from dask.utils import key_split
    from distributed import get_task_stream

    from crystal_dask.infer.run import infer_slides

    shutil.rmtree(out, ignore_errors=True)
    with peaks(client) as pk, get_task_stream(client) as stream:
        t0 = time.perf_counter()
        m = infer_slides(entries, model, out, client, infer_settings())
        seconds = time.perf_counter() - t0
    phases = {p: {"seconds": 0.0, "tasks": 0} for p in _phases()}
    for t in stream.data:
        kind = key_split(t["key"])
        if kind in phases:
            phases[kind]["tasks"] += 1
            phases[kind]["seconds"] += sum(s["stop"] - s["start"] for s in t["startstops"] if s["action"] == "compute")
    return seconds, pk, phases, m["windows"] + m["unscored_windows"]


def per_window_costs(slide: Path, boxes: list[list], models: dict[str, Path]) -> dict[str, float]:
    """Seconds per window of each step on one block of the first slide's tissue windows, in this process:
    rendering the pixels (the block's area decoded once), the feature families (read at their resolution +
    stain, texture, calcification), and each model's one predict call."""
    from crystal_dask.infer.settings import render_context
    from crystal_dask.infer.windows import window_matrix
    from crystal_dask.predict import predict_proba
    from crystal_dask.store.models import load_model
    from crystal_dask.wsi.slides import Slide

    b = np.array([bx[1:] for bx in boxes if bx[0] == str(slide)], np.int64)
    x0, y0 = np.median(b[:, 0]), np.median(b[:, 1])  # one block of tissue windows, near the slide's centre
    near = (np.abs(b[:, 0] - x0) < 8 * SIZE) & (np.abs(b[:, 1] - y0) < 8 * SIZE)
    b = b[near][:256]
    out: dict[str, float] = {"windows": len(b)}
    with Slide(slide) as sl:
        for name, path in models.items():
            mm, _ = render_context(path, infer_settings())
            model = load_model(path)
            window_matrix(sl, b[:4], mm)  # first calls (imports, lazy set-up) are not what a window costs
            t0 = time.perf_counter()
            X, ok = window_matrix(sl, b, mm)
            out["render" if name == "pixels" else "features"] = (time.perf_counter() - t0) / len(b)
            predict_proba(X[ok][:4], model)
            t0 = time.perf_counter()
            predict_proba(X[ok], model)
            out[f"predict_{name}"] = (time.perf_counter() - t0) / max(1, int(ok.sum()))
    return out


def run(work: Path, *, slides: int = 1, slide_size: tuple[int, int] = (40_000, 30_000), tissue: float = 0.3,
        repeats: int = 1, seed: int = 0, source_rows: int = 300, source_slide_size: tuple[int, int] = (6000, 4000),
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the inference benchmark in `work`; return every number (see `report`)."""
    from crystal_dask.bench.extract import split_work
    from crystal_dask.infer.run import SlideInput
    from crystal_dask.runtime.cluster import local_client

    started = time.perf_counter()
    paths = []
    for k in range(slides):
        p = work / f"slide-{slide_size[0]}x{slide_size[1]}-{tissue}-{seed + k}.svs"
        if not p.exists():
            big_slide(p, *slide_size, tissue=tissue, seed=seed + k)
        paths.append(p)
    seconds: dict[str, list[float]] = {k: [] for k in CONTENDERS}
    mem: dict[str, list[dict[str, int]]] = {k: [] for k in CONTENDERS}
    phases: dict[str, list[dict]] = {k: [] for k in CONTENDERS if k.startswith("crystal_dask")}
    loads, script_windows_n = [], 0
    with contextlib.ExitStack() as stack:
        two = stack.enter_context(local_client(2, "4GiB"))
        models = bench_models(work, two, source_rows, seed, source_slide_size)
        boxes, tiles = tissue_windows(paths, models["pixels"])
        n = len(boxes)
        n_tiles = sum(len(t) for _, _, t in tiles)
        log(f"{slides} slide(s) {slide_size[0]}x{slide_size[1]}: {n} tissue windows of {SIZE} px, {n_tiles} tiles "
            f"touched (level {tiles[0][1]}); {sum(p.stat().st_size for p in paths) / 2**20:.0f} MiB; models "
            f"trained (ready in {time.perf_counter() - started:.0f} s)")
        parts = []
        for k, part in enumerate(split_work([(p, lvl, [i]) for p, lvl, idx in tiles for i in idx], 2)):
            parts.append(work / f"tiles-{k}.json")
            merged: dict[tuple[str, int], list[int]] = {}
            for p, lvl, idx in part:
                merged.setdefault((p, lvl), []).extend(idx)
            parts[-1].write_text(json.dumps([[p, lvl, sorted(idx)] for (p, lvl), idx in merged.items()]))
        every = work / "tiles-all.json"  # the same tiles in one process: what 2 processes can gain on this machine
        every.write_text(json.dumps([[p, lvl, idx] for p, lvl, idx in tiles]))
        one = stack.enter_context(local_client(1, "4GiB"))
        for c in (one, two):
            c.run(_warm)
        entries = [SlideInput(str(p), p.stem) for p in paths]
        runs = {"crystal_dask_2w": (two, models["pixels"]), "crystal_dask_2w_features": (two, models["features"]),
                "crystal_dask_1w": (one, models["pixels"])}
        for rep in range(repeats):
            loads.append(os.getloadavg())
            _, (res,) = run_together("crystal_dask.bench.infer:prepare_script",
                                     [{"slides": [str(p) for p in paths], "model": str(models["pixels"])}])
            seconds["script"].append(res.seconds)
            script_windows_n = res.result["windows"]
            mem["script"].append({"parent": res.peak_rss, **{f"pool-{i}": v for i, v in
                                                            enumerate(res.result["pool_peaks"])}})
            wall, results = run_together("crystal_dask.bench.extract:prepare_decode", [{"tiles": str(p)}
                                                                                      for p in parts])
            seconds["decode_2proc"].append(wall)
            mem["decode_2proc"].append({f"process-{k}": r.peak_rss for k, r in enumerate(results)})
            _, (res,) = run_together("crystal_dask.bench.extract:prepare_decode", [{"tiles": str(every)}])
            seconds["decode_1proc"].append(res.seconds)
            mem["decode_1proc"].append({"process-0": res.peak_rss})
            for name, (client, model) in runs.items():
                secs, pk, ph, windows = timed_infer(client, entries, model, work / "out")
                if windows != n:
                    raise RuntimeError(f"infer ({name}) predicted {windows} windows, the plan has {n}")
                seconds[name].append(secs)
                mem[name].append(pk)
                phases[name].append(ph)
            loads[-1] = (*loads[-1], *os.getloadavg())
            log(f"repeat {rep + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in seconds.items())
                + f"; load average {loads[-1][0]:.1f} -> {loads[-1][3]:.1f}")
        costs = per_window_costs(paths[0], boxes, models)
    counts = {k: script_windows_n if k == "script" else n for k in CONTENDERS}
    rates = {k: rate(counts[k], v) for k, v in seconds.items()}
    ratios = {"vs_script": ratio(rates["crystal_dask_2w"], rates["script"]),
              "vs_decode_limit": ratio(rates["crystal_dask_2w"], rates["decode_2proc"]),
              "scaling": ratio(rates["crystal_dask_2w"], rates["crystal_dask_1w"]),
              "decode_scaling": ratio(rates["decode_2proc"], rates["decode_1proc"]),
              "features_vs_pixels": ratio(rates["crystal_dask_2w_features"], rates["crystal_dask_2w"])}
    peak = {k: merge_peaks(v) for k, v in mem.items()}
    ours = max(v for k, p in peak.items() if k.startswith("crystal_dask") for v in p.values())
    targets = {k: {"target": t, "met": ratios[k] >= t} for k, t in TARGETS.items()}
    targets["peak_rss"] = {"target": MAX_PEAK, "met": ours <= MAX_PEAK}
    return {
        "bench": "infer", "repeats": repeats, "windows": n, "script_windows": script_windows_n,
        "tiles_touched": n_tiles, "slides": {"count": slides, "size": list(slide_size), "tissue": tissue,
                                             "bytes": sum(p.stat().st_size for p in paths)},
        "seconds": {k: Stat(tuple(v)).as_dict() for k, v in seconds.items()},
        "windows_per_s": {k: v.as_dict() for k, v in rates.items()},
        "ratios": ratios, "targets": targets, "peak_rss": peak,
        "phases": {k: {p: {"seconds": statistics.median(r[p]["seconds"] for r in v), "tasks": v[0][p]["tasks"]}
                       for p in _phases()} for k, v in phases.items()},
        "per_window_seconds": costs, "load_average": [list(v) for v in loads],
        "total_seconds": time.perf_counter() - started,
    }


_LABELS = {"script": "OpenSlide script, Pool(2) (its own tissue mask from a thumbnail)",
           "decode_1proc": "decode limit, 1 process (the same tiles)",
           "decode_2proc": "decode limit, 2 processes (touched tiles, each once)",
           "crystal_dask_1w": "crystal_dask infer, 1 worker, pixel model",
           "crystal_dask_2w": "crystal_dask infer, 2 workers, pixel model",
           "crystal_dask_2w_features": "crystal_dask infer, 2 workers, feature model (" + " + ".join(FAMILIES) + ")"}


def _met(t: dict) -> str:
    return "met" if t["met"] else "MISSED"


def report(r: dict[str, Any]) -> str:
    """The benchmark's tables: medians (min-max) over the repeats, the ratios, the per-window costs, the compute
    time per kind of task and the peak memory per process."""
    s = r["slides"]
    lines = [f"infer: {r['windows']} tissue windows ({SIZE} px; the script's own mask finds {r['script_windows']}) "
             f"on {s['count']} generated {s['size'][0]}x{s['size'][1]} px slide(s) ({s['bytes'] / 2**20:.0f} MiB, "
             f"tissue {s['tissue']:.0%}); {r['tiles_touched']} JPEG tiles touched; {r['repeats']} repeat(s), median "
             f"(min-max); load average (1 min) before/after each repeat: "
             + ", ".join(f"{v[0]:.1f}/{v[3]:.1f}" for v in r["load_average"]), ""]
    rows = [("contender", "seconds", "windows/s", "peak RSS per process")]
    for k, label in _LABELS.items():
        mem = ", ".join(f"{name} {fmt_bytes(v)}" for name, v in r["peak_rss"][k].items())
        rows.append((label, fmt_stat(r["seconds"][k]), fmt_stat(r["windows_per_s"][k]), mem))
    lines.append(table(rows))
    t, q = r["targets"], r["ratios"]
    lines += ["", table([("ratio (of medians)", "value", "target"),
                         ("crystal_dask 2 workers / OpenSlide Pool(2) script", f"{q['vs_script']:.2f}x",
                          f">= {t['vs_script']['target']:g}: {_met(t['vs_script'])}"),
                         ("crystal_dask 2 workers / decode limit on 2 processes", f"{q['vs_decode_limit']:.2f}",
                          f">= {t['vs_decode_limit']['target']:g}: {_met(t['vs_decode_limit'])}"),
                         ("crystal_dask 2 workers / 1 worker", f"{q['scaling']:.2f}x",
                          f">= {t['scaling']['target']:g}: {_met(t['scaling'])}"),
                         ("decode limit, 2 processes / 1 (this machine's own ceiling for scaling)",
                          f"{q['decode_scaling']:.2f}x", ""),
                         ("feature model / pixel model (2 workers)", f"{q['features_vs_pixels']:.2f}x", ""),
                         ("largest crystal_dask process", fmt_bytes(max(v for k, p in r["peak_rss"].items()
                                                                        if k.startswith("crystal_dask")
                                                                        for v in p.values())),
                          f"<= 1.5 GiB: {_met(t['peak_rss'])}")])]
    c = r["per_window_seconds"]
    lines += ["", f"per window, on one block of {c['windows']} tissue windows in one process:",
              table([("step", "ms per window"),
                     ("render pixels (block area decoded once, grey, resize to 256)", f"{c['render'] * 1e3:.2f}"),
                     ("predict, pixel model (one call per block)", f"{c['predict_pixels'] * 1e3:.2f}"),
                     ("features: read at their resolution + " + " + ".join(FAMILIES), f"{c['features'] * 1e3:.2f}"),
                     ("predict, feature model (one call per block)", f"{c['predict_features'] * 1e3:.2f}")])]
    rows = [("crystal_dask run", *(f"{p} s (tasks)" for p in _phases()))]
    for k, ph in r["phases"].items():
        rows.append((k, *(f"{ph[p]['seconds']:.2f} ({ph[p]['tasks']})" for p in _phases())))
    lines += ["", "compute seconds summed over workers per kind of task (median over repeats):", table(rows)]
    lines.append(f"\nbench took {r['total_seconds']:.0f} s")
    return "\n".join(lines)
