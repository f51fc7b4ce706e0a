"""How an expected failure reaches a user: one line, `crystal-dask: error: ...`, naming the file, key or address.

An expected failure is one the user can act on: bad input (a job file or cluster.yaml value, an untrusted model,
an unreadable slide, damaged data), the file system (missing file, read-only folder, full disk), a cluster that is
not there, or another run holding the output folder. Anything else is a bug and keeps its traceback. The traceback
of an expected failure too is shown with `--debug` or CRYSTAL_DASK_DEBUG=1.
"""

from __future__ import annotations

import errno
import os
import sys

PROG = "crystal-dask"
INPUT_ERROR, USAGE_ERROR, INTERRUPTED = 1, 2, 130
# (module, class) of the expected failures that are not OSError or ValueError: looked up only among the modules
# already imported, so reporting an error never imports (and never slows the start of) any stage
_EXPECTED = (("crystal_dask.runtime.lock", "LockedError"), ("crystal_dask.store.models", "UntrustedModelError"),
             ("crystal_dask.wsi.slides", "SlideError"), ("distributed.comm.core", "CommClosedError"))


def debug_wanted(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("CRYSTAL_DASK_DEBUG", "") not in ("", "0")


def expected(exc: BaseException) -> bool:
    """Whether `exc` is a failure the user can act on (as opposed to a bug)."""
    if isinstance(exc, OSError | ValueError):  # ConfigError, ExperimentError, ClusterConfigError, ... are ValueErrors
        return True
    classes = [getattr(sys.modules.get(m), name, None) for m, name in _EXPECTED]
    return isinstance(exc, tuple(c for c in classes if isinstance(c, type)))


def message(exc: BaseException) -> str:
    """One line (or a few) saying what failed and where."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError):
        paths = [p for p in (exc.filename, exc.filename2) if p is not None]
        if exc.errno == errno.ENOSPC:
            text = f"no space left on device{f' writing {paths[0]}' if paths else ''}: {exc.strerror or text}"
        elif exc.errno == errno.EROFS:
            text = f"read-only file system: cannot write {paths[0] if paths else text}"
        elif paths and not any(str(p) in text for p in paths):
            text = f"{text}: {paths[0]}"
        elif exc.strerror and exc.errno and text.startswith("["):  # "[Errno 13] Permission denied: 'x'"
            text = f"{exc.strerror}: {paths[0]}" if paths else exc.strerror
    return f"{PROG}: error: {text}"
