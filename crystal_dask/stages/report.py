"""Stage report: gathers the models' manifests and every evaluation into <out>/results.json, then writes
<out>/report/ (report.json with every number, report.md, PNG figures) with crystal_dask.report, whose figures are
drawn on the cluster's workers. This module is only the plug-in: what the report reads and when it is redone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crystal_dask.experiment import Experiment
from crystal_dask.report.write import write_report
from crystal_dask.stages import evaluate, train
from crystal_dask.stages.base import Context, Step
from crystal_dask.store.dataset import PIXELS, Dataset
from crystal_dask.store.files import write_json

NAME = "report"


def output_dir(exp: Experiment) -> Path:
    return exp.out / "report"


def collect(exp: Experiment) -> dict[str, Any]:
    """results.json: every model's training summary and every evaluation, from those stages' own outputs."""
    from crystal_dask.vocab import CLASSES

    models = {name: {"train_rows": m["train_rows"], "class_counts": m["class_counts"],
                     "manifest": str(train.model_path(exp, name).with_suffix(".json")), "leakage": m.get("leakage"),
                     "model": str(train.model_path(exp, name)),
                     # a manifest from before feature sets trained on pixels and named no columns
                     "features": list(m["config"].get("features") or [PIXELS]), "columns": m.get("columns")}
              for name, m in train.trained(exp).items()}
    notes = list(exp.notes) + [f"{n}: {m['leakage']}" for n, m in models.items() if m.get("leakage")]
    sets = evaluate.results(exp)
    for set_name, by_config in sets.items():
        for config, entry in by_config.items():
            confusion_json = evaluate.output_dir(exp, set_name, config) / "confusion.json"
            entry["dataset"] = json.loads(confusion_json.read_text())["dataset"]
    results = {"job": exp.name, "classes": list(CLASSES),
               "configs": [c.name for c in exp.settings[train.SECTION].configs],
               "sets": sets, "models": models, "notes": notes}
    if any("calcification" in m["features"] for m in models.values()):
        results["calcification"] = calcification_signal(exp, sets)
    from crystal_dask.stages import infer

    inferred = infer.results(exp)
    if inferred:  # only when an infer stage ran: results.json of other jobs is unchanged
        results["infer"] = inferred
    return results


def calcification_signal(exp: Experiment, sets: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """set -> how often its rows' calcification columns are non-zero, per class and crystalline/other row (read
    beside the importances: did calcification signal reach the forest at all?)."""
    from crystal_dask.features.calcification_summary import from_dataset

    splits = {s.name: s.splits for s in exp.settings[evaluate.SECTION]}
    out = {}
    for set_name, by_config in sets.items():
        dataset = next(iter(by_config.values()))["dataset"]  # one dataset per set, whatever the configuration
        if "calcification" in Dataset(Path(dataset)).array_names():
            out[set_name] = from_dataset(dataset, splits[set_name])
    return out


def steps(ctx: Context) -> Iterator[Step]:
    exp = ctx.experiment
    folder = output_dir(exp)
    ctx.products["report"] = folder / "report.md"
    # it reads what every training, evaluation and inference step made (declared before it)
    reads = tuple(n for n in ctx.steps if n.split(":")[0] in (train.NAME, evaluate.NAME, "infer"))
    order = {"configs": [c.name for c in exp.settings[train.SECTION].configs],
             "sets": [s.name for s in exp.settings[evaluate.SECTION]]}

    def run() -> None:
        results = collect(exp)
        write_json(exp.out / "results.json", results)
        write_report(results, folder, client=ctx.client)

    yield Step(NAME, reads, {"job": exp.name, "notes": list(exp.notes), **order},
               (exp.out / "results.json", folder / "report.md"), run)
