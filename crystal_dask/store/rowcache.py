"""Each machine's decoded copy of a dataset array on local disk: chunks are decoded once, rows read many times.

A forest's trees each sample a few thousand rows scattered over every chunk of the array, so decoding the chunks a
tree touches costs nearly the whole array per tree. Instead, the first read of a chunk on a machine checks its
stored bytes against the dataset's recorded checksums (store/integrity.py), decodes it and writes the rows into
one flat file of the stored dtype, (rows, features), in place; later reads of those rows, by any tree,
configuration, run or worker process of that machine, are plain reads of that file.

    <directory>/<key>.rows  the decoded rows, row r at byte r * features * itemsize (a sparse file until filled)
    <directory>/<key>.done  one byte per chunk, 1 once the chunk's rows are in .rows; its mtime is the last use

The key is derived from what the decoded bytes depend on: the array's zarr.json (shape, dtype, codecs) and the
recorded size and hash of every one of its chunk files, so a copy of the dataset elsewhere shares the cache and a
re-extracted one never does; plus the machine's boot id, because the fills are ordered (data, then the chunk's
done byte) only in the page cache: a crash of the machine could keep the byte and lose the data, so a reboot
starts a new copy instead. Arrays without recorded checksums are not cached (they could not be checked).

Worker processes of one machine fill the same files: a chunk is filled under an fcntl lock on its byte of .done,
and its done byte is written only after its rows, so a reader never sees a half-filled chunk and no chunk is
decoded twice. Rows are read with pread into a small batch of the stored dtype and converted from there into the
caller's output (`gather`): nothing of the file is mapped, so a process's resident memory holds one batch besides
its output, and the conversion reads from the CPU's cache instead of page-faulting through a fresh mapping.

Settings (dask config, read where the rows are read): `crystal_dask.row_cache.directory` (default
`<temporary-directory>/crystal-dask-rows`) and `crystal_dask.row_cache.max_bytes` (bytes or a size such as
"40GiB"; 0 turns the cache off and empties it; default: half the free space of the directory's file system). A new
array that would take the cache over the bound evicts the least recently used ones; one that alone exceeds it is
not cached.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import dask.config
import numpy as np
import zarr
from dask.utils import parse_bytes

from crystal_dask.store import integrity
from crystal_dask.store.integrity import Damage, DamagedDataError

DIRECTORY_KEY = "crystal_dask.row_cache.directory"
MAX_BYTES_KEY = "crystal_dask.row_cache.max_bytes"
BATCH_BYTES = 256 * 2**10  # rows read at once before their conversion: small enough to stay in the CPU's cache
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def directory() -> Path:
    """Where this machine keeps its decoded arrays."""
    configured = dask.config.get(DIRECTORY_KEY, None)
    if configured:
        return Path(configured)
    return Path(dask.config.get("temporary-directory", None) or tempfile.gettempdir()) / "crystal-dask-rows"


def max_bytes(where: Path) -> int:
    """The bound on the cache's size on disk (0: off)."""
    value = dask.config.get(MAX_BYTES_KEY, None)
    if value is None:
        return (shutil.disk_usage(where).free + usage(where)) // 2
    try:
        limit = parse_bytes(value) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        limit = -1
    if limit < 0:
        raise ValueError(f"dask config {MAX_BYTES_KEY}: {value!r} is not a size (bytes, or e.g. '40GiB')")
    return limit


def usage(where: Path) -> int:
    """Bytes the cache's files occupy on disk (sparse files count only what was filled)."""
    return sum(p.stat().st_blocks * 512 for p in where.glob("*.rows")) if where.exists() else 0


@functools.lru_cache(maxsize=16)
def _key(group_path: str, name: str, checksums_stamp: tuple[int, int], meta_stamp: tuple[int, int]) -> str | None:
    """The identity of an array's decoded contents (the stamps only invalidate this process's memo)."""
    recorded = integrity.load_checksums(Path(group_path).parent)
    mine = sorted((k, v) for k, v in recorded.items() if k.split("/", 1)[0] == name)
    if not mine:
        return None
    boot = _BOOT_ID.read_text().strip() if _BOOT_ID.exists() else ""
    meta = (Path(group_path) / name / "zarr.json").read_text()
    return hashlib.sha256(json.dumps([meta, mine, boot]).encode()).hexdigest()


