"""The one configuration checker: every section of a job file or cluster.yaml is checked here, at load, for its
keys and the types of its values, and every error names the key (the loader adds the file).

Types are strict where YAML is loose: a boolean is a YAML true/false only (the string "false" is not false), an
integer is not a float or a bool, a list is not a string.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value crystal_dask cannot use; the message starts with the key (and, at the edge, the file)."""


def read_yaml(path: Path, error: type[ConfigError] = ConfigError) -> Any:
    """The YAML document in `path` (null when empty). A syntax error is one line, `<file>:<line>:<column>: not
    valid YAML: <problem>`: PyYAML's own message spans several lines (the offending line quoted, a caret below).
    An unreadable file is left to the caller (an OSError or UnicodeDecodeError). safe_load raises only these two
    kinds of YAMLError."""
    source = path.read_text(encoding="utf-8")
    try:
        return yaml.safe_load(source)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or type(exc).__name__
        if exc.context and exc.problem and exc.context_mark is not None:  # where the broken construct began
            problem += f" ({exc.context} started at {exc.context_mark.line + 1}:{exc.context_mark.column + 1})"
        at = f"{mark.line + 1}:{mark.column + 1}" if mark is not None else "1:1"
    except yaml.reader.ReaderError as exc:  # a character YAML refuses, e.g. a NUL: marked by its offset only
        before = source[:exc.position]
        at = f"{before.count(chr(10)) + 1}:{exc.position - before.rfind(chr(10))}"
        problem = f"unacceptable character #x{exc.character:04x}: {exc.reason}"
    raise error(f"{path}:{at}: not valid YAML: {problem}") from None


def is_integer(value: Any) -> bool:
    """An int that is not a bool: YAML's true/false load as bools, which Python also counts as ints."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int (not a bool) or a float."""
    return is_integer(value) or isinstance(value, float)


def reject_unknown_keys(cfg: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """Raise ConfigError naming the section and every key it does not know, with the keys it does."""
    allowed = sorted(allowed)
    unknown = sorted(map(str, set(cfg) - set(allowed)))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(allowed)}")


def section(value: Any, where: str, allowed: Iterable[str] | None = None) -> dict[str, Any]:
    """A mapping with string keys (null is empty), its keys checked against `allowed` when given."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{where}: must be a mapping with text keys; got {value!r}")
    if allowed is not None:
        reject_unknown_keys(value, allowed, where)
    return dict(value)


def need(cfg: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in cfg:
        raise ConfigError(f"{where}.{key}: is required" if where else f"{key}: is required")
    return cfg[key]


def integer(value: Any, key: str, low: int | None = None) -> int:
    if not is_integer(value) or (low is not None and value < low):
        raise ConfigError(f"{key}: must be an integer{f' >= {low}' if low is not None else ''}; got {value!r}")
    return value


def number(value: Any, key: str, positive: bool = False) -> float:
    if not is_number(value) or not math.isfinite(value) or (positive and value <= 0):
        raise ConfigError(f"{key}: must be a {'positive ' if positive else ''}number; got {value!r}")
    return value


def flag(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: must be true or false (a YAML boolean); got {value!r}")
    return value


def text(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: must be a non-empty string; got {value!r}")
    return value


def choice(value: Any, key: str, options: Iterable[str]) -> str:
    options = tuple(options)
    if value not in options:
        raise ConfigError(f"{key}: must be one of {', '.join(options)}; got {value!r}")
    return value


def texts(value: Any, key: str, choices: Iterable[str] | None = None) -> tuple[str, ...]:
    """A list of strings (a bare string is refused, not split into letters), each one of `choices` when given."""
    if isinstance(value, str) or not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key}: must be a list of strings; got {value!r}")
    if choices is not None:
        choices = tuple(choices)
        for v in value:
            if v not in choices:
                raise ConfigError(f"{key}: {v!r} is not one of {', '.join(choices)}")
    return tuple(value)


def check_fields(cfg: Mapping[str, Any], checks: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check each present key with its checker (value, key) -> value; unknown keys are refused."""
    reject_unknown_keys(cfg, checks, where)
    return {k: checks[k](v, f"{where}.{k}") for k, v in cfg.items()}


def seconds(value: Any, key: str) -> float:
    """A positive number of seconds, as a float."""
    if not is_number(value) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{key}: must be a number of seconds > 0; got {value!r}")
    return float(value)


def byte_size(value: Any, key: str) -> str:
    """A size dask understands ('4GiB', '2GB'), kept as written."""
    from dask.utils import parse_bytes  # here, not at the top: checks stays light for `crystal-dask status`

    try:
        parse_bytes(text(value, key))
    except (ValueError, ConfigError):
        raise ConfigError(f"{key}: must be a size like '4GiB' or '2GB'; got {value!r}") from None
    return value


def byte_size_or_auto(value: Any, key: str) -> str:
    return value if value == "auto" else byte_size(value, key)


_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^:\s/]*):\d{1,5}$")


def host_port(value: Any, key: str) -> str:
    """'host:port' or ':port'."""
    if not isinstance(value, str) or not _HOST_PORT.match(value):
        raise ConfigError(f"{key}: must be 'host:port' or ':port' (port 0 picks a free one); got {value!r}")
    return value


_WALLTIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")


def walltime(value: Any, key: str) -> str:
    """A batch system's time limit: 'HH:MM:SS', 'MM:SS', 'D-HH:MM:SS' (quoted: YAML reads 01:30 as a number)."""
    if not isinstance(value, str) or not _WALLTIME.match(value):
        raise ConfigError(f"{key}: must be a quoted time like '01:30:00' or '1-00:00:00'; got {value!r}")
    return value


def at_least(low: int):
    """An integer checker with a lower bound, for tables of (checker(value, key), default)."""
    def check(value: Any, key: str) -> int:
        return integer(value, key, low)

    return check
