"""runtime/tasks.py: a resumable task runs once and answers from its marker after; what the markers recorded, read
once, a refused one removed; map_tasks and run_remaining on a real cluster."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from crystal_dask.runtime.tasks import map_tasks, recorded, resumable

CALLS: list[str] = []


@resumable
def _square(task: dict) -> dict:
    CALLS.append(task["marker"])
    return {"square": task["x"] ** 2}


@resumable(done_at=lambda task: Path(task["folder"]) / f"block-{task['x']}.json")
def _scaled(task: dict, factor: int) -> dict:
    CALLS.append(f"scaled {task['x']}")
    return {"value": task["x"] * factor}


def test_a_resumable_task_runs_once_and_then_answers_from_its_marker(tmp_path):
    CALLS.clear()
    task = {"x": 3, "marker": str(tmp_path / "sq.json")}
    assert _square(task) == {"square": 9}
    assert json.loads((tmp_path / "sq.json").read_text()) == {"square": 9}
    assert _square(task) == {"square": 9} and CALLS == [task["marker"]]  # not run again


def test_a_marker_placed_by_the_task_and_further_arguments(tmp_path):
    CALLS.clear()
    task = {"x": 4, "folder": str(tmp_path)}
    assert _scaled(task, 10) == {"value": 40} and _scaled(task, 10) == {"value": 40}
    assert CALLS == ["scaled 4"] and (tmp_path / "block-4.json").is_file()


def test_a_failing_task_leaves_no_marker(tmp_path):
    @resumable
    def boom(task: dict) -> dict:
        raise ValueError("no")

    try:
        boom({"marker": str(tmp_path / "m.json")})
    except ValueError:
        pass
    assert not (tmp_path / "m.json").exists()


def test_recorded_gives_each_markers_result_by_task_and_removes_a_refused_one(tmp_path):
    CALLS.clear()
    tasks = [{"x": x, "marker": str(tmp_path / f"{x}.json")} for x in (2, 3, 7)]
    _square(tasks[0])
    _square(tasks[2])
    assert recorded(tasks) == {0: {"square": 4}, 2: {"square": 49}}  # the task without a marker is left out
    assert recorded(tasks, lambda result: result["square"] < 10) == {0: {"square": 4}}
    assert not Path(tasks[2]["marker"]).exists()  # refused: its task runs again
    assert _square(tasks[2]) == {"square": 49} and CALLS == [t["marker"] for t in (tasks[0], tasks[2], tasks[2])]


def test_map_tasks_returns_results_in_task_order_under_the_stage_name(client, tmp_path):
    from dask.utils import key_split
    from distributed import get_task_stream

    tasks = [{"x": x, "marker": str(tmp_path / f"{x}.json")} for x in (5, 1, 4)]
    with get_task_stream(client) as stream:
        assert map_tasks(client, _square, tasks, stage="extract") == [{"square": 25}, {"square": 1}, {"square": 16}]
    assert stream.data and all(key_split(t["key"]).startswith("extract") for t in stream.data), stream.data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.json", "4.json", "5.json"]


def _stage_done(folder: str, stage: str) -> None:
    """Run on every worker after run_remaining's tasks: leaves a file named after the stage id and the worker's pid."""
    (Path(folder) / f"{stage}-{os.getpid()}").touch()


def test_run_remaining_runs_only_what_no_usable_marker_recorded(client, tmp_path):
    """A marked task answers from its marker, a refused marker's task runs again, results come in task order, the
    count says how many ran, and `then_on_workers` runs on every worker with the stage id the tasks got."""
    from crystal_dask.runtime.tasks import run_remaining

    tasks = [{"x": x, "marker": str(tmp_path / f"{x}.json")} for x in (5, 1, 4, 2)]
    (tmp_path / "5.json").write_text(json.dumps({"square": 25}))
    (tmp_path / "4.json").write_text(json.dumps({"square": -1}))  # refused below: runs again
    (tmp_path / "stages").mkdir()
    results, ran = run_remaining(client, _square, tasks, stage="extract", usable=lambda r: r["square"] >= 0,
                                 then_on_workers=functools.partial(_stage_done, str(tmp_path / "stages")))
    assert results == [{"square": 25}, {"square": 1}, {"square": 16}, {"square": 4}] and ran == 3
    done = sorted(p.name for p in (tmp_path / "stages").iterdir())
    workers = client.scheduler_info()["workers"].values()
    assert len(done) == len(workers) and len({name.rsplit("-", 1)[0] for name in done}) == 1, done
    assert run_remaining(client, _square, tasks, stage="extract") == (results, 0)  # all marked now
