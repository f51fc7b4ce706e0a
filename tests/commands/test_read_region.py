"""`crystal-dask read-region`: JSON summary, PNG of a box, slide errors as exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile

from crystal_dask.cli import main


@pytest.fixture
def slide(tmp_path: Path) -> tuple[Path, np.ndarray]:
    pixels = np.random.default_rng(3).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, pixels, tile=(64, 64), photometric="rgb", compression="zlib")
    return path, pixels


def test_info_prints_json(slide, capsys):
    assert main(["read-region", str(slide[0])]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["width"], info["height"], info["mpp"], info["mpp_source"]) == (300, 200, None, "none")
    assert info["levels"][0]["tile"] == [64, 64]


def test_box_is_written_as_png(slide, tmp_path, capsys):
    path, pixels = slide
    out = tmp_path / "box.png"
    args = ["read-region", str(path), "--x", "250", "--y", "10", "--width", "80", "--height", "30", "-o", str(out)]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == str(out)
    png = imagecodecs.png_decode(out.read_bytes())
    np.testing.assert_array_equal(png[:, :50], pixels[10:40, 250:])
    assert (png[:, 50:] == 255).all()  # beyond the right edge: white


def test_errors_exit_2_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"not a tiff")
    assert main(["read-region", str(bad)]) == 2
    assert capsys.readouterr().err.startswith(f"{bad}: not a readable TIFF file")
    assert main(["read-region", str(bad), "--x", "1"]) == 2
    assert "all of --x --y --width --height" in capsys.readouterr().err
