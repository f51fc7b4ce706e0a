"""Report: files written, JSON numbers equal to the metrics, Markdown tables, determinism, paired data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crystal_dask.metrics import compare, confusion, summarize
from crystal_dask.stages.report import load_paired, write_report
from crystal_dask.store.schema import PREDICTIONS, make_table, write_table

CLASSES = ["c0", "c1", "c2"]
Y = np.array([0] * 5 + [1] * 6 + [2] * 4)
PRED = {
    "baseline": np.array([0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 2, 2, 2, 2, 1]),  # 4/5, 3/6, 3/4: 10 correct
    "crystal": np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 2, 2, 2, 2, 2]),  # 5/5, 4/6, 4/4: 13 correct
}
PATIENTS = np.repeat(["p1", "p2", "p3", "p4", "p5"], 3)


def _results(predictions: dict[str, str | None] | None = None) -> dict:
    predictions = predictions or {}
    entry = {c: {"confusion": confusion(Y, p, 3).tolist(), "n": 15, "predictions": predictions.get(c)}
             for c, p in PRED.items()}
    return {
        "job": "toy",
        "classes": CLASSES,
        "configs": ["baseline", "crystal"],
        "sets": {"toy-eval": entry, "other set/2": {c: dict(v, predictions=None) for c, v in entry.items()}},
        "models": {"baseline": {"train_rows": 30, "class_counts": {"c0": 10, "c1": 10, "c2": 10},
                                "manifest": "models/baseline.json"},
                   "crystal": {"train_rows": 33, "class_counts": {"c0": 10, "c1": 11, "c2": 12},
                               "manifest": "models/crystal.json"}},
        "notes": ["toy data, hand-made"],
    }


def _paired() -> dict:
    return {"toy-eval": {c: {"correct": p == Y, "patients": PATIENTS} for c, p in PRED.items()}}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], Path]:
    out = tmp_path_factory.mktemp("report")
    return write_report(_results(), out, _paired()), out


def test_files_written(report: tuple[dict[str, Path], Path]) -> None:
    written, out = report
    expected = {"report.json", "report.md", "confusion_toy-eval_baseline.png", "confusion_toy-eval_crystal.png",
                "per_class_toy-eval.png", "confusion_other_set_2_baseline.png", "confusion_other_set_2_crystal.png",
                "per_class_other_set_2.png"}
    assert set(written) == expected
    assert {p.name for p in out.iterdir()} == expected  # no temporary files left
    for name in expected:
        assert written[name] == out / name
        if name.endswith(".png"):
            data = written[name].read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    baseline, crystal = (written[f"confusion_toy-eval_{c}.png"].read_bytes() for c in ("baseline", "crystal"))
    assert baseline != crystal


def test_json_numbers_match_metrics(report: tuple[dict[str, Path], Path]) -> None:
    written, _ = report
    doc = json.loads(written["report.json"].read_text())
    assert (doc["job"], doc["baseline"], doc["classes"]) == ("toy", "baseline", CLASSES)
    for set_name in ("toy-eval", "other set/2"):
        s = doc["sets"][set_name]
        for config, pred in PRED.items():
            assert s["summaries"][config] == json.loads(json.dumps(summarize(confusion(Y, pred, 3), CLASSES)))
        assert list(s["comparisons"]) == ["crystal"]
    paired = compare(confusion(Y, PRED["baseline"], 3), confusion(Y, PRED["crystal"], 3), CLASSES,
                     PRED["baseline"] == Y, PRED["crystal"] == Y, PATIENTS)
    assert doc["sets"]["toy-eval"]["comparisons"]["crystal"] == json.loads(json.dumps(paired))
    unpaired = doc["sets"]["other set/2"]["comparisons"]["crystal"]
    assert "mcnemar" not in unpaired and "bootstrap" not in unpaired
    assert unpaired["delta"] == pytest.approx(3 / 15)
    assert doc["models"] == _results()["models"] and doc["notes"] == ["toy data, hand-made"]


def test_markdown_tables(report: tuple[dict[str, Path], Path]) -> None:
    written, _ = report
    md = written["report.md"].read_text()
    for line in [
        "## toy-eval",
        "| correct | 10 | 13 |",
        "| incorrect | 5 | 2 |",
        "| accuracy | 66.7% | 86.7% |",
        "| c0 | 80.0% (4/5) | 100.0% (5/5) | +20.00 pp |",
        "| c1 | 50.0% (3/6) | 66.7% (4/6) | +16.67 pp |",
        # c0 baseline: P 4/6, R 4/5, F1 8/11; crystal: P 5/6, R 1, F1 10/11
        "| c0 | 0.667 | 0.800 | 0.727 | 0.833 | 1.000 | 0.909 |",
        "| configuration | Δ accuracy | 95% CI (Wald, independent) | McNemar (paired) | 95% CI (patient bootstrap) |",
        "| baseline | 30 | 10 | 10 | 10 | `models/baseline.json` |",
        "- toy data, hand-made",
        "![toy-eval: baseline confusion matrix](confusion_toy-eval_baseline.png)",
        "![toy-eval: per-class accuracy](per_class_toy-eval.png)",
    ]:
        assert line in md.splitlines(), line
    toy, other = md.split("## other set/2")
    # b01 = 3 (baseline wrong, crystal right), b10 = 0: exact p = 2 / 8
    assert "| crystal | +20.00 pp | [" in toy and "b01 3, b10 0, exact binomial, p 0.25 |" in toy
    assert "(5 patients, 2,000 replicates) |" in toy
    assert "exact binomial" not in other.split("## Models")[0]


def test_deterministic(report: tuple[dict[str, Path], Path], tmp_path: Path) -> None:
    written, _ = report
    again = write_report(_results(), tmp_path, _paired())
    for name in ("report.json", "report.md"):
        assert again[name].read_bytes() == written[name].read_bytes()


def _write_predictions(path: Path, order: np.ndarray, pred: np.ndarray, crystal: np.ndarray | None = None) -> str:
    crystal = np.zeros(len(Y), bool) if crystal is None else crystal
    rows = [{"row": int(i), "patient": str(PATIENTS[i]), "cls": CLASSES[Y[i]], "crystal": bool(crystal[i]),
             "y_true": int(Y[i]), "y_pred": int(pred[i]), "proba": [0.0, 0.0, 0.0]} for i in order]
    return str(write_table(make_table(PREDICTIONS, rows), path, PREDICTIONS))


def test_paired_data_read_from_predictions(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    paths = {c: _write_predictions(tmp_path / f"{c}.parquet", rng.permutation(15), p) for c, p in PRED.items()}
    results = _results(paths)
    paired = load_paired(results)
    assert set(paired) == {"toy-eval"}
    np.testing.assert_array_equal(paired["toy-eval"]["crystal"]["correct"], PRED["crystal"] == Y)
    np.testing.assert_array_equal(paired["toy-eval"]["baseline"]["patients"], PATIENTS)
    written = write_report(results, tmp_path / "out")
    doc = json.loads(written["report.json"].read_text())
    assert doc["sets"]["toy-eval"]["comparisons"]["crystal"]["mcnemar"]["b01"] == 3
    _write_predictions(tmp_path / "crystal.parquet", np.arange(14), PRED["crystal"])  # one row short
    with pytest.raises(ValueError, match="crystal.parquet: rows differ"):
        load_paired(results)


def test_crystalline_rows_are_counted_apart(tmp_path: Path) -> None:
    crystal = np.arange(len(Y)) % 3 == 0
    paths = {c: _write_predictions(tmp_path / f"{c}.parquet", np.arange(len(Y)), p, crystal) for c, p in PRED.items()}
    written = write_report(_results(paths), tmp_path / "out")
    split = json.loads(written["report.json"].read_text())["sets"]["toy-eval"]["crystalline"]
    for config, pred in PRED.items():
        ok = pred == Y
        assert split[config]["crystalline"] == {"n": int(crystal.sum()), "correct": int(ok[crystal].sum()),
                                                "accuracy": float(ok[crystal].mean())}
        assert split[config]["other"]["correct"] == int(ok[~crystal].sum())
    assert "### Crystalline rows and the rest" in written["report.md"].read_text()


def test_rejects_inconsistent_results(tmp_path: Path) -> None:
    bad = _results()
    bad["sets"]["toy-eval"]["crystal"]["n"] = 16
    with pytest.raises(ValueError, match=r"\['toy-eval'\]\['crystal'\]: n=16"):
        write_report(bad, tmp_path, {})
    bad = _results()
    del bad["sets"]["toy-eval"]["crystal"]
    with pytest.raises(ValueError, match="'crystal' is missing"):
        write_report(bad, tmp_path, {})
    with pytest.raises(ValueError, match="'notes'"):
        write_report({k: v for k, v in _results().items() if k != "notes"}, tmp_path, {})
    shifted = _paired()
    shifted["toy-eval"]["crystal"]["patients"] = PATIENTS[::-1]
    with pytest.raises(ValueError, match="not aligned"):
        write_report(_results(), tmp_path, shifted)
