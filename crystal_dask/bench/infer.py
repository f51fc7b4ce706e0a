"""`crystal-dask bench infer`: windows per second of whole-slide inference on 2 workers against (a) the script a
competent user would write (OpenSlide under `multiprocessing.Pool(2)`: one handle per slide per process, each
window read at the best level, converted, resized and `predict_proba` called in the same processes) and (b) the
decode limit: only decoding, once each, the JPEG tiles the tissue windows touch at the level crystal_dask reads,
split over 2 processes. Also the peak memory of every process.

The slides are realistic in size, generated here from a tile iterator (`big_slide`): a 40,000 x 30,000 px Aperio
-style pyramid is mostly one repeated glass tile with an ellipse of tissue tiles drawn from a small pool, so it
is written in seconds and never held in memory. The model is a real BalancedRandomForestClassifier trained on
windows of the first slide (labels arbitrary: the benchmark measures throughput, not accuracy) and saved with a
manifest pointing at a dataset folder whose settings are the windows'.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import shutil
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
    peak_rss,
    peaks,
    rate,
    ratio,
    run_together,
    table,
)

TARGETS = {"vs_script": 2.0, "vs_decode_limit": 0.7}
WINDOW = {"mode": "window", "window_size": 500.0, "window_step": 500.0, "chunk_rows": 64}


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


# ------------------------------------------------------------------------------------------ the model
def bench_model(work: Path, slide: Path, rows: int = 300, seed: int = 0) -> Path:
    """A real forest on `rows` tissue windows of `slide` (arbitrary labels, every class), saved with a manifest
    whose dataset folder carries the window settings (what infer renders by)."""
    import zarr
    from imblearn.ensemble import BalancedRandomForestClassifier

    from crystal_dask.stages.infer import render_windows
    from crystal_dask.stages.train import RANDOM_STATE
    from crystal_dask.store.dataset import PIXELS, Dataset
    from crystal_dask.store.files import write_json
    from crystal_dask.store.models import save_model
    from crystal_dask.wsi.patches import PatchSettings
    from crystal_dask.wsi.slides import Slide

    path = work / "model.skops"
    if path.exists():
        return path
    s = PatchSettings(**WINDOW)
    rng = np.random.default_rng(seed)
    with Slide(slide) as sl:
        w, h = sl.width, sl.height
        cx, cy = rng.uniform(0.35, 0.65, rows) * w, rng.uniform(0.35, 0.65, rows) * h  # inside the tissue ellipse
        boxes = np.stack([cx, cy, cx + 500, cy + 500], 1).astype(np.int64)
        X = render_windows(sl, boxes, s).reshape(rows, -1)
    y = np.arange(rows) % 9
    # the model's dataset: its windows' pixels and labels, and the settings infer renders by
    ds = Dataset(work / "model-dataset")
    ds.create(rows, s.as_dict(), "bench", s.chunk_rows, {PIXELS: ((s.patch_size, s.patch_size), "uint8")})
    group = zarr.open_group(str(ds.zarr), mode="r+")
    group[PIXELS][:] = X.reshape(rows, s.patch_size, s.patch_size)
    group["label"][:] = y
    write_json(ds.manifest, {"settings": s.as_dict(), "plan_hash": "bench"})
    # in memory: the forest the train stage fits is bit-identical (forest.py), and only its predictions matter here
    model = BalancedRandomForestClassifier(random_state=RANDOM_STATE).fit(X, y)
    save_model(model, path, {"config": {"name": "bench"}, "dataset": str(ds.root), "train_rows": rows})
    return path


# ------------------------------------------------------------------------------------------ the plan
def tissue_windows(slides: Sequence[Path], size: int = 500) -> tuple[list[list], list[tuple[str, int, list[int]]]]:
    """The tissue windows infer will predict (as its tissue task finds them) and, per slide, the unique tiles they
    touch at the level it reads them: ([slide, x0, y0, x1, y1] boxes, [(slide, level, tile indices)])."""
    from crystal_dask.stages.infer import InferSettings
    from crystal_dask.wsi.patches import PatchSettings, choose_level
    from crystal_dask.wsi.slides import Slide
    from crystal_dask.wsi.tissue_mask import mask_from_rgb, thumbnail, tissue_fraction, window_boxes, window_grid

    s, thr = PatchSettings(**WINDOW), InferSettings().tissue_threshold
    boxes, tiles = [], []
    for path in slides:
        with Slide(path) as sl:
            rgb, ds = thumbnail(sl, InferSettings().thumbnail_side)
            rows, cols = window_grid(sl.width, sl.height, size, size)
            b = window_boxes(rows, cols, size, size)
            b = b[tissue_fraction(mask_from_rgb(rgb, ds), ds, b) >= thr]
            level = choose_level(sl, size, size, s)
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
    from crystal_dask.store.models import load_model

    _STATE["model"], _STATE["slides"] = load_model(Path(model_path)), {}


def _pool_chunk(boxes: list[list]) -> tuple[int, int, int]:
    """One chunk of windows in a pool process: read each at the best level with OpenSlide, grey, resize to 256,
    predict_proba on the chunk. Returns (pid, windows, peak RSS)."""
    import openslide
    from PIL import Image

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


def prepare_script(boxes: str, model: str, chunk: int = 64) -> Callable[[], dict]:
    """Child process: a Pool(2) started and each process's model loaded (untimed); then (timed) every window."""
    todo = json.loads(Path(boxes).read_text())
    pool = multiprocessing.get_context("fork").Pool(2, initializer=_pool_init, initargs=(model,))
    pool.map(abs, range(4))  # both processes are up and have loaded the model

    def work() -> dict:
        chunks = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]
        out = pool.map(_pool_chunk, chunks, chunksize=1)
        pool.close()
        pool.join()
        peaks_by_pid: dict[int, int] = {}
        for pid, _, pk in out:
            peaks_by_pid[pid] = max(peaks_by_pid.get(pid, 0), pk)
        return {"windows": sum(n for _, n, _ in out), "pool_peaks": sorted(peaks_by_pid.values())}

    return work


