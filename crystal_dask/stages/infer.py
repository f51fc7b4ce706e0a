"""Stage infer: the job file's `infer:` section (`parse`) and its steps, one per (set, trained configuration):
whole-slide inference of a corpus's slides (crystal_dask/infer/) into <out>/infer/<set>/<config>/ (see
crystal_dask.infer.run.infer_slides for the files).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crystal_dask.checks import ConfigError, check_fields, flag, integer, need, number, section, text, texts
from crystal_dask.experiment import Experiment
from crystal_dask.infer.run import infer_slides, prune_slides, slides_from_regions
from crystal_dask.infer.settings import InferSettings
from crystal_dask.infer.tasks import FORMAT_VERSION
from crystal_dask.stages.base import Context, Step
from crystal_dask.store.dataset import PIXELS
from crystal_dask.vocab import CLASSES, SPLITS
from crystal_dask.wsi.patches import WINDOW_UNITS

NAME = "infer"
SECTION = "infer"
log = logging.getLogger("crystal_dask.pipeline")


def _positive(v: Any, k: str) -> float:
    return number(v, k, positive=True)


def _fraction(v: Any, k: str) -> float:
    v = number(v, k)
    if not 0 <= v <= 1:
        raise ConfigError(f"{k}: must be a number in [0, 1]; got {v!r}")
    return v


_SETTING_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "tissue_threshold": _fraction, "window_size": _positive, "window_step": _positive,
    "window_unit": lambda v, k: texts([v], k, WINDOW_UNITS)[0] if isinstance(v, str) else text(v, k),
    "magnification": _positive, "heatmap_class": lambda v, k: texts([v], k, CLASSES)[0] if isinstance(v, str)
    else text(v, k),
    "block": lambda v, k: integer(v, k, 1), "min_overlap": _fraction,
    "thumbnail_side": lambda v, k: integer(v, k, 64), "skip_errors": flag,
}


@dataclass(frozen=True)
class InferSet:
    """One `infer.sets.<name>`: the slides of a corpus's splits, through some of the trained models."""

    name: str
    corpus: str
    splits: tuple[str, ...] = SPLITS
    configs: tuple[str, ...] | None = None  # None: every trained configuration


@dataclass(frozen=True)
class InferSection:
    sets: tuple[InferSet, ...] = ()
    settings: InferSettings = field(default_factory=InferSettings)


def parse(cfg: Mapping[str, Any] | None, exp: Experiment, where: str) -> InferSection:
    """Check the optional `infer:` section: `sets.<name>: {corpus, splits, configs}` and the InferSettings keys."""
    if cfg is None:
        return InferSection()
    cfg = section(cfg, where, ("sets", *_SETTING_CHECKS))
    values = check_fields({k: v for k, v in cfg.items() if k != "sets"}, _SETTING_CHECKS, where)
    try:
        settings = InferSettings(**values)
    except ValueError as exc:
        raise ConfigError(f"{where}.{exc}") from None
    sets = []
    for name, s in section(need(cfg, "sets", where), f"{where}.sets").items():
        at = f"{where}.sets.{name}"
        s = section(s, at, ("corpus", "splits", "configs"))
        corpus = text(need(s, "corpus", at), f"{at}.corpus")
        if corpus not in exp.corpora:
            raise ConfigError(f"{at}.corpus: {corpus!r} is not one of the corpora ({', '.join(exp.corpora)})")
        configs = texts(s["configs"], f"{at}.configs") if s.get("configs") is not None else None
        sets.append(InferSet(name, corpus, texts(s.get("splits", list(SPLITS)), f"{at}.splits", SPLITS), configs))
        _configs(exp, sets[-1])  # checked at load, against the train section (parsed before this one)
    return InferSection(tuple(sets), settings)


# ----------------------------------------------------------------------------------------------- the stage
def output_dir(exp: Experiment, set_name: str, config: str) -> Path:
    return exp.out / "infer" / set_name / config


def step_name(set_name: str, config: str) -> str:
    """The step that infers set `set_name`'s slides with configuration `config`; its product is its output folder."""
    return f"{NAME}:{set_name}:{config}"


def _configs(exp: Experiment, s: InferSet) -> list[str]:
    from crystal_dask.stages import train
    from crystal_dask.stages.features import PCA

    configs = {c.name: c for c in exp.settings[train.SECTION].configs}
    unknown = [c for c in s.configs or () if c not in configs]
    if unknown:
        raise ConfigError(f"infer.sets.{s.name}.configs: {unknown} are not train configurations ({', '.join(configs)})")
    chosen = list(configs) if s.configs is None else list(s.configs)
    for name in chosen:  # what window_matrix can make of a slide's windows: pixels alone, or families alone
        arrays = configs[name].features
        if arrays != (PIXELS,) and (PIXELS in arrays or PCA in arrays):
            raise ConfigError(f"infer.sets.{s.name}.configs: {name!r} trains on {list(arrays)}; whole-slide windows "
                              f"are described by pixels alone or by handcrafted families only (no pca)")
    return chosen


def steps(ctx: Context) -> Iterator[Step]:
    from crystal_dask.stages import scan, train

    exp = ctx.experiment
    sec: InferSection = exp.settings.get(SECTION) or InferSection()
    model_data = train.dataset_reads(exp, exp.settings[train.SECTION].corpus)  # model_context reads its dataset
    for s in sec.sets:
        for config in _configs(exp, s):
            out = output_dir(exp, s.name, config)
            reads = (f"{scan.NAME}:{s.corpus}", train.step_name(config), *model_data)

            def run(s=s, out=out, reads=reads) -> None:
                entries = slides_from_regions(scan.read_output(ctx.output(reads[0])).regions, s.splits)
                prune_slides(out, entries)
                m = infer_slides(entries, ctx.output(reads[1]), out, ctx.client, sec.settings, corpus=s.corpus,
                                 show_progress=ctx.show_progress)
                log.info("infer %s: %s", out, json.dumps({k: m[k] for k in ("slides_done", "rejects", "windows")}))

            settings = {"splits": list(s.splits), "infer": asdict(sec.settings), "format_version": FORMAT_VERSION}
            yield Step(step_name(s.name, config), reads, settings, (out / "infer.json", out / "summary.parquet"),
                       run, product=out)


def report_inputs(ctx: Context, results: Mapping[str, Any]) -> dict[str, Any]:
    """set -> config -> {slides_in, slides_done, rejects, windows, score, window_source, summary}: every infer run;
    nothing when the job infers nothing (results.json of other jobs has no `infer` key)."""
    exp = ctx.experiment
    sec: InferSection = exp.settings.get(SECTION) or InferSection()
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for s in sec.sets:
        for config in _configs(exp, s):
            folder = ctx.output(step_name(s.name, config))
            m = json.loads((folder / "infer.json").read_text())
            out.setdefault(s.name, {})[config] = {k: m[k] for k in ("slides_in", "slides_done", "rejects", "windows",
                                                                    "score", "window_source")} | {
                "summary": str(folder / "summary.parquet")}
    return {"infer": out} if out else {}
