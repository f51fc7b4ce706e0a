"""The pipeline stages, one module each (see stages/base.py for the interface), in run order: the registry that
hands the job loader the sections and the runner the steps."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the job loader pulls in numpy and PIL: importing ORDER (the CLI's help) needs neither
    from crystal_dask.experiment import Experiment

ORDER: tuple[str, ...] = ("synth", "scan", "extract", "features", "train", "evaluate", "infer", "report")


def ordered() -> tuple[ModuleType, ...]:
    """The stage modules in run order; imported on demand, so `crystal-dask status` stays light."""
    return tuple(importlib.import_module(f"crystal_dask.stages.{name}") for name in ORDER)


def sections() -> tuple[ModuleType, ...]:
    """The stages that own a job-file section, in run order (a section may check against an earlier one)."""
    return tuple(s for s in ordered() if getattr(s, "SECTION", None))


def load_experiment(path: str | Path, out: str | Path | None = None) -> Experiment:
    """Read and check a job file, every stage's section included (see experiment.load_experiment)."""
    from crystal_dask import experiment

    return experiment.load_experiment(path, out, sections=sections())
