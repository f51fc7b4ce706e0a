"""The pipeline stages, one module each (see stages/base.py for the interface), in run order."""

from __future__ import annotations

import importlib
from types import ModuleType

ORDER: tuple[str, ...] = ("synth", "scan", "extract", "features", "train", "evaluate", "infer", "report")


def ordered() -> tuple[ModuleType, ...]:
    """The stage modules in run order; imported on demand, so `crystal-dask status` stays light."""
    return tuple(importlib.import_module(f"crystal_dask.stages.{name}") for name in ORDER)
