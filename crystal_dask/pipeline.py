"""A job: the whole experiment from one YAML file, validated at load, run stage by stage on one Dask client.

Stages: synth (generated corpora) -> scan -> extract -> train (each configuration) -> evaluate (each set x
configuration) -> report. A stage whose fingerprint (inputs + settings) matches the one recorded beside its
outputs is skipped; extraction also resumes inside a stage, chunk by chunk. Each stage leaves a Dask
performance report (HTML); the job keeps a log and a status file that `crystal-dask status` reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from distributed import Client, performance_report

from crystal_dask.stages.train import BUILTIN_CONFIGS, TrainConfig
from crystal_dask.store.files import write_json
from crystal_dask.vocab import CLASSES, LabelMap
from crystal_dask.wsi.layout import SPLITS
from crystal_dask.wsi.patches import PatchSettings

log = logging.getLogger("crystal_dask.pipeline")


class JobConfigError(ValueError):
    """A job file value crystal_dask cannot use; the message names the file and the key."""


SYNTH_KEYS = {"flavour", "patients", "slides_per_patient", "regions_per_slide", "crystalline", "slide_size",
              "mpp", "seed", "xml_fraction", "layout"}


@dataclass(frozen=True)
class CorpusSpec:
    name: str
    path: Path | None  # a corpus on disk ...
    synth: Mapping[str, Any] | None  # ... or one to generate
    split_seed: int
    extract: PatchSettings


@dataclass(frozen=True)
class EvalSet:
    name: str
    corpus: str
    splits: tuple[str, ...]


@dataclass(frozen=True)
class Job:
    name: str
    source: Path
    out: Path
    corpora: Mapping[str, CorpusSpec]
    labels: LabelMap
    train_corpus: str
    configs: tuple[TrainConfig, ...]
    eval_sets: tuple[EvalSet, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)


def _need(cfg: Mapping[str, Any], key: str, where: str, bad: Callable[[str, str], JobConfigError]) -> Any:
    if key not in cfg:
        raise bad(f"{where}{key}", "is required")
    return cfg[key]


def _mapping(value: Any, key: str, bad) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise bad(key, f"must be a mapping; got {type(value).__name__}")
    return dict(value)


def _allowed(cfg: Mapping[str, Any], keys: set[str], where: str, bad) -> None:
    unknown = sorted(set(cfg) - keys)
    if unknown:
        raise bad(f"{where}{unknown[0]}", f"unknown key; allowed here: {', '.join(sorted(keys))}")


def load_job(path: str | Path, out: str | Path | None = None) -> Job:
    """Read and check a job file; every error names the file and the key. Relative paths in the file are
    taken from the folder the command runs in; `out` overrides the file's `out`."""
    path = Path(path)

    def bad(key: str, problem: str) -> JobConfigError:
        return JobConfigError(f"{path}: {key}: {problem}")

    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise JobConfigError(f"{path}: cannot read the job file: {exc}") from exc
    cfg = _mapping(cfg, "(top level)", bad)
    _allowed(cfg, {"name", "out", "corpora", "labels", "extract", "train", "evaluate", "notes"}, "", bad)
    name = str(cfg.get("name", path.stem))
    try:
        labels = LabelMap.from_config(_mapping(cfg.get("labels"), "labels", bad))
    except ValueError as exc:
        raise bad("labels", str(exc)) from None
    base_extract = _mapping(cfg.get("extract"), "extract", bad)

    corpora: dict[str, CorpusSpec] = {}
    for cname, c in _mapping(_need(cfg, "corpora", "", bad), "corpora", bad).items():
        where = f"corpora.{cname}."
        c = _mapping(c, where[:-1], bad)
        _allowed(c, {"path", "synth", "split_seed", "extract"}, where, bad)
        if ("path" in c) == ("synth" in c):
            raise bad(where[:-1], "give exactly one of path (a corpus on disk) or synth (a corpus to generate)")
        synth = None
        if "synth" in c:
            synth = _mapping(c["synth"], f"{where}synth", bad)
            _allowed(synth, SYNTH_KEYS, f"{where}synth.", bad)
        corpus_path = None
        if "path" in c:
            corpus_path = Path(str(c["path"])).expanduser()
            if not corpus_path.is_dir():
                raise bad(f"{where}path", f"{corpus_path} is not a folder (fill in the path to the corpus root)")
        try:
            settings = PatchSettings.from_config({**base_extract, **_mapping(c.get("extract"), f"{where}extract", bad)})
        except (TypeError, ValueError) as exc:
            raise bad(f"{where}extract", str(exc)) from None
        corpora[str(cname)] = CorpusSpec(str(cname), corpus_path, synth, int(c.get("split_seed", 0)), settings)
    if not corpora:
        raise bad("corpora", "at least one corpus is needed")

    train = _mapping(_need(cfg, "train", "", bad), "train", bad)
    _allowed(train, {"corpus", "configs"}, "train.", bad)
    train_corpus = str(_need(train, "corpus", "train.", bad))
    if train_corpus not in corpora:
        raise bad("train.corpus", f"{train_corpus!r} is not one of the corpora ({', '.join(corpora)})")
    configs = []
    for cname, c in _mapping(train.get("configs") or dict.fromkeys(BUILTIN_CONFIGS), "train.configs", bad).items():
        base = BUILTIN_CONFIGS.get(str(cname))
        c = _mapping(c, f"train.configs.{cname}", bad)
        if base is not None and "crystal" not in c:
            c["crystal"] = base.crystal
        try:
            configs.append(TrainConfig.from_config(str(cname), c))
        except (TypeError, ValueError) as exc:
            raise bad(f"train.configs.{cname}", str(exc)) from None
        for s in configs[-1].splits:
            if s not in SPLITS:
                raise bad(f"train.configs.{cname}.splits", f"{s!r} is not one of {', '.join(SPLITS)}")

    sets = []
    evaluate = _mapping(_need(cfg, "evaluate", "", bad), "evaluate", bad)
    _allowed(evaluate, {"sets"}, "evaluate.", bad)
    for sname, s in _mapping(_need(evaluate, "sets", "evaluate.", bad), "evaluate.sets", bad).items():
        where = f"evaluate.sets.{sname}."
        s = _mapping(s, where[:-1], bad)
        _allowed(s, {"corpus", "splits"}, where, bad)
        corpus = str(_need(s, "corpus", where, bad))
        if corpus not in corpora:
            raise bad(f"{where}corpus", f"{corpus!r} is not one of the corpora ({', '.join(corpora)})")
        splits = tuple(s.get("splits", ("eval",)))
        for sp in splits:
            if sp not in SPLITS:
                raise bad(f"{where}splits", f"{sp!r} is not one of {', '.join(SPLITS)}")
        sets.append(EvalSet(str(sname), corpus, splits))
    return Job(
        name=name, source=path.resolve(), out=Path(out or cfg.get("out") or Path("runs") / name).resolve(),
        corpora=corpora, labels=labels, train_corpus=train_corpus, configs=tuple(configs), eval_sets=tuple(sets),
        notes=tuple(str(n) for n in cfg.get("notes") or ()),
    )


