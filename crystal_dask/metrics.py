"""The published metrics (confusion counts, accuracy, per-class precision/recall/F1) and the tests that compare
two configurations: the published Wald interval for the accuracy difference, plus the paired methods the
published run lacked (McNemar on the same patches, a bootstrap over patients).

Conventions:
- A confusion matrix has rows = true class, columns = predicted class, int64 counts. Matrices of partitions add.
- Every summary is JSON-able (Python ints/floats, no NaN). A per-class value that is undefined (0/0) is None.
- Accuracies and differences are fractions in [0, 1], not percents.
- In a comparison, `a` is the baseline and `b` the new configuration: delta = accuracy_b - accuracy_a.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

# Above this many discordant pairs McNemar uses the chi-square approximation (a common rule of thumb).
MCNEMAR_EXACT_BELOW = 25
# Bound on the (replicates x patients) count matrix held at once by the bootstrap.
_BOOT_BLOCK_CELLS = 2_000_000


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Count (true, predicted) class-index pairs into an int64 (n_classes, n_classes) matrix.

    Additive: the matrix of a concatenation is the sum of the partitions' matrices, so partitions can be
    reduced by summing.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be 1-d arrays of one length")
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"{name} must hold integer class indices in [0, {n_classes})")
    flat = y_true.astype(np.int64) * n_classes + y_pred.astype(np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes).astype(np.int64)


def _check_cm(cm: np.ndarray, classes: Sequence[str], what: str = "confusion matrix") -> np.ndarray:
    cm = np.asarray(cm)
    n = len(classes)
    if cm.shape != (n, n):
        raise ValueError(f"{what} has shape {cm.shape}, expected ({n}, {n}) for {n} classes")
    if not np.issubdtype(cm.dtype, np.integer) or (cm < 0).any():
        raise ValueError(f"{what} must hold non-negative integer counts")
    if cm.sum() == 0:
        raise ValueError(f"{what} is empty (no rows counted)")
    return cm.astype(np.int64)


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def summarize(cm: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """The published tables of one confusion matrix, as a JSON-able dict.

    Keys: n, correct, incorrect, accuracy; `classes` {code: {support (true rows), predicted (predicted rows),
    correct, accuracy (= recall: correct among the class's rows), precision, recall, f1}}; `macro` and
    `weighted` {precision, recall, f1, classes (how many classes were averaged)}; `confusion` (nested lists,
    rows = true); `labels` (the class codes in matrix order).

    Undefined per-class values are None: accuracy/recall when the class has no rows, precision when it was
    never predicted, F1 (= 2tp / (2tp + fp + fn)) when it neither occurs nor is predicted. Averages run over the
    classes with support > 0, counting an undefined value as 0 (a class that occurs but is never predicted has
    failed, not gone missing): this equals scikit-learn's precision_recall_fscore_support with
    labels=<classes present in y_true> and zero_division=0.
    """
    cm = _check_cm(cm, classes)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    n, correct = int(cm.sum()), int(tp.sum())
    per_class: dict[str, dict[str, Any]] = {}
    for i, code in enumerate(classes):
        t, s, p = int(tp[i]), int(support[i]), int(predicted[i])
        recall = _ratio(t, s)
        per_class[code] = {
            "support": s,
            "predicted": p,
            "correct": t,
            "accuracy": recall,
            "precision": _ratio(t, p),
            "recall": recall,
            "f1": _ratio(2 * t, s + p),  # 2tp + fp + fn == support + predicted
        }
    present = [c for c in classes if per_class[c]["support"] > 0]
    weights = np.array([per_class[c]["support"] for c in present], dtype=np.float64)

    def averages(w: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("precision", "recall", "f1"):
            vals = np.array([per_class[c][key] or 0.0 for c in present])
            out[key] = float(vals @ w / w.sum())
        out["classes"] = len(present)
        return out

    return {
        "n": n,
        "correct": correct,
        "incorrect": n - correct,
        "accuracy": correct / n,
        "classes": per_class,
        "macro": averages(np.ones_like(weights)),
        "weighted": averages(weights),
        "labels": list(classes),
        "confusion": cm.tolist(),
    }


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _z(level: float) -> float:
    from scipy import stats  # here, as in mcnemar: 0.3 s of import that confusion matrices do not need

    return float(stats.norm.ppf(1.0 - (1.0 - level) / 2.0))


def delta_accuracy_ci(
    correct_a: int, n_a: int, correct_b: int, n_b: int, level: float = 0.95
) -> tuple[float, float, float]:
    """Return (delta, low, high): delta = p_b - p_a with the Wald interval for two independent proportions.

    se = sqrt(p_a (1 - p_a) / n_a + p_b (1 - p_b) / n_b), interval delta +- z se with z = Phi^-1(1 - (1-level)/2).
    This is the published interval; it ignores that both configurations were scored on the same patches
    (see mcnemar and patient_bootstrap for the paired view).
    """
    args = {"correct_a": correct_a, "n_a": n_a, "correct_b": correct_b, "n_b": n_b}
    for name, value in args.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer count, got {value!r}")
    for n_name, c_name in (("n_a", "correct_a"), ("n_b", "correct_b")):
        if args[n_name] <= 0:
            raise ValueError(f"{n_name} must be > 0, got {args[n_name]}")
        if not 0 <= args[c_name] <= args[n_name]:
            raise ValueError(f"{c_name} must be in [0, {n_name}={args[n_name]}], got {args[c_name]}")
    _check_level(level)
    pa, pb = correct_a / n_a, correct_b / n_b
    delta = pb - pa
    half = _z(level) * math.sqrt(pa * (1 - pa) / n_a + pb * (1 - pb) / n_b)
    return delta, delta - half, delta + half


def _paired(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(correct_a), np.asarray(correct_b)
    if a.dtype != np.bool_ or b.dtype != np.bool_:
        raise ValueError(f"correct_a and correct_b must be boolean arrays, got {a.dtype} and {b.dtype}")
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"correct_a {a.shape} and correct_b {b.shape} must be non-empty 1-d arrays of one length")
    return a, b


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray, exact: bool | None = None) -> dict[str, Any]:
    """McNemar's test on paired per-patch correctness of two configurations scored on the same patches.

    b01 = patches a got wrong and b got right, b10 = patches a got right and b got wrong. With exact=None the
    exact two-sided binomial test is used when b01 + b10 < 25, else the chi-square statistic with continuity
    correction max(0, |b01 - b10| - 1)^2 / (b01 + b10) on 1 degree of freedom. The exact test's statistic is
    min(b01, b10) and its p-value min(1, 2 P[Binomial(b01 + b10, 1/2) <= min]). No discordant pair: p = 1.
    """
    a, b = _paired(correct_a, correct_b)
    b01 = int(np.count_nonzero(~a & b))
    b10 = int(np.count_nonzero(a & ~b))
    m = b01 + b10
    if exact is None:
        exact = m < MCNEMAR_EXACT_BELOW
    from scipy import stats

    if m == 0:
        statistic, p = 0.0, 1.0
    elif exact:
        statistic = float(min(b01, b10))
        p = min(1.0, 2.0 * float(stats.binom.cdf(min(b01, b10), m, 0.5)))
    else:
        statistic = max(0, abs(b01 - b10) - 1) ** 2 / m
        p = float(stats.chi2.sf(statistic, 1))
    return {
        "n": int(a.size),
        "b01": b01,
        "b10": b10,
        "method": "exact binomial" if exact else "chi-square, continuity-corrected",
        "statistic": float(statistic),
        "p_value": p,
    }


def patient_bootstrap(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    patients: np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Cluster bootstrap of the paired accuracy difference, resampling patients with replacement.

    Each replicate draws as many patients as there are (with replacement) and pools their patches:
    delta* = (sum correct_b - sum correct_a) / (sum patches) over the drawn patients. Patches of one patient
    are correlated (same slide preparation, same tissue), so resampling patches instead understates the
    spread. The interval is the percentile interval of the replicates; `se` is their standard deviation.
    Deterministic for a seed. Works on per-patient sums, so cost is O(n_boot x patients), not patches.
    """
    a, b = _paired(correct_a, correct_b)
    patients = np.asarray(patients)
    if patients.shape != a.shape:
        raise ValueError(f"patients {patients.shape} must have one entry per patch {a.shape}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    _check_level(level)
    _, inverse = np.unique(patients, return_inverse=True)
    n_pat = int(inverse.max()) + 1
    rows = np.bincount(inverse, minlength=n_pat).astype(np.float64)
    gain = np.bincount(inverse, weights=b.astype(np.float64) - a, minlength=n_pat)  # per-patient (b - a) correct
    rng = np.random.default_rng(seed)
    block = max(1, _BOOT_BLOCK_CELLS // n_pat)
    deltas = np.empty(n_boot)
    for start in range(0, n_boot, block):  # blocks of replicates bound memory; never a loop over patches
        stop = min(n_boot, start + block)
        draws = rng.multinomial(n_pat, np.full(n_pat, 1.0 / n_pat), size=stop - start).astype(np.float64)
        deltas[start:stop] = (draws @ gain) / (draws @ rows)
    alpha = 1.0 - level
    low, high = np.quantile(deltas, [alpha / 2, 1 - alpha / 2])
    return {
        "delta": float((b.sum() - a.sum()) / a.size),
        "low": float(low),
        "high": float(high),
        "se": float(deltas.std(ddof=1)) if n_boot > 1 else 0.0,
        "level": level,
        "n_boot": n_boot,
        "seed": seed,
        "n_patients": n_pat,
        "method": "patient cluster bootstrap, percentile interval",
    }


def compare(
    cm_a: np.ndarray,
    cm_b: np.ndarray,
    classes: Sequence[str],
    correct_a: np.ndarray | None = None,
    correct_b: np.ndarray | None = None,
    patients: np.ndarray | None = None,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Compare configuration b against baseline a on one evaluation set.

    Always: accuracy_a, accuracy_b, delta with its Wald interval (`wald`), and the per-class accuracy
    difference (None where a class has no rows in either). With per-patch correctness (`correct_a`,
    `correct_b`, same patches in the same order) adds `mcnemar`; with `patients` too, `bootstrap`
    (patient_bootstrap). The per-patch arrays are checked against the matrices (patch count, correct count).
    """
    cm_a = _check_cm(cm_a, classes, "cm_a")
    cm_b = _check_cm(cm_b, classes, "cm_b")
    n_a, n_b = int(cm_a.sum()), int(cm_b.sum())
    c_a, c_b = int(np.trace(cm_a)), int(np.trace(cm_b))
    delta, low, high = delta_accuracy_ci(c_a, n_a, c_b, n_b, level)
    rec_a = np.diag(cm_a) / np.maximum(cm_a.sum(axis=1), 1)
    rec_b = np.diag(cm_b) / np.maximum(cm_b.sum(axis=1), 1)
    present = (cm_a.sum(axis=1) > 0) & (cm_b.sum(axis=1) > 0)
    out: dict[str, Any] = {
        "accuracy_a": c_a / n_a,
        "accuracy_b": c_b / n_b,
        "delta": delta,
        "wald": {"low": low, "high": high, "level": level, "method": "Wald, independent proportions"},
        "per_class_delta": {
            code: float(rec_b[i] - rec_a[i]) if present[i] else None for i, code in enumerate(classes)
        },
    }
    if correct_a is None and correct_b is None:
        if patients is not None:
            raise ValueError("patients given without correct_a/correct_b")
        return out
    if correct_a is None or correct_b is None:
        raise ValueError("correct_a and correct_b must be given together")
    a, b = _paired(correct_a, correct_b)
    for name, arr, n, c in (("correct_a", a, n_a, c_a), ("correct_b", b, n_b, c_b)):
        if arr.size != n or int(arr.sum()) != c:
            raise ValueError(
                f"{name} ({arr.size} patches, {int(arr.sum())} correct) does not match its confusion matrix "
                f"({n} patches, {c} correct)"
            )
    out["mcnemar"] = mcnemar(a, b)
    if patients is not None:
        out["bootstrap"] = patient_bootstrap(a, b, patients, seed=seed, level=level)
    return out
