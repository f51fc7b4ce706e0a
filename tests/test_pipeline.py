"""The runner: the whole experiment end to end, skipping by key, status in run order, other clusters."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from distributed import Client, LocalCluster

from crystal_dask.pipeline import Planner, dry_run, run_job
from crystal_dask.stages import load_experiment, ordered
from crystal_dask.stages.base import Context
from tests.helpers.changes import CHANGES, STEPS, fox_corpus
from tests.helpers.changes import job as changes_job
from tests.helpers.jobs import TINY, tiny_job, write_job
from tests.helpers.run_digest import digest as run_digest


@pytest.mark.slow
def test_job_end_to_end_then_skips(tmp_path, client):
    path = tiny_job(tmp_path)
    job = load_experiment(path)
    report = run_job(job, client, performance_reports=True)
    assert report.exists() and report.parent == job.out / "report"
    status = json.loads((job.out / "status.json").read_text())
    assert status["state"] == "done" and status["report"] == str(report)
    order = [s["name"] for s in status["stages"]]
    stages = {s["name"]: s for s in status["stages"]}
    assert all(s["state"] == "done" for s in stages.values()), stages
    # listed in run order: every synth before every scan, ..., the report last
    kinds = [n.split(":")[0] for n in order]
    kinds_in_order = ["synth", "scan", "extract", "features", "train", "evaluate", "report"]
    assert kinds == sorted(kinds, key=kinds_in_order.index), order
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
    run_job(load_experiment(path), client)
    again = json.loads((job.out / "status.json").read_text())["stages"]
    assert [s["name"] for s in again] == order
    assert all(s["state"] == "skipped" for s in again), again
    assert (job.out / "report" / "report.json").read_bytes() == before


@pytest.mark.parametrize("reports", [False, True])
def test_performance_reports_only_on_request(tmp_path, client, reports):
    from crystal_dask.experiment import Experiment
    from crystal_dask.pipeline import Runner
    from crystal_dask.stages.base import Step
    from crystal_dask.vocab import LabelMap

    exp = Experiment(name="t", source=tmp_path / "job.yaml", out=tmp_path / "out", corpora={}, labels=LabelMap(),
                     settings={})
    runner = Runner(exp, client, performance_reports=reports)
    made = exp.out / "made"
    step = Step("extract:x", (), {}, (made,), lambda: made.write_text(str(client.submit(sum, [1, 2]).result())))
    assert runner.step(runner.planner.decide(step))
    assert made.read_text() == "3"
    assert (exp.out / "reports" / "extract-x.html").is_file() == reports
    assert (exp.out / "reports").exists() == reports


# ------------------------------------------------------------------------------ the same job on other clusters
def outputs_digest(out: Path) -> str:
    """What must not depend on where or how a job ran: the zarr bytes, the patch tables, the model files, every
    prediction and the report's numbers (paths inside the report are made relative to the output folder)."""
    import hashlib

    h = hashlib.sha256()
    for ds in sorted((out / "datasets").iterdir()):
        for p in sorted((ds / "patches.zarr").rglob("*")):
            if p.is_file() and p.parent != ds / "patches.zarr":  # array metadata and chunks
                h.update(str(p.relative_to(out)).encode() + p.read_bytes())
        attrs = json.loads((ds / "patches.zarr" / "zarr.json").read_text())["attributes"]
        attrs.pop("plan_hash")  # it names the slide files, which live elsewhere in each run
        h.update(json.dumps(attrs, sort_keys=True).encode())
        h.update(pq.read_table(ds / "patches.parquet").drop(["slide", "annotation"]).to_string().encode())
    for p in sorted((out / "models").glob("*.skops")):  # the model files themselves, byte for byte
        h.update(p.name.encode() + p.read_bytes())
    for p in sorted((out / "eval").rglob("predictions.parquet")):
        h.update(str(p.relative_to(out)).encode() + pq.read_table(p).to_string().encode())
    h.update((out / "report" / "report.json").read_text().replace(str(out), "<out>").encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, client):
    """The tiny job run undisturbed on the LocalCluster fixture: what every other run must reproduce."""
    tmp = tmp_path_factory.mktemp("reference")
    corpora = tmp / "corpora"
    job = load_experiment(tiny_job(tmp))
    run_job(job, client)
    shutil.copytree(job.out / "corpora", corpora)
    return outputs_digest(job.out), corpora


