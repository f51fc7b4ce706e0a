"""Metrics against hand-computed numbers (and scikit-learn where it defines the same quantity)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from crystal_dask.metrics import compare, confusion, delta_accuracy_ci, mcnemar, patient_bootstrap, summarize

# Rows = true, columns = predicted. a, b: ordinary; c: occurs, never predicted; d: absent but predicted;
# e: absent and never predicted.
CLASSES = ("a", "b", "c", "d", "e")
CM = np.array(
    [
        [6, 1, 0, 1, 0],
        [2, 3, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ]
)


def _rows(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expand a confusion matrix back into (y_true, y_pred) rows."""
    t, p = np.nonzero(cm)
    reps = cm[t, p]
    return np.repeat(t, reps), np.repeat(p, reps)


def test_confusion_matches_sklearn_and_is_additive() -> None:
    rng = np.random.default_rng(1)
    y_true, y_pred = rng.integers(0, 9, 500), rng.integers(0, 9, 500)
    cm = confusion(y_true, y_pred, 9)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, confusion_matrix(y_true, y_pred, labels=range(9)))
    parts = sum(confusion(y_true[i : i + 123], y_pred[i : i + 123], 9) for i in range(0, 500, 123))
    np.testing.assert_array_equal(parts, cm)
    np.testing.assert_array_equal(confusion(*_rows(CM), 5), CM)
    assert confusion(np.array([], dtype=np.int64), np.array([], dtype=np.int64), 3).sum() == 0


@pytest.mark.parametrize(
    ("y_true", "y_pred", "match"),
    [
        ([0, 3], [0, 1], "y_true"),
        ([0, 1], [0, -1], "y_pred"),
        ([0, 1], [0, 1, 2], "one length"),
        ([0.0, 1.0], [0, 1], "y_true"),
    ],
)
def test_confusion_rejects_bad_input(y_true: list, y_pred: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        confusion(np.array(y_true), np.array(y_pred), 3)


def test_summarize_every_number_by_hand() -> None:
    s = summarize(CM, CLASSES)
    json.dumps(s, allow_nan=False)  # JSON-able, no NaN
    assert (s["n"], s["correct"], s["incorrect"]) == (15, 9, 6)
    assert s["accuracy"] == pytest.approx(0.6)
    assert s["labels"] == list(CLASSES)
    assert s["confusion"] == CM.tolist()
    c = s["classes"]
    assert c["a"] == pytest.approx(
        {"support": 8, "predicted": 9, "correct": 6, "accuracy": 0.75, "precision": 2 / 3, "recall": 0.75,
         "f1": 12 / 17}
    )
    assert c["b"] == pytest.approx(
        {"support": 5, "predicted": 5, "correct": 3, "accuracy": 0.6, "precision": 0.6, "recall": 0.6, "f1": 0.6}
    )
    # never predicted: precision undefined, recall and F1 are 0
    assert c["c"] == {"support": 2, "predicted": 0, "correct": 0, "accuracy": 0.0, "precision": None,
                      "recall": 0.0, "f1": 0.0}
    # absent but predicted once: precision 0, recall undefined, F1 = 0 / (0 + 1)
    assert c["d"] == {"support": 0, "predicted": 1, "correct": 0, "accuracy": None, "precision": 0.0,
                      "recall": None, "f1": 0.0}
    assert c["e"] == {"support": 0, "predicted": 0, "correct": 0, "accuracy": None, "precision": None,
                      "recall": None, "f1": None}
    # averages over the present classes a, b, c (undefined counted as 0)
    assert s["macro"] == pytest.approx(
        {"precision": (2 / 3 + 0.6) / 3, "recall": 0.45, "f1": (12 / 17 + 0.6) / 3, "classes": 3}
    )
    assert s["weighted"] == pytest.approx(
        {"precision": (8 * 2 / 3 + 5 * 0.6) / 15, "recall": 0.6, "f1": (8 * 12 / 17 + 5 * 0.6) / 15, "classes": 3}
    )


def test_summarize_averages_match_sklearn_over_present_classes() -> None:
    y_true, y_pred = _rows(CM)
    s = summarize(CM, CLASSES)
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2], average=avg, zero_division=0)
        assert (s[avg]["precision"], s[avg]["recall"], s[avg]["f1"]) == pytest.approx((p, r, f))


