"""The stage contract, over stages.ORDER: every step's reads name steps that exist and run earlier, and a step
reads another's outputs only through Context.output, which refuses a read it did not declare."""

from __future__ import annotations

from pathlib import Path

import pytest

from crystal_dask.pipeline import Planner
from crystal_dask.stages import ORDER, load_experiment, ordered, report
from crystal_dask.stages.base import Context, Step, UndeclaredRead
from tests.helpers.jobs import TINY, write_job

# every stage with steps: feature families and PCA, and whole-slide inference of one set
RICH = {**TINY, "features": {"families": ["stain"], "pca": 4},
        "infer": {"sets": {"slides": {"corpus": "tubr", "splits": ["eval"]}}}}


def declared(tmp_path: Path) -> list[tuple[str, Step]]:
    """(stage, step) for every step of the rich job, in run order, declared as the runner declares them."""
    planner = Planner(Context(load_experiment(write_job(tmp_path, {**RICH, "out": str(tmp_path / "out")})), None))
    out = []
    for stage in ordered():
        for step in stage.steps(planner.ctx):
            planner.declare(step)
            out.append((stage.NAME, step))
    return out


def test_every_read_names_a_step_that_runs_earlier(tmp_path):
    steps = declared(tmp_path)
    assert [name for name, _ in steps] == sorted((name for name, _ in steps), key=ORDER.index)
    assert {name for name, _ in steps} == set(ORDER)  # the rich job exercises every stage
    seen: set[str] = set()
    for stage, step in steps:
        assert step.name == stage or step.name.startswith(f"{stage}:"), step.name
        assert step.outputs, step.name
        missing = [r for r in step.reads if r not in seen]
        assert not missing, f"{step.name} reads {missing}, which no earlier step makes"
        seen.add(step.name)
    reads = {step.name: set(step.reads) for _, step in steps}
    assert reads["extract:fcbr"] == {"scan:fcbr"}
    assert reads["evaluate:TUBR:crystal"] == {"train:crystal", "extract:tubr", "features:tubr", "train:pca:fit"}
    assert reads["infer:slides:baseline"] >= {"scan:tubr", "train:baseline"}
    # the report reads every step of the stages that hand it their inputs, and nothing else
    handing = {s.NAME for s in report.reporting()}
    assert handing == {"train", "evaluate", "infer"}
    assert reads["report"] == {n for n in reads if n.split(":")[0] in handing}


def test_a_step_that_reads_an_earlier_one_first_is_refused(tmp_path):
    exp = load_experiment(write_job(tmp_path, {**TINY, "out": str(tmp_path / "out")}))
    planner = Planner(Context(exp, None))
    late = Step("extract:fcbr", ("scan:fcbr",), {}, (tmp_path / "x",), lambda: None)
    with pytest.raises(ValueError, match="extract:fcbr reads scan:fcbr, which no earlier step makes"):
        planner.declare(late)


def test_the_output_accessor_refuses_an_undeclared_read(tmp_path):
    ctx = Context(load_experiment(write_job(tmp_path, {**TINY, "out": str(tmp_path / "out")})), None)
    scan = Step("scan:fcbr", (), {}, (tmp_path / "r",), lambda: None, product=tmp_path / "scan")
    extract = Step("extract:fcbr", ("scan:fcbr",), {}, (tmp_path / "d",), lambda: None)
    other = Step("extract:tubr", (), {}, (tmp_path / "e",), lambda: None)
    ctx.steps.update({s.name: s for s in (scan, extract, other)})
    with pytest.raises(UndeclaredRead, match="no step reads scan:fcbr"):
        ctx.output("scan:fcbr")  # outside any step's run
    ctx.running = extract
    assert ctx.output("scan:fcbr") == tmp_path / "scan"
    ctx.running = other
    with pytest.raises(UndeclaredRead, match="extract:tubr reads scan:fcbr, which it does not declare"):
        ctx.output("scan:fcbr")


def test_a_stage_hands_the_report_only_what_the_report_step_declares(tmp_path):
    """The report collects each stage's inputs through Context.output: a report step that does not declare a
    model's training is refused before any file is read."""
    ctx = Context(load_experiment(write_job(tmp_path, {**RICH, "out": str(tmp_path / "out")})), None)
    for stage in ordered()[:-1]:
        ctx.steps |= {step.name: step for step in stage.steps(ctx)}
    full = next(iter(report.steps(ctx)))
    ctx.running = Step(full.name, tuple(r for r in full.reads if r != "train:baseline"), {}, full.outputs, full.run)
    with pytest.raises(UndeclaredRead, match="report reads train:baseline, which it does not declare"):
        report.collect(ctx)