def stamp(path: Path) -> tuple[int, int]:
    """(mtime, size) of a file, (0, 0) when it is absent: a memo's key that changes when the file does."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return (0, 0)
    return (st.st_mtime_ns, st.st_size)


@dataclass(frozen=True)
class RowCache:
    """One array's decoded copy on this machine (see the module docstring); `open_cache` makes one."""

    key: str
    where: Path
    group_path: Path
    name: str
    arr: zarr.Array

    @property
    def rows_file(self) -> Path:
        return self.where / f"{self.key}.rows"

    @property
    def done_file(self) -> Path:
        return self.where / f"{self.key}.done"

    def read(self, rows: np.ndarray, out: np.ndarray) -> int:
        """out[i] = row rows[i] (any order, repeats allowed), filling the chunks it needs first; returns how many
        chunks this call decoded."""
        chunk = int(self.arr.chunks[0])
        n_rows, n_features = int(self.arr.shape[0]), out.shape[1]
        n_chunks = -(-n_rows // chunk)
        row_bytes = n_features * self.arr.dtype.itemsize
        # both files stay open for the whole read: an eviction by another process then cannot swap them
        with open(os.open(self.rows_file, os.O_RDWR | os.O_CREAT, 0o644), "r+b") as data, \
                open(os.open(self.done_file, os.O_RDWR | os.O_CREAT, 0o644), "r+b") as done:
            for f, size in ((data, n_rows * row_bytes), (done, n_chunks)):
                if os.fstat(f.fileno()).st_size < size:
                    os.ftruncate(f.fileno(), size)  # every creator sets the same size: idempotent
            os.utime(done.fileno())  # last use, for eviction
            filled = self._fill(data, done, np.unique(rows // chunk), chunk, row_bytes)
            gather(data.fileno(), rows, out, self.arr.dtype, row_bytes)
        return filled

    def _fill(self, data, done, chunks: Iterable[int], chunk: int, row_bytes: int) -> int:
        marks = os.pread(done.fileno(), os.fstat(done.fileno()).st_size, 0)
        missing = [int(k) for k in chunks if not marks[k]]
        if not missing:  # the usual case once the copy is filled: no checksums to load
            return 0
        recorded = integrity.load_checksums(self.group_path.parent)
        filled = 0
        for k in missing:
            fcntl.lockf(done, fcntl.LOCK_EX, 1, k)
            try:
                if os.pread(done.fileno(), 1, k) == b"\x01":
                    continue  # another process filled it while this one waited
                key = integrity.chunk_key(self.arr, k, self.name)
                problem = integrity.check_chunk(self.group_path, key, recorded.get(key), full=True)
                if problem is not None:
                    raise DamagedDataError(str(self.group_path.parent),
                                           [Damage(self.name, k, str(self.group_path / key), problem)])
                start, stop = k * chunk, min((k + 1) * chunk, int(self.arr.shape[0]))
                rows = np.ascontiguousarray(self.arr[start:stop])
                os.pwrite(data.fileno(), memoryview(rows).cast("B"), start * row_bytes)
                os.pwrite(done.fileno(), b"\x01", k)  # after the rows: a set byte always means filled rows
                filled += 1
            finally:
                fcntl.lockf(done, fcntl.LOCK_UN, 1, k)
        return filled


def gather(fd: int, rows: np.ndarray, out: np.ndarray, stored: np.dtype, row_bytes: int) -> None:
    """out[i] = row rows[i] of the flat file `fd` (rows of `row_bytes` bytes of dtype `stored`), any order.

    Straight into `out` when it has the stored dtype; else batches of about BATCH_BYTES are read and converted
    into their slice of `out` (uint8 -> float32 from a batch the cache holds costs a fraction of the same copy
    through a memory map, whose pages must each be faulted in).
    """
    if out.dtype == stored:
        for i, r in enumerate(rows):
            _pread_into(fd, out[i], int(r) * row_bytes)
        return
    per_batch = max(1, BATCH_BYTES // row_bytes)
    batch = np.empty((min(per_batch, len(rows)), out.shape[1]), stored)
    for i in range(0, len(rows), per_batch):
        part = rows[i:i + per_batch]
        for j, r in enumerate(part):
            _pread_into(fd, batch[j], int(r) * row_bytes)
        out[i:i + len(part)] = batch[:len(part)]


def _pread_into(fd: int, row: np.ndarray, offset: int) -> None:
    if os.preadv(fd, [row], offset) != row.nbytes:  # a regular file reads whole unless it is shorter
        raise OSError(f"row cache: short read at byte {offset} of a file sized for the array")


def open_cache(group_path: str | Path, name: str, arr: zarr.Array) -> RowCache | None:
    """This machine's cache of `arr` (array `name` of the zarr group at `group_path`), or None when it is off,
    the array has no recorded checksums, or the array alone exceeds the bound."""
    group_path = Path(group_path)
    key = _key(str(group_path), name, stamp(group_path.parent / integrity.CHECKSUMS),
               stamp(group_path / name / "zarr.json"))
    if key is None:
        return None
    where = directory()
    where.mkdir(parents=True, exist_ok=True)
    cache = RowCache(key, where, group_path, name, arr)
    limit = max_bytes(where)
    size = int(np.prod(arr.shape, dtype=np.int64)) * arr.dtype.itemsize
    if size > limit:
        evict(where, limit)  # a lowered bound applies at once; 0 empties the cache
        return None
    if not cache.done_file.exists():
        evict(where, limit - size)
    return cache


def evict(where: Path, keep_under: int) -> None:
    """Remove the least recently used arrays until the cache occupies at most `keep_under` bytes."""
    entries = sorted(where.glob("*.done"), key=lambda p: stamp(p)[0])
    total = usage(where)
    for done in entries:
        if total <= keep_under:
            return
        rows = done.with_suffix(".rows")
        total -= rows.stat().st_blocks * 512 if rows.exists() else 0
        rows.unlink(missing_ok=True)
        done.unlink(missing_ok=True)
