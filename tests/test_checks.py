"""config.py: unknown configuration keys are refused with the section, every unknown key and the allowed ones."""

from __future__ import annotations

import re

import pytest

from crystal_dask.checks import reject_unknown_keys


def test_message_names_section_every_unknown_key_and_the_allowed_keys():
    cfg = {"level": 0, "windw_size": 224, "chunk_rows": 64, "min_sid": 3}
    with pytest.raises(ValueError) as info:
        reject_unknown_keys(cfg, ("level", "window_size", "chunk_rows", "min_side"), "extract")
    assert str(info.value) == ("extract: unknown key(s) ['min_sid', 'windw_size']; "
                               "allowed: chunk_rows, level, min_side, window_size")


@pytest.mark.parametrize("allowed", [{"a", "b"}, ["b", "a"], (k for k in "ab"), {"a": 1, "b": 2}.keys()])
def test_allowed_may_be_any_iterable(allowed):
    with pytest.raises(ValueError, match=re.escape("train config: unknown key(s) ['c']; allowed: a, b")):
        reject_unknown_keys({"a": 1, "c": 3}, allowed, "train config")


@pytest.mark.parametrize("cfg", [{}, {"a": 1}, {"a": 1, "b": None}])
def test_known_keys_and_empty_mapping_pass(cfg):
    assert reject_unknown_keys(cfg, ["a", "b"], "labels") is None


def test_nothing_allowed_refuses_any_key():
    with pytest.raises(ValueError, match=re.escape("labels: unknown key(s) ['x']; allowed: ")):
        reject_unknown_keys({"x": 1}, [], "labels")
    reject_unknown_keys({}, [], "labels")
