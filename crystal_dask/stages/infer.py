"""Stage infer: whole-slide inference. Every window of every slide with enough tissue, predicted by a trained
model, as a per-slide probability grid (zarr) and the exports users open: overlay and heatmap PNGs, QuPath
GeoJSON, NEDC `<bname>_REGIONDECISIONS.csv`, a per-corpus summary table, and scores where annotations exist.

Per slide, three kinds of Dask task (named for the dashboard):
    infer-tissue   open the slide, detect tissue on a low-res view (wsi/tissue_mask.py), create the slide's zarr
                   (proba: rows x cols x 9 float32, 0 where no window was scored; tissue: rows x cols bool) and
                   save the thumbnail;
    infer-windows  one block of block x block windows: render the tissue windows exactly as the model's dataset
                   was rendered (`window_matrix`), predict with the broadcast model, write the block's whole zarr
                   chunk;
    infer-export   the slide's grid -> PNGs, GeoJSON, region decisions, summary rows and scores.
Each task opens its own slide (tifffile handles cannot be pickled) and leaves a done-marker under
<slide>/.infer/<digest>/, so a rerun resumes block by block; another model, settings or slide file discards the
slide's old outputs. No process holds a whole slide: a block renders its windows one by one as extract does
(large boxes are read in bands, patches.BAND_PIXELS), the tissue view is bounded by the thumbnail's side, and
the export works on the window grid only.

Settings: the job file's `infer:` section (see `InferSettings` and `parse`). Outputs: <out>/infer/<set>/<config>/
(see `infer_slides`).
"""

from __future__ import annotations

import io
import json
import logging
import math
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from crystal_dask.checks import ConfigError, check_fields, flag, integer, need, number, section, text, texts
from crystal_dask.experiment import Experiment
from crystal_dask.stages.base import Context, Step, fingerprint
from crystal_dask.store.dataset import PIXELS
from crystal_dask.store.files import write_atomic, write_json
from crystal_dask.store.schema import INFER_SUMMARY, REGIONS, REJECTS, conform, make_table, reject_row, write_table
from crystal_dask.vocab import CLASSES, SPLITS
from crystal_dask.wsi.patches import WINDOW_UNITS, PatchSettings, render_patch, window_px
from crystal_dask.wsi.slides import Slide, SlideError

NAME = "infer"
SECTION = "infer"
N_CLASSES = len(CLASSES)
FORMAT_VERSION = 1  # bump when the bytes a slide's outputs hold change for the same inputs
DEFAULT_WINDOW = {"window_size": 500.0, "window_step": 500.0, "window_unit": "px", "magnification": None}
MARKERS = ".infer"
log = logging.getLogger("crystal_dask.pipeline")


# ----------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class InferSettings:
    """How slides are cut into windows and what is exported; every field enters each slide's digest."""

    tissue_threshold: float = 0.5  # a window is scored when at least this fraction of it is tissue
    window_size: float | None = None  # None: the window of the model's dataset (region mode: 500 px)
    window_step: float | None = None  # None: the dataset's step (or the window size)
    window_unit: str | None = None  # px or um; None: the dataset's
    magnification: float | None = None  # window px at this magnification; None: the dataset's
    heatmap_class: str = "dcis"  # the class whose probability the heatmap shows
    block: int = 16  # windows per block side: one task and one zarr chunk per block x block windows
    min_overlap: float = 0.5  # scoring: a window takes a region's label when the region covers this fraction
    thumbnail_side: int = 2048  # long side of the low-res view for tissue and overlays
    skip_errors: bool = True  # a slide that fails is a reject with its reason and the rest completes

    def __post_init__(self) -> None:
        if self.heatmap_class not in CLASSES:
            raise ValueError(f"heatmap_class: {self.heatmap_class!r} is not one of {', '.join(CLASSES)}")
        if self.window_unit is not None and self.window_unit not in WINDOW_UNITS:
            raise ValueError(f"window_unit: must be one of {', '.join(WINDOW_UNITS)}; got {self.window_unit!r}")
        if not 0 <= self.tissue_threshold <= 1:
            raise ValueError(f"tissue_threshold: must be in [0, 1]; got {self.tissue_threshold!r}")
        if not 0 < self.min_overlap <= 1:
            raise ValueError(f"min_overlap: must be in (0, 1]; got {self.min_overlap!r}")
        for key in ("window_size", "window_step", "magnification"):
            v = getattr(self, key)
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise ValueError(f"{key}: must be a positive number; got {v!r}")
            if v is not None:
                object.__setattr__(self, key, float(v))  # 500 and 500.0: one setting, one digest
        if self.block < 1 or self.thumbnail_side < 64:
            raise ValueError("block must be >= 1 and thumbnail_side >= 64")