# --------------------------------------------------------------------------------------------- the stages
def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _tree_listing(root: Path) -> list[tuple[str, int, int]]:
    """Names, sizes and mtimes of a corpus's files: a scan is redone when any of them changes."""
    return [(str(p.relative_to(root)), (st := p.stat()).st_size, st.st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()]


class Status:
    """<out>/status.json: the job's state and each stage's, rewritten atomically at every change."""

    def __init__(self, job: Job):
        self.path = job.out / "status.json"
        self.data: dict[str, Any] = {
            "job": job.name, "job_file": str(job.source), "out": str(job.out), "pid": os.getpid(),
            "host": socket.gethostname(), "driver_slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "state": "running", "stage": None, "stages": {}, "report": None, "started": time.time(),
        }
        self.write()

    def write(self) -> None:
        write_json(self.path, self.data)

    def update(self, **kw: Any) -> None:
        self.data.update(kw)
        self.write()

    def stage(self, name: str, **kw: Any) -> None:
        self.data["stages"].setdefault(name, {}).update(kw)
        self.data["stage"] = name
        self.write()


class Runner:
    def __init__(self, job: Job, client: Client, show_progress: Callable[[list], None] | None = None):
        self.job, self.client, self.show_progress = job, client, show_progress
        self.out = job.out
        (self.out / "stages").mkdir(parents=True, exist_ok=True)
        (self.out / "reports").mkdir(parents=True, exist_ok=True)
        self.status = Status(job)

    def stage(self, name: str, key: str, outputs: list[Path], fn: Callable[[], Any]) -> bool:
        """Run `fn` unless the recorded fingerprint matches `key` and every output exists. True when it ran."""
        record = self.out / "stages" / f"{name.replace(':', '-')}.json"
        if record.exists() and json.loads(record.read_text()).get("key") == key and all(p.exists() for p in outputs):
            log.info("stage %s: up to date, skipped", name)
            self.status.stage(name, state="skipped")
            return False
        log.info("stage %s: running", name)
        started = time.time()
        self.status.stage(name, state="running", started=started)
        with performance_report(filename=str(self.out / "reports" / f"{name.replace(':', '-')}.html")):
            fn()
        write_json(record, {"key": key, "seconds": round(time.time() - started, 3)})
        self.status.stage(name, state="done", ended=time.time())
        log.info("stage %s: done in %.1f s", name, time.time() - started)
        return True

    # ---- the experiment
    def run(self) -> Path:
        from crystal_dask.stages.evaluate import evaluate
        from crystal_dask.stages.extract import Dataset, extract
        from crystal_dask.stages.report import write_report
        from crystal_dask.stages.scan import scan
        from crystal_dask.stages.train import train
        from crystal_dask.store.models import read_manifest
        from crystal_dask.store.schema import REGIONS, REJECTS, read_table, write_table

        job = self.job
        datasets: dict[str, Dataset] = {}
        for c in job.corpora.values():
            root = c.path
            if c.synth is not None:
                root = self.out / "corpora" / c.name
                synth_args = dict(c.synth)
                self.stage(f"synth:{c.name}", fingerprint(synth_args), [root / "corpus.json"],
                           lambda root=root, a=synth_args: _regenerate(root, a))
            scan_dir = self.out / "scan" / c.name
            listing = _tree_listing(root)

            def do_scan(root=root, c=c, scan_dir=scan_dir):
                result = scan(root, corpus=c.name, labels=job.labels, split_seed=c.split_seed)
                write_table(result.regions, scan_dir / "regions.parquet", REGIONS)
                write_table(result.rejects, scan_dir / "rejects.parquet", REJECTS)
                log.info("scan %s: %s", c.name, json.dumps(result.summary()))

            self.stage(f"scan:{c.name}", fingerprint(listing, job.labels.remap, dict(job.labels.crystalline),
                                                     c.split_seed),
                       [scan_dir / "regions.parquet", scan_dir / "rejects.parquet"], do_scan)
            ds_root = self.out / "datasets" / c.name

            def do_extract(c=c, scan_dir=scan_dir, ds_root=ds_root):
                ds = extract(read_table(scan_dir / "regions.parquet", REGIONS), ds_root, c.extract, self.client,
                             scan_rejects=read_table(scan_dir / "rejects.parquet", REJECTS),
                             show_progress=self.show_progress)
                log.info("extract %s: %s", c.name, json.dumps(ds.read_manifest()))

            # extraction checks its own plan and resumes chunk by chunk: the stage key only adds the scan
            self.stage(f"extract:{c.name}", fingerprint(listing, c.extract.as_dict(), job.labels.remap),
                       [ds_root / "extract.json"], do_extract)
            datasets[c.name] = Dataset(ds_root)

        train_ds = datasets[job.train_corpus]
        models: dict[str, dict] = {}
        model_files: dict[str, tuple[Path, str]] = {}  # config -> (model path, its sha256)
        for cfg in job.configs:
            path = self.out / "models" / f"{cfg.name}.skops"
            self.stage(f"train:{cfg.name}", fingerprint(train_ds.read_manifest()["plan_hash"], cfg),
                       [path, path.with_suffix(".json")],
                       lambda cfg=cfg, path=path: train(train_ds.root, cfg, path, self.client))
            m = read_manifest(path)
            model_files[cfg.name] = (path, m["sha256"])
            models[cfg.name] = {"train_rows": m["train_rows"], "class_counts": m["class_counts"],
                                "manifest": str(path.with_suffix(".json")), "leakage": m.get("leakage")}

        sets: dict[str, dict] = {}
        for s in job.eval_sets:
            ds = datasets[s.corpus]
            plan = ds.read_manifest()["plan_hash"]
            for cfg in job.configs:
                path, sha256 = model_files[cfg.name]
                out = self.out / "eval" / s.name / cfg.name
                key = fingerprint(sha256, plan, s.splits)
                self.stage(f"evaluate:{s.name}:{cfg.name}", key, [out / "confusion.json", out / "predictions.parquet"],
                           lambda ds=ds, path=path, out=out, s=s: evaluate(
                               ds.root, path, out, self.client, splits=s.splits, show_progress=self.show_progress))
                summary = json.loads((out / "confusion.json").read_text())
                sets.setdefault(s.name, {})[cfg.name] = {"confusion": summary["confusion"], "n": summary["n"],
                                                         "predictions": str(out / "predictions.parquet")}
        notes = list(job.notes) + [f"{n}: {m['leakage']}" for n, m in models.items() if m.get("leakage")]
        results = {"job": job.name, "classes": list(CLASSES), "configs": [c.name for c in job.configs],
                   "sets": sets, "models": models, "notes": notes}
        write_json(self.out / "results.json", results)
        report_dir = self.out / "report"
        self.status.stage("report", state="running", started=time.time())
        paths = write_report(results, report_dir)
        self.status.stage("report", state="done", ended=time.time())
        self.status.update(state="done", report=str(paths["report.md"]), stage=None, ended=time.time())
        return paths["report.md"]


def _regenerate(root: Path, args: Mapping[str, Any]) -> None:
    """Generate a corpus afresh: a partial one (an interrupted synth) or one from other settings is removed."""
    from crystal_dask.synthetic.corpus import generate_corpus

    shutil.rmtree(root, ignore_errors=True)
    kw = dict(args)
    if "slide_size" in kw:
        kw["slide_size"] = tuple(kw["slide_size"])
    generate_corpus(root, **kw)


def setup_logging(out: Path) -> list[logging.Handler]:
    """The job log at <out>/job.log and on stderr, for crystal_dask's own logger only."""
    out.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [logging.FileHandler(out / "job.log"), logging.StreamHandler()]
    logger = logging.getLogger("crystal_dask")
    for h in handlers:
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(h)
    logger.setLevel(logging.INFO)
    return handlers


def run_job(job: Job, client: Client, show_progress: Callable[[list], None] | None = None) -> Path:
    """Run every stage of `job` on `client`; return the Markdown report's path."""
    handlers = setup_logging(job.out)
    runner = Runner(job, client, show_progress)
    try:
        return runner.run()
    except BaseException as exc:
        runner.status.update(state="failed" if not isinstance(exc, KeyboardInterrupt) else "interrupted",
                             error=f"{type(exc).__name__}: {exc}", ended=time.time())
        raise
    finally:
        for h in handlers:
            logging.getLogger("crystal_dask").removeHandler(h)
            h.close()
