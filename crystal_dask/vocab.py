"""Vocabulary shared by every stage: the 9 scored classes, the crystalline labels and how they map onto them, the
splits and their default shares."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from crystal_dask.checks import reject_unknown_keys

CLASSES: tuple[str, ...] = ("bckg", "norm", "artf", "null", "susp", "infl", "dcis", "nneo", "indc")
# Crystalline labels are scored as their characteristic class and keep a crystal flag.
CRYSTALLINE: dict[str, str] = {"cdcs": "dcis", "cnno": "nneo", "cidc": "indc"}
EMPTY_LABEL = "null"
SPLITS: tuple[str, ...] = ("train", "dev", "eval")
SPLIT_FRACTIONS: tuple[float, float, float] = (0.5, 0.25, 0.25)  # a corpus without split folders, by patient
EVAL_SPLITS: tuple[str, ...] = ("eval",)  # what an evaluation set scores unless told otherwise


class UnknownLabel(ValueError):
    """A label that is neither a class, a crystalline label nor a configured remap."""


@dataclass(frozen=True)
class LabelMap:
    """Resolves a raw annotation label to (class, crystal flag).

    The scored classes are always CLASSES (every stage, model and table indexes them); `remap` sends extra raw
    labels (a job's own vocabulary) to a known label; `crystalline` can add labels that count as crystalline for
    a class.
    """

    crystalline: Mapping[str, str] = field(default_factory=lambda: dict(CRYSTALLINE))
    remap: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for raw, cls in self.crystalline.items():
            if cls not in CLASSES:
                raise ValueError(f"crystalline label {raw!r} maps to {cls!r}, which is not a class")
        known = set(CLASSES) | set(self.crystalline)
        for raw, target in self.remap.items():
            if target not in known:
                raise ValueError(f"remap {raw!r} -> {target!r}: {target!r} is neither a class nor crystalline")

    def resolve(self, raw: str) -> tuple[str, bool]:
        """Return (class, crystal) for a raw label; raise UnknownLabel when it is not in the vocabulary."""
        label = raw.strip().lower() or EMPTY_LABEL
        label = self.remap.get(label, label)
        if label in self.crystalline:
            return self.crystalline[label], True
        if label in CLASSES:
            return label, False
        raise UnknownLabel(f"unknown label {raw!r} (known: {', '.join(self.vocabulary)})")

    @property
    def vocabulary(self) -> tuple[str, ...]:
        return (*CLASSES, *self.crystalline, *self.remap)

    @classmethod
    def from_config(cls, cfg: Mapping[str, object] | None) -> LabelMap:
        """Build from a job's `labels:` section: {remap: {raw: label}, crystalline: {raw: class}}."""
        cfg = dict(cfg or {})
        reject_unknown_keys(cfg, ("remap", "crystalline"), "labels")
        crystalline = {**CRYSTALLINE, **{k.lower(): v.lower() for k, v in dict(cfg.get("crystalline") or {}).items()}}
        remap = {k.lower(): v.lower() for k, v in dict(cfg.get("remap") or {}).items()}
        return cls(crystalline=crystalline, remap=remap)


DEFAULT_LABELS = LabelMap()
