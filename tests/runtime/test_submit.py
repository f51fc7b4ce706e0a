"""Detached jobs: a background driver locally and a SLURM batch driver, followed with `status` until done."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
import yaml

from crystal_dask.cli import main
from crystal_dask.runtime.submit import format_status, status, submit
from crystal_dask.status import Status
from crystal_dask.store.files import write_json
from tests.helpers.jobs import TINY

# A job small enough to run detached within a test: one corpus, its own dev/eval patients as the held-out set.
DETACHED = {**TINY, "corpora": {"fcbr": TINY["corpora"]["fcbr"]},
            "evaluate": {"sets": {"FCBR-eval": {"corpus": "fcbr", "splits": ["eval"]}}}}


def detached_job(tmp_path: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**DETACHED, "out": str(tmp_path / "out")}))
    return path


def wait_done(out: Path, timeout: float) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = status(out)
        if state.get("state") in ("done", "failed", "interrupted"):
            return state
        time.sleep(1)
    raise AssertionError(f"job in {out} not done after {timeout} s: {format_status(status(out))}")


@pytest.mark.slow
def test_submit_in_the_background_and_follow_with_status(tmp_path, capsys):
    path = detached_job(tmp_path)
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("kind: local\nworkers: 2\ndashboard_address: '127.0.0.1:0'\n")
    assert main(["submit", str(path), "--cluster", str(cluster)]) == 0
    printed = capsys.readouterr().out
    assert "submitted tiny as pid" in printed and "crystal-dask status" in printed
    out = tmp_path / "out"
    record = json.loads((out / "submit.json").read_text())
    assert record["kind"] == "background"
    state = wait_done(out, 300)
    assert state["state"] == "done", (out / "driver.log").read_text()[-3000:]
    assert Path(state["report"]).exists()
    assert main(["status", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "job tiny: done" in shown and "report:" in shown and "train:crystal" in shown
    log = (out / "driver.log").read_text()
    assert "dashboard: http://127.0.0.1:" in log
    # progress in the log as plain lines (a step's tasks counted up to 100%), no bar's carriage-return redraws
    assert re.search(r"progress \S+: 100% \((\d+)/\1 tasks\)", log) and "\r" not in log, log[-3000:]


def test_status_before_anything_ran(tmp_path):
    assert status(tmp_path)["state"] == "unknown: nothing ran here"


def test_submit_refuses_a_bad_job_before_starting_anything(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**DETACHED, "train": {"corpus": "missing"}}))
    with pytest.raises(ValueError, match="train.corpus"):
        submit(path)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.slurm
def test_submit_on_slurm_runs_the_driver_as_a_batch_job(slurm_ready, tmp_path):
    path = detached_job(tmp_path)
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump({
        "kind": "slurm", "cores": 1, "memory": "3GB", "walltime": "00:20:00", "processes": 1,
        "python": sys.executable, "local_directory": str(tmp_path / "spill"), "log_directory": str(tmp_path / "logs"),
        "scale": {"jobs": 1}, "wait_for_workers": 120,
        "jobqueue": {"job_name": "crystal-dask-submit-worker", "scheduler_options": {"dashboard_address": ":0"}}}))
    record = submit(path, cluster)
    assert record["kind"] == "slurm" and record["slurm_job_id"].isdigit()
    out = tmp_path / "out"
    state = wait_done(out, 600)
    log = Path(record["log"]).read_text()
    assert state["state"] == "done", log[-3000:]
    # the driver ran inside its own SLURM job (not here), and its workers were SLURM jobs too
    assert state["driver_slurm_job_id"] == record["slurm_job_id"]
    assert list((tmp_path / "logs").iterdir()), "the worker jobs wrote no logs"
    deadline = time.time() + 60  # the driver job ends once the cluster it started has shut down
    while status(out)["slurm_state"] not in (None, "COMPLETED"):  # None: no longer in the queue
        assert time.time() < deadline, format_status(status(out))
        time.sleep(1)


def address_cluster(tmp_path: Path, port: int, wait: float) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"kind": "address", "address": f"tcp://127.0.0.1:{port}", "wait_for_workers": wait}))
    return path


@pytest.mark.slow
def test_a_driver_that_cannot_reach_its_cluster_says_why_in_status(tmp_path, capsys):
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    cluster = address_cluster(tmp_path, port, 5)
    record = submit(detached_job(tmp_path), cluster)
    out = tmp_path / "out"
    state = wait_done(out, 120)
    reason = f"ConnectionError: {cluster}: address: cannot reach the scheduler at tcp://127.0.0.1:{port}"
    assert state["state"] == "failed" and state["error"].startswith(reason), state
    assert main(["status", str(out)]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[0].startswith("job tiny: failed")
    assert any(line.startswith(f"  error: {reason}") for line in shown), shown
    assert not any("not started yet" in line for line in shown)
    deadline = time.time() + 60  # the driver's own last word, in its log, is the same one line
    while status(out)["driver_running"]:
        assert time.time() < deadline, f"driver pid {record['pid']} still runs"
        time.sleep(0.2)
    assert Path(record["log"]).read_text().splitlines()[-1].startswith(f"crystal-dask: error: {reason[17:]}")


@pytest.mark.slow
def test_a_driver_killed_while_it_waits_for_its_cluster_is_gone_in_status(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers: the driver waits
        record = submit(detached_job(tmp_path), address_cluster(tmp_path, silent.getsockname()[1], 120))
        out = tmp_path / "out"
        try:
            deadline = time.time() + 120
            while status(out)["state"] != "starting":
                assert time.time() < deadline, format_status(status(out))
                time.sleep(0.2)
            assert format_status(status(out)).startswith("job tiny: starting")
        finally:
            os.kill(record["pid"], signal.SIGKILL)  # the driver this test submitted
        deadline = time.time() + 30
        while not status(out).get("driver_gone"):
            assert time.time() < deadline, format_status(status(out))
            time.sleep(0.2)
        assert status(out)["state"].startswith(f"driver gone: pid {record['pid']} ")


@pytest.mark.slow
def test_a_driver_that_ends_before_writing_its_status_is_failed_with_its_last_word(tmp_path):
    path = detached_job(tmp_path)
    record = submit(path)
    # edited right after submitting: the driver refuses it before it writes anything
    path.write_text(yaml.safe_dump({**DETACHED, "out": str(tmp_path / "out"), "train": {"corpus": "missing"}}))
    out = tmp_path / "out"
    state = wait_done(out, 120)
    assert state["state"] == "failed" and state["driver_gone"] and not (out / "status.json").exists()
    last = Path(record["log"]).read_text().splitlines()[-1]
    assert last.startswith(f"crystal-dask: error: {path}") and "train.corpus" in last
    assert state["error"] == f"the driver ended before it started the job; its last word: {last}"


def test_a_slurm_driver_squeue_no_longer_lists_has_ended(slurm_ready, tmp_path):
    """A driver job squeue does not list (this id was never submitted) has ended: a status still `running` is a
    driver gone; what is shown is made from the state value (None), not the other way round."""
    out = tmp_path / "out"
    Status(out, "tiny", tmp_path / "job.yaml").stage("scan:fcbr", state="running")  # its pid, this one, still lives
    write_json(out / "submit.json", {"kind": "slurm", "slurm_job_id": "999999999", "log": str(out / "driver.log")})
    state = status(out)
    assert state["slurm_state"] is None and state["driver_ended"] is True and state["driver_gone"], state
    assert "  driver: SLURM job 999999999: finished (not in the queue)" in format_status(state).splitlines()


SLURM_CONF = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))


@pytest.mark.skipif(shutil.which("squeue") is None or not SLURM_CONF.is_file(), reason="no squeue or slurm.conf here")
def test_a_slurm_driver_is_not_declared_gone_when_squeue_cannot_reach_its_controller(tmp_path, monkeypatch):
    """squeue exits 1 with empty output both for a forgotten job and for an unreachable controller: the second
    says nothing of the driver, so a running job stays running and status says it cannot tell, and why. The
    controller is made unreachable for real: this machine's slurm.conf pointed at a port nobody listens on."""
    keys = ("SlurmctldPort", "MessageTimeout", "TCPTimeout")
    conf = [line for line in SLURM_CONF.read_text().splitlines() if not line.startswith(keys)]
    (tmp_path / "slurm.conf").write_text("\n".join([*conf, "SlurmctldPort=1", "MessageTimeout=1", "TCPTimeout=1", ""]))
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    out = tmp_path / "out"
    Status(out, "tiny", tmp_path / "job.yaml").stage("scan:fcbr", state="running")  # its pid, this one, still lives
    write_json(out / "submit.json", {"kind": "slurm", "slurm_job_id": "4242", "log": str(out / "driver.log")})
    state = status(out)
    assert state["driver_ended"] is None and "slurm_state" not in state and not state.get("driver_gone"), state
    assert state["state"] == "running" and "Unable to contact slurm controller" in state["slurm_error"], state
    assert (f"  driver: SLURM job 4242: cannot tell ({state['slurm_error']})"
            in format_status(state).splitlines())


def test_status_says_why_a_step_runs():
    state = {"job": "j", "state": "running", "out": "/o", "stages": [
        {"name": "scan:fcbr", "state": "done", "started": 0.0, "ended": 1.0, "why": "setting split_seed changed"},
        {"name": "extract:fcbr", "state": "running", "why": "upstream scan:fcbr changed"},
        {"name": "synth:fcbr", "state": "skipped", "why": "up to date"}]}
    lines = format_status(state).splitlines()
    assert lines[1].endswith("done (1.0 s)  (setting split_seed changed)")
    assert lines[2].endswith("running  (upstream scan:fcbr changed)")
    assert lines[3].endswith("skipped")
