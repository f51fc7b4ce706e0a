"""The Dask tasks of whole-slide inference, and the slide's zarr grid they fill.

Per run:
    infer-model    the model, loaded (hash and allow-list checked) on a worker while others find tissue.
Per slide:
    infer-tissue   detect tissue on a low-res view (wsi/tissue_mask.py), create the slide's zarr (proba: rows x
                   cols x 9 float32, 0 where no window was scored; tissue: rows x cols bool; scored: rows x cols
                   bool, the tissue windows the model was given, i.e. less the windows a feature family could not
                   describe; tissue_fraction) and save the thumbnail;
    infer-windows  one block of block x block windows: its tissue windows rendered from one read of the area they
                   cover (infer/windows.py), predicted in one call (crystal_dask.predict), its whole zarr chunk
                   written;
    infer-overlay, infer-heatmap
                   one PNG each of the finished grid over the thumbnail (exports/slide.py), side by side;
    infer-export   GeoJSON and region decisions (exports/slide.py), summary rows, scores, once the PNGs are written.
Block tasks read through the worker's slide cache (one open slide per file per worker for the stage) and receive
the loaded model as a dependency (one copy per worker). Each task leaves a done-marker under
<slide>/.infer/<digest>/, so a rerun resumes block by block. No process holds a whole slide: a block decodes at
most wsi.windows.BLOCK_PIXELS at once, the tissue view is bounded by the thumbnail's side, and the exports work
on the window grid only.
"""

from __future__ import annotations

import functools
import pickle
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from dask.sizeof import sizeof

from crystal_dask.predict import predict_proba
from crystal_dask.runtime.tasks import resumable
from crystal_dask.store.files import write_atomic, write_json
from crystal_dask.vocab import CLASSES
from crystal_dask.wsi.slides import Slide, SlideError

N_CLASSES = len(CLASSES)
FORMAT_VERSION = 2  # bump when the bytes a slide's outputs hold change for the same inputs


def _fail(task: Mapping[str, Any], what: str, exc: BaseException) -> dict:
    if not task["skip_errors"]:
        raise exc
    return {"error": f"{what}: {type(exc).__name__}: {exc}" if not isinstance(exc, SlideError) else f"{what}: {exc}"}


def marker(task: Mapping[str, Any], name: str) -> Path:
    """The done-marker of one task of a slide."""
    return Path(task["markers"]) / f"{name}.json"


def create_grid(task: Mapping[str, Any], tissue: np.ndarray, frac: np.ndarray) -> None:
    """The slide's windows.zarr: empty probabilities, nothing scored yet, the tissue grid and fractions, one chunk
    per block."""
    import zarr
    from zarr.codecs import ZstdCodec

    rows, cols, b = task["rows"], task["cols"], task["block"]
    zstd = ZstdCodec(level=2)
    group = zarr.open_group(task["zarr"], mode="w", zarr_format=3, attributes={
        "digest": task["digest"], "classes": list(CLASSES), "size": task["size"], "step": task["step"],
        "origin": [0, 0], "width": task["width"], "height": task["height"], "mpp": task["mpp"],
        "tissue_threshold": task["tissue_threshold"], "format_version": FORMAT_VERSION})
    group.create_array("proba", shape=(rows, cols, N_CLASSES), chunks=(b, b, N_CLASSES), dtype="float32",
                       fill_value=0.0, compressors=zstd, dimension_names=("row", "col", "class"))
    for name, values, dtype in (("tissue", tissue, "bool"), ("tissue_fraction", frac.astype(np.float32),
                                                            "float32")):
        arr = group.create_array(name, shape=(rows, cols), chunks=(b, b), dtype=dtype, fill_value=0,
                                 compressors=zstd, dimension_names=("row", "col"))
        arr.with_config({"write_empty_chunks": True})[...] = values
    group.create_array("scored", shape=(rows, cols), chunks=(b, b), dtype="bool", fill_value=False,
                       compressors=zstd, dimension_names=("row", "col"))


def grid_blocks(rows: int, cols: int, block: int) -> list[tuple[int, int]]:
    """The (first row, first column) of every block x block block of a window grid, row-major: one zarr chunk and
    one block task each."""
    return [(r0, c0) for r0 in range(0, rows, block) for c0 in range(0, cols, block)]


