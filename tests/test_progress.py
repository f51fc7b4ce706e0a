"""Progress that fits the output: the bar on a terminal, milestone log lines elsewhere, on real futures."""

from __future__ import annotations

import io
import logging
import os

from crystal_dask.progress import bar, display, log_milestones


def test_the_bar_only_on_a_terminal():
    assert display(enabled=False) is None
    assert display(stream=io.StringIO()) is log_milestones  # a file, a pipe, CI
    primary, secondary = os.openpty()  # a real terminal
    try:
        with os.fdopen(secondary, "w", closefd=False) as tty:
            assert display(stream=tty) is bar
    finally:
        os.close(primary)
        os.close(secondary)


def add_one(x: int) -> int:
    return x + 1


def test_milestones_are_a_few_lines_of_the_log(client, caplog, capsys):
    futures = client.map(add_one, range(10))
    with caplog.at_level(logging.INFO, logger="crystal_dask.progress"):
        log_milestones(futures)
    assert [f.status for f in futures] == ["finished"] * 10
    lines = [r.getMessage() for r in caplog.records if r.name == "crystal_dask.progress"]
    assert lines == [f"progress add_one: {p}% ({n}/10 tasks)" for p, n in ((25, 3), (50, 5), (75, 8), (100, 10))]
    out = capsys.readouterr()
    assert "\r" not in out.out + out.err


def test_milestones_reached_together_give_one_line_and_a_failure_does_not_stop_them(client, caplog):
    futures = client.map(add_one, [1, None])  # the second fails: the caller's gather raises it, not the display
    with caplog.at_level(logging.INFO, logger="crystal_dask.progress"):
        log_milestones(futures)
    lines = [r.getMessage() for r in caplog.records if r.name == "crystal_dask.progress"]
    assert lines == ["progress add_one: 50% (1/2 tasks)", "progress add_one: 100% (2/2 tasks)"]
    log_milestones([])  # nothing to wait for: no line


def test_milestones_name_the_step_given(client, caplog):
    futures = client.map(add_one, range(4))
    with caplog.at_level(logging.INFO, logger="crystal_dask.progress"):
        log_milestones(futures, name="evaluate:FCBR-eval:baseline")
    lines = [r.getMessage() for r in caplog.records if r.name == "crystal_dask.progress"]
    assert lines == [f"progress evaluate:FCBR-eval:baseline: {p}% ({p // 25}/4 tasks)" for p in (25, 50, 75, 100)]
