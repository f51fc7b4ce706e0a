"""Jobs: validation naming keys, the whole experiment end to end, skipping, and the shipped job files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from crystal_dask.job import JobConfigError, load_job, run_job

PROJECT = Path(__file__).resolve().parents[1]

TINY = {
    "name": "tiny",
    "corpora": {
        "fcbr": {"synth": {"flavour": "fcbr", "patients": 8, "slides_per_patient": 1, "regions_per_slide": 8,
                           "crystalline": 24, "slide_size": [2000, 1500], "seed": 3}},
        "tubr": {"synth": {"flavour": "tubr", "patients": 3, "slides_per_patient": 1, "regions_per_slide": 8,
                           "slide_size": [2000, 1500], "seed": 4}},
    },
    "extract": {"chunk_rows": 16},
    "train": {"corpus": "fcbr"},
    "evaluate": {"sets": {"FCBR-eval": {"corpus": "fcbr", "splits": ["dev", "eval"]},
                          "TUBR": {"corpus": "tubr", "splits": ["train", "dev", "eval"]}}},
}


def write_job(tmp_path: Path, cfg: dict, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def tiny_job(tmp_path: Path) -> Path:
    return write_job(tmp_path, {**TINY, "out": str(tmp_path / "out")})


@pytest.mark.parametrize(("change", "message"), [
    ({"corpora": None}, r"corpora: is required"),
    ({"corpora": {"a": {"path": "/nonexistent/corpus"}}}, r"corpora.a.path: /nonexistent/corpus is not a folder"),
    ({"corpora": {"a": {}}}, r"corpora.a: give exactly one of path"),
    ({"corpora": {"a": {"synth": {"flavor": "fcbr"}}}}, r"corpora.a.synth.flavor: unknown key"),
    ({"extract": {"mode": "tiles"}}, r"corpora.fcbr.extract: extract.mode: must be one of region, window"),
    ({"extract": {"chunk": 3}}, r"corpora.fcbr.extract: extract: unknown key\(s\) \['chunk'\]"),
    ({"train": {"corpus": "nope"}}, r"train.corpus: 'nope' is not one of the corpora"),
    ({"train": {"corpus": "fcbr", "configs": {"x": {"sample_n": 0}}}}, r"train.configs.x.sample_n"),
    ({"evaluate": {"sets": {"s": {"corpus": "fcbr", "splits": ["test"]}}}}, r"evaluate.sets.s.splits: 'test'"),
    ({"labels": {"remap": {"tumour": "cancer"}}}, r"labels: .*'cancer' is neither a class nor crystalline"),
    ({"colour": 1}, r": colour: unknown key"),
])
def test_job_errors_name_the_file_and_key(tmp_path, change, message):
    cfg = {k: v for k, v in {**TINY, **change}.items() if v is not None}
    path = write_job(tmp_path, cfg)
    with pytest.raises(JobConfigError, match=message) as err:
        load_job(path)
    assert str(err.value).startswith(str(path))


def test_shipped_jobs_load(tmp_path):
    demo = load_job(PROJECT / "jobs" / "demo.yaml")
    assert set(demo.corpora) == {"fcbr", "tubr"} and [c.name for c in demo.configs] == ["baseline", "crystal"]
    for name in ("crystal_vs_baseline.yaml", "tubr_full_eval.yaml"):
        text = (PROJECT / "jobs" / name).read_text()
        for placeholder in ("/data/nedc/fcbr/v1.0.0", "/data/nedc/tubr/v3.0.0"):
            assert placeholder in text
            folder = tmp_path / placeholder.strip("/").replace("/", "_")
            folder.mkdir(exist_ok=True)
            text = text.replace(placeholder, str(folder))
        job = load_job(write_job(tmp_path, yaml.safe_load(text), name))
        assert job.train_corpus == "fcbr" and job.configs[0].sample_n == 1850
    windows = load_job(tmp_path / "tubr_full_eval.yaml").corpora["tubr_windows"].extract
    assert windows.mode == "window" and windows.window_step == 250


def test_job_end_to_end_then_skips(tmp_path, client):
    path = tiny_job(tmp_path)
    job = load_job(path)
    report = run_job(job, client)
    assert report.exists() and report.parent == job.out / "report"
    status = json.loads((job.out / "status.json").read_text())
    assert status["state"] == "done" and status["report"] == str(report)
    stages = status["stages"]
    assert all(s["state"] == "done" for s in stages.values()), stages
    assert {"synth:fcbr", "scan:tubr", "extract:fcbr", "train:crystal", "evaluate:TUBR:baseline"} <= set(stages)
    for name in stages:
        if name != "report":
            assert (job.out / "reports" / f"{name.replace(':', '-')}.html").exists()  # Dask performance report
    results = json.loads((job.out / "report" / "report.json").read_text())
    assert set(results["sets"]) == {"FCBR-eval", "TUBR"}
    assert "mcnemar" in results["sets"]["TUBR"]["comparisons"]["crystal"]
    log = (job.out / "job.log").read_text()
    assert "stage extract:fcbr: done" in log

    before = (job.out / "report" / "report.json").read_bytes()
    run_job(load_job(path), client)
    again = json.loads((job.out / "status.json").read_text())["stages"]
    assert all(s["state"] == "skipped" for n, s in again.items() if n != "report"), again
    assert (job.out / "report" / "report.json").read_bytes() == before
