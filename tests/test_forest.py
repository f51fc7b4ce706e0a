"""The per-tree forest (crystal_dask.forest) against imbalanced-learn's own in-memory fit, on a real zarr dataset
and real Dask clusters: same seeds, same trees, bit-identical predict_proba, on 1 or 2 workers, with a worker
killed mid-fit, and through the model file format."""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
from collections import OrderedDict
from pathlib import Path

import imblearn
import numpy as np
import pytest
import zarr
from imblearn.ensemble import BalancedRandomForestClassifier
from sklearn.base import BaseEstimator
from sklearn.tree._tree import Tree
from zarr.codecs import ZstdCodec

from crystal_dask import forest
from crystal_dask.forest import IMBLEARN_CHECKED, TrainingRows, fit_forest, tree_seeds
from crystal_dask.runtime.cluster import local_client
from crystal_dask.store.dataset import ZarrRows
from crystal_dask.store.models import load_model, save_model

VERSION = f"imbalanced-learn {imblearn.__version__} (checked: {IMBLEARN_CHECKED})"
COUNTS = (150, 120, 90, 70, 60, 40, 30, 25, 15)  # 9 classes, unequal, 600 rows
N_TREES = 30  # enough trees to mix classes and seeds; the equivalence is per tree, so more prove nothing new


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A zarr v3 group as extract writes it (pixels (N, 32, 32) uint8 and label int16 in 64-row zstd chunks)
    plus a float32 feature matrix (N, 40)."""
    rng = np.random.default_rng(12)
    n = sum(COUNTS)
    label = rng.permutation(np.repeat(np.arange(len(COUNTS), dtype=np.int16), COUNTS))
    # class-dependent brightness plus noise: the trees have something to split on, and ties to break
    pixels = np.clip(rng.normal(label[:, None, None] * 12.0 + 60.0, 40.0, (n, 32, 32)), 0, 255).astype(np.uint8)
    features = rng.normal(label[:, None] * 0.3, 1.0, (n, 40)).astype(np.float32)
    root = tmp_path_factory.mktemp("forest") / "patches.zarr"
    group = zarr.open_group(str(root), mode="w")
    zstd = ZstdCodec(level=2)
    group.create_array("pixels", shape=pixels.shape, chunks=(64, 32, 32), dtype="uint8", compressors=zstd)[:] = pixels
    group.create_array("label", shape=(n,), chunks=(64,), dtype="int16", compressors=zstd)[:] = label
    group.create_array("features", shape=features.shape, chunks=(64, 40), dtype="float32",
                       compressors=zstd)[:] = features
    return root


@pytest.fixture(scope="module")
def training(dataset) -> tuple[np.ndarray, np.ndarray]:
    """Training rows (a sorted subset with gaps, as a configuration selects them) and their labels."""
    rows = np.sort(np.random.default_rng(3).choice(sum(COUNTS), 520, replace=False))
    y = zarr.open_group(str(dataset), mode="r")["label"].get_orthogonal_selection(rows).astype(np.int64)
    return rows, y


def reference(dataset: Path, array: str, rows: np.ndarray, y: np.ndarray) -> tuple[BalancedRandomForestClassifier,
                                                                                     np.ndarray]:
    """imbalanced-learn's own fit on the rows in memory, and that matrix."""
    stored = zarr.open_group(str(dataset), mode="r")[array][:]
    X = stored.reshape(len(stored), -1)[rows]
    return BalancedRandomForestClassifier(n_estimators=N_TREES, random_state=42).fit(X, y), X


def assert_same(a, b, where: str) -> None:
    """Recursive equality of fitted objects: types, every attribute, arrays by dtype and bytes."""
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)} under {VERSION}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), f"{where} differs under {VERSION}"
    elif isinstance(a, Tree):
        assert_same(a.__getstate__(), b.__getstate__(), f"{where}.tree_")
    elif isinstance(a, BaseEstimator):
        assert_same(vars(a), vars(b), where)
    elif isinstance(a, (dict, OrderedDict)):
        assert list(a) == list(b), f"{where}: keys {sorted(map(str, a))} != {sorted(map(str, b))} under {VERSION}"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: length {len(a)} != {len(b)} under {VERSION}"
        for i, (x, z) in enumerate(zip(a, b, strict=True)):
            assert_same(x, z, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r} under {VERSION}"


def assert_identical(model: BalancedRandomForestClassifier, ref: BalancedRandomForestClassifier, X: np.ndarray):
    # the headline checks first, so a failure names the most useful difference
    assert np.array_equal(model.predict_proba(X), ref.predict_proba(X)), f"predict_proba differs under {VERSION}"
    for i, (t, r) in enumerate(zip(model.estimators_, ref.estimators_, strict=True)):
        for name in ("feature", "threshold", "value"):
            assert np.array_equal(getattr(t.tree_, name), getattr(r.tree_, name)), \
                f"tree {i}: tree_.{name} differs under {VERSION}"
    assert model.get_params() == ref.get_params()
    assert_same(model, ref, "forest")  # every attribute fit sets, samplers and pipelines included