def _positive(v: Any, k: str) -> float:
    return number(v, k, positive=True)


def _fraction(v: Any, k: str) -> float:
    v = number(v, k)
    if not 0 <= v <= 1:
        raise ConfigError(f"{k}: must be a number in [0, 1]; got {v!r}")
    return v


_SETTING_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "tissue_threshold": _fraction, "window_size": _positive, "window_step": _positive,
    "window_unit": lambda v, k: texts([v], k, WINDOW_UNITS)[0] if isinstance(v, str) else text(v, k),
    "magnification": _positive, "heatmap_class": lambda v, k: texts([v], k, CLASSES)[0] if isinstance(v, str)
    else text(v, k),
    "block": lambda v, k: integer(v, k, 1), "min_overlap": _fraction,
    "thumbnail_side": lambda v, k: integer(v, k, 64), "skip_errors": flag,
}


@dataclass(frozen=True)
class InferSet:
    """One `infer.sets.<name>`: the slides of a corpus's splits, through some of the trained models."""

    name: str
    corpus: str
    splits: tuple[str, ...] = SPLITS
    configs: tuple[str, ...] | None = None  # None: every trained configuration


@dataclass(frozen=True)
class InferSection:
    sets: tuple[InferSet, ...] = ()
    settings: InferSettings = field(default_factory=InferSettings)


def parse(cfg: Mapping[str, Any] | None, exp: Experiment, where: str) -> InferSection:
    """Check the optional `infer:` section: `sets.<name>: {corpus, splits, configs}` and the InferSettings keys."""
    if cfg is None:
        return InferSection()
    cfg = section(cfg, where, ("sets", *_SETTING_CHECKS))
    values = check_fields({k: v for k, v in cfg.items() if k != "sets"}, _SETTING_CHECKS, where)
    try:
        settings = InferSettings(**values)
    except ValueError as exc:
        raise ConfigError(f"{where}.{exc}") from None
    sets = []
    for name, s in section(need(cfg, "sets", where), f"{where}.sets").items():
        at = f"{where}.sets.{name}"
        s = section(s, at, ("corpus", "splits", "configs"))
        corpus = text(need(s, "corpus", at), f"{at}.corpus")
        if corpus not in exp.corpora:
            raise ConfigError(f"{at}.corpus: {corpus!r} is not one of the corpora ({', '.join(exp.corpora)})")
        configs = texts(s["configs"], f"{at}.configs") if s.get("configs") is not None else None
        sets.append(InferSet(name, corpus, texts(s.get("splits", list(SPLITS)), f"{at}.splits", SPLITS), configs))
        _configs(exp, sets[-1])  # checked at load, against the train section (parsed before this one)
    return InferSection(tuple(sets), settings)


# ----------------------------------------------------------------------------------------------- rendering
def render_settings(model_manifest: Mapping[str, Any], settings: InferSettings) -> tuple[PatchSettings, str]:
    """The model's dataset's PatchSettings with the inference window, and where the window came from.

    `model_manifest` carries the dataset's settings under "dataset_settings" (see `model_context`). Region-mode
    datasets have no window: then 500 px, step 500, unless the infer settings give one."""
    ds = PatchSettings(**model_manifest["dataset_settings"])
    if ds.mode == "window":
        base = {k: getattr(ds, k) for k in DEFAULT_WINDOW}
        source = "the model's dataset (window mode)"
    else:
        base = dict(DEFAULT_WINDOW)
        source = "default 500 px, step 500 (the model's dataset is region mode: it has no window)"
    given = {k: getattr(settings, k) for k in DEFAULT_WINDOW if getattr(settings, k) is not None}
    if given:
        source = "the infer settings" + (f" over {source}" if len(given) < len(DEFAULT_WINDOW) else "")
    window = {**base, **given}
    if "window_size" in given and "window_step" not in given:
        window["window_step"] = None  # a new size without a step: the step is the size
    return replace(ds, mode="window", **window), source


