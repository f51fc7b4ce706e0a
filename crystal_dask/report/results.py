"""The results dict a report is written from (the report stage writes it as <out>/results.json), and its check.

    {"job": str, "classes": [codes], "configs": [baseline, other, ...],
     "sets": {set: {config: {"confusion": [[int]], "n": int, "predictions": path | None, "dataset": root}}},
     "models": {config: {"train_rows": int, "class_counts": {code: int}, "manifest": path,
                         "model": path, "features": [family], "columns": [name] | None}},
     "notes": [str], "infer": {set: {config: summary}} (only when an infer stage ran),
     "calcification": {set: [{cls, crystal, rows, with_deposit, fraction}]} (only when a model uses that family)}

`dataset`, `model`, `features` and `columns` are optional (results written before them still report). The first
config is the baseline; every other config is compared with it on every set.
"""

from __future__ import annotations

import re
from typing import Any


def check_results(results: dict[str, Any]) -> None:
    """Fail early, naming the key, on a results dict that does not have the documented shape."""
    for key in ("job", "classes", "configs", "sets", "models", "notes"):
        if key not in results:
            raise ValueError(f"results: missing key {key!r}")
    if not results["configs"]:
        raise ValueError("results['configs']: at least one configuration is needed")
    for set_name, by_config in results["sets"].items():
        for config in results["configs"]:
            entry = by_config.get(config)
            if entry is None:
                raise ValueError(f"results['sets'][{set_name!r}]: configuration {config!r} is missing")
            for key in ("confusion", "n"):
                if key not in entry:
                    raise ValueError(f"results['sets'][{set_name!r}][{config!r}]: missing key {key!r}")


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)