def job_on(tmp_path: Path, corpora: Path) -> Path:
    """The tiny job with its corpora already generated (same bytes as the reference's), so runs compare."""
    cfg = {**TINY, "out": str(tmp_path / "out"),
           "corpora": {name: {"path": str(corpora / name)} for name in TINY["corpora"]}}
    return write_job(tmp_path, cfg)


@pytest.mark.slow
def test_job_on_spawned_scheduler_and_workers(tmp_path, reference):
    from crystal_dask.runtime.cluster import cluster_config_from_mapping, connect
    from tests.helpers.dask_processes import scheduler_and_workers

    digest, corpora = reference
    path = job_on(tmp_path, corpora)
    with scheduler_and_workers(2, tmp_path / "dask") as address:
        with connect(cluster_config_from_mapping({"kind": "address", "address": address})) as c:
            assert len(c.nthreads()) == 2
            run_job(load_experiment(path), c)
    assert outputs_digest(load_experiment(path).out) == digest


@pytest.mark.slow
def test_job_survives_a_killed_worker_with_identical_outputs(tmp_path, reference):
    digest, corpora = reference
    path = job_on(tmp_path, corpora)
    out = load_experiment(path).out
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address="127.0.0.1:0") as c, Client(c) as cl:
        pids = cl.run(os.getpid)
        killed = threading.Event()

        def kill_during_extract():
            deadline = time.time() + 120
            while time.time() < deadline and not list((out / "datasets").rglob("chunk-*.json")):
                time.sleep(0.02)
            os.kill(next(iter(pids.values())), signal.SIGKILL)
            killed.set()

        t = threading.Thread(target=kill_during_extract)
        t.start()
        run_job(load_experiment(path), cl)
        t.join()
    assert killed.is_set()
    assert outputs_digest(out) == digest


