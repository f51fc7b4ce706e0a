"""The balanced random forest fitted one task per tree, each reading its own sample from zarr.

imbalanced-learn's `BalancedRandomForestClassifier.fit` (default parameters, checked with 0.14.2) is a loop of
independent trees: per tree it draws a tree seed and then a sampler seed from one `RandomState(random_state)`;
the tree's `RandomUnderSampler(sampling_strategy="all", replacement=True)` picks the tree's rows from the
label-encoded `y` alone; the tree is fitted on those rows only (float32). So each tree can run as its own task
that reads just its ~n_classes x smallest-class rows from the dataset, and the fitted trees and samplers can be
assembled into an ordinary forest whose `predict_proba` is bit-identical to the in-memory fit's. The client holds
the labels and row numbers, never the matrix; a worker holds one tree's sample at a time (as float32:
about n_classes x smallest class x n_features x 4 bytes, in a buffer its trees reuse, plus a batch of 256 KiB as
stored). Trees read through their machine's decoded copy of the arrays (store/rowcache.py): each chunk is
decoded once per machine, not once per tree.

Only the default forest parameters are reproduced (bootstrap=False, no class_weight, no oob_score, no
warm_start, sampling_strategy="all", replacement=True); `fit_forest` does not take others.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from distributed import Client, KilledWorker
from distributed.client import FutureCancelledError
from imblearn.ensemble import BalancedRandomForestClassifier
from imblearn.pipeline import make_pipeline
from imblearn.under_sampling import RandomUnderSampler
from sklearn.base import clone
from sklearn.tree import DecisionTreeClassifier
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets

from crystal_dask.runtime.keys import stage_key
from crystal_dask.store.dataset import PIXELS, Dataset, ZarrRows

__all__ = ["IMBLEARN_CHECKED", "MAX_INT", "BufferTiming", "TreeTiming", "TrainingRows", "draw", "fit_forest",
           "fit_tree", "fit_trees", "prepare_sample_buffer", "tree_seeds"]

# imblearn.ensemble._forest.MAX_INT: the bound of every per-tree seed (sklearn's _set_random_states uses it too).
MAX_INT = int(np.iinfo(np.int32).max)
# The imbalanced-learn release whose fit this module was checked against (tests/test_forest.py re-checks it).
IMBLEARN_CHECKED = "0.14.2"
_ATTEMPTS = 3  # fits of the whole forest when workers are lost mid-fit
log = logging.getLogger("crystal_dask.forest")


def tree_seeds(n_estimators: int, random_state: int) -> list[tuple[int, int]]:
    """(tree_seed, sampler_seed) of each tree, drawn as BalancedRandomForestClassifier.fit draws them.

    fit makes each tree with `_make_sampler_estimator(random_state=rs)`, which calls sklearn's
    `_set_random_states` on the tree and then on the sampler; each has one `random_state` parameter, so that is
    two scalar `rs.randint(MAX_INT)` calls per tree, tree first. With the default parameters nothing else draws
    from `rs` (bootstrap=False, no oob_score, warm_start=False).
    """
    if n_estimators < 1:
        raise ValueError(f"n_estimators must be >= 1; got {n_estimators!r}")
    rs = check_random_state(random_state)
    return [(rs.randint(MAX_INT), rs.randint(MAX_INT)) for _ in range(n_estimators)]


class Reader(Protocol):
    """What a tree reads its rows through: picklable, opened where it runs (ZarrRows, TrainingRows)."""

    @property
    def shape(self) -> tuple[int, int]: ...

    @property
    def dtype(self) -> np.dtype: ...

    def __call__(self, rows: np.ndarray, dtype: Any = None, out: np.ndarray | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class TrainingRows:
    """A dataset's training matrix as trees read it: the named arrays side by side, through each machine's
    decoded copy of them (store.dataset.ZarrRows(cache=True), store/rowcache.py). Only the folder and the array
    names travel with a task. The chunks' checksums are checked on the client before the fit (stages.train), and
    each chunk again when its machine decodes it into the copy, not by every tree."""

    root: str
    arrays: tuple[str, ...] = (PIXELS,)

    def _readers(self) -> list[ZarrRows]:
        return [ZarrRows(str(Dataset(Path(self.root)).zarr), a, cache=True) for a in self.arrays]

    @property
    def shape(self) -> tuple[int, int]:
        shapes = [r.shape for r in self._readers()]
        return shapes[0][0], sum(s[1] for s in shapes)

    @property
    def dtype(self) -> np.dtype:
        dtypes = [r.dtype for r in self._readers()]
        return dtypes[0] if len(dtypes) == 1 else np.dtype(np.float32)

    def __call__(self, rows: np.ndarray, dtype: Any = None, out: np.ndarray | None = None) -> np.ndarray:
        readers = self._readers()
        if len(readers) == 1:
            return readers[0](rows, dtype, out)
        if out is None:
            out = np.empty((len(rows), self.shape[1]), np.float32)
        start = 0
        for r in readers:  # each array into its columns of the one output
            stop = start + r.shape[1]
            r(rows, out=out[:, start:stop])
            start = stop
        return out

    def __str__(self) -> str:
        return f"{self.root}[{', '.join(self.arrays)}]"


_buffers: dict[int, np.ndarray] = {}  # thread id -> the float32 buffer that thread's trees read their samples into
_buffers_lock = threading.Lock()


@dataclass(frozen=True)
class BufferTiming:
    """One worker thread's preparation of its sample buffer (prepare_sample_buffer): wall and CPU seconds (system
    time included), the bytes it faulted in and the process."""

    seconds: float
    cpu: float
    bytes: int
    pid: int


def _thread_buffer(size: int) -> tuple[np.ndarray, BufferTiming | None]:
    """This thread's buffer of at least `size` float32 values, and the timing of making it (None: it had one)."""
    thread = threading.get_ident()
    with _buffers_lock:
        held = _buffers.get(thread)
        if held is not None and held.size >= size:
            return held, None
        _buffers.pop(thread, None)  # the smaller one goes before the larger one is allocated
    started, started_cpu = time.perf_counter(), time.thread_time()
    buffer = np.empty(size, np.float32)
    buffer[::1024] = 0  # one write per 4 KiB page faults the whole buffer in (contents are overwritten by reads)
    with _buffers_lock:
        _buffers[thread] = buffer
    return buffer, BufferTiming(time.perf_counter() - started, time.thread_time() - started_cpu, size * 4,
                                os.getpid())


