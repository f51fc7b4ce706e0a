"""write_report: report.json, report.md and the figures of an experiment, from its results dict (results.py).

The numbers (metrics.summarize and compare) are computed here, in the caller; each figure is one independent task
(figures.py, gallery.py, importances.py) run on the cluster's workers when a client is given, so the forests'
loading and matplotlib's drawing run side by side instead of one after another; without a client they run here.
The results are then put together in one fixed order: same input, same bytes, wherever the figures were drawn.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crystal_dask.metrics import compare, summarize
from crystal_dask.report import markdown
from crystal_dask.report.paired import crystalline_split, load_paired, paired_for
from crystal_dask.report.results import check_results, slug
from crystal_dask.runtime.keys import stage_key
from crystal_dask.store.files import write_atomic


class _Done:
    """A result computed at once, answering like a Future."""

    def __init__(self, value: Any):
        self.value = value

    def result(self) -> Any:
        return self.value


def _submitter(client: Any | None) -> Callable[..., Any]:
    """submit(fn, *args) -> an object with .result(): a task on `client`'s workers (named after the stage, then
    the figure: report-confusion, report-gallery, ...), or a call made now."""
    if client is None:
        return lambda fn, *args: _Done(fn(*args))
    return lambda fn, *args: client.submit(fn, *args,
                                           key=stage_key(f"{fn.__name__.strip('_')}-{uuid.uuid4().hex}", "report"))


def _confusion(summary: dict[str, Any], title: str, path: Path) -> Path:
    from crystal_dask.report.figures import confusion_png

    return confusion_png(summary, title, path)


def _per_class(summaries: dict[str, Any], classes: Sequence[str], title: str, path: Path) -> Path:
    from crystal_dask.report.figures import per_class_png

    return per_class_png(summaries, classes, title, path)


def _importances(model: str, columns: Sequence[str] | None, features: Sequence[str] | None, title: str,
                 path: Path) -> dict[str, Any]:
    """One model's top importances and their figure: the model is loaded once, where the figure is drawn."""
    from crystal_dask.report.figures import importances_png
    from crystal_dask.report.importances import importances

    entry = {"model": model, "features": features, **importances(model, columns), "figure": path.name}
    importances_png(entry, title, path)
    return entry


def _gallery(set_name: str, entry: dict[str, Any], config: str, classes: Sequence[str], path: Path) -> dict:
    from crystal_dask.report.gallery import gallery

    return gallery(set_name, entry, config, classes, path)


