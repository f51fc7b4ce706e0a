"""Shared fixtures: real generated corpora on disk and real Dask clusters (no stand-ins)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # test helpers such as dask_processes

PROJECT = Path(__file__).resolve().parents[1]
REALDATA = PROJECT.parent / "shared" / "realdata"


@pytest.fixture(scope="session")
def realdata() -> Path:
    if not REALDATA.is_dir():
        pytest.skip(f"real scanner files not found at {REALDATA} (a fresh clone has no ../shared)")
    return REALDATA


@pytest.fixture
def slurm_ready() -> None:
    """A running SLURM with an idle node; skips without one, fails instead when CI requires SLURM."""
    require = os.environ.get("CRYSTAL_DASK_REQUIRE_SLURM") == "1"
    why = None
    if shutil.which("sinfo") is None:
        why = "sinfo is not on PATH: no SLURM here (.ci/slurm.sh start sets one up, as root)"
    elif not subprocess.run(["sinfo", "-h", "-t", "idle,mixed", "-o", "%n"], capture_output=True,
                            text=True).stdout.strip():
        why = "SLURM has no idle node"
    if why:
        (pytest.fail if require else pytest.skip)(why)


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """A small generated FCBR-like corpus in the NEDC layout (every class, crystalline in every split)."""
    from crystal_dask.synth import generate_corpus

    root = tmp_path_factory.mktemp("corpus") / "fcbr"
    generate_corpus(root, flavour="fcbr", patients=8, slides_per_patient=1, regions_per_slide=10, crystalline=12,
                    slide_size=(2400, 1800), seed=7)
    return root


@pytest.fixture(scope="session")
def small_scan(small_corpus):
    from crystal_dask.scan import scan

    return scan(small_corpus)


@pytest.fixture(scope="module")
def client():
    """A real LocalCluster: two worker processes, one thread each, dashboard on a free port."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address="127.0.0.1:0",
                      memory_limit="4GiB") as cluster, Client(cluster) as c:
        yield c
