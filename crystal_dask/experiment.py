"""A job file -> a checked Experiment: its corpora, labels, patch settings and every stage's own section.

Everything is checked here, once, before any cluster starts: keys, types and cross-references, each error naming
the file and the key. Stage sections (`train:`, `evaluate:`, ...) are parsed by the stage that owns them, which
the caller hands over (crystal_dask.stages.load_experiment): this module imports no stage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from crystal_dask.checks import ConfigError, integer, need, number, read_yaml, section, text, texts
from crystal_dask.vocab import LabelMap
from crystal_dask.wsi.patches import PatchSettings


class ExperimentError(ConfigError):
    """A job file value crystal_dask cannot use; the message names the file and the key."""


def _slide_size(value: Any, key: str) -> list[int]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ConfigError(f"{key}: must be [width, height] in pixels; got {value!r}")
    return [integer(v, key, 1) for v in value]


# corpora.<name>.synth: the arguments of synthetic.corpus.generate_corpus a job may set, each with its check
SYNTH_CHECKS = {
    "flavour": text, "patients": lambda v, k: integer(v, k, 1), "slides_per_patient": lambda v, k: integer(v, k, 1),
    "regions_per_slide": lambda v, k: integer(v, k, 0), "crystalline": lambda v, k: integer(v, k, 0),
    "slide_size": _slide_size, "mpp": lambda v, k: number(v, k, positive=True), "seed": integer,
    "xml_fraction": number,
}
CORE_KEYS = ("name", "out", "corpora", "labels", "extract", "notes")


@dataclass(frozen=True)
class CorpusSpec:
    name: str
    path: Path | None  # a corpus on disk ...
    synth: Mapping[str, Any] | None  # ... or one to generate
    split_seed: int
    extract: PatchSettings


@dataclass(frozen=True)
class Experiment:
    """One job file, checked: what the stages run."""

    name: str
    source: Path
    out: Path
    corpora: Mapping[str, CorpusSpec]
    labels: LabelMap
    settings: Mapping[str, Any] = field(default_factory=dict)  # stage section -> that stage's parsed settings
    notes: tuple[str, ...] = ()


def read_file(path: Path) -> dict[str, Any]:
    """The job file as a mapping; an unreadable file or bad YAML is an ExperimentError naming the file."""
    try:
        cfg = read_yaml(path, ExperimentError)
    except (OSError, UnicodeDecodeError) as exc:
        raise ExperimentError(f"{path}: cannot read the job file: {exc}") from None
    try:
        return section(cfg, "(top level)")
    except ConfigError as exc:
        raise ExperimentError(f"{path}: {exc}") from None


def output_folder(path: str | Path, out: str | Path | None = None) -> Path:
    """Where a job file's outputs go, without checking the rest of the file (for `crystal-dask status`)."""
    path = Path(path)
    cfg = read_file(path)
    return Path(out or cfg.get("out") or Path("runs") / str(cfg.get("name", path.stem))).resolve()


class Section(Protocol):
    """A job-file section and its check (a stage module; crystal_dask.stages.sections() lists them)."""

    SECTION: str

    def parse(self, cfg: Any, exp: Experiment, where: str) -> Any: ...


def load_experiment(path: str | Path, out: str | Path | None = None, *, sections: Sequence[Section]) -> Experiment:
    """Read and check a job file; every error names the file and the key. Relative paths in the file are taken
    from the folder the command runs in; `out` overrides the file's `out`. `sections`, in run order, parse their
    own parts (crystal_dask.stages.load_experiment hands over the stages')."""
    path = Path(path)
    cfg = read_file(path)
    stages = list(sections)
    try:
        section(cfg, "(top level)", (*CORE_KEYS, *(s.SECTION for s in stages)))
        exp = _core(path, cfg, out)
        for s in stages:  # in run order: a stage's parse may check against an earlier stage's settings
            exp = replace(exp, settings={**exp.settings, s.SECTION: s.parse(cfg.get(s.SECTION), exp, s.SECTION)})
    except ConfigError as exc:
        raise ExperimentError(f"{path}: {exc}") from None
    return exp


def _core(path: Path, cfg: dict[str, Any], out: str | Path | None) -> Experiment:
    name = text(cfg.get("name", path.stem), "name")
    notes = texts(cfg.get("notes", []), "notes")
    out_value = out or (text(cfg["out"], "out") if cfg.get("out") is not None else Path("runs") / name)
    labels_cfg = section(cfg.get("labels"), "labels", ("remap", "crystalline"))
    for key in ("remap", "crystalline"):
        for raw, target in section(labels_cfg.get(key), f"labels.{key}").items():
            text(target, f"labels.{key}.{raw}")
    try:
        labels = LabelMap.from_config(labels_cfg)
    except ValueError as exc:
        raise ConfigError(f"labels: {exc}") from None
    base_extract = section(cfg.get("extract"), "extract")

    corpora: dict[str, CorpusSpec] = {}
    for cname, c in section(need(cfg, "corpora", ""), "corpora").items():
        where = f"corpora.{cname}"
        c = section(c, where, ("path", "synth", "split_seed", "extract"))
        if ("path" in c) == ("synth" in c):
            raise ConfigError(f"{where}: give exactly one of path (a corpus on disk) or synth (a corpus to generate)")
        synth = None
        if "synth" in c:
            synth = section(c["synth"], f"{where}.synth", SYNTH_CHECKS)
            for key, value in synth.items():
                SYNTH_CHECKS[key](value, f"{where}.synth.{key}")
        corpus_path = None
        if "path" in c:
            corpus_path = Path(text(c["path"], f"{where}.path")).expanduser()
            if not corpus_path.is_dir():
                raise ConfigError(f"{where}.path: {corpus_path} is not a folder (fill in the path to the corpus root)")
        try:
            settings = PatchSettings.from_config({**base_extract, **section(c.get("extract"), f"{where}.extract")})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}.extract: {exc}") from None
        split_seed = integer(c.get("split_seed", 0), f"{where}.split_seed")
        corpora[cname] = CorpusSpec(cname, corpus_path, synth, split_seed, settings)
    if not corpora:
        raise ConfigError("corpora: at least one corpus is needed")
    return Experiment(name=name, source=path.resolve(), out=Path(out_value).resolve(), corpora=corpora,
                      labels=labels, notes=notes)

