"""A job's status file, <out>/status.json: written by the runner at every change, read by `crystal-dask status`.

Stages are listed in run order. Light on purpose (no Dask, zarr or scikit-learn): `crystal-dask status` imports it.
The driver writes it from its start (`starting`: the cluster is being made), so a driver that ends before its first
stage still says why.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crystal_dask.store.files import write_json

FILE = "status.json"


class Status:
    """The running job's status, rewritten atomically at every change."""

    def __init__(self, out: Path, job: str, job_file: Path, state: str = "running"):
        self.path = Path(out) / FILE
        self.data: dict[str, Any] = {
            "job": job, "job_file": str(job_file), "out": str(out), "pid": os.getpid(),
            "host": socket.gethostname(), "driver_slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "state": state, "stage": None, "stages": [], "report": None, "started": time.time(),
        }
        self.write()

    def write(self) -> None:
        write_json(self.path, self.data)

    def failed(self, exc: BaseException) -> None:
        """Record why the job stopped. Written even on a full disk: the error may be exactly that."""
        state = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        self.data.update(state=state, error=f"{type(exc).__name__}: {exc}", ended=time.time())
        for entry in self.data["stages"]:  # the step that was running when it stopped
            if entry.get("state") == "running":
                entry.update(state=state, ended=self.data["ended"])
        try:
            self.write()
        except OSError:
            # no room for a temporary file: rewrite the old status in place, in the blocks it already has
            # (status.json is far smaller than one block, so truncating and writing needs no new one)
            data = json.dumps(self.data, sort_keys=True).encode()
            with contextlib.suppress(OSError):
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT)
                try:
                    os.pwrite(fd, data, 0)
                    os.ftruncate(fd, len(data))
                finally:
                    os.close(fd)

    def update(self, **kw: Any) -> None:
        self.data.update(kw)
        self.write()

    def stage(self, name: str, **kw: Any) -> None:
        """Record a step's state; a step seen for the first time goes to the end of the list (run order)."""
        entry = next((s for s in self.data["stages"] if s["name"] == name), None)
        if entry is None:
            entry = {"name": name}
            self.data["stages"].append(entry)
        entry.update(kw)
        self.data["stage"] = name
        self.write()


STARTING = "starting"


@contextlib.contextmanager
def starting(out: Path, job: str, job_file: Path) -> Iterator[Status]:
    """The driver's status from its start; the runner takes this very object over (pipeline.Runner), so the run
    has one status and one start time. A driver that fails before the runner took over (no cluster, workers that
    never come) records the failure and its one-line reason."""
    status = Status(out, job, job_file, state=STARTING)
    try:
        yield status
    except BaseException as exc:
        if status.data["state"] == STARTING:  # the runner never took over: nothing else would say why
            status.failed(exc)
        raise


def read(out: Path) -> dict[str, Any] | None:
    """The status a runner wrote into `out`, or None when no job ran there."""
    path = Path(out) / FILE
    return json.loads(path.read_text()) if path.exists() else None
