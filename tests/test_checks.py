"""checks.py: unknown configuration keys are refused with the section, every unknown key and the allowed ones; a
YAML syntax error in a job file or cluster.yaml is one line naming file:line:column, through the real CLI too."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from crystal_dask.checks import ConfigError, read_yaml, reject_unknown_keys
from tests.helpers import child_env
from tests.helpers.jobs import TINY, write_job

# malformed YAML of each kind PyYAML's safe_load raises (scanner, parser, composer, constructor, reader) -> where
# the error is and what it says
MALFORMED = [
    ("name: x\n  out: y\n", "2:6", "mapping values are not allowed here"),
    ("corpora: [fcbr\nname: x\n", "2:5",
     "expected ',' or ']', but got ':' (while parsing a flow sequence started at 1:10)"),
    ("name: *nowhere\n", "1:7", "found undefined alias 'nowhere'"),
    ("name: !!python/object:os.system x\n", "1:7", "could not determine a constructor for the tag"),
    ("name: x\nout: \"y\x00\"\n", "2:8", "unacceptable character #x0000: special characters are not allowed"),
    ("\tname: x\n", "1:1", "found character '\\t' that cannot start any token"),
]


@pytest.mark.parametrize(("text", "where", "problem"), MALFORMED)
def test_a_yaml_syntax_error_is_one_line_naming_file_line_and_column(tmp_path, text, where, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        read_yaml(path)
    assert str(err.value).startswith(f"{path}:{where}: not valid YAML: {problem}"), str(err.value)
    assert "\n" not in str(err.value)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crystal_dask.cli", *args], capture_output=True, text=True,
                          env=child_env(), timeout=900)


def test_malformed_job_and_cluster_files_are_one_line_on_stderr_through_the_cli(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("name: tiny\ncorpora: [fcbr\nout: x\n")
    done = _cli("run", str(job))
    assert done.returncode == 1 and done.stderr.splitlines() == [
        f"crystal-dask: error: {job}:3:4: not valid YAML: expected ',' or ']', but got ':' "
        "(while parsing a flow sequence started at 2:10)"], done.stderr

    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("kind: local\n  workers: 2\n")
    done = _cli("run", str(write_job(tmp_path, {**TINY, "out": str(tmp_path / "out")})), "--cluster", str(cluster))
    assert done.returncode == 1 and done.stderr.splitlines() == [
        f"crystal-dask: error: {cluster}:2:10: not valid YAML: mapping values are not allowed here"], done.stderr


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
