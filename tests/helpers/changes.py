"""A small job and one single change per job-file section, with the steps each change must rerun: shared by the
dry-run tests (no cluster) and the property test (a rerun after the change equals a clean run of the changed job).

The job has a generated corpus (`fcbr`) and one on disk without split folders (`fox`, the Fox Chase layout, so
`split_seed` decides its patients' splits); training is on `fox`, the evaluation set too, and whole-slide inference
runs one model on the `fcbr` corpus's eval slides.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

STEPS = ("synth:fcbr", "scan:fcbr", "scan:fox", "extract:fcbr", "extract:fox", "features:fcbr", "features:fox",
         "train:baseline", "train:crystal", "evaluate:FOX:baseline", "evaluate:FOX:crystal", "infer:slides:baseline",
         "report")


def fox_corpus(root: Path) -> Path:
    """A corpus on disk in the Fox Chase layout (no split folders)."""
    from crystal_dask.synthetic.corpus import generate_corpus

    generate_corpus(root, flavour="fcbr", patients=8, slides_per_patient=1, regions_per_slide=8, crystalline=24,
                    slide_size=(2000, 1500), seed=5, splits=None)
    return root


def job(out: Path, fox: Path) -> dict[str, Any]:
    return {
        "name": "changes", "out": str(out),
        "corpora": {
            "fcbr": {"synth": {"flavour": "fcbr", "patients": 3, "slides_per_patient": 1, "regions_per_slide": 4,
                               "slide_size": [1500, 1200], "seed": 3}},
            "fox": {"path": str(fox), "split_seed": 0},
        },
        "extract": {"chunk_rows": 16},
        "train": {"corpus": "fox"},
        "evaluate": {"sets": {"FOX": {"corpus": "fox", "splits": ["dev", "eval"]}}},
        "infer": {"sets": {"slides": {"corpus": "fcbr", "splits": ["eval"], "configs": ["baseline"]}}},
    }


def _set(path: str, value: Any) -> Callable[[dict], dict]:
    """A change: the job with the value at a dotted path set (its parents made when absent)."""

    def change(cfg: dict) -> dict:
        cfg = copy.deepcopy(cfg)
        *parents, last = path.split(".")
        node = cfg
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
        return cfg

    return change


_ALL_BUT_SYNTH = set(STEPS) - {"synth:fcbr"}
_FROM_FEATURES = set(STEPS) - {"synth:fcbr", "scan:fcbr", "scan:fox", "extract:fcbr", "extract:fox"}

# name -> (the change, the steps it must rerun: no more, no fewer)
CHANGES: dict[str, tuple[Callable[[dict], dict], set[str]]] = {
    "synth seed": (_set("corpora.fcbr.synth.seed", 7),
                   {"synth:fcbr", "scan:fcbr", "extract:fcbr", "features:fcbr", "infer:slides:baseline", "report"}),
    "split_seed": (_set("corpora.fox.split_seed", 1), set(STEPS) - {"synth:fcbr", "scan:fcbr", "extract:fcbr",
                                                                    "features:fcbr"}),
    "labels.remap": (_set("labels.remap", {"nneo": "norm"}), _ALL_BUT_SYNTH),
    "labels.crystalline": (_set("labels.crystalline", {"cnno": "norm"}), _ALL_BUT_SYNTH),
    "extract": (_set("extract.patch_size", 128), _ALL_BUT_SYNTH - {"scan:fcbr", "scan:fox"}),
    "feature families": (_set("features.families", ["stain"]), _FROM_FEATURES),
    "train configuration": (_set("train.configs", {"baseline": {}, "crystal": {"balance": "label"}}),
                            {"train:crystal", "evaluate:FOX:crystal", "report"}),
    "evaluation splits": (_set("evaluate.sets.FOX.splits", ["eval"]),
                          {"evaluate:FOX:baseline", "evaluate:FOX:crystal", "report"}),
    "infer setting": (_set("infer.tissue_threshold", 0.3), {"infer:slides:baseline", "report"}),
}
