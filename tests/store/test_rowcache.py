"""The machine's decoded copy of a dataset array (crystal_dask.store.rowcache), on real zarr stores with recorded
checksums: same rows as the store, each chunk decoded once even by two processes at once, damaged chunks refused,
the key follows the contents, the size bound is kept."""

from __future__ import annotations

import multiprocessing
import shutil
from pathlib import Path

import dask.config
import numpy as np
import pytest
import zarr
from zarr.codecs import ZstdCodec

from crystal_dask.store import integrity, rowcache
from crystal_dask.store.dataset import ZarrRows
from crystal_dask.store.integrity import DamagedDataError

N, CHUNK, SIDE = 300, 32, 16  # 10 chunks, the last one partial


def make_dataset(root: Path, seed: int = 0) -> Path:
    """A zarr group as extract writes it (uint8 pixels in row chunks) with every chunk's checksum recorded."""
    pixels = np.random.default_rng(seed).integers(0, 256, (N, SIDE, SIDE), dtype=np.uint8)
    group_path = root / "patches.zarr"
    group = zarr.open_group(str(group_path), mode="w")
    group.create_array("pixels", shape=pixels.shape, chunks=(CHUNK, SIDE, SIDE), dtype="uint8",
                       compressors=ZstdCodec(level=2))[:] = pixels
    integrity.write_checksums(root, integrity.record_chunks(group_path, group, ["pixels"], 0, N))
    return group_path


@pytest.fixture
def cache_dir(tmp_path):
    with dask.config.set({rowcache.DIRECTORY_KEY: str(tmp_path / "cache"), rowcache.MAX_BYTES_KEY: None}):
        yield tmp_path / "cache"


def stored(group_path: Path) -> np.ndarray:
    return zarr.open_group(str(group_path), mode="r")["pixels"][:].reshape(N, -1)


def read(group_path: Path, rows: np.ndarray) -> tuple[np.ndarray, int]:
    """(rows as float32, chunks this read decoded), through the cache."""
    arr = zarr.open_group(str(group_path), mode="r")["pixels"]
    cache = rowcache.open_cache(group_path, "pixels", arr)
    assert cache is not None
    out = np.empty((len(rows), SIDE * SIDE), np.float32)
    return out, cache.read(rows, out)


def test_reads_the_stored_rows_and_decodes_each_chunk_once(tmp_path, cache_dir):
    group_path = make_dataset(tmp_path / "ds")
    want = np.array([299, 3, 3, 64, 0, 130, 3, 299, 65])
    first, decoded = read(group_path, want)
    assert np.array_equal(first, stored(group_path)[want].astype(np.float32))
    assert decoded == len(np.unique(want // CHUNK))
    every = np.random.default_rng(1).integers(0, N, 2000)
    again, decoded = read(group_path, every)
    assert np.array_equal(again, stored(group_path)[every])
    assert decoded == 10 - len(np.unique(want // CHUNK))  # only the chunks not read before
    assert read(group_path, every)[1] == 0
    # the dataset's one row reader gives the same rows with and without the cache
    assert np.array_equal(ZarrRows(str(group_path), "pixels", cache=True)(want), stored(group_path)[want])


def test_key_follows_the_contents_not_the_path(tmp_path, cache_dir):
    group_path = make_dataset(tmp_path / "ds")
    read(group_path, np.arange(N))
    shutil.copytree(tmp_path / "ds", tmp_path / "copy")
    assert read(tmp_path / "copy" / "patches.zarr", np.arange(N))[1] == 0  # the copy shares the decoded rows
    other = make_dataset(tmp_path / "other", seed=1)  # other pixels: a new key, its own rows
    rows, decoded = read(other, np.arange(N))
    assert decoded == 10 and np.array_equal(rows, stored(other))
    assert len(list(cache_dir.glob("*.rows"))) == 2


def test_damaged_chunk_is_refused_naming_its_file(tmp_path, cache_dir):
    group_path = make_dataset(tmp_path / "ds")
    chunk_file = group_path / integrity.chunk_key(zarr.open_group(str(group_path))["pixels"], 2)
    data = bytearray(chunk_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk_file.write_bytes(bytes(data))
    with pytest.raises(DamagedDataError, match=f"chunk 2 \\({chunk_file}\\)"):
        read(group_path, np.array([1, 70]))
    assert read(group_path, np.array([1]))[1] == 0  # chunk 0 was filled before the refusal, chunk 2 never


def _fill_all(args: tuple[str, str]) -> int:
    group_path, directory = args
    with dask.config.set({rowcache.DIRECTORY_KEY: directory}):
        return read(Path(group_path), np.arange(N)[::-1].copy())[1]


def test_two_processes_fill_one_cache_each_chunk_once(tmp_path, cache_dir):
    group_path = make_dataset(tmp_path / "ds")
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        decoded = pool.map(_fill_all, [(str(group_path), str(cache_dir))] * 4)
    assert sum(decoded) == 10, decoded
    assert np.array_equal(read(group_path, np.arange(N))[0], stored(group_path))


def test_size_bound_evicts_the_least_recently_used(tmp_path, cache_dir):
    a, b = make_dataset(tmp_path / "a"), make_dataset(tmp_path / "b", seed=1)
    size = N * SIDE * SIDE
    with dask.config.set({rowcache.MAX_BYTES_KEY: size + size // 2}):  # room for one array
        read(a, np.arange(N))
        read(b, np.arange(N))
        assert rowcache.usage(cache_dir) <= size + size // 2 and len(list(cache_dir.glob("*.done"))) == 1
        assert read(b, np.arange(N))[1] == 0 and read(a, np.arange(N))[1] == 10  # a was evicted, b kept
    with dask.config.set({rowcache.MAX_BYTES_KEY: "0"}):  # off: rows come straight from the store
        arr = zarr.open_group(str(a), mode="r")["pixels"]
        assert rowcache.open_cache(a, "pixels", arr) is None
        assert np.array_equal(ZarrRows(str(a), "pixels", cache=True)(np.arange(5)), stored(a)[:5])
    with dask.config.set({rowcache.MAX_BYTES_KEY: "lots"}), pytest.raises(ValueError, match=rowcache.MAX_BYTES_KEY):
        rowcache.max_bytes(cache_dir)


def test_array_without_checksums_is_not_cached(tmp_path, cache_dir):
    group_path = make_dataset(tmp_path / "ds")
    (tmp_path / "ds" / integrity.CHECKSUMS).unlink()
    arr = zarr.open_group(str(group_path), mode="r")["pixels"]
    assert rowcache.open_cache(group_path, "pixels", arr) is None
