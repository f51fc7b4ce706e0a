"""Killed drivers leave nothing behind (issue 16): a SIGKILLed parent's pool children, and a SIGKILLed
`crystal-dask run`'s LocalCluster workers and corpus painters, are gone within seconds."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.helpers import child_env
from tests.helpers.jobs import TINY, write_job

POOL_PARENT = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
from crystal_dask.runtime.orphans import exit_with_parent
if __name__ == "__main__":
    with ProcessPoolExecutor(2, initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
        pool.submit(time.sleep, 120).running()  # the children are busy when their parent is killed
        print("started", flush=True)
        time.sleep(120)
"""


def gone(pids: list[int], seconds: float) -> list[int]:
    """The pids among `pids` still alive (and not zombies) after waiting up to `seconds` for them to end."""
    deadline = time.monotonic() + seconds
    while True:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def kill(pids: list[int]) -> None:
    """End the processes this test started (by id), if the code under test left them behind."""
    for p in pids:
        try:
            psutil.Process(p).kill()
        except psutil.NoSuchProcess:
            pass


def test_pool_children_end_with_their_killed_parent():
    parent = subprocess.Popen([sys.executable, "-c", POOL_PARENT], stdout=subprocess.PIPE, text=True,
                              env=child_env(), start_new_session=True)
    children: list[int] = []
    try:
        assert parent.stdout.readline().strip() == "started"
        children = [k.pid for k in psutil.Process(parent.pid).children()]
        assert len(children) >= 2
        assert gone(children, 0.5) == children  # alive while their parent is
        parent.kill()
        parent.wait(timeout=30)
        assert gone(children, 3) == []
    finally:
        parent.kill()
        kill(children)


def test_a_child_whose_parent_is_already_gone_exits_at_once():
    code = ("import os\nfrom crystal_dask.runtime.orphans import exit_with_parent\n"
            "exit_with_parent(os.getppid() + 1)\nprint('still here')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=60)
    assert done.returncode == 1 and done.stdout == ""


# Slides large enough that the painters are still at work when the driver is killed.
SLOW_SYNTH = {**TINY, "corpora": {"fcbr": {"synth": {**TINY["corpora"]["fcbr"]["synth"], "patients": 16,
                                                     "slide_size": [6000, 4000]}}},
              "evaluate": {"sets": {"FCBR-eval": {"corpus": "fcbr", "splits": ["eval"]}}}}


@pytest.mark.slow
def test_a_sigkilled_driver_leaves_no_worker_or_painter_behind(tmp_path):
    job = write_job(tmp_path, {**SLOW_SYNTH, "out": str(tmp_path / "out")})
    driver = subprocess.Popen([sys.executable, "-m", "crystal_dask.cli", "run", str(job), "--no-progress"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env(),
                              start_new_session=True)
    me = psutil.Process(driver.pid)
    kids: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # the LocalCluster's workers (spawned) and the painters (forked)
            kids = me.children(recursive=True)
            painters = [k for k in kids if k.cmdline() == me.cmdline()]
            workers = [k for k in kids if "spawn_main" in " ".join(k.cmdline())]
            if painters and len(workers) >= 2:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"no painters and workers seen: {[k.cmdline() for k in kids]}")
        kids = me.children(recursive=True)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        left = gone([k.pid for k in kids], 5)
        assert left == [], [" ".join(psutil.Process(p).cmdline())[:120] for p in left]
    finally:
        driver.kill()
        driver.wait(timeout=30)
        kill([k.pid for k in kids])
