"""A tiny job (two small generated corpora, the default configurations) for tests that run whole jobs."""

from __future__ import annotations

from pathlib import Path

import yaml

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
