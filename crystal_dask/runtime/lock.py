"""One run per output folder: <out>/.lock, held with fcntl.flock for the whole run, records pid, host and start.

The kernel drops a flock when its process dies, however it dies (SIGKILL included), so a lock file left by a
killed run is not held by anyone: the next run takes it over and says whose it was. A second run while the first
lives is refused at once, naming the command, pid and host that hold the lock. Every command that writes a folder
takes it (`run`, `scan`, `extract`, `features`, `train`, `evaluate`, `infer`, `calcifications`), before it reads
its inputs or starts a cluster. The lock is re-entrant within one process (the CLI takes it before starting a
cluster, the runner again around the stages). A folder that holding the lock created is removed again if it is
still empty on release, so a command refused or failing at once leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOCK = ".lock"
log = logging.getLogger("crystal_dask.pipeline")
_held: dict[str, int] = {}  # resolved lock path -> how many times this process holds it


class LockedError(RuntimeError):
    """Another live run holds the output folder's lock."""


def read_lock(out: Path) -> dict[str, Any] | None:
    """What the lock file of `out` says (pid, host, started, command), or None."""
    try:
        return json.loads((Path(out) / LOCK).read_text() or "null")
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _describe(info: dict[str, Any] | None) -> str:
    if not info:
        return "another process (its lock file is empty)"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info.get('pid')} on host {info.get('host')} ({info.get('what', 'a run')}, started {started})"


# fds of the locks this process holds. A forked child (the synthetic corpus painter's process pool) would share
# each lock's open file description, and so keep the flock alive after this process is killed; the child drops
# its copies at once, so the lock lives exactly as long as its holder.
_FDS: set[int] = set()


def _drop_in_child() -> None:
    for fd in list(_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _FDS.clear()
    _held.clear()


os.register_at_fork(after_in_child=_drop_in_child)


@contextlib.contextmanager
def hold(out: Path, what: str = "crystal-dask run") -> Iterator[Path]:
    """Hold <out>/.lock for the block; raise LockedError at once if a live run holds it."""
    out = Path(out)
    created = not out.exists()
    path = out / LOCK
    key = str(path.resolve())
    if key in _held:
        _held[key] += 1
        try:
            yield path
        finally:
            _held[key] -= 1
        return
    while True:
        out.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # another run's release removed the folder it had created: make it again
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockedError(f"{out}: another run holds this output folder: {_describe(read_lock(out))}; "
                              f"lock file {path}. Wait for it, or stop it first") from None
        # the file may have been removed (by its holder, finishing) between our open and our flock: then we
        # hold a lock on a file nobody else will open; start again on the file the path names now
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    previous = read_lock(out)
    if previous:
        log.warning("output folder %s: took over the stale lock of %s: that run is gone", out, _describe(previous))
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "what": what}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    _held[key] = 1
    _FDS.add(fd)
    try:
        yield path
    finally:
        _FDS.discard(fd)
        _held.pop(key, None)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # while still holding it: a waiting opener then sees another inode and retries
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):  # fails, as it should, when anything was written there
                out.rmdir()