def test_tree_seeds_are_the_forests(dataset, training):
    rows, y = training
    ref, _ = reference(dataset, "features", rows, y)
    expected = [(t.random_state, s.random_state) for t, s in zip(ref.estimators_, ref.samplers_, strict=True)]
    assert tree_seeds(N_TREES, 42) == expected, f"seed order changed under {VERSION}"
    assert tree_seeds(3, 42) == expected[:3]


def test_zarr_rows_reads_requested_order_with_repeats(dataset):
    stored = zarr.open_group(str(dataset), mode="r")["pixels"][:].reshape(600, -1)
    reader = pickle.loads(pickle.dumps(ZarrRows(str(dataset), "pixels")))  # travels with a task
    want = np.array([599, 3, 3, 64, 0, 130, 3, 599, 65])  # unsorted, repeated, across chunks
    got = reader(want)
    assert got.dtype == np.uint8 and got.flags.c_contiguous and np.array_equal(got, stored[want])
    as_float = reader(want, dtype=np.float32)
    assert as_float.dtype == np.float32 and np.array_equal(as_float, stored[want].astype(np.float32))
    assert reader.shape == (600, 1024) and reader.dtype == np.uint8
    assert np.array_equal(reader(np.arange(64, 200)), stored[64:200])
    assert reader(np.array([], dtype=np.int64)).shape == (0, 1024)
    one_chunk_per_read = ZarrRows(str(dataset), "pixels", slab_bytes=1)
    many = np.random.default_rng(5).integers(0, 600, 900)  # every chunk, in runs, with repeats
    assert np.array_equal(one_chunk_per_read(many, dtype=np.float32), stored[many].astype(np.float32))
    assert np.array_equal(ZarrRows(str(dataset), "pixels", slab_bytes=3 * 64 * 1024)(want), stored[want])
    features = ZarrRows(str(dataset), "features")
    assert np.array_equal(features(want), zarr.open_group(str(dataset), mode="r")["features"][:][want])
    with pytest.raises(IndexError, match="row 600"):
        reader(np.array([1, 600]))
    with pytest.raises(IndexError, match="row -1"):
        reader(np.array([-1, 2]))


def test_zarr_rows_reads_into_a_given_output_and_its_column_views(dataset):
    group = zarr.open_group(str(dataset), mode="r")
    pixels, features = group["pixels"][:].reshape(600, -1), group["features"][:]
    want = np.array([599, 3, 3, 64, 0, 130])
    side_by_side = np.full((len(want), 1024 + 40), -1, np.float32)  # as TrainingRows joins two arrays
    ZarrRows(str(dataset), "pixels")(want, out=side_by_side[:, :1024])
    ZarrRows(str(dataset), "features")(want, out=side_by_side[:, 1024:])
    assert np.array_equal(side_by_side, np.hstack([pixels[want].astype(np.float32), features[want]]))
    with pytest.raises(ValueError, match="out has shape"):
        ZarrRows(str(dataset), "pixels")(want, out=np.empty((len(want), 10), np.float32))
    both = TrainingRows(str(dataset.parent), ("pixels", "features"))  # what a features configuration's tree reads
    assert both.shape == (600, 1024 + 40) and np.array_equal(both(want), side_by_side)
    assert np.array_equal(both(want, out=np.zeros_like(side_by_side)), side_by_side)


def test_a_threads_trees_reuse_onesample_buffer():
    first = forest.sample_buffer(3, 4)
    smaller = forest.sample_buffer(2, 4)
    assert first.dtype == np.float32 and smaller.shape == (2, 4) and smaller.flags.c_contiguous
    assert np.shares_memory(first, smaller)  # no new pages for the next tree
    larger = forest.sample_buffer(5, 4)
    assert larger.shape == (5, 4) and not np.shares_memory(first, larger)
    forest.release_sample_buffers()
    assert not forest._buffers


def test_a_prepared_buffer_is_the_one_the_threads_trees_read_into():
    timing = forest.prepare_sample_buffer(3, 4)
    assert timing.bytes == 3 * 4 * 4 and timing.seconds >= 0 and timing.pid == os.getpid()
    prepared = forest._buffers[threading.get_ident()]
    assert forest.prepare_sample_buffer(2, 4) is None  # a large enough one is there already
    assert np.shares_memory(forest.sample_buffer(3, 4), prepared)
    assert forest.prepare_sample_buffer(5, 4).bytes == 5 * 4 * 4  # too small: a larger one is made
    assert not np.shares_memory(forest.sample_buffer(5, 4), prepared)
    forest.release_sample_buffers()
    assert not forest._buffers


