"""The runner: every stage in order (crystal_dask.stages.ORDER), each step run or skipped by its key.

A step's key is derived from its settings and the keys of the steps it reads (stages/base.py). A step whose key
matches the one recorded beside its outputs (<out>/stages/<step>.json, with the settings and read keys that made
it), with every output present and undamaged, is skipped; extraction also resumes inside a step, chunk by chunk.
`dry_run` makes the same decisions, with the reason for each, without a cluster. On request
(`performance_reports`, `crystal-dask run --performance-reports`) each step that runs leaves a Dask performance
report (<out>/reports/<step>.html): it costs about a second per step, most of a small step's time. The job keeps
a log (<out>/job.log) and a status file. The runner knows nothing of any stage's files: stages declare their steps
(stages/base.py).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crystal_dask.experiment import Experiment
from crystal_dask.runtime.lock import hold
from crystal_dask.stages import ordered
from crystal_dask.stages.base import Context, Step, plain, step_key
from crystal_dask.status import Status
from crystal_dask.store.files import write_json

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger("crystal_dask.pipeline")


def _file_name(step: str) -> str:
    return step.replace(":", "-")


@dataclass(frozen=True)
class Decision:
    """What the runner does with one step, and why (the line `run --dry-run` prints)."""

    step: Step
    key: str
    run: bool
    why: str

    def line(self, width: int) -> str:
        """One listing line; `width` aligns the reasons of a whole listing (the longest step name)."""
        return f"{'run' if self.run else 'skip':<5} {self.step.name:<{width}} {self.why}"


def _changes(old: Any, new: Any, where: str = "") -> list[str]:
    """Dotted names of the settings that differ between two JSON values (a whole value below the top level when a
    type differs)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [c for k in sorted(set(old) | set(new), key=str)
                for c in _changes(old.get(k), new.get(k), f"{where}.{k}" if where else str(k))]
    return [] if old == new else [where or "(settings)"]


def _names(names: list[str], most: int = 3) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def reasons(record: dict[str, Any], step: Step, keys: dict[str, str]) -> list[str]:
    """Why a step's key differs from the one recorded beside its outputs: settings and upstream steps changed."""
    if "settings" not in record:
        return ["recorded without its inputs (an older crystal_dask)"]
    settings = _changes(record["settings"], plain(step.settings))
    before = record.get("reads", {})
    upstream = [r for r in step.reads if r in before and before[r] != keys[r]]
    added, dropped = [r for r in step.reads if r not in before], sorted(set(before) - set(step.reads))
    why = [f"{'setting' if len(settings) == 1 else 'settings'} {_names(settings)} changed"] if settings else []
    why += [f"upstream {_names(upstream)} changed"] if upstream else []
    why += [f"now reads {_names(added)}"] if added else []
    why += [f"no longer reads {_names(dropped)}"] if dropped else []
    return why or ["key changed"]


