"""Stage report: gathers what each stage hands the report (its `report_inputs`, from the products of its own steps)
into <out>/results.json, then writes <out>/report/ (report.json with every number, report.md, PNG figures) with
crystal_dask.report, whose figures are drawn on the cluster's workers. This module is only the plug-in: what the
report reads and when it is redone; it names no other stage.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from crystal_dask.experiment import Experiment
from crystal_dask.report.write import write_report
from crystal_dask.stages import ordered
from crystal_dask.stages.base import Context, Step, stage_of
from crystal_dask.store.files import write_json

NAME = "report"


def output_dir(exp: Experiment) -> Path:
    return exp.out / "report"


def reporting() -> tuple[ModuleType, ...]:
    """The stages that hand the report something, in run order."""
    return tuple(s for s in ordered() if hasattr(s, "report_inputs"))


def collect(ctx: Context) -> dict[str, Any]:
    """results.json: the job, its classes and notes, and what every reporting stage hands over (for the running
    report step, which reads their steps)."""
    from crystal_dask.vocab import CLASSES

    exp = ctx.experiment
    results: dict[str, Any] = {"job": exp.name, "classes": list(CLASSES), "notes": list(exp.notes)}
    for stage in reporting():
        handed = stage.report_inputs(ctx, results)
        results |= {**handed, "notes": results["notes"] + handed.get("notes", [])}
    return results


def steps(ctx: Context) -> Iterator[Step]:
    exp = ctx.experiment
    folder = output_dir(exp)
    ctx.products["report"] = folder / "report.md"
    # every step of the reporting stages (declared before it); their order is the report's order
    stages = {s.NAME for s in reporting()}
    reads = tuple(n for n in ctx.steps if stage_of(n) in stages)

    def run() -> None:
        results = collect(ctx)
        write_json(exp.out / "results.json", results)
        write_report(results, folder, client=ctx.client)

    yield Step(NAME, reads, {"job": exp.name, "notes": list(exp.notes), "order": list(reads)},
               (exp.out / "results.json", folder / "report.md"), run)
