"""Shared fixtures: real generated corpora on disk and real Dask clusters (no stand-ins)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REALDATA


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
    from crystal_dask.synthetic.corpus import generate_corpus

    root = tmp_path_factory.mktemp("corpus") / "fcbr"
    generate_corpus(root, flavour="fcbr", patients=8, slides_per_patient=1, regions_per_slide=10, crystalline=12,
                    slide_size=(2400, 1800), seed=7)
    return root


@pytest.fixture(scope="session")
def small_scan(small_corpus):
    from crystal_dask.stages.scan import scan

    return scan(small_corpus)


@pytest.fixture(scope="session")
def client():
    """A real LocalCluster shared by the whole session (starting one costs seconds), made as a job makes it: two
    worker processes, one thread each, dashboard on a free port. A test that kills or restarts workers takes
    `own_client` instead."""
    from crystal_dask.runtime.cluster import local_client

    with local_client(2, "4GiB") as c:
        yield c


@pytest.fixture
def own_client():
    """A LocalCluster of the test's own, made like `client`: for tests that kill its workers."""
    from crystal_dask.runtime.cluster import local_client

    with local_client(2, "4GiB") as c:
        yield c


@pytest.fixture(scope="session")
def small_dataset(small_scan, client, tmp_path_factory) -> Path:
    """small_scan extracted once for the session (region mode, 8-row chunks, the scan's rejects carried along):
    shared by the extract, train, evaluate, report and integrity tests. Read it, or copy it before writing."""
    from crystal_dask.stages.extract import extract
    from crystal_dask.wsi.patches import PatchSettings

    out = tmp_path_factory.mktemp("small_dataset") / "ds"
    extract(small_scan.regions, out, PatchSettings(chunk_rows=8), client, scan_rejects=small_scan.rejects)
    return out


@pytest.fixture(scope="session")
def window_model(small_scan, client, tmp_path_factory) -> Path:
    """A forest trained on 256 px windows (step 256) of small_corpus's train split: for whole-slide inference."""
    from crystal_dask.stages.extract import extract
    from crystal_dask.stages.train import TrainConfig, train
    from crystal_dask.wsi.patches import PatchSettings

    root = tmp_path_factory.mktemp("window_model")
    settings = PatchSettings(mode="window", window_size=256.0, window_step=256.0, chunk_rows=64)
    ds = extract(small_scan.regions, root / "ds", settings, client)
    train(ds.root, TrainConfig("baseline"), root / "baseline.skops", client)
    return root / "baseline.skops"
