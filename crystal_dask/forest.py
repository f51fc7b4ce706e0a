"""The balanced random forest fitted one task per tree, each reading its own sample from zarr.

imbalanced-learn's `BalancedRandomForestClassifier.fit` (default parameters, checked with 0.14.2) is a loop of
independent trees: per tree it draws a tree seed and then a sampler seed from one `RandomState(random_state)`;
the tree's `RandomUnderSampler(sampling_strategy="all", replacement=True)` picks the tree's rows from the
label-encoded `y` alone; the tree is fitted on those rows only (float32). So each tree can run as its own task
that reads just its ~n_classes x smallest-class rows from the dataset, and the fitted trees and samplers can be
assembled into an ordinary forest whose `predict_proba` is bit-identical to the in-memory fit's. The client holds
the labels and row numbers, never the matrix; a worker holds one tree's sample at a time (as float32:
about n_classes x smallest class x n_features x 4 bytes, plus one slab of about 64 MiB as stored).

Only the default forest parameters are reproduced (bootstrap=False, no class_weight, no oob_score, no
warm_start, sampling_strategy="all", replacement=True); `fit_forest` does not take others.
"""

from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass

import numpy as np
import zarr
from distributed import Client
from imblearn.ensemble import BalancedRandomForestClassifier
from imblearn.pipeline import make_pipeline
from imblearn.under_sampling import RandomUnderSampler
from joblib import Parallel, delayed, parallel_config
from sklearn.base import clone
from sklearn.tree import DecisionTreeClassifier
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets

__all__ = ["IMBLEARN_CHECKED", "MAX_INT", "ZarrRows", "fit_forest", "fit_tree", "tree_seeds"]

# imblearn.ensemble._forest.MAX_INT: the bound of every per-tree seed (sklearn's _set_random_states uses it too).
MAX_INT = int(np.iinfo(np.int32).max)
# The imbalanced-learn release whose fit this module was checked against (tests/test_forest.py re-checks it).
IMBLEARN_CHECKED = "0.14.2"
# Bytes (stored dtype) read per zarr call: large enough for zarr to decode several chunks concurrently, small
# enough that the float32 output is the only full-size array a read holds.
_SLAB_BYTES = 64 * 2**20


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


@dataclass(frozen=True)
class ZarrRows:
    """Picklable reader of dataset rows: `zarr.open_group(path)[array]`, rows flattened to (n, features).

    Only the path and the array name travel with a task; the store is opened where the rows are read.
    """

    path: str
    array: str
    slab_bytes: int = _SLAB_BYTES  # bytes (as stored) per zarr read; at least one chunk

    def _open(self) -> zarr.Array:
        return zarr.open_group(self.path, mode="r")[self.array]

    @property
    def dtype(self) -> np.dtype:
        """The stored dtype, from the array's metadata only."""
        return np.dtype(self._open().dtype)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, features) of the array, from its metadata only."""
        arr = self._open()
        return int(arr.shape[0]), int(np.prod(arr.shape[1:], dtype=np.int64))

    def __call__(self, rows: np.ndarray, dtype: np.dtype | type | None = None) -> np.ndarray:
        """The given rows, in the given order (repeats allowed), as a C-contiguous (len(rows), features) array.

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
        out = np.empty((len(rows), n_features), dtype=np.dtype(dtype) if dtype is not None else arr.dtype)
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


def fit_tree(
    reader: ZarrRows, rows: np.ndarray, y_encoded: np.ndarray, tree_seed: int, sampler_seed: int
) -> tuple[RandomUnderSampler, DecisionTreeClassifier]:
    """Fit one tree of the forest where it runs: undersample `y_encoded`, read those rows, fit the tree.

    `rows[i]` is the dataset row of training position i and `y_encoded` (float64, shape (n, 1), values
    0..n_classes-1) its encoded class, as the forest passes them. The sampler sees a placeholder X of shape
    (n, 1): it draws from y alone, and the placeholder keeps it from materialising a copy of the matrix. Its
    `n_features_in_` is then set to the array's feature count, as a fit on the real X would have set it.
    """
    sampler = RandomUnderSampler(sampling_strategy="all", replacement=True, random_state=sampler_seed)
    placeholder = np.zeros((len(y_encoded), 1), dtype=np.uint8)
    _, y_sample = sampler.fit_resample(placeholder, y_encoded)
    X = reader(np.asarray(rows)[sampler.sample_indices_], dtype=np.float32)
    sampler.n_features_in_ = X.shape[1]
    if np.issubdtype(reader.dtype, np.floating) and np.isnan(X).any():
        # The forest computes its missing-value mask over all rows, a tree here only over its own sample: the
        # trees could then differ from the in-memory fit's, so refuse rather than fit something else silently.
        raise ValueError(f"{reader.path}[{reader.array}]: NaN in the training rows; the per-tree fit needs "
                         "NaN-free features to match BalancedRandomForestClassifier.fit")
    tree = DecisionTreeClassifier(max_features="sqrt", random_state=tree_seed)
    tree.fit(X, y_sample)
    return sampler, tree


def fit_forest(
    reader: ZarrRows,
    rows: Sequence[int] | np.ndarray,
    y: Sequence | np.ndarray,
    client: Client,
    n_estimators: int = 100,
    random_state: int = 42,
    trees_per_task: int = 1,
) -> BalancedRandomForestClassifier:
    """`BalancedRandomForestClassifier(n_estimators, random_state).fit(reader(rows), y)`, one task per tree.

    The trees run through joblib's dask backend on `client`'s cluster (tasks named
    `batch_of_fit_tree_<trees_per_task>_calls-<uuid>`); the row numbers and encoded labels are broadcast to
    every worker once, and each task reads its own rows from zarr. The result is an ordinary fitted forest
    with the same attributes as the in-memory fit (n_jobs left at None).
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
        raise IndexError(f"{reader.path}[{reader.array}]: rows outside 0..{n_rows - 1}")
    model = BalancedRandomForestClassifier(n_estimators=n_estimators, random_state=random_state)
    model._validate_params()  # the same parameter checks fit starts with
    # As RandomForestClassifier._validate_y_class_weight encodes y, then fit's float64 contiguous copy.
    classes, codes = np.unique(y, return_inverse=True)
    y_encoded = np.ascontiguousarray(codes.reshape(-1, 1), dtype=np.float64)
    seeds = tree_seeds(n_estimators, random_state)
    # Broadcast (not joblib's auto-scatter to one worker): a killed worker then loses no task input.
    with parallel_config(backend="dask", client=client, scatter=[rows, y_encoded]):
        fitted = Parallel(n_jobs=-1, batch_size=trees_per_task)(
            delayed(fit_tree)(reader, rows, y_encoded, tree_seed, sampler_seed) for tree_seed, sampler_seed in seeds
        )
    samplers, trees = (list(t) for t in zip(*fitted, strict=True))
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
