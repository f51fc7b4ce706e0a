"""`crystal-dask run` through the real CLI: the cluster file is checked with the job file, before the run takes its
output folder's lock or writes anything there."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import child_env
from tests.helpers.jobs import TINY, write_job


@pytest.mark.parametrize("extra", [[], ["--dry-run"]])
def test_a_bad_cluster_file_is_one_line_and_leaves_no_output_folder(tmp_path, extra):
    out = tmp_path / "out"
    job = write_job(tmp_path, {**TINY, "out": str(out)})
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("kind: local\nworkers: 0\n")  # valid YAML, a bad value
    done = subprocess.run([sys.executable, "-m", "crystal_dask.cli", "run", str(job), "--cluster", str(cluster),
                           *extra], capture_output=True, text=True, env=child_env(), timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.splitlines() == [f"crystal-dask: error: {cluster}: workers: must be an integer >= 1; got 0"]
    assert done.stdout == ""  # no "job tiny: outputs in ..." line
    assert not out.exists()  # no lock, no status.json saying `starting`, no job.log
