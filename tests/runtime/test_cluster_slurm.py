"""The slurm kind against a real SLURM (.ci/slurm.sh start): workers are SLURM jobs, compute, jobs gone after."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import dask.array as da
import pytest
import yaml

from crystal_dask.runtime.cluster import ClusterConfig, connect, load_cluster_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]  # SLURM jobs start in seconds each
JOB_NAME = "crystal-dask-test"


def squeue_ids() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-n", JOB_NAME, "-o", "%i"], check=True, capture_output=True, text=True)
    return set(out.stdout.split())


def slurm_yaml(tmp_path: Path, scale: dict, **extra) -> ClusterConfig:
    path = tmp_path / "cluster.yaml"
    # No scheduler host or interface: the scheduler listens on the default interface, as on a real login node.
    path.write_text(yaml.safe_dump({
        "kind": "slurm", "cores": 1, "memory": "2GB", "walltime": "00:10:00", "processes": 1,
        "python": sys.executable, "local_directory": str(tmp_path / "spill"), "log_directory": str(tmp_path / "logs"),
        "scale": scale, "wait_for_workers": 90, **extra,
        "jobqueue": {"job_name": JOB_NAME, "scheduler_options": {"dashboard_address": ":0"}},
    }))
    return load_cluster_config(path)


def wait_until_gone(job_ids: set[str]) -> None:
    deadline = time.monotonic() + 30  # scancel returns at once; jobs leave squeue after completing
    while job_ids & squeue_ids():
        assert time.monotonic() < deadline, f"SLURM jobs {sorted(job_ids & squeue_ids())} still queued after exit"
        time.sleep(0.5)


def test_slurm_jobs_run_the_workers_and_are_cancelled_on_exit(slurm_ready, tmp_path, capfd):
    with connect(slurm_yaml(tmp_path, {"jobs": 2})) as client:
        client.wait_for_workers(2, timeout=60)
        job_ids = client.run(os.getenv, "SLURM_JOB_ID")  # os.getenv pickles by reference: read on the worker
        assert len(job_ids) == 2 and all(job_ids.values()), job_ids
        assert set(job_ids.values()) <= squeue_ids()
        assert da.ones((1000, 1000), chunks=250).sum().compute() == 1_000_000
        assert sum(client.gather(client.map(lambda x: x * x, range(10)))) == 285
    assert "dashboard: http://" in capfd.readouterr().err
    assert sorted(p.suffix for p in (tmp_path / "logs").iterdir()) == [".err", ".err", ".out", ".out"]
    wait_until_gone(set(job_ids.values()))


def test_slurm_adaptive_keeps_its_minimum_job(slurm_ready, tmp_path):
    with connect(slurm_yaml(tmp_path, {"adapt": {"minimum_jobs": 1, "maximum_jobs": 2}})) as client:
        job_ids = set(client.run(os.getenv, "SLURM_JOB_ID").values())
        assert len(job_ids) == 1 and None not in job_ids and job_ids <= squeue_ids()
        assert client.submit(sum, [1, 2, 3]).result() == 6
    wait_until_gone(job_ids)


def test_slurm_pending_job_times_out_naming_the_wait_and_is_cancelled(slurm_ready, tmp_path):
    cfg = slurm_yaml(tmp_path, {"jobs": 1}, wait_for_workers=3, job_extra_directives=["--begin=now+1hour"])
    with pytest.raises(TimeoutError, match=r"cluster\.yaml: wait_for_workers: no worker joined the slurm cluster "
                                           r".*are the jobs pending\?.* within 3 s"):
        with connect(cfg):
            pass
    wait_until_gone(squeue_ids())  # nothing else runs under this test's job name
