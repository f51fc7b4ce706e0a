"""The stage interface: what a stage module declares, and the context the runner hands it.

A stage is a module with
    NAME: str                                   its name, the prefix of its steps' names
    SECTION: str (optional)                     the job-file section it owns ...
    parse(cfg, experiment, where) -> settings   ... checked at load (errors name the key)
    steps(ctx: Context) -> Iterable[Step]       its units of work: declarations only, reading no file
    report_inputs(ctx, results) -> dict         (optional) what it hands the report: keys of results.json, read
                                                from its steps' products through `Context.output` (the report
                                                step reads every step of such a stage); `results` holds what the
                                                earlier stages handed, and `notes` lists add up

A step declares what it reads (the names of earlier steps) and its own settings (with the code and format
versions its outputs depend on); the runner derives its key from those settings and the keys of the steps it
reads, a Merkle chain down the graph, so a change anywhere upstream reaches every step downstream. A stage
reads another step's outputs only through `Context.output(step)`, which refuses a step the running step did
not declare.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributed import Client

    from crystal_dask.experiment import Experiment
    from crystal_dask.progress import Display


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-able parts (dataclasses and paths as their str)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def plain(value: Any) -> Any:
    """`value` as JSON has it (tuples as lists, paths as str): what a step's settings are recorded and compared as."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def stage_of(step: str) -> str:
    """The stage a step name belongs to (`evaluate` of `evaluate:FCBR-eval:baseline`)."""
    return step.split(":")[0]


class UndeclaredRead(RuntimeError):
    """A step asked for the outputs of a step it did not declare in `reads`."""


@dataclass(frozen=True)
class Step:
    """One unit of a stage's work: `run()` makes `outputs`, which depend on nothing but `settings` and the outputs
    of the steps in `reads`."""

    name: str  # "extract:fcbr": the status line, the key record and the performance report are named after it
    reads: tuple[str, ...]  # the earlier steps whose outputs run() reads (through Context.output)
    settings: Mapping[str, Any]  # its own settings and code/format versions, JSON-able (job-file names as keys)
    outputs: tuple[Path, ...]
    run: Callable[[], Any]
    # what is wrong with the outputs, checked before skipping (e.g. damaged chunks): a step whose outputs are
    # damaged is run again, however its key matches
    damage: Callable[[], list[Any]] | None = None
    product: Any = None  # what a later step reading this one gets from Context.output (a folder, a Dataset, ...)


def step_key(step: Step, keys: Mapping[str, str]) -> str:
    """The key of `step`: its settings and the keys of the steps it reads (`keys`: every earlier step's key)."""
    return fingerprint(plain(step.settings), {r: keys[r] for r in sorted(step.reads)})


@dataclass
class Context:
    """What a stage's steps need: the experiment, the cluster, a progress display, and products for the caller."""

    experiment: Experiment
    client: Client | None
    display: Display | None = None  # crystal_dask.progress's display; steps see it as `show_progress`
    products: dict[str, Path] = field(default_factory=dict)  # e.g. {"report": <report.md>}, for the caller
    steps: dict[str, Step] = field(default_factory=dict)  # every step declared so far, by name (the runner's)
    running: Step | None = None  # the step whose run() is under way (set by the runner)

    @property
    def show_progress(self) -> Callable[[list], None] | None:
        """How the running step shows the progress of its futures: the display, naming the step."""
        if self.display is None or self.running is None:
            return self.display
        return functools.partial(self.display, name=self.running.name)

    @property
    def out(self) -> Path:
        return self.experiment.out

    def output(self, name: str) -> Any:
        """The product of the earlier step `name`, for the running step, which must have declared it."""
        if self.running is None or name not in self.running.reads:
            who = self.running.name if self.running is not None else "no step"
            raise UndeclaredRead(f"{who} reads {name}, which it does not declare in its reads")
        return self.steps[name].product