def prepare_sample_buffer(n_rows: int, n_features: int) -> BufferTiming | None:
    """Allocate and touch this thread's (n_rows, n_features) float32 sample buffer, unless it holds one large
    enough: done by a forest's task before its trees (fit_trees), so that a tree's read times reading, not the
    first touch of its buffer, and only a worker that gets a tree pays for one. The timing, or None when there was
    nothing to make.

    numpy asks for transparent huge pages for large arrays, and faulting them in costs far more than the copy into
    them on this kind of machine (~2 CPU s per GiB measured in a VM, against ~0.4 s in 4 KiB pages; the fit on huge
    pages takes 6-10% less CPU, which over a forest's trees is worth more: docs/benchmarks.md): paid here once per
    thread and forest, and counted in the forest's time.
    """
    return _thread_buffer(n_rows * n_features)[1]


def sample_buffer(n_rows: int, n_features: int) -> np.ndarray:
    """A (n_rows, n_features) float32 array over this thread's reused buffer.

    Its pages stay mapped from tree to tree: a fresh array per tree (about 120 MB at 2,000 rows) cost a third more
    than the uint8 -> float32 copy itself in page faults. A thread without a large enough buffer makes one
    (prepare_sample_buffer). A thread holds one tree's sample, as before, and `release_sample_buffers` frees them
    all when the forest is done.
    """
    size = n_rows * n_features
    return _thread_buffer(size)[0][:size].reshape(n_rows, n_features)


def release_sample_buffers() -> None:
    """Free this process's sample buffers (run on every worker at the end of a forest)."""
    with _buffers_lock:
        _buffers.clear()


@dataclass(frozen=True)
class TreeTiming:
    """Where one tree's time went, measured in its task: drawing its sample's rows (the sampler, which the
    in-memory fit runs too), reading them (decoding any chunk its machine had not decoded yet included) and
    fitting, in wall seconds and in CPU seconds of the task's thread (what the tree costs on a core of its own,
    however loaded the machine); the sample's shape; the process that ran it and when the tree started (Unix
    seconds: which tree was a process's first)."""

    draw: float
    read: float
    fit: float
    draw_cpu: float
    read_cpu: float
    fit_cpu: float
    rows: int
    features: int
    pid: int
    start: float


def draw(labels: np.ndarray, sampler_seed: int) -> tuple[RandomUnderSampler, np.ndarray]:
    """A tree's sampler fitted on the labels alone (the classes, or the strata it balances over): its
    `sample_indices_` are the tree's training positions; also the labels it drew."""
    sampler = RandomUnderSampler(sampling_strategy="all", replacement=True, random_state=sampler_seed)
    _, drawn = sampler.fit_resample(np.zeros((len(labels), 1), dtype=np.uint8), labels)
    return sampler, drawn