def test_summarize_rejects_bad_matrices() -> None:
    with pytest.raises(ValueError, match="shape"):
        summarize(CM, CLASSES[:3])
    with pytest.raises(ValueError, match="empty"):
        summarize(np.zeros((2, 2), dtype=int), ("x", "y"))
    with pytest.raises(ValueError, match="non-negative integer"):
        summarize(np.array([[1, -1], [0, 1]]), ("x", "y"))


def test_delta_ci_by_hand() -> None:
    # 40/100 -> 60/100: se = sqrt(2 * 0.4 * 0.6 / 100) = 0.0692820, z(0.975) = 1.959964
    delta, low, high = delta_accuracy_ci(40, 100, 60, 100)
    assert delta == pytest.approx(0.2)
    assert (low, high) == pytest.approx((0.2 - 0.1357904, 0.2 + 0.1357904), abs=1e-6)
    # 90%: z = 1.644854
    _, low90, high90 = delta_accuracy_ci(40, 100, 60, 100, level=0.90)
    assert (low90, high90) == pytest.approx((0.2 - 0.1139595, 0.2 + 0.1139595), abs=1e-6)


def test_delta_ci_published_fcbr() -> None:
    # Published FCBR: 18.4% -> 34.6% on 18,224 patches each, i.e. 3,353 and 6,306 correct.
    # p_a = 0.183988, p_b = 0.346027; se = sqrt((0.150136 + 0.226289) / 18224) = 0.0045448; half = 0.0089077
    delta, low, high = delta_accuracy_ci(3353, 18224, 6306, 18224)
    assert delta == pytest.approx(0.162040, abs=1e-6)
    assert (low, high) == pytest.approx((0.153132, 0.170948), abs=2e-6)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((1, 0, 1, 1), {}, "n_a"),
        ((2, 1, 1, 1), {}, "correct_a"),
        ((1, 1, -1, 1), {}, "correct_b"),
        ((1, 1, 1, -3), {}, "n_b"),
        ((0.5, 1, 1, 1), {}, "correct_a"),
        ((True, 1, 1, 1), {}, "correct_a"),
        ((1, 1, 1, 1), {"level": 95}, "level"),
    ],
)
def test_delta_ci_validates(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        delta_accuracy_ci(*args, **kwargs)


def _pairs(b01: int, b10: int, both_right: int = 5, both_wrong: int = 3) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([False] * b01 + [True] * b10 + [True] * both_right + [False] * both_wrong)
    b = np.array([True] * b01 + [False] * b10 + [True] * both_right + [False] * both_wrong)
    return a, b


def test_mcnemar_exact_by_hand() -> None:
    # b01 = 6, b10 = 1: P[Bin(7, 1/2) <= 1] = (1 + 7) / 128, two-sided p = 0.125
    r = mcnemar(*_pairs(6, 1))
    assert r == {"n": 15, "b01": 6, "b10": 1, "method": "exact binomial", "statistic": 1.0,
                 "p_value": pytest.approx(0.125)}
    assert mcnemar(*_pairs(3, 3))["p_value"] == 1.0  # capped at 1
    assert mcnemar(*_pairs(0, 0))["p_value"] == 1.0


def test_mcnemar_chi_square_by_hand() -> None:
    # b01 = 30, b10 = 12: (|30 - 12| - 1)^2 / 42 = 289 / 42; chi-square(1) tail = erfc(sqrt(x / 2)) = 0.008713
    r = mcnemar(*_pairs(30, 12))
    assert r["method"] == "chi-square, continuity-corrected"
    assert r["statistic"] == pytest.approx(289 / 42)
    assert r["p_value"] == pytest.approx(math.erfc(math.sqrt(289 / 84)))
    assert r["p_value"] == pytest.approx(0.008713, abs=2e-6)
    assert mcnemar(*_pairs(15, 15))["statistic"] == 0.0  # correction never overshoots


def test_mcnemar_method_choice() -> None:
    assert mcnemar(*_pairs(12, 12))["method"] == "exact binomial"  # 24 discordant
    assert mcnemar(*_pairs(13, 12))["method"].startswith("chi-square")  # 25 discordant
    assert mcnemar(*_pairs(30, 12), exact=True)["method"] == "exact binomial"
    assert mcnemar(*_pairs(6, 1), exact=False)["statistic"] == pytest.approx(16 / 7)
    with pytest.raises(ValueError, match="boolean"):
        mcnemar(np.array([1, 0]), np.array([True, False]))


def _clustered(n_pat: int = 20, per: int = 50) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """b beats a on every patch of half the patients and ties on the rest: the gain is all per patient."""
    patients = np.repeat([f"p{i:03d}" for i in range(n_pat)], per)
    gaining = np.repeat(np.arange(n_pat) % 2 == 0, per)
    a = np.zeros(n_pat * per, dtype=bool)
    b = gaining.copy()
    return a, b, patients


def test_bootstrap_deterministic_and_contains_estimate() -> None:
    a, b, patients = _clustered()
    r1 = patient_bootstrap(a, b, patients, n_boot=500, seed=7)
    r2 = patient_bootstrap(a, b, patients, n_boot=500, seed=7)
    assert r1 == r2
    assert patient_bootstrap(a, b, patients, n_boot=500, seed=8) != r1
    assert r1["delta"] == pytest.approx(0.5)
    assert r1["low"] < 0.5 < r1["high"]
    assert r1["low"] > 0.1  # clear gain: interval away from 0
    assert r1["n_patients"] == 20


def test_bootstrap_patient_clustering_widens_interval() -> None:
    a, b, patients = _clustered()
    by_patient = patient_bootstrap(a, b, patients, n_boot=1000, seed=0)
    by_patch = patient_bootstrap(a, b, np.arange(a.size).astype(str), n_boot=1000, seed=0)
    # iid patches: se ~ sd(d)/sqrt(n) = 0.5/sqrt(1000); patients: 0.5/sqrt(20)
    assert by_patch["se"] == pytest.approx(0.5 / math.sqrt(1000), rel=0.1)
    assert by_patient["se"] == pytest.approx(0.5 / math.sqrt(20), rel=0.15)
    assert (by_patient["high"] - by_patient["low"]) > 4 * (by_patch["high"] - by_patch["low"])


def test_bootstrap_validates() -> None:
    a, b, patients = _clustered()
    with pytest.raises(ValueError, match="patients"):
        patient_bootstrap(a, b, patients[:-1])
    with pytest.raises(ValueError, match="n_boot"):
        patient_bootstrap(a, b, patients, n_boot=0)


def test_compare_unpaired_and_paired() -> None:
    classes = ("x", "y")
    cm_a = np.array([[4, 6], [2, 8]])  # 12 / 20 correct
    cm_b = np.array([[7, 3], [3, 7]])  # 14 / 20 correct
    r = compare(cm_a, cm_b, classes)
    assert (r["accuracy_a"], r["accuracy_b"], r["delta"]) == pytest.approx((0.6, 0.7, 0.1))
    _, low, high = delta_accuracy_ci(12, 20, 14, 20)
    assert (r["wald"]["low"], r["wald"]["high"]) == (low, high)
    assert r["per_class_delta"] == pytest.approx({"x": 0.3, "y": -0.1})
    assert "mcnemar" not in r and "bootstrap" not in r
    correct_a = np.array([True] * 12 + [False] * 8)
    correct_b = np.array([True] * 10 + [False] * 2 + [True] * 4 + [False] * 4)
    patients = np.repeat(["p1", "p2", "p3", "p4"], 5)
    r = compare(cm_a, cm_b, classes, correct_a, correct_b, patients, seed=3)
    assert (r["mcnemar"]["b01"], r["mcnemar"]["b10"]) == (4, 2)
    assert r["bootstrap"]["seed"] == 3 and r["bootstrap"]["n_patients"] == 4
    json.dumps(r, allow_nan=False)
    with pytest.raises(ValueError, match="correct_b"):
        compare(cm_a, cm_b, classes, correct_a, ~correct_b)
    with pytest.raises(ValueError, match="together"):
        compare(cm_a, cm_b, classes, correct_a)
