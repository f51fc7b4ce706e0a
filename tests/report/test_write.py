"""write_report (and the report stage's collect): files written, JSON numbers equal to the metrics, Markdown tables,
determinism inline and on the workers, paired data; feature importances and the gallery on a tiny experiment made
by the real stages (train, evaluate on the session's small dataset)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from imblearn.ensemble import BalancedRandomForestClassifier

from crystal_dask.experiment import Experiment
from crystal_dask.metrics import compare, confusion, summarize
from crystal_dask.report.gallery import BORDER, CRYSTAL_RGB, GALLERY_ERRORS, THUMB
from crystal_dask.report.importances import feature_names, importances
from crystal_dask.report.markdown import GALLERY_PER_CLASS, table
from crystal_dask.report.paired import load_paired
from crystal_dask.report.write import write_report
from crystal_dask.stages import evaluate as evaluate_stage
from crystal_dask.stages import report as report_stage
from crystal_dask.stages import train as train_stage
from crystal_dask.stages.base import Context
from crystal_dask.stages.evaluate import EvalSet, evaluate
from crystal_dask.stages.features import FeatureSettings
from crystal_dask.stages.train import TrainConfig, TrainSettings, train
from crystal_dask.store.dataset import Dataset
from crystal_dask.store.models import load_model, save_model
from crystal_dask.store.schema import PREDICTIONS, make_table, read_table, write_table
from crystal_dask.vocab import CLASSES as CLASSES_9
from crystal_dask.vocab import LabelMap

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
    md = written["report.md"].read_text()
    assert "### Crystalline rows and the rest" in md and "\n\n\n" not in md  # one blank line between blocks


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


# ---------------------------------------------------------------- importances and gallery, on real stages' outputs
def _magenta_pixels(png: Path) -> int:
    from matplotlib.image import imread

    rgb = np.round(imread(png)[..., :3] * 255).astype(int)
    return int((rgb == np.array(CRYSTAL_RGB)).all(axis=-1).sum())


@pytest.fixture(scope="module")
def job(small_dataset, client, tmp_path_factory: pytest.TempPathFactory) -> Experiment:
    """A tiny experiment made by the real stages on the session's small dataset: train baseline and crystal,
    evaluate on one set."""
    out = tmp_path_factory.mktemp("job")
    configs = (TrainConfig("baseline"), TrainConfig("crystal", crystal=True))
    eval_set = EvalSet("FCBR dev+eval", "fcbr", ("dev", "eval"))
    exp = Experiment(name="tiny", source=out / "job.yaml", out=out, corpora={}, labels=LabelMap(),
                     settings={"features": FeatureSettings(), "train": TrainSettings("fcbr", configs),
                               "evaluate": (eval_set,)})
    for cfg in configs:
        train(small_dataset, cfg, train_stage.model_path(exp, cfg.name), client)
        evaluate(small_dataset, train_stage.model_path(exp, cfg.name), evaluate_stage.output_dir(exp, eval_set.name,
                 cfg.name), client, splits=eval_set.splits)
    return exp


def collect(exp: Experiment) -> dict:
    """What the report stage collects: the train and evaluate steps declared as the runner declares them, read by
    the running report step (through Context.output, which refuses a step it did not declare)."""
    ctx = Context(exp, None)
    for stage in (train_stage, evaluate_stage):
        ctx.steps |= {step.name: step for step in stage.steps(ctx)}
    ctx.running = next(iter(report_stage.steps(ctx)))
    return report_stage.collect(ctx)


@pytest.fixture(scope="module")
def full(job: Experiment) -> tuple[dict, dict[str, Path], dict]:
    results = collect(job)
    written = write_report(results, job.out / "report")
    return results, written, json.loads(written["report.json"].read_text())


def test_collect_carries_model_files_and_dataset_roots(job: Experiment, small_dataset: Path, full) -> None:
    results, _, doc = full
    for config in ("baseline", "crystal"):
        m = results["models"][config]
        assert m["model"] == str(job.out / "models" / f"{config}.skops") and Path(m["model"]).is_file()
        assert m["features"] == ["pixels"] and m["columns"] is None  # main's manifests: pixels, unnamed
        entry = results["sets"]["FCBR dev+eval"][config]
        assert entry["dataset"] == str(small_dataset.resolve())
        assert set(entry) == {"confusion", "n", "predictions", "dataset"}  # the documented shape, one key more
    assert doc["models"] == results["models"]


def test_importances_top20_match_the_forest(job: Experiment, full) -> None:
    results, written, doc = full
    md = written["report.md"].read_text().splitlines()
    for config in ("baseline", "crystal"):
        imp = load_model(Path(results["models"][config]["model"])).feature_importances_
        e = doc["importances"][config]
        top = e["top"]
        assert e["n_features"] == 256 * 256 and len(top) == 20
        values = [t["importance"] for t in top]
        assert values == sorted(values, reverse=True) and values[0] > 0
        assert values == [float(v) for v in np.sort(imp)[::-1][:20]]
        for t in top:
            assert t["importance"] == float(imp[t["column"]])
            assert t["name"] == f"pixel ({t['column'] // 256}, {t['column'] % 256})"
        # the Markdown table lists the same 20 names in the same order
        start = md.index(f"### {config} (features: pixels; 65,536 columns)") + 4
        assert [line.split(" | ")[1] for line in md[start:start + 20]] == [t["name"] for t in top]
        assert md[start + 20] == ""
        png = written[f"importances_{config}.png"]
        assert png == job.out / "report" / e["figure"] and 10_000 < png.stat().st_size < 1_000_000


def test_gallery_shows_each_class_and_marks_exactly_the_crystalline_rows(job: Experiment, small_dataset: Path,
                                                                        full) -> None:
    _, written, doc = full
    g = doc["sets"]["FCBR dev+eval"]["gallery"]
    assert g["config"] == "crystal" and g["figure"] == "gallery_FCBR_dev_eval.png"
    ds = Dataset(small_dataset)
    crystal = ds.group()["crystal"][:]
    label = ds.group()["label"][:]
    preds = read_table(evaluate_stage.output_dir(job, "FCBR dev+eval", "crystal") / "predictions.parquet",
                       PREDICTIONS)
    present = [c for c in CLASSES_9 if c in set(preds["cls"].to_pylist())]
    assert list(g["examples"]) == present
    shown = [e for ex in g["examples"].values() for e in ex] + g["errors"]
    for code, ex in g["examples"].items():
        rows = [e["row"] for e in ex]
        assert rows == sorted(set(rows)) and 0 < len(rows) <= GALLERY_PER_CLASS
        assert all(CLASSES_9[label[r]] == code for r in rows)
    for e in shown:  # marked <=> crystalline in the dataset itself
        assert e["marked"] == e["crystal"] == bool(crystal[e["row"]])
    assert any(e["marked"] for e in shown) and not all(e["marked"] for e in shown)
    # a class with both kinds shows both
    both = [c for c, ex in g["examples"].items() if len({e["crystal"] for e in ex}) == 2]
    assert both, "the small corpus has classes with crystalline and plain evaluation rows"
    # the errors: really wrong, most confident first, each with its top probability
    proba = {r: max(p) for r, p in zip(preds["row"].to_pylist(), preds["proba"].to_pylist(), strict=True)}
    wrong = {r for r, t, p in zip(preds["row"].to_pylist(), preds["y_true"].to_pylist(), preds["y_pred"].to_pylist(),
                                  strict=True) if t != p}
    assert g["wrong"] == len(wrong) and len(g["errors"]) == min(GALLERY_ERRORS, len(wrong))
    assert all(e["row"] in wrong and e["true"] != e["predicted"] for e in g["errors"])
    assert [e["proba"] for e in g["errors"]] == sorted((e["proba"] for e in g["errors"]), reverse=True)
    assert min(e["proba"] for e in g["errors"]) >= sorted(proba[r] for r in wrong)[-len(g["errors"])] - 1e-4
    # the PNG: every marked thumbnail has its full frame, nothing else has the frame's colour
    png = written[g["figure"]]
    assert 20_000 < png.stat().st_size < 1_000_000
    frame = (THUMB + 2 * BORDER) ** 2 - THUMB ** 2
    assert _magenta_pixels(png) == frame * sum(e["marked"] for e in shown)
    assert f"![FCBR dev+eval: gallery]({g['figure']})" in written["report.md"].read_text().splitlines()


def test_report_deterministic_with_gallery_and_importances(job: Experiment, full, client, tmp_path: Path) -> None:
    results, written, _ = full
    again = write_report(results, tmp_path, client=client)  # the figures drawn on the workers this time
    assert set(again) == set(written)
    for name in ("report.json", "report.md", "gallery_FCBR_dev_eval.png", "importances_crystal.png"):
        assert again[name].read_bytes() == written[name].read_bytes(), name


def test_old_results_without_the_new_keys_still_report(full, tmp_path: Path) -> None:
    results, _, _ = full
    old = json.loads(json.dumps(results))
    for m in old["models"].values():
        for key in ("model", "features", "columns"):
            del m[key]
    for by_config in old["sets"].values():
        for entry in by_config.values():
            del entry["dataset"]
    written = write_report(old, tmp_path)
    assert not any(n.startswith(("gallery_", "importances_")) for n in written)
    doc = json.loads(written["report.json"].read_text())
    assert "importances" not in doc and "gallery" not in doc["sets"]["FCBR dev+eval"]
    assert "## Feature importances" not in written["report.md"].read_text()


def test_named_feature_columns(job: Experiment, small_dataset: Path, tmp_path: Path) -> None:
    """A forest on named feature columns (band means of the real patches): importances carry those names."""
    ds = Dataset(small_dataset)
    rows = ds.rows()["row"].to_numpy()
    bands = ds.matrix(rows).reshape(len(rows), 32, -1).mean(axis=2)  # 32 horizontal bands of 8 lines
    names = [f"band {i} mean" for i in range(32)]
    model = BalancedRandomForestClassifier(random_state=42).fit(bands, ds.labels(rows))
    save_model(model, tmp_path / "bands.skops", {"config": {"features": ["bands"]}, "columns": names})
    got = importances(tmp_path / "bands.skops", names)
    assert got["n_features"] == 32 and [t["name"] for t in got["top"]] == [names[t["column"]] for t in got["top"]]
    assert [t["column"] for t in got["top"]] == np.argsort(-model.feature_importances_, kind="stable")[:20].tolist()
    with pytest.raises(ValueError, match="names 31 columns but the model has 32"):
        importances(tmp_path / "bands.skops", names[:31])
    assert feature_names(6, None) == [f"column {i}" for i in range(6)]
    assert feature_names(4, None) == ["pixel (0, 0)", "pixel (0, 1)", "pixel (1, 0)", "pixel (1, 1)"]
    # pixels beside a feature array, as Dataset.columns names them
    mixed = [f"pixels[{i}]" for i in range(9)] + ["stain_h_mean"]
    assert feature_names(10, mixed) == [f"pixel ({i // 3}, {i % 3})" for i in range(9)] + ["stain_h_mean"]


def test_calcification_signal_is_reported_per_set(tmp_path: Path) -> None:
    """results['calcification'] (the report stage adds it when a model uses the family) becomes a section beside
    the importances and a key of report.json; without it neither appears."""
    groups = [{"cls": "c0", "crystal": True, "rows": 4, "with_deposit": 3, "fraction": 0.75},
              {"cls": "c0", "crystal": False, "rows": 5, "with_deposit": 0, "fraction": 0.0}]
    written = write_report({**_results(), "calcification": {"toy-eval": groups}}, tmp_path / "with", _paired())
    md = written["report.md"].read_text()
    assert "## Calcification signal" in md and "### toy-eval" in md and "| c0 | 75% (3/4) | 0% (0/5) |" in md
    # the report's one table writer: its separator line, one blank line after the table
    section = md[md.index("### toy-eval"):].split("\n")
    assert section[2:6] == [*table(["class", "crystalline rows with a deposit", "other rows with a deposit"], [],
                                   text=(0, 1, 2))[:2], "| c0 | 75% (3/4) | 0% (0/5) |", ""], section
    assert section[6] != "", section
    assert json.loads(written["report.json"].read_text())["calcification"] == {"toy-eval": groups}
    plain = write_report(_results(), tmp_path / "without", _paired())
    assert "Calcification signal" not in plain["report.md"].read_text()
    assert "calcification" not in json.loads(plain["report.json"].read_text())
