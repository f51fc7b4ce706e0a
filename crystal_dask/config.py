"""Checks shared by the configuration sections (extract, train configs, labels), so each names keys alike."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def reject_unknown_keys(cfg: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """Raise ValueError naming the section and every key it does not know, with the keys it does."""
    allowed = sorted(allowed)
    unknown = sorted(set(cfg) - set(allowed))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(allowed)}")
