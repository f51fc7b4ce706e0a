"""The stage interface: what a stage module declares, and the context the runner hands it.

A stage is a module with
    NAME: str                                   its name, the prefix of its steps' names
    SECTION: str (optional)                     the job-file section it owns ...
    parse(cfg, experiment, where) -> settings   ... checked at load (errors name the key)
    steps(ctx: Context) -> Iterable[Step]       its units of work, asked for once every earlier stage is done

A Step is skipped when the key recorded beside its outputs equals its key, every output exists and its `damage`
check (if any) finds nothing; the key is
everything its outputs depend on (inputs' identities and settings). Each stage alone knows where its files are:
a later stage finds an earlier one's outputs through that stage's own path functions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributed import Client

    from crystal_dask.experiment import Experiment


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-able parts (dataclasses and paths as their str)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Step:
    """One unit of a stage's work: `run()` makes `outputs`, which depend on nothing but `key`."""

    name: str  # "extract:fcbr": the status line, the key record and the performance report are named after it
    key: str  # a fingerprint of the step's inputs and settings
    outputs: tuple[Path, ...]
    run: Callable[[], Any]
    # what is wrong with the outputs, checked before skipping (e.g. damaged chunks): a step whose outputs are
    # damaged is run again, however its key matches
    damage: Callable[[], list[Any]] | None = None


@dataclass
class Context:
    """What a stage's steps need: the experiment, the cluster, a progress display, and products for the caller."""

    experiment: Experiment
    client: Client
    show_progress: Callable[[list], None] | None = None
    products: dict[str, Path] = field(default_factory=dict)  # e.g. {"report": <report.md>}, for the caller

    @property
    def out(self) -> Path:
        return self.experiment.out
