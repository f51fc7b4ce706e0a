"""The patch dataset format: one folder per dataset, written by extract and read by every later stage.

    <root>/patches.zarr     zarr v3 group: per-row arrays chunked along rows (pixels, label, crystal, split, and any
                            feature array), attributes: plan hash, classes, splits, settings, format version
    <root>/patches.parquet  one row per written patch (schema PATCHES)
    <root>/rejects.parquet  every region or window that was not written, with its reason (schema REJECTS)
    <root>/checksums.json   size and xxh3-128 hash of every stored chunk file (store/integrity.py): checked
                            before any chunk is read, so damaged chunks are refused, never read as zeros
    <root>/extract.json     the manifest: written last, so its presence means the dataset is complete
    <root>/.extract/<plan>/ done-markers of the chunks written so far (resume)

Arrays are declared by name (`ROW_ARRAYS` holds the per-row bookkeeping ones). A later stage adds arrays beside
`pixels` (`add_arrays`: feature families, one float32 column per named feature) with an `ok_<name>` flag per row;
a row whose flag is false cannot be described by that array and is left out of every configuration
(`usable`), so all configurations of a job train and score on the same rows. `matrix(rows, arrays)` reads any
arrays as one row matrix, so training and evaluation work on pixels, features or both alike.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pyarrow as pa
import zarr
from zarr.codecs import ZstdCodec

from crystal_dask.store import integrity, rowcache
from crystal_dask.store.files import PARTIAL_CHUNKS, PARTIAL_FILES, remove_partial_writes, write_json
from crystal_dask.store.integrity import Damage, DamagedDataError
from crystal_dask.store.schema import PATCHES, REJECTS, read_table, write_table
from crystal_dask.vocab import CLASSES, SPLITS

FORMAT_VERSION = 5  # bump when the pixels (or their stored bytes) a plan produces change for the same settings
ZARR_NAME = "patches.zarr"
_SLAB_BYTES = 64 * 2**20  # bytes (as stored) per zarr read of scattered rows
MARKERS = ".extract"
PIXELS = "pixels"
# The per-row bookkeeping arrays every dataset has: name -> (dtype, fill value of a rejected row)
ROW_ARRAYS: dict[str, tuple[str, Any]] = {"label": ("int16", -1), "crystal": ("bool", False), "split": ("int8", -1)}
OK_PREFIX = "ok_"  # ok_<array>: bool per row, false where <array> could not describe the row


@functools.lru_cache(maxsize=32)
def _open_array(path: str, array: str, meta: tuple[int, int]) -> zarr.Array:
    """An array opened once per process: zarr's open costs milliseconds per call, and a tree asks for the shape,
    the dtype and the rows (`meta`, the stamp of the array's zarr.json: a rewritten array is opened again)."""
    return zarr.open_group(path, mode="r")[array]


@dataclass(frozen=True)
class ZarrRows:
    """Picklable reader of dataset rows: `zarr.open_group(path)[array]`, rows flattened to (n, features).

    Only the path and the array name travel with a task; the store is opened where the rows are read.
    """

    path: str
    array: str
    slab_bytes: int = _SLAB_BYTES  # bytes (as stored) per zarr read; at least one chunk
    cache: bool = False  # read through this machine's decoded copy of the array (store/rowcache.py)

    def _open(self) -> zarr.Array:
        return _open_array(self.path, self.array, rowcache.stamp(Path(self.path) / self.array / "zarr.json"))

    def __str__(self) -> str:
        return f"{self.path}[{self.array}]"

    @property
    def dtype(self) -> np.dtype:
        """The stored dtype, from the array's metadata only."""
        return np.dtype(self._open().dtype)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, features) of the array, from its metadata only."""
        arr = self._open()
        return int(arr.shape[0]), int(np.prod(arr.shape[1:], dtype=np.int64))

    def __call__(self, rows: np.ndarray, dtype: np.dtype | type | None = None, out: np.ndarray | None = None
                 ) -> np.ndarray:
        """The given rows, in the given order (repeats allowed), as a C-contiguous (len(rows), features) array, or
        written into `out` (a (len(rows), features) array whose rows are contiguous, of any dtype) and returned.

        Reads only the chunks that hold a requested row, each once, as chunk-aligned slices of at most about
        `slab_bytes` (a tree's scattered rows cost ~45% less CPU this way than one orthogonal selection, whose
        integer-array indexing dominates, and the stored-dtype copy is one slab, not every distinct row); each
        slab's rows go straight to their places in the output, converted to `dtype` (e.g. np.float32) there.
        """
        rows = np.asarray(rows)
        if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
            raise ValueError(f"{self.path}[{self.array}]: rows must be a 1-D integer array; got {rows.dtype} "
                             f"shape {rows.shape}")
        arr = self._open()
        n_rows, n_features = int(arr.shape[0]), int(np.prod(arr.shape[1:], dtype=np.int64))
        rows = rows.astype(np.int64)
        order = np.argsort(rows, kind="stable")
        ranked = rows[order]  # sorted; ranked[i] goes to output position order[i]
        if ranked.size and (ranked[0] < 0 or ranked[-1] >= n_rows):
            bad = ranked[0] if ranked[0] < 0 else ranked[-1]
            raise IndexError(f"{self.path}[{self.array}]: row {bad} is outside 0..{n_rows - 1}")
        if out is None:
            out = np.empty((len(rows), n_features), dtype=np.dtype(dtype) if dtype is not None else arr.dtype)
        elif out.shape != (len(rows), n_features):
            raise ValueError(f"{self.path}[{self.array}]: out has shape {out.shape}, not {(len(rows), n_features)}")
        cache = rowcache.open_cache(self.path, self.array, arr) if self.cache else None
        if cache is not None:
            cache.read(rows, out)
            return out
        chunk = int(arr.chunks[0])
        per_slab = max(1, self.slab_bytes // max(1, chunk * n_features * arr.dtype.itemsize))  # chunks per read
        touched = np.unique(ranked // chunk)
        runs = np.split(touched, np.flatnonzero(np.diff(touched) != 1) + 1) if touched.size else []
        for run in runs:  # consecutive touched chunks, read per_slab at a time
            for i in range(0, len(run), per_slab):
                last = int(run[min(i + per_slab, len(run)) - 1])
                start, stop = int(run[i]) * chunk, min((last + 1) * chunk, n_rows)
                slab = arr[start:stop].reshape(stop - start, n_features)
                lo, hi = np.searchsorted(ranked, [start, stop])
                out[order[lo:hi]] = slab[ranked[lo:hi] - start]
        return out


@dataclass(frozen=True)
class Dataset:
    """A patch dataset folder; every path of the format is a property here and nowhere else."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())

    @property
    def zarr(self) -> Path:
        return self.root / ZARR_NAME

    @property
    def patches(self) -> Path:
        return self.root / "patches.parquet"

    @property
    def rejects(self) -> Path:
        return self.root / "rejects.parquet"

    @property
    def manifest(self) -> Path:
        return self.root / "extract.json"

    @property
    def checksums(self) -> Path:
        return self.root / integrity.CHECKSUMS

    def markers(self, digest: str) -> Path:
        return self.root / MARKERS / digest

    # ------------------------------------------------------------------------------------------ writing
    def create(self, n: int, settings: Mapping[str, Any], digest: str, chunk_rows: int,
               arrays: Mapping[str, tuple[tuple[int, ...], str]]) -> Path:
        """Create the zarr arrays and marker folder for the plan `digest`; keep a partial dataset of the same plan
        (resume), discard everything from another plan. `arrays`: name -> (shape of one row, dtype), e.g.
        {"pixels": ((256, 256), "uint8")}. Returns the marker folder."""
        markers = self.markers(digest)
        if self.zarr.exists():
            try:
                same = zarr.open_group(str(self.zarr), mode="r").attrs.get("plan_hash") == digest
            except (FileNotFoundError, ValueError, KeyError):
                same = False
            if same and markers.exists():
                return markers
            shutil.rmtree(self.zarr)  # another plan's chunks are never mixed with this one's
        shutil.rmtree(self.root / MARKERS, ignore_errors=True)
        for stale in (self.manifest, self.patches, self.rejects, self.checksums):
            stale.unlink(missing_ok=True)
        markers.mkdir(parents=True)
        group = zarr.open_group(str(self.zarr), mode="w", zarr_format=3, attributes={
            "plan_hash": digest, "classes": list(CLASSES), "splits": list(SPLITS), "settings": dict(settings),
            "format_version": FORMAT_VERSION})
        zstd = ZstdCodec(level=2)  # 2/3 of level 3's CPU per chunk for 2-6% more bytes; level 1 was up to 50% more
        for name, (row_shape, dtype) in arrays.items():
            dims = ("patch", "y", "x") if len(row_shape) == 2 else ("patch", *(f"{name}_{i}" for i in
                                                                             range(len(row_shape))))
            group.create_array(name, shape=(n, *row_shape), chunks=(chunk_rows, *row_shape), dtype=dtype,
                               fill_value=0, compressors=zstd, dimension_names=dims)
        for name, (dtype, fill) in ROW_ARRAYS.items():
            group.create_array(name, shape=(n,), chunks=(chunk_rows,), dtype=dtype, fill_value=fill,
                               compressors=zstd, dimension_names=("patch",))
        return markers

    def add_arrays(self, arrays: Mapping[str, tuple[tuple[int, ...], str]], attributes: Mapping[str, Any]) -> None:
        """Create (or recreate, when their shape changed) data arrays beside pixels, each with its ok_<name> flags;
        `attributes` (column names, versions) go into each array's zarr attributes."""
        group = zarr.open_group(str(self.zarr), mode="r+")
        n, chunk_rows = group["label"].shape[0], group["label"].chunks[0]
        zstd = ZstdCodec(level=2)
        for name, (row_shape, dtype) in arrays.items():
            shape = (n, *row_shape)
            if name in group and group[name].shape == shape and dict(group[name].attrs) == dict(attributes[name]):
                continue
            group.create_array(name, shape=shape, chunks=(chunk_rows, *row_shape), dtype=dtype, fill_value=0,
                               compressors=zstd, overwrite=True, attributes=dict(attributes[name]),
                               dimension_names=("patch", *(f"{name}_{i}" for i in range(len(row_shape)))))
            group.create_array(OK_PREFIX + name, shape=(n,), chunks=(chunk_rows,), dtype="bool", fill_value=False,
                               compressors=zstd, overwrite=True, dimension_names=("patch",))

    def keep_arrays(self, names: Sequence[str]) -> None:
        """Remove every added data array not in `names` (pixels stays), with its ok_<name> flags and checksums: an
        array a later stage no longer makes must not outlive its setting."""
        gone = [n for n in self.array_names() if n != PIXELS and n not in names]
        if not gone:
            return
        group = zarr.open_group(str(self.zarr), mode="r+")
        for n in gone:
            del group[n]
            del group[OK_PREFIX + n]
        prefixes = tuple(f"{p}{n}/" for n in gone for p in ("", OK_PREFIX))
        integrity.write_checksums(self.root, {k: v for k, v in integrity.load_checksums(self.root).items()
                                              if not k.startswith(prefixes)})

    def write_rows(self, start: int, values: Mapping[str, np.ndarray]) -> dict[str, list[Any]]:
        """Write whole chunks of rows [start, start + n) of the named arrays (a task owns its chunks); return the
        written chunk files' checksums ({file under patches.zarr: [size, hash]}) for `finish`."""
        group = zarr.open_group(str(self.zarr), mode="r+")
        for name, v in values.items():
            # Whole chunks, always written: zarr's scan for all-fill chunks cost 9 ms per 2 MiB of pixels.
            group[name].with_config({"write_empty_chunks": True})[start:start + len(v)] = v
        n = len(next(iter(values.values())))
        return integrity.record_chunks(self.zarr, group, values, start, n)

    def finish(self, patches: pa.Table, rejects: pa.Table, manifest: Mapping[str, Any],
               checksums: Mapping[str, list[Any]]) -> None:
        """Write the tables and the chunks' checksums (as `write_rows` returned them), then the manifest that marks
        the dataset complete."""
        self.sweep_partial_writes()
        integrity.write_checksums(self.root, checksums)
        write_table(patches, self.patches, PATCHES)
        write_table(rejects, self.rejects, REJECTS)
        write_json(self.manifest, dict(manifest))

    def sweep_partial_writes(self) -> None:
        """Remove the temporary files of writers killed mid-write (zarr's `<chunk>.<uuid>.partial`, our own
        `.<name>.<pid>-<thread>.tmp`). Every chunk and marker is whole by now, so these are orphans; left in place
        they would make a resumed or worker-loss run differ on disk from an undisturbed one."""
        remove_partial_writes(self.zarr, (PARTIAL_CHUNKS,))
        remove_partial_writes(self.root / MARKERS, (PARTIAL_FILES,))

    # ------------------------------------------------------------------------------------------ reading
    def complete(self) -> bool:
        return self.manifest.exists()

    def read_manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest.read_text())

    def rows(self) -> pa.Table:
        """The row table: one entry per written patch (schema PATCHES)."""
        return read_table(self.patches, PATCHES)

    def group(self) -> zarr.Group:
        return zarr.open_group(str(self.zarr), mode="r")

    def array_names(self) -> list[str]:
        """The per-row data arrays a model can train on (pixels and any feature array)."""
        return sorted(n for n in self.group().array_keys() if n not in ROW_ARRAYS and not n.startswith(OK_PREFIX))

    def _array(self, array: str) -> zarr.Array:
        group = self.group()
        if array not in self.array_names():
            raise KeyError(f"{self.zarr}: no data array {array!r} (this dataset has: {', '.join(self.array_names())})")
        return group[array]

    def identity(self) -> list[Any]:
        """What the dataset's contents depend on: the extraction plan and the key each added array was made under
        (a later stage's step key uses it, so new or recomputed features redo training and evaluation)."""
        group = self.group()
        added = sorted(n for n in self.array_names() if n != PIXELS)
        return [self.read_manifest()["plan_hash"], [(n, group[n].attrs.get("key")) for n in added]]

    def usable(self, table: pa.Table) -> pa.Table:
        """The rows of a row table that every added array describes (all ok_<name> flags true)."""
        group = self.group()
        flags = [n for n in group.array_keys() if n.startswith(OK_PREFIX)]
        if not flags or table.num_rows == 0:
            return table
        rows = table["row"].to_numpy()
        ok = np.logical_and.reduce([group[f].get_orthogonal_selection(rows) for f in flags])
        return table.filter(pa.array(ok))

    def matrix(self, rows: np.ndarray, arrays: str | Sequence[str] = (PIXELS,), dtype: Any = None,
               cache: bool = False) -> np.ndarray:
        """The given rows (any order, repeats allowed) of the named arrays side by side, one flattened row each;
        a single array keeps its own dtype unless `dtype` is given (uint8 pixels stay uint8), several are joined
        as float32."""
        arrays = (arrays,) if isinstance(arrays, str) else tuple(arrays)
        for name in arrays:
            self._array(name)  # a clear error for an array the dataset does not have
            self.check_rows(rows, name)  # damaged chunks are refused, naming the array, chunk and file
        if len(arrays) == 1:
            return ZarrRows(str(self.zarr), arrays[0], cache=cache)(rows, dtype)
        return np.hstack([ZarrRows(str(self.zarr), name, cache=cache)(rows, np.float32) for name in arrays])

    def columns(self, arrays: Sequence[str]) -> list[str]:
        """Names of the matrix columns of `arrays` (feature arrays carry theirs; others are name[i])."""
        out: list[str] = []
        for name in arrays:
            a = self._array(name)
            names = a.attrs.get("columns")
            out += list(names) if names else [f"{name}[{i}]" for i in range(int(np.prod(a.shape[1:])))]
        return out

    def verify(self, arrays: Sequence[str] | None = None, chunks: Sequence[int] | None = None,
               full: bool = True) -> list[Damage]:
        """Damaged chunks of `arrays` (default: every array): missing, of another size than written, or (`full`)
        with other bytes than written. Empty when all is well."""
        return integrity.verify(self.root, self.zarr, self.group(), arrays, chunks, full)

    def unchecked(self) -> list[str]:
        """Arrays without any recorded checksum, which `verify` cannot check."""
        return integrity.unchecked(self.root, self.group())

    def add_checksums(self, chunks: Mapping[str, list[Any]]) -> None:
        """Record the checksums of chunks written after `finish` (as `write_rows` returned them), e.g. a later
        stage's arrays, so that reads of those arrays are checked too."""
        integrity.write_checksums(self.root, {**integrity.load_checksums(self.root), **chunks})

    def check_rows(self, rows: np.ndarray, array: str) -> None:
        """Raise DamagedDataError unless every chunk of `array` holding `rows` is as it was written."""
        c = self.group()[array].chunks[0]
        damage = self.verify([array], np.unique(np.asarray(rows) // c).tolist())
        if damage:
            raise DamagedDataError(str(self.root), damage)


    def labels(self, rows: np.ndarray) -> np.ndarray:
        """Class indices (into CLASSES) of the given rows."""
        self.check_rows(rows, "label")
        return self.group()["label"].get_orthogonal_selection(rows).astype(np.int64)

    def dask_view(self, rows: Sequence[int] | np.ndarray,
                  arrays: str | Sequence[str] = (PIXELS,)) -> tuple[da.Array, da.Array]:
        """Lazy (data as flattened rows, labels) over the given sorted rows, arrays side by side as in `matrix`;
        blocks follow the zarr chunks, so each block is read where it is computed and no process holds more."""
        group = self.group()
        parts = []
        for name in ((arrays,) if isinstance(arrays, str) else arrays):
            part = self._verified(self._array(name))[rows]
            parts.append(part.reshape(part.shape[0], -1))  # whole rows per chunk: no rechunk
        data = parts[0] if len(parts) == 1 else da.concatenate([p.astype(np.float32) for p in parts],
                                                               axis=1).rechunk({1: -1})  # whole rows per block
        labels = self._verified(group["label"])[rows].rechunk((data.chunks[0],))
        return data, labels

    def _verified(self, a: zarr.Array) -> da.Array:
        """`a` as a dask array whose every block checks its chunk file's checksum before reading it."""
        chunks = da.core.normalize_chunks(a.chunks, a.shape)
        return da.map_blocks(_read_verified_chunk, str(self.root), a.path, dtype=a.dtype, chunks=chunks,
                             meta=np.empty((0,) * a.ndim, a.dtype))


def _read_verified_chunk(root: str, array: str, block_id: tuple[int, ...] | None = None) -> np.ndarray:
    """One row-chunk of `array`, read (on a worker) only after its stored bytes matched their checksum."""
    group_path = Path(root) / ZARR_NAME
    a = zarr.open_array(str(group_path / array), mode="r")  # the array alone: opening the group costs more
    k = block_id[0]
    key = integrity.chunk_key(a, k, array)
    recorded = integrity.load_checksums(Path(root))
    problem = integrity.check_chunk(group_path, key, recorded.get(key), full=True) if integrity.unchecked(
        Path(root), zarr.open_group(str(group_path), mode="r"), [array]) == [] else None
    if problem is not None:
        raise DamagedDataError(root, [Damage(array, k, str(group_path / key), problem)])
    c = a.chunks[0]
    return a[k * c:(k + 1) * c]
