"""Progress that fits the output: a redrawn bar on a terminal, a few log lines anywhere else.

A bar redraws itself with carriage returns: in a file (a submitted driver's job.log, CI, `| tee`) that leaves
thousands of fragments between the log lines. Off a terminal a step therefore logs one line per quarter of its
tasks done instead, through crystal_dask's logger (so into job.log as well). Both name what is under way: the
running step (`evaluate:FCBR-eval:baseline`, from the runner) or, outside a job, the futures' task prefixes.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TextIO

log = logging.getLogger("crystal_dask.progress")

MILESTONES = (25, 50, 75, 100)  # percent of a step's tasks done at which a line is logged

Display = Callable[..., None]  # (futures, name=None)


def _name(futures: list) -> str:
    """The task prefix of the futures (`extract_chunk`), as the dashboard names them."""
    from dask.utils import key_split

    names = sorted({key_split(f.key) for f in futures})
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def log_milestones(futures: list, name: str | None = None) -> None:
    """Wait for `futures`, logging when 25, 50, 75 and 100% of them are finished (failed ones count: the
    caller's gather raises their error), under `name` (default: their task prefixes)."""
    from distributed import as_completed

    total = len(futures)
    if not total:
        return
    name, pending = name or _name(futures), list(MILESTONES)
    for done, _ in enumerate(as_completed(futures), start=1):
        reached = [m for m in pending if 100 * done >= m * total]
        if reached:
            pending = pending[len(reached):]
            log.info("progress %s: %d%% (%d/%d tasks)", name, reached[-1], done, total)


def bar(futures: list, name: str | None = None) -> None:
    """distributed's terminal bar (carriage-return redraws on stdout), after a line naming it."""
    from distributed import progress

    if futures:
        print(name or _name(futures), flush=True)
    progress(futures)


def display(enabled: bool = True, stream: TextIO | None = None) -> Display | None:
    """How to show a step's progress on `stream` (default stdout, where distributed draws its bar): the bar on a
    terminal, milestone log lines elsewhere, nothing when not `enabled`."""
    if not enabled:
        return None
    stream = sys.stdout if stream is None else stream
    return bar if stream.isatty() else log_milestones
