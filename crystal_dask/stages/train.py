"""Stage train: choose each configuration's rows and fit BalancedRandomForestClassifier, one dask task per tree.

Settings: the job file's `train:` section (`corpus`, `configs.<name>`). Outputs: <out>/models/<config>.skops beside
its manifest <config>.json; redone when the configuration or a step it reads (the corpus's extract and features
steps) changes. With `features.pca` this stage also fits the pca family on its corpus (step train:pca:fit).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from crystal_dask.checks import ConfigError, check_fields, choice, flag, integer, need, section, text, texts
from crystal_dask.experiment import Experiment
from crystal_dask.stages import extract
from crystal_dask.stages import features as feature_stage
from crystal_dask.stages.base import Context, Step
from crystal_dask.store.dataset import PIXELS, Dataset
from crystal_dask.store.models import model_arrays, read_manifest, save_model
from crystal_dask.vocab import CLASSES, SPLITS
from crystal_dask.wsi.split import apportion

if TYPE_CHECKING:
    from distributed import Client

NAME = "train"
SECTION = "train"
RANDOM_STATE = 42  # the published forest's seed
LEAKAGE_WARNING = (
    "WARNING: crystalline rows are taken from EVERY split (the published FCBR choice). Patients of the dev/eval "
    "sets are then in the training set: evaluation on those sets is biased. This is recorded in the manifest."
)


@dataclass(frozen=True)
class TrainConfig:
    """One training configuration (e.g. baseline, crystal)."""

    name: str
    crystal: bool = False  # add the crystalline rows (mapped to their class)
    crystal_all_splits: bool = False  # take crystalline rows from every split: the published, leaky choice
    splits: tuple[str, ...] = ("train",)
    sample_n: int | None = None  # sample the non-crystalline rows down to n (the published 1,850)
    sample_seed: int = 0
    stratified: bool = True  # sample each class in proportion
    features: tuple[str, ...] = (PIXELS,)  # dataset arrays side by side: pixels (published), feature families
    # what each tree's sample is balanced over: "class" (the published forest, 9 classes) or "label" (the raw
    # labels, so a class's crystalline rows do not crowd out its plain ones); scoring is by class either way
    balance: str = "class"

    @classmethod
    def from_config(cls, name: str, cfg: Mapping[str, Any] | None) -> TrainConfig:
        """A configuration from its job-file mapping; every key's type is checked, errors name the key."""
        where = f"train.configs.{name}"
        out = cls(name=name, **check_fields(dict(cfg or {}), _CONFIG_CHECKS, where))
        if out.crystal_all_splits and not out.crystal:
            raise ConfigError(f"{where}.crystal_all_splits: needs crystal: true")
        return out


_CONFIG_CHECKS = {
    "crystal": flag, "crystal_all_splits": flag, "splits": lambda v, k: texts(v, k, SPLITS),
    "sample_n": lambda v, k: None if v is None else integer(v, k, 1), "sample_seed": integer, "stratified": flag,
    "features": texts, "balance": lambda v, k: choice(v, k, ("class", "label")),
}


BUILTIN_CONFIGS = {"baseline": TrainConfig("baseline"), "crystal": TrainConfig("crystal", crystal=True)}


def select_rows(patches: pa.Table, cfg: TrainConfig) -> np.ndarray:
    """Dataset rows (sorted) that the configuration trains on."""
    split_ok = pc.is_in(patches["split"], pa.array(cfg.splits))
    crystal = patches["crystal"]
    base = np.flatnonzero(pc.and_(split_ok, pc.invert(crystal)).to_numpy(zero_copy_only=False))
    if cfg.sample_n is not None and cfg.sample_n < len(base):
        base = _sample(base, patches["cls"].to_numpy(zero_copy_only=False)[base], cfg)
    chosen = [base]
    if cfg.crystal:
        pick = crystal if cfg.crystal_all_splits else pc.and_(split_ok, crystal)
        chosen.append(np.flatnonzero(pick.to_numpy(zero_copy_only=False)))
    idx = np.concatenate(chosen)
    return np.sort(patches["row"].to_numpy()[idx])


