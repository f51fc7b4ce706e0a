"""`crystal-dask calcifications`: --um-per-px is checked once, at the command's start, as the features stage checks
its own um_per_px (the command on real slides: tests/exports/test_calcifications.py)."""

from __future__ import annotations

import pytest

from crystal_dask.cli import main


@pytest.mark.parametrize("value", ["-1", "inf"])
def test_a_bad_resolution_is_one_line_naming_the_key_and_writes_nothing(tmp_path, capsys, value):
    out = tmp_path / "out"
    assert main(["calcifications", str(tmp_path / "slide.svs"), "-o", str(out), "--um-per-px", value]) == 1
    err = capsys.readouterr().err
    assert err == f"crystal-dask: error: features.um_per_px: must be a positive number; got {float(value)!r}\n"
    assert not out.exists()  # refused before the lock and before any slide was read
