"""The shapes every chunk-owning stage repeats: a task that resumes from its done-marker, what the done-markers
already recorded (read once, on the client), and a bag of the tasks still to run computed on the cluster, named
after their stage, with a progress display, their results gathered (`run_remaining`: the three together)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from crystal_dask.store.files import write_json


def _marker_key(task: dict) -> Path:
    return Path(task["marker"])


def resumable(task_fn: Callable[..., dict] | None = None, *,
              done_at: Callable[[dict], Path] = _marker_key) -> Callable[..., dict]:
    """Make a task (a dict, then any further arguments) leave its JSON result as a done-marker once it finished,
    and return that result without running again when the marker exists (a retried task on a lost worker, or a
    resumed run). The marker is `task["marker"]`, or `done_at(task)`. Used as a decorator on a module-level
    function (`@resumable` or `@resumable(done_at=...)`), so the task still pickles by reference."""
    if task_fn is None:
        return functools.partial(resumable, done_at=done_at)

    @functools.wraps(task_fn)
    def run(task: dict, *args: Any) -> dict:
        marker = done_at(task)
        if marker.exists():
            return json.loads(marker.read_text())
        result = task_fn(task, *args)
        write_json(marker, result, indent=None)
        return result

    return run


def recorded(tasks: Sequence[dict], usable: Callable[[dict], bool] = lambda result: True, *,
             done_at: Callable[[dict], Path] = _marker_key) -> dict[int, dict]:
    """What the tasks that left a done-marker recorded, by their index in `tasks`; each marker read once. A marker
    whose result `usable` refuses (its outputs are no longer as it recorded them) is removed: its task runs
    again, and the result it then returns takes the marker's place."""
    done = {}
    for k, task in enumerate(tasks):
        marker = done_at(task)
        if not marker.exists():
            continue
        result = json.loads(marker.read_text())
        if usable(result):
            done[k] = result
        else:
            marker.unlink()
    return done


def map_tasks(client: Any, fn: Callable[[dict], Any], tasks: Sequence[dict],
              show_progress: Callable[[list], None] | None = None, *, stage: str) -> list[Any]:
    """`fn` over `tasks` on the cluster, one bag partition (one Dask task) each, keys starting with `stage`
    (runtime/keys.py); results in task order."""
    import dask.bag as db

    from crystal_dask.runtime import keys

    futures = keys.compute(client, db.from_sequence(tasks, npartitions=len(tasks)).map(fn).to_delayed(), stage)
    if show_progress is not None:
        show_progress(futures)
    return [result for partition in client.gather(futures) for result in partition]  # one task per partition


def run_remaining(client: Any, fn: Callable[[dict], dict], tasks: Sequence[dict],
                  show_progress: Callable[[list], None] | None = None, *, stage: str,
                  usable: Callable[[dict], bool] = lambda result: True,
                  then_on_workers: Callable[[str], Any] | None = None
                  ) -> tuple[list[dict], int]:
    """Every task's result, in task order, and how many tasks ran now: what its done-marker recorded (`recorded`,
    with `usable`), else what it returns when run now (`map_tasks`), the runs inside one `roomy_stage` whose id
    each task gets as "stage". `then_on_workers(stage id)` runs on every worker after them, also after an error
    (extract closes the slides its tasks cached for the stage)."""
    from crystal_dask.runtime.allocator import roomy_stage

    results = recorded(tasks, usable)
    todo = [k for k in range(len(tasks)) if k not in results]
    if todo:
        with roomy_stage(client) as stage_id:
            try:
                ran = map_tasks(client, fn, [tasks[k] | {"stage": stage_id} for k in todo], show_progress,
                                stage=stage)
                results |= zip(todo, ran, strict=True)
            finally:
                if then_on_workers is not None:
                    client.run(then_on_workers, stage_id, on_error="ignore")
    return [results[k] for k in range(len(tasks))], len(todo)
