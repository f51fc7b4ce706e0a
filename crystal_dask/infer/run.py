"""Running whole-slide inference: the slides to infer (`SlideInput`, from files or a scan's regions), each
slide's plan (header only: grid, blocks, digest) and `infer_slides`, which runs the tasks (infer/tasks.py) of all
slides on one cluster and writes the run's tables and manifest."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from crystal_dask.infer.settings import InferSettings, render_context
from crystal_dask.infer.tasks import (
    FORMAT_VERSION,
    end_stage,
    grid_blocks,
    infer_block,
    infer_export,
    infer_picture,
    infer_tissue,
    load_shared_model,
    marker,
    model_key,
)
from crystal_dask.stages.base import fingerprint
from crystal_dask.store.files import remove_partial_writes, write_json
from crystal_dask.store.schema import INFER_SUMMARY, REGIONS, REJECTS, conform, make_table, reject_row, write_table
from crystal_dask.vocab import CLASSES
from crystal_dask.wsi.patches import PatchSettings, window_px
from crystal_dask.wsi.slides import Slide, SlideError

MARKERS = ".infer"
log = logging.getLogger("crystal_dask.pipeline")


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
    regions = [[list(xs), list(ys), cls] for xs, ys, cls in entry.regions]  # as JSON holds them
    digest = fingerprint(FORMAT_VERSION, model_manifest["sha256"], model_manifest["feature_settings"], s.as_dict(),
                         asdict(settings), _slide_identity(entry.slide), entry.mpp, regions)
    return {"slide": entry.slide, "bname": entry.bname, "width": width, "height": height, "mpp": mpp,
            "size": size, "step": step, "rows": rows, "cols": cols, "digest": digest,
            "blocks": len(grid_blocks(rows, cols, settings.block)),
            "regions": regions,
            "dir": str(slide_dir(out, entry.bname)), "markers": str(slide_dir(out, entry.bname) / MARKERS / digest)}


def _unique_bnames(entries: Sequence[SlideInput]) -> list[SlideInput]:
    seen: dict[str, int] = {}
    out = []
    for e in entries:
        n = seen.get(e.bname, 0)
        seen[e.bname] = n + 1
        out.append(e if n == 0 else replace(e, bname=f"{e.bname}~{n}"))
    return out


def prune_slides(out: Path, entries: Sequence[SlideInput]) -> None:
    """Remove the folders of slides this run does not infer (slides of another corpus or split): a rerun's outputs
    are then those of a clean run."""
    keep = {slide_dir(out, e.bname) for e in _unique_bnames(entries)}
    for folder in sorted((out / "slides").glob("*")) if (out / "slides").is_dir() else []:
        if folder not in keep:
            shutil.rmtree(folder)


def infer_slides(
    slides: Sequence[SlideInput],
    model_path: str | Path,
    out: str | Path,
    client: Any,
    settings: InferSettings | None = None,
    *,
    corpus: str = "input",
    show_progress: Callable[[list], None] | None = None,
) -> dict[str, Any]:
    """Infer every slide with the model; resumes block by block. Writes into `out`:

        slides/<bname>/windows.zarr               proba (rows x cols x 9 float32), tissue (bool), scored (bool),
                                                  tissue_fraction
        slides/<bname>/<bname>_overlay.png        predicted class per window over the thumbnail, legend
        slides/<bname>/<bname>_heatmap_<cls>.png  P(heatmap_class) per window
        slides/<bname>/<bname>.geojson            QuPath FeatureCollection (level-0 px)
        slides/<bname>/<bname>_REGIONDECISIONS.csv  NEDC csv_v1.0.0
        slides/<bname>/score.json                 where the slide has annotated regions
        summary.parquet (INFER_SUMMARY), rejects.parquet (REJECTS), infer.json (written last: the run is done)

    Returns the manifest (infer.json); `settings` None: InferSettings' defaults."""
    from crystal_dask.infer.scoring import combine_scores

    settings = settings or InferSettings()
    out = Path(out)
    model_manifest, window_source = render_context(Path(model_path), settings)  # a refused model: nothing written
    out.mkdir(parents=True, exist_ok=True)
    manifest_file = out / "infer.json"
    manifest_file.unlink(missing_ok=True)
    s = model_manifest["render_settings"]
    log.info("infer %s: window %s %s, step %s (from %s)", out, s["window_size"], s["window_unit"],
             s["window_step"] or s["window_size"], window_source)

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
        remove_partial_writes(Path(plan["dir"]))
        plans.append((entry, plan))

    results = _compute(plans, model_path, model_manifest, out, client, settings, corpus, show_progress)
    rows, scores, done, unscored = [], {}, 0, 0
    for (entry, _plan), res in zip(plans, results, strict=True):
        if "error" in res:
            rejects.append(reject_row("infer", entry.slide, "", res["error"]))
            continue
        done += 1
        rows += res["rows"]
        unscored += res["unscored"]
        if res.get("score"):
            scores[entry.bname] = res["score"]
    write_table(make_table(INFER_SUMMARY, rows), out / "summary.parquet", INFER_SUMMARY)
    write_table(make_table(REJECTS, rejects), out / "rejects.parquet", REJECTS)
    manifest = {
        "model": str(Path(model_path).resolve()), "model_sha256": model_manifest["sha256"], "corpus": corpus,
        "render_settings": s, "window_source": window_source, "settings": asdict(settings),
        "slides_in": len(slides), "slides_done": done, "rejects": len(rejects),
        "windows": int(sum(r["windows"] for r in rows)), "unscored_windows": unscored,
        "format_version": FORMAT_VERSION,
        "score": combine_scores(list(scores.values())),
        "slides": {e.bname: {"slide": e.slide, "rows": p["rows"], "cols": p["cols"], "size": p["size"],
                             "step": p["step"], "mpp": p["mpp"]} for e, p in plans},
    }
    write_json(manifest_file, manifest)
    return manifest


