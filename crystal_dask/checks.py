"""Checks shared by the configuration sections (extract, train configs, labels, cluster), so each names keys
and judges values alike."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def is_integer(value: Any) -> bool:
    """An int that is not a bool: YAML's true/false load as bools, which Python also counts as ints."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int (not a bool) or a float."""
    return is_integer(value) or isinstance(value, float)


def reject_unknown_keys(cfg: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """Raise ValueError naming the section and every key it does not know, with the keys it does."""
    allowed = sorted(allowed)
    unknown = sorted(set(cfg) - set(allowed))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(allowed)}")
