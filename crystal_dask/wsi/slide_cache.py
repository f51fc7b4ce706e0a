"""A per-process cache of open slides for the length of one stage.

A chunk of patches touches one or a few slides, and consecutive chunks of the plan mostly touch the same ones
(the plan follows the regions table, which lists each slide's regions together): keeping the slides open across a
worker's tasks saves re-parsing the TIFF structure (and re-reading an SVS's IFD chain) for every task. The cache is
keyed by stage id, so the first task of a new stage closes what the last stage left open, and `close_stage` closes
the files when the stage ends. A file changed on disk (size or mtime) is reopened.
"""

from __future__ import annotations

import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from crystal_dask.wsi.slides import Slide, SlideError

__all__ = ["MAX_OPEN", "cached_slide", "close_stage", "open_count"]

MAX_OPEN = 16  # slides kept open per process: file handles and tifffile's page structures are small

_lock = threading.Lock()
_stage: str | None = None
_open: OrderedDict[tuple[str, int, int], Slide] = OrderedDict()
_in_use: Counter[int] = Counter()  # id(slide) -> tasks reading it now: never closed under them


def _evict(keep: int) -> None:
    """Close least recently used slides that no task is reading until at most `keep` are open."""
    for key in list(_open):
        if len(_open) <= keep:
            break
        if not _in_use[id(_open[key])]:
            _open.pop(key).close()


@contextmanager
def cached_slide(path: str | os.PathLike, stage: str) -> Iterator[Slide]:
    """The open Slide for `path` in this process during `stage`, for the length of the `with` block; opens it
    (SlideError as Slide does) when it is not open yet.

    The cache closes slides, never the caller: when the stage changes or ends, or when more than MAX_OPEN are
    open (least recently used first, and never one a task is reading)."""
    global _stage
    try:
        st = Path(path).stat()
    except OSError as exc:  # as Slide words it
        raise SlideError(f"{Path(path)}: cannot open: {exc}") from exc
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _lock:
        if stage != _stage:
            _evict(0)
            _stage = stage
        slide = _open.get(key)
        if slide is not None:
            _open.move_to_end(key)
            _in_use[id(slide)] += 1
    if slide is None:
        opened = Slide(path)  # outside the lock: other threads of the worker keep using their slides meanwhile
        with _lock:
            slide = _open.setdefault(key, opened) if stage == _stage else opened
            if slide is not opened:
                opened.close()  # another thread opened the same file first
            _in_use[id(slide)] += 1
    try:
        yield slide
    finally:
        with _lock:
            _in_use[id(slide)] -= 1
            if not _in_use[id(slide)]:
                del _in_use[id(slide)]
            if all(s is not slide for s in _open.values()):
                slide.close()  # not kept (the stage ended while it opened, or it was evicted): close it now
            _evict(MAX_OPEN)


def close_stage(stage: str) -> int:
    """Close the slides this process holds for `stage` (run on every worker when the stage ends) that no task is
    reading; returns how many stay open (0 unless tasks of the stage still run)."""
    global _stage
    with _lock:
        if stage == _stage:
            _evict(0)
            if not _open:
                _stage = None
        return len(_open) if stage == _stage else 0


def open_count() -> int:
    """Slides this process holds open."""
    return len(_open)