def test_each_worker_prepares_one_trees_sample_before_the_trees(dataset, training, client):
    rows, y = training
    timings, preparation = [], []
    fit_forest(ZarrRows(str(dataset), "features"), rows, y, client, n_estimators=4, timings=timings,
               preparation=preparation)
    sample_bytes = timings[0].rows * timings[0].features * 4
    assert {p.bytes for p in preparation} == {sample_bytes}  # the size every tree's sample has
    assert {t.pid for t in timings} == {p.pid for p in preparation}  # once per thread that fitted trees
    assert len(preparation) == len({p.pid for p in preparation})  # one thread per worker here
    assert all(t.start > 0 for t in timings)


def test_only_a_worker_that_gets_a_tree_prepares_a_buffer(dataset, training, client):
    rows, y = training
    timings, preparation = [], []
    fit_forest(ZarrRows(str(dataset), "features"), rows, y, client, n_estimators=1, timings=timings,
               preparation=preparation)
    assert len(client.scheduler_info()["workers"]) == 2
    assert [p.pid for p in preparation] == [timings[0].pid]


@pytest.mark.parametrize("array", ["pixels", "features"])
def test_forest_is_identical_to_the_in_memory_fit(dataset, training, client, array):
    rows, y = training
    ref, X = reference(dataset, array, rows, y)
    model = fit_forest(ZarrRows(str(dataset), array), rows, y, client, n_estimators=N_TREES, random_state=42)
    assert_identical(model, ref, X)


def test_batches_of_trees_give_the_same_forest(dataset, training, client):
    rows, y = training
    ref, X = reference(dataset, "features", rows, y)
    model = fit_forest(ZarrRows(str(dataset), "features"), rows, y, client, n_estimators=N_TREES, trees_per_task=7)
    assert_identical(model, ref, X)


def test_one_worker_and_two_workers_give_the_same_forest(dataset, training, client):
    rows, y = training
    reader = ZarrRows(str(dataset), "pixels")
    two = fit_forest(reader, rows, y, client, n_estimators=N_TREES)
    with local_client(1, "4GiB") as one_client:
        one = fit_forest(reader, rows, y, one_client, n_estimators=N_TREES)
    assert_same(one, two, "forest")


def test_saves_and_loads_as_a_model_file(dataset, training, client, tmp_path):
    rows, y = training
    ref, X = reference(dataset, "features", rows, y)
    model = fit_forest(ZarrRows(str(dataset), "features"), rows, y, client, n_estimators=N_TREES)
    save_model(model, tmp_path / "forest.skops", {"estimator": "imblearn.ensemble.BalancedRandomForestClassifier"})
    loaded = load_model(tmp_path / "forest.skops")  # TRUSTED_TYPES only: nothing new to trust
    assert_identical(loaded, ref, X)


def test_rejects_what_it_cannot_reproduce(dataset, training, client):
    rows, y = training
    reader = ZarrRows(str(dataset), "features")
    with pytest.raises(IndexError, match="rows outside"):
        fit_forest(reader, np.append(rows[:-1], 600), y, client, n_estimators=2)
    with pytest.raises(ValueError, match="one length"):
        fit_forest(reader, rows[:-1], y, client, n_estimators=2)
    with pytest.raises(ValueError, match="trees_per_task"):
        fit_forest(reader, rows, y, client, n_estimators=2, trees_per_task=0)


@pytest.mark.slow
def test_killed_worker_still_gives_the_identical_forest(dataset, training, own_client):
    """It kills one of its own cluster's workers (the session's cluster is shared) and waits for the nanny's new
    one."""
    client = own_client
    rows, y = training
    ref, X = reference(dataset, "features", rows, y)
    pids = client.run(os.getpid)
    killed: list[int] = []
    killed_at: list[float] = []

    def kill_a_busy_worker() -> None:
        deadline = time.time() + 30
        while time.time() < deadline:
            busy = [w for w, keys in client.processing().items() if any("fit_tree" in k for k in keys)]
            if busy:
                os.kill(pids[busy[0]], signal.SIGKILL)  # a real kill; the nanny restarts the process
                killed.append(pids[busy[0]])
                killed_at.append(time.time())
                return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_a_busy_worker)
    killer.start()
    model = fit_forest(ZarrRows(str(dataset), "features"), rows, y, client, n_estimators=N_TREES)
    finished = time.time()
    killer.join()
    assert killed, "no fit_tree task was seen running: nothing was killed"
    assert killed_at[0] < finished, "the kill came after the fit returned"
    client.wait_for_workers(2, timeout=60)
    assert killed[0] not in client.run(os.getpid).values(), "the killed worker process is still there"
    assert_identical(model, ref, X)
