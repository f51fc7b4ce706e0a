"""Per-patch data for the paired statistics (McNemar, patient bootstrap) and the crystalline split: read from the
predictions tables (store/schema.py PREDICTIONS) the results name."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from crystal_dask.store.schema import PREDICTIONS, read_table


def load_paired(results: dict[str, Any]) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Per-patch correctness and patients from the predictions tables named in `results` (PREDICTIONS schema).

    Returns {set: {config: {"correct", "patients", "crystal": arrays}}} ordered by the tables' `row`, for
    the set/config pairs that name a predictions file. Within a set every table must hold the same rows.
    """
    paired: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for set_name, by_config in results["sets"].items():
        rows_seen: np.ndarray | None = None
        for config, entry in by_config.items():
            path = entry.get("predictions")
            if not path:
                continue
            table = read_table(path, PREDICTIONS).sort_by("row")
            rows = table["row"].to_numpy()
            if rows_seen is not None and not np.array_equal(rows, rows_seen):
                raise ValueError(f"{path}: rows differ from the other predictions of set {set_name!r}")
            rows_seen = rows
            paired.setdefault(set_name, {})[config] = {
                "correct": table["y_true"].to_numpy() == table["y_pred"].to_numpy(),
                "patients": table["patient"].to_numpy(zero_copy_only=False).astype(str),
                "crystal": table["crystal"].to_numpy(zero_copy_only=False).astype(bool),
            }
    return paired


def paired_for(paired: dict[str, Any], set_name: str, base: str, config: str) -> dict[str, Any]:
    """Arguments of compare() for the paired statistics of one set, when both configurations have data."""
    by_config = paired.get(set_name, {})
    if base not in by_config or config not in by_config:
        return {}
    a, b = by_config[base], by_config[config]
    if not np.array_equal(np.asarray(a["patients"]), np.asarray(b["patients"])):
        raise ValueError(f"paired[{set_name!r}]: patients of {base!r} and {config!r} differ (rows not aligned)")
    return {"correct_a": np.asarray(a["correct"]), "correct_b": np.asarray(b["correct"]),
            "patients": np.asarray(a["patients"])}


def crystalline_split(by_config: dict[str, Any], configs: Sequence[str]) -> dict[str, Any]:
    """Accuracy on the crystalline rows and on the rest, per configuration (when every one has per-row data)."""
    if not all("crystal" in by_config.get(c, {}) for c in configs):
        return {}
    out = {}
    for c in configs:
        correct, crystal = np.asarray(by_config[c]["correct"]), np.asarray(by_config[c]["crystal"])
        out[c] = {part: {"n": int(mask.sum()), "correct": int(correct[mask].sum()),
                         "accuracy": float(correct[mask].mean()) if mask.any() else None}
                  for part, mask in (("crystalline", crystal), ("other", ~crystal))}
    return out