# ------------------------------------------------------------------------------------------ the benchmark
def _warm() -> None:
    """The modules an infer task needs, imported before the timer starts (the script's are, in its prepare)."""
    import matplotlib.figure  # noqa: F401
    import skimage.filters  # noqa: F401
    import zarr  # noqa: F401

    import crystal_dask.exports.geojson  # noqa: F401
    import crystal_dask.exports.overlay  # noqa: F401
    import crystal_dask.exports.region_decisions  # noqa: F401
    import crystal_dask.stages.infer  # noqa: F401
    import crystal_dask.wsi.tissue_mask  # noqa: F401


def run(work: Path, *, slides: int = 1, slide_size: tuple[int, int] = (40_000, 30_000), tissue: float = 0.3,
        repeats: int = 1, seed: int = 0, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the inference benchmark in `work`; return every number (see `report`)."""
    from crystal_dask.bench.extract import split_work
    from crystal_dask.runtime.cluster import local_client
    from crystal_dask.stages.infer import InferSettings, SlideInput, infer_slides

    started = time.perf_counter()
    paths = []
    for k in range(slides):
        p = work / f"slide-{slide_size[0]}x{slide_size[1]}-{tissue}-{seed + k}.svs"
        if not p.exists():
            big_slide(p, *slide_size, tissue=tissue, seed=seed + k)
        paths.append(p)
    boxes, tiles = tissue_windows(paths)
    n = len(boxes)
    n_tiles = sum(len(t) for _, _, t in tiles)
    log(f"{slides} slide(s) {slide_size[0]}x{slide_size[1]}: {n} tissue windows of 500 px, {n_tiles} tiles "
        f"touched (level {tiles[0][1]}); {sum(p.stat().st_size for p in paths) / 2**20:.0f} MiB "
        f"(ready in {time.perf_counter() - started:.0f} s)")
    (work / "boxes.json").write_text(json.dumps(boxes))
    parts = []
    for k, part in enumerate(split_work([(p, lvl, [i]) for p, lvl, idx in tiles for i in idx], 2)):
        parts.append(work / f"tiles-{k}.json")
        merged: dict[tuple[str, int], list[int]] = {}
        for p, lvl, idx in part:
            merged.setdefault((p, lvl), []).extend(idx)
        parts[-1].write_text(json.dumps([[p, lvl, sorted(idx)] for (p, lvl), idx in merged.items()]))

    seconds: dict[str, list[float]] = {"script": [], "decode_2proc": [], "crystal_dask_2w": []}
    mem: dict[str, list[dict[str, int]]] = {k: [] for k in seconds}
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(local_client(2, "4GiB"))
        model = bench_model(work, paths[0])
        client.run(_warm)
        entries = [SlideInput(str(p), p.stem) for p in paths]
        for rep in range(repeats):
            _, (res,) = run_together("crystal_dask.bench.infer:prepare_script",
                                     [{"boxes": str(work / "boxes.json"), "model": str(model)}])
            seconds["script"].append(res.seconds)
            mem["script"].append({"parent": res.peak_rss, **{f"pool-{i}": v for i, v in
                                                            enumerate(res.result["pool_peaks"])}})
            wall, results = run_together("crystal_dask.bench.extract:prepare_decode", [{"tiles": str(p)}
                                                                                      for p in parts])
            seconds["decode_2proc"].append(wall)
            mem["decode_2proc"].append({f"process-{k}": r.peak_rss for k, r in enumerate(results)})
            out = work / "out"
            shutil.rmtree(out, ignore_errors=True)
            with peaks(client) as pk:
                t0 = time.perf_counter()
                m = infer_slides(entries, model, out, client, InferSettings())
                seconds["crystal_dask_2w"].append(time.perf_counter() - t0)
            mem["crystal_dask_2w"].append(pk)
            if m["windows"] != n:
                raise RuntimeError(f"infer predicted {m['windows']} windows, the plan has {n}")
            log(f"repeat {rep + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in seconds.items()))
    rates = {k: rate(n, v) for k, v in seconds.items()}
    ratios = {"vs_script": ratio(rates["crystal_dask_2w"], rates["script"]),
              "vs_decode_limit": ratio(rates["crystal_dask_2w"], rates["decode_2proc"])}
    return {
        "bench": "infer", "repeats": repeats, "windows": n, "tiles_touched": n_tiles,
        "slides": {"count": slides, "size": list(slide_size), "tissue": tissue,
                   "bytes": sum(p.stat().st_size for p in paths)},
        "seconds": {k: Stat(tuple(v)).as_dict() for k, v in seconds.items()},
        "windows_per_s": {k: v.as_dict() for k, v in rates.items()},
        "ratios": ratios, "targets": {k: {"target": t, "met": ratios[k] >= t} for k, t in TARGETS.items()},
        "peak_rss": {k: merge_peaks(v) for k, v in mem.items()},
        "total_seconds": time.perf_counter() - started,
    }


_LABELS = {"script": "OpenSlide script, multiprocessing.Pool(2)", "decode_2proc": "decode limit, 2 processes",
           "crystal_dask_2w": "crystal_dask infer, 2 workers (tissue + windows + exports)"}


def report(r: dict[str, Any]) -> str:
    """The benchmark's tables: medians (min-max) over the repeats, the ratios, peak memory per process."""
    s = r["slides"]
    lines = [f"infer: {r['windows']} tissue windows (500 px) on {s['count']} generated {s['size'][0]}x{s['size'][1]} "
             f"px slide(s) ({s['bytes'] / 2**20:.0f} MiB, tissue {s['tissue']:.0%}); {r['tiles_touched']} JPEG "
             f"tiles touched; {r['repeats']} repeat(s), median (min-max)", ""]
    rows = [("contender", "seconds", "windows/s", "peak RSS per process")]
    for k, label in _LABELS.items():
        mem = ", ".join(f"{name} {fmt_bytes(v)}" for name, v in r["peak_rss"][k].items())
        rows.append((label, fmt_stat(r["seconds"][k]), fmt_stat(r["windows_per_s"][k]), mem))
    lines.append(table(rows))
    t, q = r["targets"], r["ratios"]
    lines += ["", table([("ratio (of medians)", "value", "target"),
                         ("crystal_dask 2 workers / OpenSlide Pool(2) script", f"{q['vs_script']:.2f}x",
                          f">= {t['vs_script']['target']:g}: {'met' if t['vs_script']['met'] else 'MISSED'}"),
                         ("crystal_dask 2 workers / decode limit on 2 processes", f"{q['vs_decode_limit']:.2f}",
                          f">= {t['vs_decode_limit']['target']:g}: "
                          f"{'met' if t['vs_decode_limit']['met'] else 'MISSED'}")])]
    lines.append(f"\nbench took {r['total_seconds']:.0f} s")
    return "\n".join(lines)