class Planner:
    """Declares every stage's steps in order and decides, for each, run or skip and why; reads no step's outputs
    but the records beside them (and a step's damage check)."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.keys: dict[str, str] = {}

    def record_path(self, step: Step) -> Path:
        return self.ctx.out / "stages" / f"{_file_name(step.name)}.json"

    def declare(self, step: Step) -> str:
        """Check the step's name (its own, and its own record file) and reads (every one an earlier step); return
        its key."""
        if step.name in self.ctx.steps:
            raise ValueError(f"step {step.name}: declared twice")
        record = self.record_path(step)
        shared = [s.name for s in self.ctx.steps.values() if self.record_path(s) == record]
        if shared:  # e.g. evaluate:a-b:c and evaluate:a:b-c: each would overwrite the other's record and rerun it
            raise ValueError(f"steps {shared[0]} and {step.name} would share the record {record.name}: "
                             "rename a configuration or set")
        missing = [r for r in step.reads if r not in self.keys]
        if missing:
            raise ValueError(f"step {step.name} reads {', '.join(missing)}, which no earlier step makes")
        self.ctx.steps[step.name] = step
        self.keys[step.name] = step_key(step, self.keys)
        return self.keys[step.name]

    def decide(self, step: Step) -> Decision:
        key = self.declare(step)
        record = self.record_path(step)
        if not record.exists():
            return Decision(step, key, True, "never run")
        recorded = json.loads(record.read_text())
        if recorded.get("key") != key:
            return Decision(step, key, True, "; ".join(reasons(recorded, step, self.keys)))
        missing = [p for p in step.outputs if not p.exists()]
        if missing:
            return Decision(step, key, True, f"outputs missing: {', '.join(_short(p, self.ctx.out) for p in missing)}")
        try:
            damage = step.damage() if step.damage is not None else []
        except OSError as exc:  # e.g. a dataset's zarr folder is gone while its manifest is there
            damage = [f"{type(exc).__name__}: {exc}"]
        if damage:
            more = f"; and {len(damage) - 5} more" if len(damage) > 5 else ""
            return Decision(step, key, True, f"outputs damaged: {'; '.join(map(str, damage[:5]))}{more}")
        return Decision(step, key, False, "up to date")

    def record(self, decision: Decision, **extra: Any) -> None:
        """Write a step's key beside its outputs once it ran, with what went in (its settings and the keys of the
        steps it read), so that a later dry run can say what changed."""
        step = decision.step
        write_json(self.record_path(step), {"key": decision.key, "settings": plain(step.settings),
                                            "reads": {r: self.keys[r] for r in step.reads}, **extra})

    def decisions(self) -> Iterator[Decision]:
        """Every step of every stage, in run order; a stage is asked for its steps once the earlier ones are done."""
        for stage in ordered():
            for step in stage.steps(self.ctx):
                yield self.decide(step)


def _short(path: Path, out: Path) -> str:
    return str(path.relative_to(out)) if path.is_relative_to(out) else str(path)


def dry_run(exp: Experiment) -> list[Decision]:
    """What `run` would do with every step, and why, without a cluster and without running anything."""
    return list(Planner(Context(exp, None)).decisions())


class Runner:
    def __init__(self, exp: Experiment, client: Client, show_progress: Callable[[list], None] | None = None,
                 performance_reports: bool = False, status: Status | None = None):
        """`status`: the driver's own (status.starting), taken over with its start time; None: a new one."""
        self.ctx = Context(exp, client, show_progress)
        self.planner = Planner(self.ctx)
        self.out = exp.out
        (self.out / "stages").mkdir(parents=True, exist_ok=True)
        self.reports = self.out / "reports" if performance_reports else None
        if self.reports is not None:
            self.reports.mkdir(parents=True, exist_ok=True)
        if status is None:
            status = Status(exp.out, exp.name, exp.source)
        else:
            status.update(state="running")
        self.status = status  # one per run: the file is written from this object only

    def step(self, decision: Decision) -> bool:
        """Run the decided step (or record that it is skipped). True when it ran."""
        step = decision.step
        if not decision.run:
            log.info("stage %s: up to date, skipped", step.name)
            self.status.stage(step.name, state="skipped", why=decision.why)
            return False
        log.info("stage %s: running (%s)", step.name, decision.why)
        started = time.time()
        self.status.stage(step.name, state="running", started=started, why=decision.why)
        self.ctx.running = step
        from distributed import performance_report  # here: a dry run needs no Dask

        try:
            with (performance_report(filename=str(self.reports / f"{_file_name(step.name)}.html"))
                  if self.reports is not None else contextlib.nullcontext()):
                step.run()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EROFS) and not exc.filename:
                # writers deep inside a library (tifffile, zarr) often lose the path: name where the step writes
                where = step.outputs[0].parent if step.outputs else self.out
                raise OSError(exc.errno, f"{os.strerror(exc.errno)} (step {step.name})", str(where)) from exc
            raise
        finally:
            self.ctx.running = None
        self.planner.record(decision, seconds=round(time.time() - started, 3))
        self.status.stage(step.name, state="done", ended=time.time())
        log.info("stage %s: done in %.1f s", step.name, time.time() - started)
        return True

    def run(self) -> dict[str, Path]:
        """Every stage's steps, in order; returns the products the stages named (e.g. the report)."""
        for decision in self.planner.decisions():
            self.step(decision)
        report = self.ctx.products.get("report")
        self.status.update(state="done", report=str(report) if report else None, stage=None, ended=time.time())
        return self.ctx.products


def setup_logging(out: Path) -> list[logging.Handler]:
    """The job log at <out>/job.log and on stderr, for crystal_dask's own logger only."""
    out.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [logging.FileHandler(out / "job.log"), logging.StreamHandler()]
    logger = logging.getLogger("crystal_dask")
    for h in handlers:
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(h)
    logger.setLevel(logging.INFO)
    return handlers


def run_job(exp: Experiment, client: Client, show_progress: Callable[[list], None] | None = None,
            performance_reports: bool = False, status: Status | None = None) -> Path:
    """Run every stage of `exp` on `client`; return the Markdown report's path. `performance_reports`: a Dask
    performance report per step that runs, in <out>/reports/. `status`: the driver's, if it made one (Runner)."""
    with hold(exp.out):  # one run per output folder (re-entrant: `crystal-dask run` took it already)
        handlers = setup_logging(exp.out)
        runner = None
        try:
            runner = Runner(exp, client, show_progress, performance_reports, status)
            return runner.run()["report"]
        except BaseException as exc:  # also when the runner failed once it had taken the status over
            if runner is not None or status is not None:
                (runner.status if runner is not None else status).failed(exc)
            raise
        finally:
            for h in handlers:
                logging.getLogger("crystal_dask").removeHandler(h)
                h.close()