@resumable(done_at=lambda task: marker(task, "tissue"))
def infer_tissue(task: dict) -> dict:
    """Task infer-tissue: the slide's tissue grid, thumbnail and empty zarr; idempotent through its marker. Its
    result orders the blocks by their tissue windows, most first ("order", indices into `grid_blocks`): the block
    tasks run in that order, so the last ones are small and the workers finish together."""
    from crystal_dask.exports.overlay import png_bytes
    from crystal_dask.wsi.tissue_mask import mask_from_rgb, thumbnail, tissue_fraction, window_boxes

    rows, cols = task["rows"], task["cols"]
    try:
        with Slide(task["slide"]) as slide:
            rgb, ds = thumbnail(slide, task["thumbnail_side"])
        mask = mask_from_rgb(rgb, ds)
        frac = tissue_fraction(mask, ds, window_boxes(rows, cols, task["size"], task["step"])).reshape(rows, cols)
    except (SlideError, OSError, ValueError, MemoryError) as exc:
        return _fail(task, "tissue", exc)
    tissue = frac >= task["tissue_threshold"]
    write_atomic(task["thumbnail"], png_bytes(rgb))
    create_grid(task, tissue, frac)
    b = task["block"]
    windows = [int(tissue[r0:r0 + b, c0:c0 + b].sum()) for r0, c0 in grid_blocks(rows, cols, b)]
    order = sorted(range(len(windows)), key=lambda i: (-windows[i], i))
    return {"tissue_windows": int(tissue.sum()), "downsample": float(ds), "order": order}


@dataclass(frozen=True)
class SharedModel:
    """The model as the block tasks receive it: pickled once, on the worker that loaded it, so a worker that needs
    it gets a copy of bytes. Sending the live forest made its holder pickle it object by object while its own
    block held the GIL (~0.35 s before the other worker could start, under load). The bytes are what dask itself
    pickles to send any object; the file they come from was checked by `load_model`."""

    key: str  # the infer-model task's: one run's model
    data: bytes


@sizeof.register(SharedModel)
def _sizeof_shared(shared: SharedModel) -> int:  # dask's memory accounting sees the model's bytes
    return len(shared.data) + 64


_models: dict[str, Any] = {}  # this process's unpickled model, by SharedModel.key (the latest run's only)
_models_lock = threading.Lock()
_ended: set[str] = set()  # model keys of runs whose end_stage ran here: a late block does not cache them again


def model_key(stage: str) -> str:
    """The infer-model task's key, and its SharedModel's, for a run's stage id."""
    return f"infer-model-{stage[:8]}"


def load_shared_model(path: str, key: str, sha256: str) -> SharedModel:
    """Task infer-model: load the model file (hash and allow-list checked; the file must still be the `sha256`
    the run was planned with) and share it with the blocks."""
    from crystal_dask.store.models import load_model

    model = load_model(Path(path), sha256=sha256)
    with _models_lock:
        _models.clear()
        if key not in _ended:
            _models[key] = model
    return SharedModel(key, pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))


def model_of(shared: SharedModel) -> Any:
    """The shared model, unpickled once per process and run (not kept once the run has ended here)."""
    with _models_lock:
        if shared.key in _models:
            return _models[shared.key]
        model = pickle.loads(shared.data)
        if shared.key not in _ended:
            _models.clear()
            _models[shared.key] = model
        return model


def end_stage(stage: str) -> None:
    """On every worker when a run ends: its cached slides closed, its model and zarr arrays let go."""
    from crystal_dask.wsi.slide_cache import close_stage

    close_stage(stage)
    with _models_lock:
        _models.clear()
        _ended.add(model_key(stage))
    _block_arrays.cache_clear()


@functools.lru_cache(maxsize=16)
def _block_arrays(path: str, stage: str) -> dict[str, Any]:
    """A slide's zarr arrays as its blocks use them (every chunk written, zeros too), opened once per worker and
    stage: opening the group and three arrays cost ~2 ms per block, as much as its chunk reads and writes. A new
    stage (run) opens them again, after its tissue task may have created the zarr anew."""
    import zarr

    group = zarr.open_group(path, mode="r+")
    return {k: group[k].with_config({"write_empty_chunks": True}) for k in ("tissue", "proba", "scored")}


def infer_block(task: dict, tissue_done: dict, model: SharedModel) -> dict:
    """Task infer-windows: the block in place task["slot"] of the slide's order (the tissue task's: most tissue
    windows first; plan order after a tissue marker of an earlier version, which has none), as `window_block`."""
    if "error" in tissue_done:
        return {"error": "no tissue grid"}
    blocks = grid_blocks(task["rows"], task["cols"], task["block"])
    r0, c0 = blocks[(tissue_done.get("order") or range(len(blocks)))[task["slot"]]]
    return window_block(task | {"r0": r0, "c0": c0}, model)


@resumable(done_at=lambda task: marker(task, f"block-{task['r0']:05d}-{task['c0']:05d}"))
def window_block(task: dict, model: SharedModel) -> dict:
    """Predict one block's tissue windows in one call and write its whole zarr chunk, then its marker."""
    from crystal_dask.infer.windows import window_matrix
    from crystal_dask.runtime.allocator import roomy_malloc
    from crystal_dask.wsi.slide_cache import cached_slide
    from crystal_dask.wsi.tissue_mask import window_boxes

    roomy_malloc(task["stage"])
    r0, c0, b = task["r0"], task["c0"], task["block"]
    grid = _block_arrays(task["zarr"], task["stage"])
    tissue = grid["tissue"][r0:r0 + b, c0:c0 + b]
    h, w = tissue.shape
    boxes = window_boxes(h, w, task["size"], task["step"], first=(r0, c0))
    keep = tissue.ravel()
    proba = np.zeros((h * w, N_CLASSES), np.float32)
    try:
        if keep.any():
            with cached_slide(task["slide"], task["stage"]) as slide:
                X, described = window_matrix(slide, boxes[keep], task["model_manifest"])
            scored = np.flatnonzero(keep)[described]
            proba[scored] = predict_proba(X[described], model_of(model))  # unpickled only for a block to run
            keep[:] = False
            keep[scored] = True
    except (SlideError, OSError, ValueError, MemoryError) as exc:
        return _fail(task, f"windows {r0},{c0}", exc)
    grid["proba"][r0:r0 + h, c0:c0 + w] = proba.reshape(h, w, N_CLASSES)
    grid["scored"][r0:r0 + h, c0:c0 + w] = keep.reshape(h, w)
    return {"windows": int(keep.sum())}


