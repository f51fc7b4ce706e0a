"""Checksums of a patch dataset's stored zarr chunks: recorded when a chunk is written, checked before it is read.

zarr v3 chunks carry no checksum of their own: a deleted chunk file reads as the fill value, a flipped byte decodes
to wrong pixels (or fails inside zstd with an error naming no file). So every writer records, per chunk file, its
size and the xxh3-128 hash of its stored (compressed) bytes; the dataset keeps them in <root>/checksums.json,
written before the manifest. The hash is over the file as stored, so checking it needs no decompression, and the
zarr bytes themselves do not change (datasets stay byte-identical to those written before checksums existed).

A cheap check (`full=False`: every file present with its recorded size) and a full one (every hash) share one
function, `verify`. Every problem is a `Damage` naming the array, the chunk (its first row) and the file.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash
import zarr

CHECKSUMS = "checksums.json"
ALGORITHM = "xxh3_128"  # ~6 GB/s here, against sha256's 0.6: a full check costs less than reading the file


@dataclass(frozen=True)
class Damage:
    """One chunk that is not as it was written."""

    array: str
    chunk: int  # index along rows: rows [chunk * chunk_rows, (chunk + 1) * chunk_rows)
    file: str
    problem: str

    def __str__(self) -> str:
        return f"array {self.array!r} chunk {self.chunk} ({self.file}): {self.problem}"


class DamagedDataError(OSError):
    """Stored data that fails its checksum (or has none); the message names the array, chunk and file of each."""

    def __init__(self, root: str, damage: list[Damage] | tuple[Damage, ...]):
        self.root, self.damage = str(root), tuple(damage)
        shown = "; ".join(map(str, self.damage[:5])) + (f"; and {len(self.damage) - 5} more"
                                                        if len(self.damage) > 5 else "")
        super().__init__(f"{self.root}: damaged dataset, refusing to read it: {shown}. "
                         f"`crystal-dask verify {self.root}` lists every damaged chunk; rerunning the job "
                         f"re-extracts them")

    def __reduce__(self):  # raised inside Dask workers: must pickle with its own arguments
        return type(self), (self.root, list(self.damage))


def file_hash(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def chunk_key(array: zarr.Array, chunk: int, name: str | None = None) -> str:
    """The chunk file of row-chunk `chunk`, relative to the zarr group (arrays are chunked along rows only);
    `name`: the array's name in the group, when it was opened alone."""
    return f"{name or array.path}/{array.metadata.encode_chunk_key((chunk, *(0,) * (array.ndim - 1)))}"


def record_chunks(group_path: Path, group: zarr.Group, names: Iterable[str], start: int,
                  rows: int) -> dict[str, list[Any]]:
    """{chunk file relative to the group: [size, hash]} of the chunks of `names` holding rows [start, start+rows),
    read back from disk just after they were written."""
    out: dict[str, list[Any]] = {}
    for name in names:
        a = group[name]
        c = a.chunks[0]
        for k in range(start // c, -(-(start + rows) // c)):
            key = chunk_key(a, k)
            data = (group_path / key).read_bytes()
            out[key] = [len(data), file_hash(data)]
    return out


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int, size: int) -> Mapping[str, list[Any]]:
    return json.loads(Path(path).read_text())["chunks"]


def load_checksums(root: Path) -> Mapping[str, list[Any]]:
    """The recorded {chunk file: [size, hash]} of the dataset at `root` (empty when none were recorded)."""
    path = Path(root) / CHECKSUMS
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return {}
    return _load(str(path), st.st_mtime_ns, st.st_size)  # cached: every evaluation task of a worker reads it


def write_checksums(root: Path, chunks: Mapping[str, list[Any]]) -> None:
    from crystal_dask.store.files import write_json

    write_json(Path(root) / CHECKSUMS, {"algorithm": ALGORITHM, "chunks": dict(sorted(chunks.items()))}, indent=None)


def check_chunk(group_path: Path, key: str, recorded: list[Any] | None, full: bool) -> str | None:
    """What is wrong with one chunk file, or None."""
    path = group_path / key
    if recorded is None:
        return "no checksum recorded for it (written by an older crystal_dask, or never finished)"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "file missing (it would read as zeros)"
    if size != recorded[0]:
        return f"{size} bytes, {recorded[0]} were written (truncated or overwritten)"
    if full and file_hash(path.read_bytes()) != recorded[1]:
        return f"contents differ from the {ALGORITHM} checksum recorded when it was written (corrupted bytes)"
    return None


def unchecked(root: Path, group: zarr.Group, arrays: Iterable[str] | None = None) -> list[str]:
    """The arrays of which no chunk has a recorded checksum."""
    covered = {key.split("/", 1)[0] for key in load_checksums(root)}
    return sorted(n for n in (arrays if arrays is not None else group.array_keys()) if n not in covered)


def verify(root: Path, group_path: Path, group: zarr.Group, arrays: Iterable[str] | None = None,
           chunks: Iterable[int] | None = None, full: bool = True) -> list[Damage]:
    """Check chunks `chunks` (default: all) of `arrays` (default: all that have checksums) against the recorded
    checksums. An array without a single recorded checksum (a dataset written before checksums, or an array whose
    writer records none) is not checked: `unchecked` names them."""
    recorded = load_checksums(root)
    damage = []
    for name in sorted(arrays if arrays is not None else group.array_keys()):
        if name in unchecked(root, group, [name]):
            continue
        a = group[name]
        n = -(-a.shape[0] // a.chunks[0])
        for k in (range(n) if chunks is None else chunks):
            key = chunk_key(a, k)
            problem = check_chunk(group_path, key, recorded.get(key), full)
            if problem is not None:
                damage.append(Damage(name, int(k), str(group_path / key), problem))
    return damage
