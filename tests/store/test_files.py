"""files.py: atomic writes leave a file whole or absent, never half written, and no temporary file behind."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from crystal_dask.store.files import write_atomic, write_json


def listing(root: Path) -> list[str]:
    """Every path under root (hidden temporaries included), relative, sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_bytes_are_written_whole(tmp_path: Path):
    data = bytes(range(256)) * 1000
    path = write_atomic(tmp_path / "a.bin", data)
    assert path == tmp_path / "a.bin"
    assert path.read_bytes() == data
    assert listing(tmp_path) == ["a.bin"]


def test_text_is_written_as_utf8(tmp_path: Path):
    path = write_atomic(str(tmp_path / "a.txt"), "crâne ✓\nline 2")
    assert isinstance(path, Path)
    assert path.read_bytes() == b"cr\xc3\xa2ne \xe2\x9c\x93\nline 2"


def test_parents_are_created(tmp_path: Path):
    path = write_atomic(tmp_path / "x" / "y" / "z" / "f", b"1")
    assert path.read_bytes() == b"1"
    assert listing(tmp_path) == ["x", "x/y", "x/y/z", "x/y/z/f"]


def test_overwrite_replaces_the_file_instead_of_writing_into_it(tmp_path: Path):
    path = write_atomic(tmp_path / "f", b"old content, longer than the new")
    alias = tmp_path / "alias"
    os.link(path, alias)  # a reader holding the old file keeps seeing it whole
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert alias.read_bytes() == b"old content, longer than the new"
    assert listing(tmp_path) == ["alias", "f"]


def test_a_stale_temporary_of_this_thread_is_taken_over(tmp_path: Path):
    stale = tmp_path / f".f.{os.getpid()}-{threading.get_ident()}.tmp"
    stale.write_bytes(b"garbage of a killed writer " * 10)
    write_atomic(tmp_path / "f", b"whole")
    assert (tmp_path / "f").read_bytes() == b"whole"
    assert listing(tmp_path) == ["f"]


@pytest.mark.parametrize(("data", "error"), [("bad surrogate \ud800", UnicodeEncodeError), (12345, TypeError)])
def test_data_that_cannot_be_written_leaves_the_target_unchanged(tmp_path: Path, data, error):
    path = write_atomic(tmp_path / "f", b"before")
    with pytest.raises(error):
        write_atomic(path, data)
    assert path.read_bytes() == b"before"
    assert listing(tmp_path) == ["f"]


def test_failed_rename_removes_the_temporary(tmp_path: Path):
    # the target is a folder: the temporary is written in full, then the rename fails
    target = tmp_path / "f"
    target.mkdir()
    (target / "inside").write_bytes(b"kept")
    with pytest.raises(OSError):
        write_atomic(target, b"x" * 100_000)
    assert listing(tmp_path) == ["f", "f/inside"]
    assert (target / "inside").read_bytes() == b"kept"


def test_parent_that_is_a_file_fails_and_leaves_it_unchanged(tmp_path: Path):
    parent = tmp_path / "p"
    parent.write_bytes(b"a file, not a folder")
    with pytest.raises(OSError):
        write_atomic(parent / "f", b"x")
    assert parent.read_bytes() == b"a file, not a folder"
    assert listing(tmp_path) == ["p"]


def test_write_json_is_sorted_and_indented_by_2(tmp_path: Path):
    obj = {"b": 1, "a": {"d": [1, 2.5], "c": None}, "é": "ü"}
    path = write_json(tmp_path / "out" / "o.json", obj)
    assert path == tmp_path / "out" / "o.json"
    expected = ('{\n  "a": {\n    "c": null,\n    "d": [\n      1,\n      2.5\n    ]\n  },\n'
                '  "b": 1,\n  "\\u00e9": "\\u00fc"\n}')
    assert path.read_text() == expected
    assert json.loads(path.read_text()) == obj


def test_write_json_indent_4(tmp_path: Path):
    path = write_json(tmp_path / "o.json", {"z": [True], "y": 0}, indent=4)
    assert path.read_text() == '{\n    "y": 0,\n    "z": [\n        true\n    ]\n}'


def test_write_json_without_indent_is_one_line(tmp_path: Path):
    obj = {"chunk": 3, "rows": [{"row": i, "level": 0, "downsample": 1.0} for i in range(50)]}
    path = write_json(tmp_path / "m.json", obj, indent=None)
    text = path.read_text()
    assert "\n" not in text
    assert json.loads(text) == obj


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_write_json_refuses_what_is_not_json(tmp_path: Path, value):
    with pytest.raises(ValueError, match="JSON compliant"):
        write_json(tmp_path / "o.json", {"x": value})
    assert listing(tmp_path) == []


def test_two_threads_writing_one_file_never_share_a_temporary(tmp_path: Path):
    target, seen, errors, barrier = tmp_path / "f", set(), [], threading.Barrier(2)

    def write(data: bytes) -> None:
        barrier.wait()
        try:
            for _ in range(200):
                write_atomic(target, data)
                seen.add(target.read_bytes())
        except OSError as exc:  # a shared temporary renamed away by the other writer
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(bytes([65 + k]) * 100_000,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert seen <= {b"A" * 100_000, b"B" * 100_000}  # always one writer's whole file, never a mix
    assert listing(tmp_path) == ["f"]


def test_write_json_that_cannot_encode_leaves_the_target_unchanged(tmp_path: Path):
    path = write_json(tmp_path / "o.json", {"ok": 1})
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_json(path, {"ok": {1, 2}})  # a set is not JSON
    assert path.read_bytes() == before
    assert listing(tmp_path) == ["o.json"]