def render_windows(slide: Slide, boxes: np.ndarray, s: PatchSettings) -> np.ndarray:
    """(n, p, p) uint8: each level-0 box rendered by wsi.patches.render_patch with settings `s`, byte for byte as
    extract renders it (the same decoder path, scaled JPEG decoding included)."""
    boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
    out = np.zeros((len(boxes), s.patch_size, s.patch_size), np.uint8)
    for k, box in enumerate(boxes):
        out[k], _ = render_patch(slide, tuple(int(v) for v in box), s)
    return out

def window_matrix(slide: Slide, boxes: np.ndarray, model_manifest: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The model's input rows for level-0 windows of one slide, made as its training rows were, and which windows
    they describe: pixels through extract's rendering, feature families through the features stage's reading at
    the dataset's resolution (a window a family cannot describe, e.g. no tissue, is left unscored, never a NaN)."""
    arrays = tuple((model_manifest.get("config") or {}).get("features") or (PIXELS,))
    if arrays == (PIXELS,):
        s = PatchSettings(**model_manifest["render_settings"])
        return render_windows(slide, boxes, s).reshape(len(boxes), -1), np.ones(len(boxes), bool)
    from crystal_dask.features import FeatureError, compute_families
    from crystal_dask.stages.features import read_rgb

    made = model_manifest.get("feature_settings") or {}
    missing = [a for a in arrays if a not in made or a == PIXELS or "um_per_px" not in made[a]]
    if missing:  # pixels beside features, or PCA: its components are not kept with the model
        raise ValueError(f"whole-slide windows can be described by handcrafted families only; the model also "
                         f"uses {missing}")
    first = made[arrays[0]]
    X = np.zeros((len(boxes), sum(len(made[a]["columns"]) for a in arrays)), np.float32)
    ok = np.zeros(len(boxes), bool)
    for i, box in enumerate(boxes):
        try:
            rgb, res = read_rgb(slide, tuple(int(v) for v in box), slide.mpp, first["um_per_px"], first["max_side"])
            values = compute_families(rgb, res, arrays)
        except FeatureError:
            continue
        X[i] = np.concatenate([values[a] for a in arrays])
        ok[i] = True
    return X, ok


def predict(X: np.ndarray, model: Any) -> np.ndarray:
    """(n, 9) float32 class probabilities; columns for classes the model never saw stay 0."""
    out = np.zeros((X.shape[0], N_CLASSES), np.float32)
    if len(X):
        out[:, model.classes_] = model.predict_proba(X.astype(np.float32))
    return out


# ----------------------------------------------------------------------------------------------- one slide
@dataclass(frozen=True)
class SlideInput:
    """A slide to infer, with what is known of it before opening it."""

    slide: str  # path
    bname: str  # output names (unique within one run)
    patient: str | None = None
    split: str | None = None
    mpp: float | None = None  # from the annotation header when the slide records none
    regions: tuple[tuple[tuple[float, ...], tuple[float, ...], int], ...] = ()  # (xs, ys, class index) to score


def slide_dir(out: Path, bname: str) -> Path:
    return Path(out) / "slides" / bname


def output_paths(out: Path, bname: str, heatmap_class: str) -> dict[str, Path]:
    """Every file infer writes for one slide."""
    from crystal_dask.exports.region_decisions import region_decisions_path

    d = slide_dir(out, bname)
    return {"zarr": d / "windows.zarr", "thumbnail": d / "thumbnail.png", "overlay": d / f"{bname}_overlay.png",
            "heatmap": d / f"{bname}_heatmap_{heatmap_class}.png", "geojson": d / f"{bname}.geojson",
            "region_decisions": region_decisions_path(d, bname), "score": d / "score.json"}


def _slide_identity(path: str) -> list:
    p = Path(path)
    try:
        st = p.stat()
        return [str(p.resolve()), st.st_size, st.st_mtime_ns]
    except OSError:
        return [str(p), -1, -1]


def plan_slide(entry: SlideInput, out: Path, model_manifest: Mapping[str, Any],
               settings: InferSettings) -> dict[str, Any]:
    """Read a slide's header (no pixels) and plan its grid and blocks; a reject dict when it cannot be planned."""
    s = PatchSettings(**model_manifest["render_settings"])
    try:
        with Slide(entry.slide) as slide:
            width, height, mpp = slide.width, slide.height, slide.mpp or entry.mpp
    except SlideError as exc:
        return {"reject": f"slide unreadable: {exc}"}
    from crystal_dask.wsi.tissue_mask import window_grid

    size_step = window_px({"mpp": mpp}, s)
    if isinstance(size_step, str):
        return {"reject": size_step}
    size, step = size_step
    rows, cols = window_grid(width, height, size, step)
    if rows * cols == 0:
        return {"reject": f"the slide ({width}x{height} px) is smaller than one {size:.0f} px window"}
    digest = fingerprint(FORMAT_VERSION, model_manifest["sha256"], s.as_dict(), asdict(settings),
                         _slide_identity(entry.slide), entry.mpp, [list(map(list, r[:2])) + [r[2]]
                                                                    for r in entry.regions])
    b = settings.block
    blocks = [(r0, c0) for r0 in range(0, rows, b) for c0 in range(0, cols, b)]
    return {"slide": entry.slide, "bname": entry.bname, "width": width, "height": height, "mpp": mpp,
            "size": size, "step": step, "rows": rows, "cols": cols, "blocks": blocks, "digest": digest,
            "dir": str(slide_dir(out, entry.bname)), "markers": str(slide_dir(out, entry.bname) / MARKERS / digest)}


def _fail(task: Mapping[str, Any], what: str, exc: BaseException) -> dict:
    if not task["skip_errors"]:
        raise exc
    return {"error": f"{what}: {type(exc).__name__}: {exc}" if not isinstance(exc, SlideError) else f"{what}: {exc}"}


def _marker(task: Mapping[str, Any], name: str) -> Path:
    return Path(task["markers"]) / f"{name}.json"


def infer_tissue(task: dict) -> dict:
    """Task infer-tissue: the slide's tissue grid, thumbnail and empty zarr; idempotent through its marker."""
    import zarr
    from PIL import Image
    from zarr.codecs import ZstdCodec

    from crystal_dask.wsi.tissue_mask import mask_from_rgb, thumbnail, tissue_fraction, window_boxes

    marker = _marker(task, "tissue")
    if marker.exists():
        return json.loads(marker.read_text())
    rows, cols, b = task["rows"], task["cols"], task["block"]
    try:
        with Slide(task["slide"]) as slide:
            rgb, ds = thumbnail(slide, task["thumbnail_side"])
        mask = mask_from_rgb(rgb, ds)
        frac = tissue_fraction(mask, ds, window_boxes(rows, cols, task["size"], task["step"])).reshape(rows, cols)
    except (SlideError, OSError, ValueError, MemoryError) as exc:
        result = _fail(task, "tissue", exc)
        write_json(marker, result, indent=None)
        return result
    tissue = frac >= task["tissue_threshold"]
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    write_atomic(task["thumbnail"], buf.getvalue())
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
    result = {"tissue_windows": int(tissue.sum()), "downsample": float(ds)}
    write_json(marker, result, indent=None)
    return result


def infer_block(task: dict, tissue_done: dict, model: Any) -> dict:
    """Task infer-windows: predict one block's tissue windows and write its whole zarr chunk, then its marker."""
    import zarr

    from crystal_dask.runtime.allocator import roomy_malloc

    marker = _marker(task, f"block-{task['r0']:05d}-{task['c0']:05d}")
    if marker.exists():
        return json.loads(marker.read_text())
    if "error" in tissue_done:
        return {"error": "no tissue grid"}
    roomy_malloc(task["stage"])
    r0, c0, b = task["r0"], task["c0"], task["block"]
    group = zarr.open_group(task["zarr"], mode="r+")
    tissue = group["tissue"][r0:r0 + b, c0:c0 + b]
    h, w = tissue.shape
    boxes = _block_boxes(r0, c0, h, w, task["size"], task["step"])
    keep = tissue.ravel()
    proba = np.zeros((h * w, N_CLASSES), np.float32)
    try:
        if keep.any():
            with Slide(task["slide"]) as slide:
                X, described = window_matrix(slide, boxes[keep], task["model_manifest"])
            scored = np.flatnonzero(keep)[described]
            proba[scored] = predict(X[described], model)
            keep[:] = False
            keep[scored] = True
    except (SlideError, OSError, ValueError, MemoryError) as exc:
        result = _fail(task, f"windows {r0},{c0}", exc)
        write_json(marker, result, indent=None)
        return result
    group["proba"].with_config({"write_empty_chunks": True})[r0:r0 + h, c0:c0 + w] = proba.reshape(h, w, N_CLASSES)
    result = {"windows": int(keep.sum())}
    write_json(marker, result, indent=None)
    return result


def _block_boxes(r0: int, c0: int, h: int, w: int, size: float, step: float) -> np.ndarray:
    """Level-0 boxes of grid windows [r0, r0 + h) x [c0, c0 + w), row-major, rounded as window_boxes does."""
    xs = np.round(np.arange(c0, c0 + w) * step)
    ys = np.round(np.arange(r0, r0 + h) * step)
    x0 = np.broadcast_to(xs[None, :], (h, w)).ravel()
    y0 = np.broadcast_to(ys[:, None], (h, w)).ravel()
    side = round(size)
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1).astype(np.int64)


