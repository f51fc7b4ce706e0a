"""glibc thresholds: raised by tasks, restored on every worker when the stage ends; measured in page faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import distributed
import pytest

from crystal_dask.runtime import allocator

pytestmark = pytest.mark.skipif(allocator._libc() is None, reason="glibc's mallopt is Linux-only")

FAULTS = textwrap.dedent("""
    import sys
    if sys.argv[1] == "distributed first":  # a worker's order
        import distributed
    import numpy as np
    from crystal_dask.runtime.allocator import restore_malloc, roomy_malloc

    import ctypes, json, resource
    # 4 KiB pages only: with transparent huge pages (numpy asks for them from 4 MiB up) a fresh 4 MiB mapping
    # that lies on 2 MiB boundaries costs 3 faults instead of ~1,000, and whether it does depends on what was
    # mapped before it (the import order decided it: 301 faults against 51,401), so the fault count would no
    # longer say whether the pages are fresh
    assert ctypes.CDLL(None).prctl(41, 1, 0, 0, 0) == 0  # PR_SET_THP_DISABLE

    def faults():  # minor page faults of allocating, touching and freeing 100 images of 4 MiB
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(100):
            np.ones((1024, 1024), np.float32).sum()
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    out = {"nanny": faults()}
    roomy_malloc("a")
    roomy_malloc("a")  # idempotent
    out["roomy"] = faults()
    restore_malloc("a")
    out["restored"] = faults()
    roomy_malloc("a")  # a late task of a closed stage changes nothing
    out["late"] = faults()
    print(json.dumps(out))
""")


@pytest.mark.parametrize("order", ["numpy first", "distributed first"])
def test_roomy_malloc_stops_the_page_fault_storm_and_restore_brings_the_workers_setting_back(order):
    # what Dask's nanny gives its workers; a LocalCluster also leaves the BLAS thread counts at 1 in its parent
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    out = json.loads(subprocess.run([sys.executable, "-c", FAULTS, order], env=env, capture_output=True, text=True,
                                    check=True).stdout)
    # 4 MiB mapped fresh each time is ~1,000 faults per image; a roomy heap reuses its pages
    assert out["nanny"] > 50_000 and out["restored"] > 50_000 and out["late"] > 50_000, out
    assert out["roomy"] < out["nanny"] / 20, out


def _raise_here(stage: str) -> None:
    allocator.roomy_malloc(stage)


def _task(i: int, stage: str) -> int:
    allocator.roomy_malloc(stage)
    if i == 0:
        raise RuntimeError("a task failed")
    time.sleep(0.05)  # the others are still queued or running when the stage gives up
    return i


def _raised() -> bool:
    return allocator._raised_for is not None


def test_roomy_stage_restores_every_worker_even_when_the_stage_fails(client):
    with allocator.roomy_stage(client) as stage:
        client.run(_raise_here, stage)
        assert all(client.run(_raised).values())
    assert not any(client.run(_raised).values())

    with pytest.raises(RuntimeError, match="a task failed"), allocator.roomy_stage(client) as stage:
        futures = client.map(_task, range(20), stage=stage, pure=False)
        client.gather(futures)
    distributed.wait(futures)  # the failed stage's other tasks run to their end after the restore
    assert sum(f.status == "finished" for f in futures) > 0  # ... so some did start after it
    assert not any(client.run(_raised).values())
