"""Atomic file writes: every file another stage or a resumed run reads is whole or absent, never half written."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write `data` to `path` through a temporary file and a rename. The temporary name carries the process and
    thread ids, so two writers of the same file (a task retried elsewhere, threaded workers) never share one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """Strict JSON (a NaN or infinity is a ValueError, not a file other parsers refuse), written atomically."""
    return write_atomic(path, json.dumps(obj, indent=indent, sort_keys=indent is not None, allow_nan=False))


# what a writer killed mid-write leaves: zarr's `<chunk>.<uuid>.partial`, write_atomic's `.<name>.<pid>-<thread>.tmp`
PARTIAL_CHUNKS, PARTIAL_FILES = "*.partial", ".*.tmp"


def remove_partial_writes(folder: Path, patterns: tuple[str, ...] = (PARTIAL_CHUNKS, PARTIAL_FILES)) -> None:
    """Remove the temporary files of writers killed mid-write under `folder`. Called once every chunk and marker is
    whole, they are orphans; left in place they would make a resumed run differ on disk from an undisturbed one."""
    for pattern in patterns:
        for orphan in Path(folder).rglob(pattern):
            orphan.unlink(missing_ok=True)
