"""The runner: every stage in order (crystal_dask.stages.ORDER), each step run or skipped by its key.

A step whose key matches the one recorded beside its outputs (<out>/stages/<step>.json), with every output
present, is skipped; extraction also resumes inside a step, chunk by chunk. On request (`performance_reports`,
`crystal-dask run --performance-reports`) each step that runs leaves a Dask performance report
(<out>/reports/<step>.html): it costs about a second per step, most of a small step's time. The job keeps a log
(<out>/job.log) and a status file. The runner knows nothing of any stage's files: stages declare their steps
(stages/base.py).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from distributed import Client, performance_report

from crystal_dask.experiment import Experiment
from crystal_dask.runtime.lock import hold
from crystal_dask.stages import ordered
from crystal_dask.stages.base import Context, Step
from crystal_dask.status import Status
from crystal_dask.store.files import write_json

log = logging.getLogger("crystal_dask.pipeline")


def _file_name(step: str) -> str:
    return step.replace(":", "-")


class Runner:
    def __init__(self, exp: Experiment, client: Client, show_progress: Callable[[list], None] | None = None,
                 performance_reports: bool = False):
        self.ctx = Context(exp, client, show_progress)
        self.out = exp.out
        (self.out / "stages").mkdir(parents=True, exist_ok=True)
        self.reports = self.out / "reports" if performance_reports else None
        if self.reports is not None:
            self.reports.mkdir(parents=True, exist_ok=True)
        self.status = Status(exp.out, exp.name, exp.source)

    def step(self, step: Step) -> bool:
        """Run `step` unless the recorded key matches and every output exists. True when it ran."""
        record = self.out / "stages" / f"{_file_name(step.name)}.json"
        if (record.exists() and json.loads(record.read_text()).get("key") == step.key
                and all(p.exists() for p in step.outputs)):
            damage = step.damage() if step.damage is not None else []
            if not damage:
                log.info("stage %s: up to date, skipped", step.name)
                self.status.stage(step.name, state="skipped")
                return False
            log.warning("stage %s: outputs damaged, redoing: %s%s", step.name, "; ".join(map(str, damage[:5])),
                        f"; and {len(damage) - 5} more" if len(damage) > 5 else "")
        log.info("stage %s: running", step.name)
        started = time.time()
        self.status.stage(step.name, state="running", started=started)
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
        write_json(record, {"key": step.key, "seconds": round(time.time() - started, 3)})
        self.status.stage(step.name, state="done", ended=time.time())
        log.info("stage %s: done in %.1f s", step.name, time.time() - started)
        return True

    def run(self) -> dict[str, Path]:
        """Every stage's steps, in order; returns the products the stages named (e.g. the report)."""
        for stage in ordered():
            for step in stage.steps(self.ctx):  # asked only now: a stage may read what earlier ones wrote
                self.step(step)
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
            performance_reports: bool = False) -> Path:
    """Run every stage of `exp` on `client`; return the Markdown report's path. `performance_reports`: a Dask
    performance report per step that runs, in <out>/reports/."""
    with hold(exp.out):  # one run per output folder (re-entrant: `crystal-dask run` took it already)
        handlers = setup_logging(exp.out)
        runner = Runner(exp, client, show_progress, performance_reports)
        try:
            return runner.run()["report"]
        except BaseException as exc:
            runner.status.failed(exc)
            raise
        finally:
            for h in handlers:
                logging.getLogger("crystal_dask").removeHandler(h)
                h.close()