def _sample(rows: np.ndarray, cls: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    rng = np.random.default_rng(cfg.sample_seed)
    if not cfg.stratified:
        return np.sort(rng.choice(rows, cfg.sample_n, replace=False))
    # largest-remainder allocation keeps every class's share and the exact total
    labels, counts = np.unique(cls, return_counts=True)
    take = apportion(cfg.sample_n, counts)
    picked = [rng.choice(rows[cls == lab], k, replace=False) for lab, k in zip(labels, take, strict=True)]
    return np.sort(np.concatenate(picked))


def dataset_hash(dataset: Dataset, rows: np.ndarray, features: tuple[str, ...] = (PIXELS,)) -> str:
    """What the model was fitted on: the dataset's plan, the rows, and the arrays (with their own keys)."""
    h = hashlib.sha256(dataset.read_manifest()["plan_hash"].encode())
    h.update(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
    if features != (PIXELS,):
        group = dataset.group()
        h.update(json.dumps([(f, group[f].attrs.get("key")) for f in features]).encode())
    return h.hexdigest()


def train(dataset_root: str | Path, cfg: TrainConfig, out: str | Path, client: Client,
          show_progress: Callable[[list], None] | None = None) -> dict:
    """Select, load, fit, save (skops + manifest). Returns the manifest."""
    dataset = Dataset(Path(dataset_root))
    patches = dataset.usable(dataset.rows())
    rows = select_rows(patches, cfg)
    if len(rows) == 0:
        raise ValueError(f"train config {cfg.name!r}: no rows in splits {list(cfg.splits)} of {dataset.root}")
    if cfg.crystal_all_splits:
        print(LEAKAGE_WARNING, file=sys.stderr)
    y = dataset.labels(rows)  # the client holds labels and row numbers, never the matrix
    for array in cfg.features:  # damaged chunks are refused here, once, naming the array, chunk and file
        dataset.check_rows(rows, array)
    strata = None
    if cfg.balance == "label":
        raw = dict(zip(patches["row"].to_pylist(), patches["label"].to_pylist(), strict=True))
        strata = np.array([raw[int(r)] for r in rows])
    from crystal_dask.forest import TrainingRows, fit_forest  # here: declaring steps needs no scikit-learn

    model = fit_forest(TrainingRows(str(dataset.root), cfg.features), rows, y, client, random_state=RANDOM_STATE,
                       strata=strata, show_progress=show_progress)
    manifest = {
        "config": {**asdict(cfg), "splits": list(cfg.splits), "features": list(cfg.features)},  # as JSON has it
        "dataset": str(dataset.root),
        "dataset_hash": dataset_hash(dataset, rows, cfg.features),
        "columns": dataset.columns(cfg.features) if cfg.features != (PIXELS,) else None,
        "train_rows": int(len(rows)),
        "crystal_rows": int(np.isin(rows, patches["row"].to_numpy()[patches["crystal"].to_numpy(
            zero_copy_only=False)]).sum()),
        "class_counts": {CLASSES[k]: int(v) for k, v in sorted(Counter(y.tolist()).items())},
        "leakage": LEAKAGE_WARNING if cfg.crystal_all_splits else None,
        "estimator": "imblearn.ensemble.BalancedRandomForestClassifier",
        "params": {k: v for k, v in model.get_params().items() if isinstance(v, (int, float, str, bool, type(None)))},
    }
    return save_model(model, Path(out), manifest)


# ----------------------------------------------------------------------------------------------- the stage
@dataclass(frozen=True)
class TrainSettings:
    """The job file's `train:` section: which corpus's dataset trains, and the configurations."""

    corpus: str
    configs: tuple[TrainConfig, ...]


def parse(cfg: Mapping[str, Any], exp: Experiment, where: str) -> TrainSettings:
    """Check the `train:` section against the experiment's corpora; errors name the key."""
    if cfg is None:
        raise ConfigError(f"{where}: is required")
    cfg = section(cfg, where, ("corpus", "configs"))
    corpus = text(need(cfg, "corpus", where), f"{where}.corpus")
    if corpus not in exp.corpora:
        raise ConfigError(f"{where}.corpus: {corpus!r} is not one of the corpora ({', '.join(exp.corpora)})")
    configs = []
    for name, c in section(cfg.get("configs") or dict.fromkeys(BUILTIN_CONFIGS), f"{where}.configs").items():
        if ":" in str(name):  # step names join their parts with ':' (train:<config>, evaluate:<set>:<config>)
            raise ConfigError(f"{where}.configs.{name}: a configuration's name cannot hold ':'")
        c = section(c, f"{where}.configs.{name}")
        base = BUILTIN_CONFIGS.get(name)
        if base is not None and "crystal" not in c:
            c["crystal"] = base.crystal
        configs.append(TrainConfig.from_config(name, c))
        feature_stage.check_features(configs[-1].features, exp, f"{where}.configs.{name}.features")
    return TrainSettings(corpus, tuple(configs))


def model_path(exp: Experiment, config: str) -> Path:
    """The model file this stage writes for a configuration (its manifest is beside it, .json)."""
    return exp.out / "models" / f"{config}.skops"


def step_name(config: str) -> str:
    """The step that trains configuration `config`; its product is the model file."""
    return f"{NAME}:{config}"


PCA_STEP = f"{NAME}:pca:fit"  # two colons: no configuration's step (train:<config>) can take this name


def dataset_reads(exp: Experiment, corpus: str) -> tuple[str, ...]:
    """The steps that make what a model reads of a corpus's dataset: its patches, its feature arrays (their ok
    flags decide which rows are usable) and, with `features.pca`, the pca array."""
    return (f"{extract.NAME}:{corpus}", f"{feature_stage.NAME}:{corpus}",
            *((PCA_STEP,) if exp.settings[feature_stage.SECTION].pca else ()))


def steps(ctx: Context) -> Iterator[Step]:
    exp = ctx.experiment
    settings: TrainSettings = exp.settings[SECTION]
    if exp.settings[feature_stage.SECTION].pca:
        yield feature_stage.pca_step(ctx, settings.corpus, PCA_STEP)
    reads = dataset_reads(exp, settings.corpus)
    for cfg in settings.configs:
        path = model_path(exp, cfg.name)
        yield Step(step_name(cfg.name), reads, {"config": asdict(cfg), "random_state": RANDOM_STATE},
                   (path, path.with_suffix(".json")),
                   lambda cfg=cfg, path=path: train(ctx.output(reads[0]).root, cfg, path, ctx.client,
                                                    ctx.show_progress), product=path)


def report_inputs(ctx: Context, results: Mapping[str, Any]) -> dict[str, Any]:
    """The configurations, in the job's order, and each one's model: its files, training summary and features (from
    its manifest); a model trained with crystalline rows of every split adds its leakage warning to the notes."""
    models = {}
    for cfg in ctx.experiment.settings[SECTION].configs:
        path = ctx.output(step_name(cfg.name))
        m = read_manifest(path)
        models[cfg.name] = {"train_rows": m["train_rows"], "class_counts": m["class_counts"],
                            "manifest": str(path.with_suffix(".json")), "leakage": m.get("leakage"), "model": str(path),
                            "features": list(model_arrays(m)), "columns": m.get("columns")}
    return {"configs": list(models), "models": models,
            "notes": [f"{n}: {m['leakage']}" for n, m in models.items() if m.get("leakage")]}
