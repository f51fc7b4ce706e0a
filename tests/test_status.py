"""status.py: a driver that fails before its first stage (its cluster never comes) leaves status.json failed with
the one-line reason, and `crystal-dask status` shows it; the runner takes the driver's status over (one per run, its
start time kept); a run refused by the lock leaves the holder's status alone."""

from __future__ import annotations

import fcntl
import socket

import yaml

from crystal_dask.cli import main
from crystal_dask.runtime.lock import LOCK
from crystal_dask.status import Status, read, starting
from tests.helpers.jobs import tiny_job


def unreachable_cluster(tmp_path) -> tuple:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]  # closed again: nothing listens there
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"kind": "address", "address": f"tcp://127.0.0.1:{port}", "wait_for_workers": 5}))
    return path, port


def test_a_run_whose_cluster_never_comes_is_failed_with_the_reason(tmp_path, capsys):
    job, (cluster, port) = tiny_job(tmp_path), unreachable_cluster(tmp_path)
    out = tmp_path / "out"
    assert main(["run", str(job), "--cluster", str(cluster), "--no-progress"]) == 1
    said = capsys.readouterr().err.strip().splitlines()[-1]
    reason = f"{cluster}: address: cannot reach the scheduler at tcp://127.0.0.1:{port}"
    assert said.startswith(f"crystal-dask: error: {reason}")
    state = read(out)
    assert state["state"] == "failed" and state["stages"] == [] and "ended" in state
    assert state["error"] == f"ConnectionError: {said.removeprefix('crystal-dask: error: ')}"
    assert main(["status", str(out)]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[0].startswith("job tiny: failed") and shown[-1] == f"  error: {state['error']}"


def test_a_refused_run_leaves_the_holders_status_alone(tmp_path, capsys):
    job, (cluster, _) = tiny_job(tmp_path), unreachable_cluster(tmp_path)
    out = tmp_path / "out"
    Status(out, "tiny", job).stage("scan:fcbr", state="running")
    before = (out / "status.json").read_bytes()
    with open(out / LOCK, "w") as holder:  # a real flock on its own open file, as another run's is
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["run", str(job), "--cluster", str(cluster)]) == 1
    assert "another run holds this output folder" in capsys.readouterr().err
    assert (out / "status.json").read_bytes() == before


def test_the_runner_takes_over_the_drivers_status_and_its_start(tmp_path):
    from crystal_dask.experiment import Experiment
    from crystal_dask.pipeline import Runner
    from crystal_dask.vocab import LabelMap

    out = tmp_path / "out"
    exp = Experiment(name="t", source=tmp_path / "job.yaml", out=out, corpora={}, labels=LabelMap(), settings={})
    with starting(out, exp.name, exp.source) as status:
        assert read(out)["state"] == "starting"
        runner = Runner(exp, None, status=status)
    assert runner.status is status
    state = read(out)
    assert state["state"] == "running" and state["started"] == status.data["started"]  # not reset by the runner