@pytest.mark.slow
def test_interrupted_job_resumes_with_identical_outputs(tmp_path, reference):
    digest, corpora = reference
    path = job_on(tmp_path, corpora)
    out = load_experiment(path).out
    cmd = [sys.executable, "-m", "crystal_dask.cli", "run", str(path), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and not list((out / "datasets").rglob("chunk-*.json")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # Ctrl-C in the middle of extraction
    assert proc.wait(timeout=60) != 0
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "interrupted", status
    # resumed with the default progress into pipes, as `> log 2>&1` or a submitted driver: lines, no redraws
    resumed = subprocess.run(cmd[:-1], capture_output=True)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    assert b"\r" not in resumed.stdout + resumed.stderr
    assert b"% (" in resumed.stderr and b"progress " in (out / "job.log").read_bytes()
    assert outputs_digest(out) == digest
    assert json.loads((out / "status.json").read_text())["state"] == "done"


@pytest.mark.slow
@pytest.mark.slurm
def test_job_on_slurm_workers(slurm_ready, tmp_path, reference):
    from crystal_dask.runtime.cluster import cluster_config_from_mapping, connect

    digest, corpora = reference
    path = job_on(tmp_path, corpora)
    cfg = cluster_config_from_mapping({
        "kind": "slurm", "cores": 1, "memory": "3GB", "walltime": "00:20:00", "processes": 1,
        "python": sys.executable, "local_directory": str(tmp_path / "spill"), "log_directory": str(tmp_path / "logs"),
        "scale": {"jobs": 2}, "wait_for_workers": 120,
        "jobqueue": {"job_name": "crystal-dask-job-test", "scheduler_options": {"dashboard_address": ":0"}}})
    with connect(cfg) as c:
        c.wait_for_workers(2, timeout=120)
        slurm_ids = set(c.run(os.getenv, "SLURM_JOB_ID").values())
        assert len(slurm_ids) == 2 and all(slurm_ids)
        run_job(load_experiment(path), c)
    assert outputs_digest(load_experiment(path).out) == digest


# ------------------------------------------------------------------------------ what reruns, and why
def _fox_stub(root: Path) -> Path:
    """A corpus folder on disk for runs that are only planned (a dry run lists its files, never reads them)."""
    (root / "svs").mkdir(parents=True)
    (root / "svs" / "slide.tif").write_bytes(b"x")
    return root


def _load(tmp_path: Path, cfg: dict, name: str = "job.yaml"):
    return load_experiment(write_job(tmp_path, cfg, name))


def _plan(exp, simulate: bool = False) -> list:
    """The runner's decisions for `exp` (as `dry_run` makes them), the outputs' damage checks left out: here the
    outputs are empty files. `simulate`: a run without a cluster, where every step to run leaves empty outputs and
    its record, as a real run leaves them."""
    planner = Planner(Context(exp, None))
    decisions = []
    for stage in ordered():
        for step in stage.steps(planner.ctx):
            decisions.append(decision := planner.decide(replace(step, damage=None)))
            if decision.run and simulate:
                for p in step.outputs:
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.touch()
                planner.record(decision)
    return decisions


def _simulate(exp) -> set[str]:
    """The steps a simulated run ran."""
    return {d.step.name for d in _plan(exp, simulate=True) if d.run}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_dry_run_lists_exactly_the_steps_a_change_reruns(tmp_path, change):
    base = changes_job(tmp_path / "out", _fox_stub(tmp_path / "fox"))
    assert _simulate(_load(tmp_path, base)) == set(STEPS)  # the first run: every step, in this order
    edit, expected = CHANGES[change]
    changed = _load(tmp_path, edit(base), "changed.yaml")
    decisions = _plan(changed)
    assert [d.step.name for d in decisions] == list(STEPS)
    assert {d.step.name for d in decisions if d.run} == expected  # no more (minimality), no fewer (no stale)
    assert all(d.why == "up to date" for d in decisions if not d.run)
    assert _simulate(changed) == expected  # the run does what the listing said ...
    assert not any(d.run for d in _plan(changed))  # ... and leaves nothing to do


def test_a_dry_run_says_which_setting_or_upstream_step_changed(tmp_path):
    base = changes_job(tmp_path / "out", _fox_stub(tmp_path / "fox"))
    exp = _load(tmp_path, base)
    assert {d.why for d in _plan(exp)} == {"never run"}
    _simulate(exp)
    edit, _ = CHANGES["labels.crystalline"]
    why = {d.step.name: d.why for d in _plan(_load(tmp_path, edit(base), "changed.yaml"))}
    assert why["scan:fox"] == "setting labels.crystalline.cnno changed"
    assert why["extract:fox"] == "upstream scan:fox changed"
    assert why["train:baseline"] == "upstream extract:fox, features:fox changed"
    assert why["synth:fcbr"] == "up to date"

    (exp.out / "models" / "baseline.skops").unlink()
    why = {d.step.name: d.why for d in _plan(exp)}
    assert why["train:baseline"] == "outputs missing: models/baseline.skops"
    assert why["evaluate:FOX:baseline"] == "up to date"  # the model's key is unchanged: it will be the same model

    edit, _ = CHANGES["train configuration"]
    why = {d.step.name: d.why for d in _plan(_load(tmp_path, edit(base), "changed.yaml"))}
    assert why["train:crystal"] == "setting config.balance changed"


def test_run_dry_run_starts_no_cluster_and_lists_every_step(tmp_path, capsys):
    from crystal_dask.cli import main

    path = write_job(tmp_path, changes_job(tmp_path / "out", _fox_stub(tmp_path / "fox")))
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    width = max(map(len, STEPS))  # the reasons align on the longest step name
    assert out[1:-1] == [f"{'run':<5} {name:<{width}} never run" for name in STEPS]
    assert out[-1] == f"{len(STEPS)} step(s) to run, 0 up to date"
    assert not (tmp_path / "out" / "status.json").exists()  # nothing ran


@pytest.fixture(scope="module")
def changes_baseline(tmp_path_factory, client):
    """The changes job run once (its outputs kept aside, to restore at the same path before each change) and the
    digest of those outputs."""
    tmp = tmp_path_factory.mktemp("changes")
    base = changes_job(tmp / "out", fox_corpus(tmp / "fox"))
    run_job(_load(tmp, base), client)
    shutil.copytree(tmp / "out", tmp / "baseline")  # mtimes kept: the slides are the same files to extract
    return tmp, base, run_digest(tmp / "out")


def _restore(tmp: Path) -> Path:
    out = tmp / "out"
    shutil.rmtree(out)
    shutil.copytree(tmp / "baseline", out)
    return out


def _ran(out: Path) -> set[str]:
    return {s["name"] for s in json.loads((out / "status.json").read_text())["stages"] if s["state"] == "done"}


@pytest.mark.slow
@pytest.mark.parametrize("change", list(CHANGES))
def test_a_rerun_after_a_change_equals_a_clean_run_of_the_changed_job(changes_baseline, client, tmp_path, change):
    tmp, base, _ = changes_baseline
    out = _restore(tmp)
    edit, expected = CHANGES[change]
    changed = _load(tmp_path, edit(base), "changed.yaml")
    listed = {d.step.name for d in dry_run(changed) if d.run}
    run_job(changed, client)
    assert _ran(out) == listed == expected
    clean = _load(tmp_path, {**edit(base), "out": str(tmp_path / "clean")}, "clean.yaml")
    run_job(clean, client)
    assert run_digest(out) == run_digest(clean.out)


@pytest.mark.slow
def test_a_family_taken_out_of_the_job_leaves_no_array_behind(changes_baseline, client, tmp_path):
    tmp, base, digest = changes_baseline
    out = _restore(tmp)
    edit, _ = CHANGES["feature families"]
    run_job(_load(tmp_path, edit(base), "changed.yaml"), client)
    assert run_digest(out) != digest
    run_job(_load(tmp_path, base), client)  # back to the job as it was: as if it had never changed
    assert _ran(out) == CHANGES["feature families"][1]
    assert run_digest(out) == digest


def test_pca_is_fitted_again_when_training_moves_to_another_corpus(tmp_path):
    base = {**changes_job(tmp_path / "out", _fox_stub(tmp_path / "fox")), "features": {"pca": 4}}
    _simulate(_load(tmp_path, base))
    why = {d.step.name: d.why for d in _plan(_load(tmp_path, {**base, "train": {"corpus": "fcbr"}}, "moved.yaml"))
           if d.run}
    assert why["train:pca:fit"] == "setting fitted_on changed"
    assert set(why) == {"train:pca:fit", "train:baseline", "train:crystal", "evaluate:FOX:baseline",
                        "evaluate:FOX:crystal", "infer:slides:baseline", "report"}


@pytest.mark.slow
def test_progress_lines_and_task_keys_name_the_stage(tmp_path, client, caplog):
    """What the job log and the dashboard show is named after the step and its stage, not after dask internals
    (finalize-hlgfinalizecompute, from_sequence, shuffle-taker, getitem)."""
    from dask.utils import key_split
    from distributed import get_task_stream

    from crystal_dask.pipeline import Runner
    from crystal_dask.progress import log_milestones
    from crystal_dask.stages.base import stage_of

    job = load_experiment(write_job(tmp_path, {
        **TINY, "out": str(tmp_path / "out"), "features": {"families": ["stain"]},
        "infer": {"sets": {"TUBR": {"corpus": "tubr", "splits": ["eval"], "configs": ["crystal"]}},
                  "window_size": 256}}))
    runner = Runner(job, client, log_milestones)
    seen: dict[str, set[str]] = {}
    with caplog.at_level(logging.INFO, logger="crystal_dask.progress"):
        for decision in runner.planner.decisions():  # the runner's own steps, one task stream each
            with get_task_stream(client) as stream:
                assert runner.step(decision)
            seen[decision.step.name] = {key_split(t["key"]) for t in stream.data}

    progress = [r.getMessage().removeprefix("progress ") for r in caplog.records if r.name == "crystal_dask.progress"]
    named = {line.rsplit(": ", 1)[0] for line in progress}
    assert named == {s for s in seen if stage_of(s) in ("extract", "features", "train", "evaluate", "infer")}, progress
    assert {stage_of(s) for s, prefixes in seen.items() if prefixes} == {"extract", "features", "train", "evaluate",
                                                                         "infer", "report"}
    for step, prefixes in seen.items():
        assert all(p.startswith(stage_of(step)) for p in prefixes), (step, prefixes)


def test_two_steps_whose_records_would_share_a_file_are_refused(tmp_path):
    """Step names map to record files with ':' as '-', so set 'a-b' x config 'c' and set 'a' x config 'b-c'
    would overwrite (and keep rerunning) each other: the planner refuses the second, naming both."""
    from types import SimpleNamespace

    from crystal_dask.stages.base import Step

    planner = Planner(Context(SimpleNamespace(out=tmp_path), None))
    planner.declare(Step("evaluate:a-b:c", (), {}, (), lambda: None))
    with pytest.raises(ValueError, match="steps evaluate:a-b:c and evaluate:a:b-c would share the record "
                                         "evaluate-a-b-c.json"):
        planner.declare(Step("evaluate:a:b-c", (), {}, (), lambda: None))
