"""One run per output folder (issue 9, class 3): a live holder's lock refuses a second run at once, naming its pid
and host; a SIGKILLed run's lock is taken over; `status` says a SIGKILLed driver is gone."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from crystal_dask import status as status_file
from crystal_dask.cli import main
from crystal_dask.runtime.lock import LOCK, LockedError, hold, read_lock
from tests.helpers import child_env
from tests.helpers.jobs import tiny_job

HOLDER = "import sys, time; from crystal_dask.runtime.lock import hold\nwith hold(*sys.argv[1:]):\n" \
         "    print('held', flush=True); time.sleep(120)"


def wait_for(predicate, seconds: float, what: str):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def kill_group(proc: subprocess.Popen) -> None:
    """End a process this test started and everything it started (its own session), by its id."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def test_a_live_holder_refuses_others_and_a_killed_ones_lock_is_taken_over(tmp_path, caplog):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True,
                              env=child_env(), start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match=rf"pid {holder.pid} on host {socket.gethostname()}"):
            with hold(out):
                pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        kill_group(holder)
    assert read_lock(out)["pid"] == holder.pid  # the dead run's lock file is still there ...
    with hold(out), hold(out):  # ... and taken over (re-entrant within one process)
        assert read_lock(out)["pid"] == os.getpid()
    assert f"took over the stale lock of pid {holder.pid}" in caplog.text
    assert not (out / LOCK).exists()  # released on exit


def run_cmd(job: Path) -> list[str]:
    return [sys.executable, "-m", "crystal_dask.cli", "run", str(job), "--no-progress"]


@pytest.mark.slow
def test_two_real_runs_on_one_folder_and_a_sigkilled_driver(tmp_path):
    job = tiny_job(tmp_path)
    out = tmp_path / "out"
    first = subprocess.Popen(run_cmd(job), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env(),
                             start_new_session=True)
    third = None
    try:
        wait_for(lambda: (read_lock(out) or {}).get("pid") == first.pid, 600, "the first run's lock")
        second = subprocess.run(run_cmd(job), capture_output=True, text=True, env=child_env(), timeout=900)
        assert second.returncode == 1, second.stderr
        assert f"pid {first.pid} on host {socket.gethostname()}" in second.stderr
        assert second.stderr.startswith("crystal-dask: error:") and "Traceback" not in second.stderr
        # refused at once: before it started a cluster (no dashboard line), and the first run goes on
        assert "dashboard:" not in second.stderr and first.poll() is None

        # the runner's status (before it, the driver's own says `starting`)
        wait_for(lambda: (status_file.read(out) or {}).get("state") == "running", 600, "the first run's runner")
        os.kill(first.pid, signal.SIGKILL)  # the driver only, as an OOM killer would
        first.wait(timeout=30)
        status = subprocess.run([sys.executable, "-m", "crystal_dask.cli", "status", str(out), "--json"],
                                capture_output=True, text=True, env=child_env(), timeout=600)
        state = json.loads(status.stdout)
        assert state["state"].startswith("driver gone") and state["driver_gone"], state
        assert json.loads((out / "status.json").read_text())["state"] == "running"  # the file alone cannot say

        third = subprocess.Popen(run_cmd(job), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                 env=child_env(), start_new_session=True)
        wait_for(lambda: (read_lock(out) or {}).get("pid") == third.pid, 600, "the third run taking the lock over")
        said: list[str] = []  # read on a thread: a blocked readline must not hang the test
        threading.Thread(target=lambda: said.extend(iter(third.stderr.readline, "")), daemon=True).start()
        wait_for(lambda: any("took over the stale lock" in line for line in said), 300, "the takeover warning")
        assert any(f"took over the stale lock of pid {first.pid}" in line for line in said), said
    finally:
        kill_group(first)
        if third is not None:
            kill_group(third)


FORKED_HOLDER = """
import os, signal, sys, time
from crystal_dask.runtime.lock import hold
with hold(sys.argv[1]):
    if os.fork() == 0:  # a forked helper (as the painter's process pool) outlives its parent
        os.close(1), os.close(2)  # without the test's pipes: the test need not wait for it
        time.sleep(60)
        os._exit(0)
    print("held", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_forked_child_does_not_keep_a_killed_holders_lock(tmp_path):
    """The driver's forked children share its open files; the lock must still die with the driver."""
    proc = subprocess.run([sys.executable, "-c", FORKED_HOLDER, str(tmp_path)], capture_output=True, text=True,
                          env=child_env(), timeout=120, start_new_session=True)
    assert proc.stdout.strip() == "held" and proc.returncode == -signal.SIGKILL
    try:
        with hold(tmp_path):  # taken over at once, while the forked child still sleeps
            assert read_lock(tmp_path)["pid"] == os.getpid()
    finally:
        subprocess.run(["pkill", "-f", "time.sleep\\(60\\)"], check=False)