def fit_tree(
    reader: Reader, rows: np.ndarray, y_encoded: np.ndarray, tree_seed: int, sampler_seed: int,
    strata: np.ndarray | None = None,
) -> tuple[RandomUnderSampler, DecisionTreeClassifier, TreeTiming]:
    """Fit one tree of the forest where it runs: undersample `y_encoded`, read those rows, fit the tree.

    `rows[i]` is the dataset row of training position i and `y_encoded` (float64, shape (n, 1), values
    0..n_classes-1) its encoded class, as the forest passes them. The sampler sees a placeholder X of shape
    (n, 1): it draws from y alone, and the placeholder keeps it from materialising a copy of the matrix. Its
    `n_features_in_` is then set to the array's feature count, as a fit on the real X would have set it.
    `strata` (encoded like y): balance the sample over these groups instead of the classes (e.g. raw labels,
    so crystalline and plain rows of one class are drawn equally); the tree still learns the classes.
    """
    start, started, started_cpu = time.time(), time.perf_counter(), time.thread_time()
    sampler, y_sample = draw(y_encoded if strata is None else strata, sampler_seed)
    if strata is not None:
        y_sample = y_encoded[sampler.sample_indices_, 0]
    picked = np.asarray(rows)[sampler.sample_indices_]
    drawn, drawn_cpu = time.perf_counter(), time.thread_time()
    X = reader(picked, out=sample_buffer(len(picked), reader.shape[1]))
    sampler.n_features_in_ = X.shape[1]
    if np.issubdtype(reader.dtype, np.floating) and np.isnan(X).any():
        # The forest computes its missing-value mask over all rows, a tree here only over its own sample: the
        # trees could then differ from the in-memory fit's, so refuse rather than fit something else silently.
        raise ValueError(f"{reader}: NaN in the training rows; the per-tree fit needs "
                         "NaN-free features to match BalancedRandomForestClassifier.fit")
    read, read_cpu = time.perf_counter(), time.thread_time()
    tree = DecisionTreeClassifier(max_features="sqrt", random_state=tree_seed)
    tree.fit(X, y_sample)
    timing = TreeTiming(drawn - started, read - drawn, time.perf_counter() - read, drawn_cpu - started_cpu,
                        read_cpu - drawn_cpu, time.thread_time() - read_cpu, X.shape[0], X.shape[1], os.getpid(), start)
    return sampler, tree, timing


def fit_trees(
    reader: Reader, rows: np.ndarray, y_encoded: np.ndarray, seeds: Sequence[tuple[int, int]],
    strata: np.ndarray | None = None, sample_rows: int = 0,
) -> tuple[list[tuple[RandomUnderSampler, DecisionTreeClassifier, TreeTiming]], BufferTiming | None]:
    """One task of the forest: its thread's buffer for `sample_rows`-row samples prepared (the timing, None when
    the thread had one), then fit_tree for each (tree_seed, sampler_seed) of `seeds`, in order."""
    prepared = prepare_sample_buffer(sample_rows, reader.shape[1])
    return [fit_tree(reader, rows, y_encoded, tree_seed, sampler_seed, strata)
            for tree_seed, sampler_seed in seeds], prepared


