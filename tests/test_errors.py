"""Errors reach users as one line (issue 9, class 5): `crystal-dask: error: ...` naming the file, key or address,
exit 1 for input errors and 2 for usage, the traceback only with --debug; a failed job's status.json says why.
Real file systems: a tmpfs remounted read-only and a 1 MiB tmpfs that fills up (skipped where mounting is not
allowed)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from crystal_dask.cli import main
from crystal_dask.experiment import ExperimentError
from tests.helpers import child_env
from tests.test_pipeline import TINY, write_job


def one_error_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.startswith("crystal-dask: error:")]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


@pytest.fixture
def tmpfs(tmp_path):
    """A real 1 MiB tmpfs at tmp_path/fs; unmounted afterwards."""
    where = tmp_path / "fs"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", f"crystal-{uuid.uuid4().hex[:8]}", str(where)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): {done.stderr.strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=True)


def test_an_unknown_key_is_one_line_naming_file_and_key(tmp_path, capsys):
    job = write_job(tmp_path, {**TINY, "colour": 1, "out": str(tmp_path / "out")})
    assert main(["run", str(job)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert str(job) in line and "unknown key(s) ['colour']" in line
    with pytest.raises(ExperimentError):  # --debug: the exception and its traceback, as Python shows them
        main(["--debug", "run", str(job)])


def test_the_debug_environment_variable_shows_the_traceback(tmp_path):
    job = write_job(tmp_path, {**TINY, "colour": 1, "out": str(tmp_path / "out")})
    cmd = [sys.executable, "-m", "crystal_dask.cli", "run", str(job)]
    plain = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=900)
    assert plain.returncode == 1 and one_error_line(plain.stderr)
    debug = subprocess.run(cmd, capture_output=True, text=True, env=child_env(CRYSTAL_DASK_DEBUG="1"), timeout=900)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ExperimentError" in debug.stderr


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["run"])
    assert stop.value.code == 2


def test_a_missing_scheduler_is_one_line_naming_cluster_file_and_address(tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on (bound, never listening, closed again)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump({"kind": "address", "address": f"tcp://127.0.0.1:{port}", "wait_for_workers": 3}))
    job = write_job(tmp_path, {**TINY, "out": str(tmp_path / "out")})
    assert main(["run", str(job), "--cluster", str(cluster)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert str(cluster) in line and f"tcp://127.0.0.1:{port}" in line


def test_a_read_only_output_folder_is_one_line_naming_it(tmpfs, tmp_path, capsys):
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    out = tmpfs / "out"
    job = write_job(tmp_path, {**TINY, "out": str(out)})
    assert main(["run", str(job)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("crystal-dask: error: read-only file system") and str(out) in line


@pytest.mark.slow
def test_a_full_disk_in_synth_names_the_path_and_the_status_says_failed(tmpfs, tmp_path):
    out = tmpfs / "out"
    big = {**TINY["corpora"]["fcbr"]["synth"], "slide_size": [4000, 3000]}  # far more than 1 MiB of slides
    job = write_job(tmp_path, {**TINY, "corpora": {"fcbr": {"synth": big}}, "out": str(out),
                               "evaluate": {"sets": {"e": {"corpus": "fcbr"}}}})
    done = subprocess.run([sys.executable, "-m", "crystal_dask.cli", "run", str(job), "--no-progress"],
                          capture_output=True, text=True, env=child_env(), timeout=900)
    assert done.returncode == 1, done.stderr
    line = one_error_line(done.stderr)
    assert "no space left on device" in line and str(out / "corpora" / "fcbr") in line, line
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and "No space left on device" in status["error"], status
    assert {s["name"]: s["state"] for s in status["stages"]}["synth:fcbr"] == "failed"
    assert Path(status["job_file"]) == job