def class_grid(proba: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """Predicted class index per window (argmax; ties to the lower index), -1 where no window was scored (glass,
    or a tissue window a feature family could not describe: its probabilities are all 0, not a class)."""
    return np.where(scored, proba.argmax(axis=-1), -1).astype(np.int64)


def summary_rows(task: Mapping[str, Any], proba: np.ndarray, classes: np.ndarray) -> list[dict]:
    """The slide's INFER_SUMMARY rows: per predicted class, its windows, area and probabilities."""
    size, step = task["size"], task["step"]
    cell = (min(step, size) if step <= size else size) ** 2  # area one window stands for (px^2)
    rows = []
    for c in range(N_CLASSES):
        where = classes == c
        if not where.any():
            continue
        p = proba[..., c][where]
        area = None if not task["mpp"] else float(where.sum() * cell * task["mpp"] ** 2 / 1e6)
        rows.append({"corpus": task["corpus"], "slide": task["slide"], "bname": task["bname"],
                     "cls": CLASSES[c], "windows": int(where.sum()), "area_mm2": area,
                     "mean_probability": float(p.mean()), "max_probability": float(p.max())})
    return rows


def _upstream_error(tissue_done: Mapping[str, Any], done: list[dict]) -> str | None:
    """Why a slide's task cannot go on (its tissue task's reason, or the first failed one of `done`), else None."""
    errors = [x["error"] for x in (tissue_done, *done) if "error" in x]
    if not errors:
        return None
    return errors[0] if errors[0] != "no tissue grid" else "tissue: failed"


def read_grid(task: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A slide's whole (proba, tissue, scored) grid from its zarr."""
    import zarr

    group = zarr.open_group(task["zarr"], mode="r")
    return group["proba"][...], group["tissue"][...], group["scored"][...]


@resumable(done_at=lambda task: marker(task, task["picture"]))
def infer_picture(task: dict, tissue_done: dict, blocks: list[dict]) -> dict:
    """Task infer-overlay / infer-heatmap: one PNG of a slide's finished grid over its thumbnail (the pictures
    are the export's slowest files: each is its own task, so they run side by side)."""
    from PIL import Image

    from crystal_dask.exports.slide import write_picture

    error = _upstream_error(tissue_done, blocks)
    if error:
        return {"error": error}
    try:
        proba, _, scored = read_grid(task)
        paths = {k: Path(v) for k, v in task["paths"].items()}
        thumb = np.asarray(Image.open(paths["thumbnail"]).convert("RGB"))
        write_picture(task["picture"], paths, thumb, tissue_done["downsample"], proba, class_grid(proba, scored),
                      task["heatmap_class"], size=task["size"], step=task["step"])
    except (OSError, ValueError, MemoryError) as exc:
        return _fail(task, task["picture"], exc)
    return {}


@resumable(done_at=lambda task: marker(task, "export"))
def infer_export(task: dict, tissue_done: dict, blocks: list[dict], pictures: list[dict]) -> dict:
    """Task infer-export: a slide's grid -> GeoJSON, region decisions, summary rows and (with annotations)
    scores, once its pictures are written. Returns {"rows": summary rows, "score": ...} or {"error": reason}."""
    from crystal_dask.exports.slide import write_geometry
    from crystal_dask.infer.scoring import score_slide
    from crystal_dask.wsi.annotations import Header

    error = _upstream_error(tissue_done, [*blocks, *pictures])
    if error:
        return {"error": error}
    try:
        proba, tissue, scored = read_grid(task)
        classes = class_grid(proba, scored)
        paths = {k: Path(v) for k, v in task["paths"].items()}
        header = Header(task["bname"], task["mpp"], task["width"], task["height"])
        write_geometry(paths, proba, classes, header, size=task["size"], step=task["step"])
        rows = summary_rows(task, proba, classes)
        score = None
        if task["regions"]:
            score = score_slide(classes, task["regions"], task["size"], task["step"], task["min_overlap"])
            write_json(paths["score"], score)
    except (OSError, ValueError, MemoryError) as exc:
        return _fail(task, "export", exc)
    return {"rows": rows, "score": score, "windows": int(scored.sum()), "unscored": int((tissue & ~scored).sum()),
            "grid": [int(v) for v in classes.shape]}