def _compute(plans: list, model_path: str | Path, model_manifest: Mapping[str, Any], out: Path, client: Any,
             settings: InferSettings, corpus: str, show_progress: Callable[[list], None] | None) -> list[dict]:
    """Every slide's tasks in one graph, submitted at once (so blocks of all slides keep every worker busy, and
    nothing waits on this process); each slide's export result, in plan order. The model is loaded by a task of
    its own, on a worker, while another finds a slide's tissue; blocks receive it as a dependency (as bytes, one
    copy per worker: infer.tasks.SharedModel). A slide's blocks run largest first (their priority is their place
    in the tissue task's order), and its pictures are tasks of their own, drawn side by side."""
    import dask

    from crystal_dask.exports.slide import PICTURES
    from crystal_dask.runtime.allocator import roomy_stage
    from crystal_dask.store.models import checked_bytes

    task_manifest = {k: model_manifest[k] for k in ("config", "render_settings", "sha256", "feature_settings")}
    todo: list[Any] = []  # per slide: its export (or its finished result), in plan order
    needs_model = False
    with roomy_stage(client) as stage:
        shared = model_key(stage)
        model = dask.delayed(load_shared_model)(str(Path(model_path).resolve()), shared, model_manifest["sha256"],
                                                dask_key_name=shared)
        for i, (entry, plan) in enumerate(plans):
            paths = {k: str(v) for k, v in output_paths(out, entry.bname, settings.heatmap_class).items()}
            base = {k: plan[k] for k in ("slide", "bname", "width", "height", "mpp", "size", "step", "rows", "cols",
                                         "digest", "markers")} | {
                "zarr": paths["zarr"], "thumbnail": paths["thumbnail"], "skip_errors": settings.skip_errors,
                "block": settings.block}
            export_marker = marker(base, "export")
            if export_marker.exists():
                todo.append(dask.delayed(json.loads)(export_marker.read_text(), dask_key_name=f"infer-done-{i}"))
                continue
            key = f"{plan['digest'][:8]}-{i}"
            needs_model = True
            tissue = dask.delayed(infer_tissue)(base | {"tissue_threshold": settings.tissue_threshold,
                                                        "thumbnail_side": settings.thumbnail_side},
                                                dask_key_name=f"infer-tissue-{key}")
            blocks = []
            for slot in range(plan["blocks"]):  # the largest blocks first (see infer_tissue)
                with dask.annotate(priority=plan["blocks"] - slot):
                    blocks.append(dask.delayed(infer_block)(base | {"slot": slot, "stage": stage,
                                                                    "model_manifest": task_manifest},
                                                            tissue, model, dask_key_name=f"infer-windows-{key}-{slot}"))
            drawn = base | {"paths": paths, "heatmap_class": settings.heatmap_class}
            pictures = [dask.delayed(infer_picture)(drawn | {"picture": name}, tissue, blocks,
                                                    dask_key_name=f"infer-{name}-{key}") for name in PICTURES]
            todo.append(dask.delayed(infer_export)(
                drawn | {"corpus": corpus, "regions": plan["regions"], "min_overlap": settings.min_overlap},
                tissue, blocks, pictures, dask_key_name=f"infer-export-{key}"))
        if needs_model:
            # a changed, damaged or untrusted file fails here, in one line, before any task (a worker's failure
            # would print its traceback); the worker checks the same bytes again where it loads them
            checked_bytes(Path(model_path), sha256=model_manifest["sha256"])
        futures = client.compute(todo) if todo else []
        try:
            if show_progress is not None and futures:
                show_progress(futures)
            return client.gather(futures)
        finally:  # tasks not yet run are dropped; the workers' cached slides, model and arrays let go with the stage
            client.cancel(futures)
            client.run(end_stage, stage, on_error="ignore")


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
