"""Test helpers: paths of the project and of the real scanner files, and real Dask processes (dask_processes)."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
REALDATA = PROJECT.parent / "shared" / "realdata"


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment with the project root first on PYTHONPATH, so a child imports `tests.*`."""
    path = os.pathsep.join(p for p in (str(PROJECT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}