def fit_forest(
    reader: Reader,
    rows: Sequence[int] | np.ndarray,
    y: Sequence | np.ndarray,
    client: Client,
    n_estimators: int = 100,
    random_state: int = 42,
    trees_per_task: int = 1,
    strata: Sequence | np.ndarray | None = None,
    timings: list[TreeTiming] | None = None,
    preparation: list[BufferTiming] | None = None,
    show_progress: Callable[[list], None] | None = None,
) -> BalancedRandomForestClassifier:
    """`BalancedRandomForestClassifier(n_estimators, random_state).fit(reader(rows), y)`, one task per tree.

    The trees run as dask tasks on `client`'s cluster, `trees_per_task` trees each (keys
    `train-fit-trees--fit_trees-<uuid>-<attempt>-<task>`: the dashboard shows them as train-fit-trees), all
    submitted at once and shown through `show_progress` (crystal_dask.progress's display); the row numbers and
    encoded labels are broadcast to every worker once, and each task reads its own rows from zarr. The result is an
    ordinary fitted forest with the same attributes as the in-memory fit (n_jobs left at None). `timings`: a list
    that receives each tree's TreeTiming, in tree order. A worker thread's first task faults in its sample buffer
    before its trees (prepare_sample_buffer), so that trees time their reading and a worker without a tree
    allocates nothing; `preparation` receives each such thread's BufferTiming.

    Submitted directly rather than through joblib's dask backend: even configured (pre_dispatch="all", an
    explicit batch_size, the inputs scattered once) it submits and fetches each task on its own and adds its batch
    bookkeeping, ~3 ms of CPU per task: +6-8% CPU and wall per 2,000-row forest, measured side by side
    (docs/benchmarks.md).
    """
    if trees_per_task < 1:
        raise ValueError(f"trees_per_task must be >= 1; got {trees_per_task!r}")
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    y = np.asarray(y)
    if rows.ndim != 1 or y.ndim != 1 or len(rows) != len(y) or len(rows) == 0:
        raise ValueError(f"rows and y must be non-empty 1-D arrays of one length; got {rows.shape} and {y.shape}")
    check_classification_targets(y)
    n_rows, n_features = reader.shape
    if rows.min() < 0 or rows.max() >= n_rows:
        raise IndexError(f"{reader}: rows outside 0..{n_rows - 1}")
    model = BalancedRandomForestClassifier(n_estimators=n_estimators, random_state=random_state)
    model._validate_params()  # the same parameter checks fit starts with
    # As RandomForestClassifier._validate_y_class_weight encodes y, then fit's float64 contiguous copy.
    classes, codes = np.unique(y, return_inverse=True)
    y_encoded = np.ascontiguousarray(codes.reshape(-1, 1), dtype=np.float64)
    seeds = tree_seeds(n_estimators, random_state)
    groups = None
    if strata is not None:  # balancing groups other than the classes (fit_tree); None: the published forest
        groups = np.ascontiguousarray(np.unique(np.asarray(strata), return_inverse=True)[1].reshape(-1, 1),
                                      dtype=np.float64)
    batches = [seeds[i:i + trees_per_task] for i in range(0, len(seeds), trees_per_task)]
    token = uuid.uuid4().hex
    # every tree's sample: each class (or group) drawn to the smallest one's count ("all", with replacement)
    per_class = np.bincount(codes if groups is None else groups[:, 0].astype(np.int64))
    sample_rows = len(per_class) * int(per_class.min())
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            # Broadcast: every worker holds the inputs, so a killed worker loses none of them. Keys of their own
            # (hash=False): content-named keys are shared with a forest just fitted on the same rows, whose
            # release may reach the scheduler after this scatter and lose them.
            rows_f, y_f, groups_f = client.scatter([rows, y_encoded, groups], broadcast=True, hash=False)
            n = len(batches)
            futures = client.map(fit_trees, [reader] * n, [rows_f] * n, [y_f] * n, batches, [groups_f] * n,
                                 [sample_rows] * n,
                                 key=[stage_key(f"fit_trees-{token}-{attempt}-{i}", "train") for i in range(n)])
            if show_progress is not None:
                show_progress(futures)
            done = client.gather(futures)
            fitted = [tree for batch, _ in done for tree in batch]
            break
        except (FutureCancelledError, KilledWorker) as exc:
            # Every tree is seeded: fitting again gives the same forest.
            if attempt == _ATTEMPTS:
                raise
            log.warning("forest: %s; fitting again (attempt %d of %d)", exc, attempt + 1, _ATTEMPTS)
    client.run(release_sample_buffers, on_error="ignore")  # a worker lost meanwhile holds nothing
    samplers, trees, timed = (list(t) for t in zip(*fitted, strict=True))
    if timings is not None:
        timings.extend(timed)
    if preparation is not None:
        preparation.extend(prepared for _, prepared in done if prepared is not None)
    return _assemble(model, samplers, trees, classes, n_features)


def _assemble(
    model: BalancedRandomForestClassifier,
    samplers: list[RandomUnderSampler],
    trees: list[DecisionTreeClassifier],
    classes: np.ndarray,
    n_features: int,
) -> BalancedRandomForestClassifier:
    """Set the attributes BalancedRandomForestClassifier.fit sets (imbalanced-learn 0.14.2, one output).

    In fit's order, so the instance's attribute order (and what skops writes) is the in-memory fit's too.
    """
    model.n_features_in_ = n_features  # validate_data(reset=True)
    model._n_features = n_features
    model.n_outputs_ = 1
    # _validate_y_class_weight sets these (as lists); fit's single-output "decapsulation" makes them an array
    # and an int at the end, which keeps their place in the instance dict
    model.classes_ = classes
    model.n_classes_ = int(classes.shape[0])
    model._sampling_strategy = model.sampling_strategy
    # _validate_estimator: the template tree and sampler each tree was cloned from
    model.estimator_ = clone(model.estimator if model.estimator is not None else DecisionTreeClassifier())
    model.base_sampler_ = RandomUnderSampler(sampling_strategy=model._sampling_strategy,
                                             replacement=model.replacement)
    model.estimators_ = trees
    model.samplers_ = samplers
    model.pipelines_ = [make_pipeline(deepcopy(s), deepcopy(t)) for s, t in zip(samplers, trees, strict=True)]
    return model