# Every verb that writes a folder, with arguments that reach its work: (argv after the verb, the folder it writes).
# Inputs need not exist: the lock comes first. train writes a model file; its folder is what it locks.
def writing_verbs(tmp: Path, out: Path) -> dict[str, list[str]]:
    return {"scan": [str(tmp), "-o", str(out)],
            "extract": [str(tmp / "scan"), "-o", str(out)],
            "features": [str(out)],  # adds to the dataset it is given
            "train": [str(tmp / "ds"), "-o", str(out / "model.skops")],
            "evaluate": [str(tmp / "ds"), str(tmp / "model.skops"), "-o", str(out)],
            "infer": [str(tmp / "model.skops"), str(tmp / "slide.svs"), "-o", str(out)]}


@pytest.fixture
def held(tmp_path):
    """A real process holding the lock of tmp_path/out as `crystal-dask extract` would; yields (folder, pid)."""
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), "crystal-dask extract"],
                              stdout=subprocess.PIPE, text=True, env=child_env(), start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield out, holder.pid
    finally:
        kill_group(holder)


@pytest.mark.parametrize("verb", ["scan", "extract", "features", "train", "evaluate", "infer"])
def test_every_writing_verb_is_refused_at_once_on_a_held_folder(verb, held, tmp_path, capsys):
    out, pid = held
    assert main([verb, *writing_verbs(tmp_path, out)[verb]]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"crystal-dask: error: {out}: another run holds this output folder")
    assert f"pid {pid} on host {socket.gethostname()} (crystal-dask extract, started " in err
    assert "dashboard:" not in err  # refused before it started a cluster ...
    assert sorted(p.name for p in out.iterdir()) == [LOCK]  # ... or wrote anything


def test_a_refused_or_failed_command_leaves_no_empty_folder(tmp_path, capsys):
    out = tmp_path / "new" / "out"
    assert main(["extract", str(tmp_path / "no-scan"), "-o", str(out)]) == 1
    assert "no-scan" in capsys.readouterr().err and not out.exists()
    out.mkdir(parents=True)  # a folder the command did not create stays
    assert main(["extract", str(tmp_path / "no-scan"), "-o", str(out)]) == 1
    assert out.is_dir() and not list(out.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("verb", ["infer", "train"])  # the case, and the one that locks a file's folder
def test_two_real_commands_on_one_folder(verb, tmp_path):
    """The first command holds the folder while it waits for a scheduler that never answers (a listening socket
    nobody accepts on); the second, on the same -o, is refused at once, naming the folder and the first."""
    from crystal_dask.store.schema import REGIONS, REJECTS, make_table, write_table

    for table, schema in (("regions", REGIONS), ("rejects", REJECTS)):  # what extract reads before its cluster
        write_table(make_table(schema, []), tmp_path / "scan" / f"{table}.parquet", schema)
    (tmp_path / "slide.svs").write_bytes(b"")  # infer checks its inputs exist before its cluster
    out = tmp_path / "out"
    with socket.create_server(("127.0.0.1", 0)) as silent:
        cluster = tmp_path / "cluster.yaml"
        cluster.write_text(yaml.safe_dump({"kind": "address", "address": f"tcp://127.0.0.1:{silent.getsockname()[1]}",
                                           "wait_for_workers": 120}))
        argv = [sys.executable, "-m", "crystal_dask.cli", verb, *writing_verbs(tmp_path, out)[verb],
                "--cluster", str(cluster)]
        first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env(),
                                 start_new_session=True)
        try:
            wait_for(lambda: (read_lock(out) or {}).get("pid") == first.pid, 120, "the first command's lock")
            started = time.monotonic()
            second = subprocess.run(argv, capture_output=True, text=True, env=child_env(), timeout=120)
            took = time.monotonic() - started
            assert second.returncode == 1, second.stderr
            assert second.stderr.count("\n") == 1, second.stderr
            assert second.stderr.startswith(f"crystal-dask: error: {out}: another run holds this output folder: "
                                            f"pid {first.pid} on host {socket.gethostname()} (crystal-dask {verb}, ")
            assert took < 60 and first.poll() is None  # at once, not after the first's wait for its scheduler
        finally:
            kill_group(first)