def write_report(results: dict[str, Any], out_dir: Path, paired: dict | None = None,
                 client: Any | None = None) -> dict[str, Path]:
    """Write report.json, report.md, confusion_<set>_<config>.png and per_class_<set>.png into `out_dir`, plus
    importances_<config>.png for every model that names its file (`models.<config>.model`) and gallery_<set>.png
    for every set whose last configuration names its dataset and predictions (`sets.<set>.<config>.dataset`).

    `paired[set][config] = {"correct": bool array, "patients": str array}` (same patches, same order for every
    config of a set) enables McNemar and the patient bootstrap; when None, it is read from the predictions
    tables named in `results` (see load_paired). `client`: draw the figures on its workers (they must see
    `out_dir`). Returns {file name: path}. Same input, byte-identical JSON and Markdown. Every file is written
    atomically.
    """
    check_results(results)
    out_dir = Path(out_dir)
    classes, configs = list(results["classes"]), list(results["configs"])
    base = configs[0]
    if paired is None:
        paired = load_paired(results)
    slugs = [slug(s) for s in results["sets"]]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"results['sets']: set names {list(results['sets'])} collide as file names {slugs}")
    submit = _submitter(client)

    numbers = []  # every set's numbers first: inconsistent results fail before any figure is started
    for set_name, by_config in results["sets"].items():
        summaries: dict[str, Any] = {}
        for config in configs:
            entry = by_config[config]
            s = summarize(np.array(entry["confusion"]), classes)
            if s["n"] != entry["n"]:
                raise ValueError(f"results['sets'][{set_name!r}][{config!r}]: n={entry['n']} but the confusion "
                                 f"matrix counts {s['n']}")
            summaries[config] = s
        comparisons = {
            config: compare(np.array(by_config[base]["confusion"]), np.array(by_config[config]["confusion"]),
                            classes, **paired_for(paired, set_name, base, config))
            for config in configs[1:]
        }
        numbers.append((summaries, comparisons))

    # the slowest figures (a forest to load, patches to read) are started first
    imp_tasks = {}
    for config, m in results["models"].items():
        if not m.get("model"):  # results.json written before the importances: none
            continue
        feats = ", ".join(m.get("features") or []) or "?"
        imp_tasks[config] = submit(_importances, m["model"], m.get("columns"), m.get("features"),
                                   f"{config} ({feats}): feature importances",
                                   out_dir / f"importances_{slug(config)}.png")
    gallery_tasks = {}
    for (set_name, by_config), set_slug in zip(results["sets"].items(), slugs, strict=True):
        last = by_config[configs[-1]]
        if last.get("dataset") and last.get("predictions"):  # results.json written before the gallery: none
            gallery_tasks[set_name] = submit(_gallery, set_name, last, configs[-1], classes,
                                             out_dir / f"gallery_{set_slug}.png")
    per_set = []
    for (set_name, _), set_slug, (summaries, comparisons) in zip(results["sets"].items(), slugs, numbers,
                                                                 strict=True):
        figures = {config: f"confusion_{set_slug}_{slug(config)}.png" for config in configs}
        figures["per_class"] = f"per_class_{set_slug}.png"
        tasks = {figures[c]: submit(_confusion, summaries[c], f"{set_name} · {c}", out_dir / figures[c])
                 for c in configs}
        tasks[figures["per_class"]] = submit(_per_class, summaries, classes, f"{set_name}: per-class accuracy",
                                             out_dir / figures["per_class"])
        per_set.append((set_name, set_slug, summaries, comparisons, figures, tasks, gallery_tasks.get(set_name)))

    written: dict[str, Path] = {}
    sets_out: dict[str, Any] = {}
    md = [f"# {results['job']}", "",
          f"Configurations: {', '.join(configs)} (baseline: {base}). Classes: {', '.join(classes)}.", ""]
    for set_name, set_slug, summaries, comparisons, figures, tasks, gallery_task in per_set:
        written |= {name: task.result() for name, task in tasks.items()}
        sets_out[set_name] = {"summaries": summaries, "comparisons": comparisons, "figures": figures}
        md += markdown.set_markdown(set_name, configs, classes, summaries, comparisons, figures)
        split = crystalline_split(paired.get(set_name, {}), configs)
        if split:
            sets_out[set_name]["crystalline"] = split
            md += markdown.crystalline_markdown(split, configs)
        if gallery_task is not None:
            g = gallery_task.result()
            name = f"gallery_{set_slug}.png"
            written[name] = out_dir / name
            figures["gallery"] = name
            sets_out[set_name]["gallery"] = g
            md += markdown.gallery_markdown(set_name, g)

    md += markdown.models_markdown(results["models"], classes)
    imps = {config: task.result() for config, task in imp_tasks.items()}
    for e in imps.values():
        written[e["figure"]] = out_dir / e["figure"]
    if imps:
        md += markdown.importances_markdown(imps)
    if results.get("calcification"):
        md += markdown.calcification_markdown(results["calcification"])
    if results.get("infer"):
        md += markdown.infer_markdown(results["infer"], classes)
    if results["notes"]:
        md += ["## Notes", "", *(f"- {n}" for n in results["notes"]), ""]
    report = {"job": results["job"], "classes": classes, "configs": configs, "baseline": base, "sets": sets_out,
              "models": results["models"], "notes": list(results["notes"])}
    if imps:
        report["importances"] = imps
    if results.get("calcification"):
        report["calcification"] = results["calcification"]
    if results.get("infer"):
        report["infer"] = results["infer"]  # a key of its own: the keys above stay as they were
    written["report.json"] = write_atomic(
        out_dir / "report.json", (json.dumps(report, indent=2, allow_nan=False) + "\n").encode()
    )
    written["report.md"] = write_atomic(out_dir / "report.md", "\n".join(md).encode())
    return written