def class_grid(proba: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """Predicted class index per window (argmax; ties to the lower index), -1 where no window was scored."""
    return np.where(tissue, proba.argmax(axis=-1), -1).astype(np.int64)


def infer_export(task: dict, tissue_done: dict, blocks: list[dict]) -> dict:
    """Task infer-export: a slide's grid -> overlay and heatmap PNGs, GeoJSON, region decisions, summary rows and
    (with annotations) scores. Returns {"rows": summary rows, "score": ...} or {"error": reason}."""
    import zarr
    from PIL import Image

    from crystal_dask.exports.geojson import class_map_to_geojson, write_geojson
    from crystal_dask.exports.overlay import heatmap_png, overlay_png
    from crystal_dask.exports.region_decisions import write_region_decisions
    from crystal_dask.wsi.annotations import Header

    marker = _marker(task, "export")
    if marker.exists():
        return json.loads(marker.read_text())
    errors = [x["error"] for x in (tissue_done, *blocks) if "error" in x]
    if errors:
        result = {"error": errors[0] if errors[0] != "no tissue grid" else "tissue: failed"}
        write_json(marker, result, indent=None)
        return result
    try:
        group = zarr.open_group(task["zarr"], mode="r")
        proba, tissue = group["proba"][...], group["tissue"][...]
        classes = class_grid(proba, tissue)
        size, step = task["size"], task["step"]
        geo = {"step": step, "size": size}
        paths = {k: Path(v) for k, v in task["paths"].items()}
        thumb = np.asarray(Image.open(paths["thumbnail"]).convert("RGB"))
        ds = tissue_done["downsample"]
        overlay_png(paths["overlay"], thumb, classes, ds, **geo)
        k = CLASSES.index(task["heatmap_class"])
        heat = np.where(tissue, proba[..., k], np.nan)
        heatmap_png(paths["heatmap"], thumb, heat, ds, label=f"P({task['heatmap_class']})", **geo)
        write_geojson(paths["geojson"], class_map_to_geojson(classes, proba, **geo))
        header = Header(task["bname"], task["mpp"], task["width"], task["height"])
        write_region_decisions(paths["region_decisions"].parent, header, classes, proba, **geo)
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
        score = None
        if task["regions"]:
            score = score_slide(classes, task["regions"], size, step, task["min_overlap"])
            write_json(paths["score"], score)
    except (OSError, ValueError, MemoryError) as exc:
        result = _fail(task, "export", exc)
        write_json(marker, result, indent=None)
        return result
    result = {"rows": rows, "score": score, "windows": int(tissue.sum()), "grid": [int(v) for v in classes.shape]}
    write_json(marker, result, indent=None)
    return result


def score_slide(classes: np.ndarray, regions: Sequence[Sequence[Any]], size: float, step: float,
                min_overlap: float) -> dict[str, Any]:
    """Window labels by NEDC's frame rule, then the published tables and per-class Dice (window_scoring), plus
    the counts that add up over slides (confusion; Dice numerators and denominators)."""
    from crystal_dask.metrics import confusion
    from crystal_dask.window_scoring import label_windows, score_windows

    rows, cols = classes.shape
    boxes = _block_boxes(0, 0, rows, cols, size, step)
    truth, _ = label_windows(boxes, [(r[0], r[1]) for r in regions], [int(r[2]) for r in regions], min_overlap)
    pred = classes.ravel()
    out = score_windows(pred, truth)
    both = (pred >= 0) & (truth >= 0)
    out["confusion"] = confusion(truth[both], pred[both], N_CLASSES).tolist()
    out["dice_counts"] = {c: [2 * int(((pred == k) & (truth == k)).sum()), int((pred == k).sum() + (truth == k).sum())]
                          for k, c in enumerate(CLASSES)}
    return out


def combine_scores(scores: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Slides' scores added up: the published tables of the summed confusion and Dice of the summed areas."""
    from crystal_dask.metrics import summarize

    scores = [s for s in scores if s]
    if not scores:
        return None
    cm = np.sum([np.array(s["confusion"]) for s in scores], axis=0)
    dice = {}
    for c in CLASSES:
        num = sum(s["dice_counts"][c][0] for s in scores)
        den = sum(s["dice_counts"][c][1] for s in scores)
        dice[c] = num / den if den else None
    return {"slides": len(scores), "windows_scored": int(cm.sum()),
            "summary": summarize(cm, CLASSES) if cm.sum() else None, "dice": dice}


# ----------------------------------------------------------------------------------------------- the run
def model_context(model_path: Path) -> dict[str, Any]:
    """The model's manifest plus its dataset's patch settings ("dataset_settings"), for `render_settings`."""
    from crystal_dask.store.dataset import Dataset
    from crystal_dask.store.models import read_manifest

    manifest = dict(read_manifest(Path(model_path)))
    ds = Dataset(Path(manifest["dataset"]))
    manifest["dataset_settings"] = ds.read_manifest()["settings"]
    group = ds.group()  # how each feature array was made (resolution, columns), for window_matrix
    manifest["feature_settings"] = {a: dict(group[a].attrs) for a in (manifest.get("config") or {}).get("features", [])
                                    if a in ds.array_names() and a != "pixels"}
    return manifest


def _unique_bnames(entries: Sequence[SlideInput]) -> list[SlideInput]:
    seen: dict[str, int] = {}
    out = []
    for e in entries:
        n = seen.get(e.bname, 0)
        seen[e.bname] = n + 1
        out.append(e if n == 0 else replace(e, bname=f"{e.bname}~{n}"))
    return out


def infer_slides(
    slides: Sequence[SlideInput],
    model_path: str | Path,
    out: str | Path,
    client: Any,
    settings: InferSettings = InferSettings(),
    *,
    corpus: str = "input",
    show_progress: Callable[[list], None] | None = None,
) -> dict[str, Any]:
    """Infer every slide with the model; resumes block by block. Writes into `out`:

        slides/<bname>/windows.zarr               proba (rows x cols x 9 float32), tissue (bool), tissue_fraction
        slides/<bname>/<bname>_overlay.png        predicted class per window over the thumbnail, legend
        slides/<bname>/<bname>_heatmap_<cls>.png  P(heatmap_class) per window
        slides/<bname>/<bname>.geojson            QuPath FeatureCollection (level-0 px)
        slides/<bname>/<bname>_REGIONDECISIONS.csv  NEDC csv_v1.0.0
        slides/<bname>/score.json                 where the slide has annotated regions
        summary.parquet (INFER_SUMMARY), rejects.parquet (REJECTS), infer.json (written last: the run is done)

    Returns the manifest (infer.json)."""
    import dask
    from distributed import Client  # noqa: F401  (the type of `client`)

    from crystal_dask.runtime.allocator import roomy_stage
    from crystal_dask.store.models import load_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_file = out / "infer.json"
    manifest_file.unlink(missing_ok=True)
    model_manifest = model_context(Path(model_path))
    s, window_source = render_settings(model_manifest, settings)
    model_manifest["render_settings"] = s.as_dict()
    task_manifest = {k: model_manifest[k] for k in ("config", "render_settings", "sha256")}
    log.info("infer %s: window %s %s, step %s (from %s)", out, s.window_size, s.window_unit,
             s.window_step or s.window_size, window_source)

    rejects: list[dict] = []
    plans = []
    for entry in _unique_bnames(slides):
        plan = plan_slide(entry, out, model_manifest, settings)
        if "reject" in plan:
            rejects.append(reject_row("infer", entry.slide, "", plan["reject"]))
            continue
        markers = Path(plan["markers"])
        if not markers.exists():  # another model, settings or slide file: nothing old is kept
            shutil.rmtree(plan["dir"], ignore_errors=True)
            markers.mkdir(parents=True)
        _sweep(Path(plan["dir"]))
        plans.append((entry, plan))

    todo = []
    with roomy_stage(client) as stage:
        model_future = None
        for i, (entry, plan) in enumerate(plans):
            paths = {k: str(v) for k, v in output_paths(out, entry.bname, settings.heatmap_class).items()}
            base = {k: plan[k] for k in ("slide", "bname", "width", "height", "mpp", "size", "step", "rows", "cols",
                                         "digest", "markers")} | {
                "zarr": paths["zarr"], "thumbnail": paths["thumbnail"], "skip_errors": settings.skip_errors,
                "block": settings.block}
            export_marker = _marker(base, "export")
            if export_marker.exists():
                todo.append(dask.delayed(json.loads)(export_marker.read_text(), dask_key_name=f"infer-done-{i}"))
                continue
            tissue = dask.delayed(infer_tissue)(base | {"tissue_threshold": settings.tissue_threshold,
                                                        "thumbnail_side": settings.thumbnail_side},
                                                dask_key_name=f"infer-tissue-{plan['digest'][:8]}-{i}")
            if model_future is None:
                model_future = client.scatter(load_model(Path(model_path)), broadcast=True, hash=False)
            blocks = [dask.delayed(infer_block)(base | {"r0": r0, "c0": c0, "stage": stage,
                                                        "model_manifest": task_manifest},
                                                tissue, model_future,
                                                dask_key_name=f"infer-windows-{plan['digest'][:8]}-{i}-{r0}-{c0}")
                      for r0, c0 in plan["blocks"]]
            todo.append(dask.delayed(infer_export)(
                base | {"corpus": corpus, "paths": paths, "heatmap_class": settings.heatmap_class,
                        "regions": [list(map(list, r[:2])) + [r[2]] for r in entry.regions],
                        "min_overlap": settings.min_overlap},
                tissue, blocks, dask_key_name=f"infer-export-{plan['digest'][:8]}-{i}"))
        futures = client.compute(todo) if todo else []
        if show_progress is not None and futures:
            show_progress(futures)
        results = client.gather(futures)

    rows, scores, done = [], {}, 0
    for (entry, _plan), res in zip(plans, results, strict=True):
        if "error" in res:
            rejects.append(reject_row("infer", entry.slide, "", res["error"]))
            continue
        done += 1
        rows += res["rows"]
        if res.get("score"):
            scores[entry.bname] = res["score"]
    write_table(make_table(INFER_SUMMARY, rows), out / "summary.parquet", INFER_SUMMARY)
    write_table(make_table(REJECTS, rejects), out / "rejects.parquet", REJECTS)
    manifest = {
        "model": str(Path(model_path).resolve()), "model_sha256": model_manifest["sha256"], "corpus": corpus,
        "render_settings": s.as_dict(), "window_source": window_source, "settings": asdict(settings),
        "slides_in": len(slides), "slides_done": done, "rejects": len(rejects),
        "windows": int(sum(r["windows"] for r in rows)), "format_version": FORMAT_VERSION,
        "score": combine_scores(list(scores.values())),
        "slides": {e.bname: {"slide": e.slide, "rows": p["rows"], "cols": p["cols"], "size": p["size"],
                             "step": p["step"], "mpp": p["mpp"]} for e, p in plans},
    }
    write_json(manifest_file, manifest)
    return manifest


def _sweep(folder: Path) -> None:
    """Remove temporary files of writers killed mid-write (zarr's `*.partial`, our `.*.tmp`): see
    store/dataset.py's sweep_partial_writes; left in place a resumed run would differ on disk."""
    for pattern in ("*.partial", ".*.tmp"):
        for orphan in folder.rglob(pattern):
            orphan.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------- inputs
def slides_from_regions(regions: pa.Table, splits: Sequence[str] | None = None) -> list[SlideInput]:
    """One SlideInput per slide of a scan's regions table (its regions kept for scoring), in table order."""
    regions = conform(regions, REGIONS, "regions table")
    if splits is not None:
        regions = regions.filter(pc.is_in(regions["split"], pa.array(list(splits))))
    by_slide: dict[str, dict[str, Any]] = {}
    for r in regions.to_pylist():
        e = by_slide.setdefault(r["slide"], {"bname": r["bname"], "patient": r["patient"], "split": r["split"],
                                             "mpp": r["mpp"], "regions": []})
        e["regions"].append((tuple(r["polygon_x"]), tuple(r["polygon_y"]), CLASSES.index(r["cls"])))
    return [SlideInput(path, e["bname"], e["patient"], e["split"], e["mpp"], tuple(e["regions"]))
            for path, e in by_slide.items()]


def slide_stem(path: Path) -> str:
    name = path.name
    return name[: -len(".ome.tif")] if name.lower().endswith(".ome.tif") else path.stem


# ----------------------------------------------------------------------------------------------- the stage
def output_dir(exp: Experiment, set_name: str, config: str) -> Path:
    return exp.out / "infer" / set_name / config


def _configs(exp: Experiment, s: InferSet) -> list[str]:
    from crystal_dask.stages import train
    from crystal_dask.stages.features import PCA

    configs = {c.name: c for c in exp.settings[train.SECTION].configs}
    unknown = [c for c in s.configs or () if c not in configs]
    if unknown:
        raise ConfigError(f"infer.sets.{s.name}.configs: {unknown} are not train configurations ({', '.join(configs)})")
    chosen = list(configs) if s.configs is None else list(s.configs)
    for name in chosen:  # what window_matrix can make of a slide's windows: pixels alone, or families alone
        arrays = configs[name].features
        if arrays != (PIXELS,) and (PIXELS in arrays or PCA in arrays):
            raise ConfigError(f"infer.sets.{s.name}.configs: {name!r} trains on {list(arrays)}; whole-slide windows "
                              f"are described by pixels alone or by handcrafted families only (no pca)")
    return chosen


def _prune_slides(out: Path, entries: Sequence[SlideInput]) -> None:
    """Remove the folders of slides this run does not infer (slides of another corpus or split): a rerun's outputs
    are then those of a clean run."""
    keep = {slide_dir(out, e.bname) for e in _unique_bnames(entries)}
    for folder in sorted((out / "slides").glob("*")) if (out / "slides").is_dir() else []:
        if folder not in keep:
            shutil.rmtree(folder)


def steps(ctx: Context) -> Iterator[Step]:
    from crystal_dask.stages import scan, train

    exp = ctx.experiment
    sec: InferSection = exp.settings.get(SECTION) or InferSection()
    model_data = train.dataset_reads(exp, exp.settings[train.SECTION].corpus)  # model_context reads its dataset
    for s in sec.sets:
        for config in _configs(exp, s):
            out = output_dir(exp, s.name, config)
            reads = (f"{scan.NAME}:{s.corpus}", f"{train.NAME}:{config}", *model_data)

            def run(s=s, out=out, reads=reads) -> None:
                entries = slides_from_regions(scan.read_output(ctx.output(reads[0])).regions, s.splits)
                _prune_slides(out, entries)
                m = infer_slides(entries, ctx.output(reads[1]), out, ctx.client, sec.settings, corpus=s.corpus,
                                 show_progress=ctx.show_progress)
                log.info("infer %s: %s", out, json.dumps({k: m[k] for k in ("slides_done", "rejects", "windows")}))

            settings = {"splits": list(s.splits), "infer": asdict(sec.settings), "format_version": FORMAT_VERSION}
            yield Step(f"{NAME}:{s.name}:{config}", reads, settings, (out / "infer.json", out / "summary.parquet"),
                       run)


def results(exp: Experiment) -> dict[str, dict[str, dict[str, Any]]]:
    """set -> config -> {slides_done, rejects, windows, score, summary}: every infer run, as the report reads it."""
    sec: InferSection = exp.settings.get(SECTION) or InferSection()
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for s in sec.sets:
        for config in _configs(exp, s):
            folder = output_dir(exp, s.name, config)
            m = json.loads((folder / "infer.json").read_text())
            out.setdefault(s.name, {})[config] = {k: m[k] for k in ("slides_in", "slides_done", "rejects", "windows",
                                                                    "score", "window_source")} | {
                "summary": str(folder / "summary.parquet")}
    return out
