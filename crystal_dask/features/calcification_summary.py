"""Did calcification signal reach the dataset? The fraction of rows whose calcification columns are non-zero
(at least one deposit found), per class and per crystalline / other row.

A row "has a deposit" when its calcification vector differs from the family's no-deposit vector (every column 0
except the nearest-neighbour sentinel), i.e. when `calc_count_per_mm2` > 0. Read it beside the forest's
importances: a family whose columns are empty on the crystalline rows cannot be what the forest learnt from.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from crystal_dask.features import calcification
from crystal_dask.store.dataset import Dataset

FAMILY = "calcification"


def nonzero_by_group(cls: Sequence[str], crystal: Sequence[bool], matrix: np.ndarray) -> list[dict[str, Any]]:
    """One entry per (class, crystalline) pair present, sorted: rows, rows with a deposit, and their fraction.

    `matrix` is (n, len(calcification.COLUMNS)), one row per entry of `cls` / `crystal`.
    """
    cls, crystal = np.asarray(cls, dtype=object), np.asarray(crystal, dtype=bool)
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.shape != (len(cls), len(calcification.COLUMNS)) or len(crystal) != len(cls):
        raise ValueError(f"expected {len(cls)} rows of {len(calcification.COLUMNS)} calcification columns and "
                         f"{len(cls)} crystal flags, got {matrix.shape} and {len(crystal)}")
    has = (matrix != calcification.EMPTY).any(axis=1)
    out = []
    for c, x in sorted(set(zip(cls.tolist(), crystal.tolist(), strict=True))):
        pick = (cls == c) & (crystal == x)
        n, k = int(pick.sum()), int(has[pick].sum())
        out.append({"cls": c, "crystal": bool(x), "rows": n, "with_deposit": k, "fraction": k / n})
    return out


def from_dataset(root: str | Path, splits: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """`nonzero_by_group` over a features dataset's usable rows (optionally only the given splits).

    KeyError (naming the dataset) when it has no calcification array.
    """
    ds = Dataset(Path(root))
    table = ds.usable(ds.rows())
    if splits is not None:
        table = table.filter(pc.is_in(table["split"], value_set=pa.array(list(splits))))
    rows = table["row"].to_numpy()
    return nonzero_by_group(table["cls"].to_pylist(), table["crystal"].to_pylist(), ds.matrix(rows, FAMILY))


def markdown(groups: Sequence[dict[str, Any]]) -> list[str]:
    """A markdown table (lines, the report's table writer's, blank line after) of `nonzero_by_group`'s entries: one
    line per class, crystalline and other."""
    from crystal_dask.report.markdown import table

    by_cls: dict[str, dict[bool, dict[str, Any]]] = {}
    for g in groups:
        by_cls.setdefault(g["cls"], {})[g["crystal"]] = g

    def cell(g: dict[str, Any] | None) -> str:
        return "–" if g is None else f"{100 * g['fraction']:.0f}% ({g['with_deposit']}/{g['rows']})"

    return table(("class", "crystalline rows with a deposit", "other rows with a deposit"),
                 [(c, cell(v.get(True)), cell(v.get(False))) for c, v in sorted(by_cls.items())], text=(0, 1, 2))
