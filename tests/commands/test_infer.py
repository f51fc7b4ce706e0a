"""`crystal-dask infer MODEL INPUT -o OUT`: slides, a corpus folder or a scan folder; every real scanner file in
../shared/realdata either inferred or a reject with its reason; µm windows need an MPP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from crystal_dask.cli import main
from crystal_dask.store.schema import INFER_SUMMARY, REJECTS, read_table


@pytest.fixture(scope="module")
def no_mpp_slide(tmp_path_factory) -> Path:
    """A generated slide whose file records no MPP (write_slide with mpp=None)."""
    from crystal_dask.synthetic.slide_writer import write_slide

    rng = np.random.default_rng(5)
    image = np.full((1100, 1300, 3), 240, np.uint8)
    image[200:900, 200:1100] = rng.integers(90, 200, (700, 900, 3), dtype=np.uint8)  # a block of "tissue"
    path = tmp_path_factory.mktemp("nompp") / "nompp.svs"
    write_slide(path, image, None)
    return path


def _run(model: Path, inputs: list[Path], out: Path, *extra: str) -> tuple[dict, list[dict]]:
    assert main(["infer", str(model), *map(str, inputs), "-o", str(out), "--no-progress", *extra]) == 0
    return json.loads((out / "infer.json").read_text()), read_table(out / "rejects.parquet", REJECTS).to_pylist()


@pytest.mark.slow
def test_every_real_file_is_inferred_or_rejected(realdata, window_model, no_mpp_slide, tmp_path, capsys):
    files = sorted(p for p in realdata.iterdir() if p.suffix in (".svs", ".tif", ".tiff"))
    m, rejects = _run(window_model, [*files, no_mpp_slide], tmp_path / "px")
    reasons = {Path(r["source"]).name: r["reason"] for r in rejects}
    assert "compression 52479" in reasons["unopenable.tiff"]
    for tiny in ("small.svs", "unreadable.svs"):  # 16 x 16 px: no 256 px window fits
        assert "(16x16 px) is smaller than one 256 px window" in reasons[tiny]
    assert m["slides_in"] == 6 and set(m["slides"]) == {"CMU-1-Small-Region", "OS-1-detail", "nompp"}
    assert m["slides_done"] == 3 and set(reasons) == {"unreadable.svs", "unopenable.tiff", "small.svs"}
    from crystal_dask.infer.settings import InferSettings

    defaults = InferSettings()  # the command's defaults are the settings' own
    assert (m["settings"]["block"], m["settings"]["tissue_threshold"], m["settings"]["heatmap_class"]) == (
        defaults.block, defaults.tissue_threshold, defaults.heatmap_class)
    summary = read_table(tmp_path / "px" / "summary.parquet", INFER_SUMMARY)
    nompp = summary.filter(pc.equal(summary["bname"], "nompp"))
    assert nompp.num_rows and nompp["area_mm2"].null_count == nompp.num_rows  # no MPP: no area
    assert summary.filter(pc.equal(summary["bname"], "CMU-1-Small-Region"))["area_mm2"].null_count == 0
    assert (tmp_path / "px" / "slides" / "OS-1-detail" / "OS-1-detail_overlay.png").exists()
    printed = capsys.readouterr().out
    assert '"done": 3' in printed and "summary.parquet" in printed
    # 8 px windows fit the tiny slides: small.svs is inferred, unreadable.svs opens but its tile fails to decode
    m, rejects = _run(window_model, [realdata / "small.svs", realdata / "unreadable.svs"], tmp_path / "tiny",
                      "--window-size", "8")
    assert m["slides_done"] == 1 and len(rejects) == 1 and rejects[0]["source"].endswith("unreadable.svs")
    assert "Bogus marker length" in rejects[0]["reason"]


@pytest.mark.slow
def test_micron_windows_reject_slides_without_mpp(realdata, window_model, no_mpp_slide, tmp_path):
    m, rejects = _run(window_model, [realdata / "CMU-1-Small-Region.svs", no_mpp_slide], tmp_path / "um",
                      "--window-size", "128", "--window-unit", "um")
    assert m["slides_done"] == 1 and m["slides"]["CMU-1-Small-Region"]["size"] == pytest.approx(128 / 0.499)
    assert len(rejects) == 1 and rejects[0]["source"].endswith("nompp.svs")
    assert "no MPP" in rejects[0]["reason"]


@pytest.mark.slow
def test_a_scan_folder_scores_against_its_annotations(small_corpus, window_model, tmp_path):
    from crystal_dask.stages.scan import scan
    from crystal_dask.store.schema import REGIONS, write_table

    write_table(scan(small_corpus).regions, tmp_path / "scan" / "regions.parquet", REGIONS)
    m, rejects = _run(window_model, [tmp_path / "scan"], tmp_path / "out", "--splits", "eval", "--block", "8")
    assert not rejects and m["slides_done"] >= 1 and m["score"]["windows_scored"] > 0
    for bname in m["slides"]:
        assert (tmp_path / "out" / "slides" / bname / "score.json").exists()


@pytest.mark.parametrize(("option", "value", "says"), [
    ("--heatmap-class", "nope", "heatmap_class: 'nope' is not one of"),
    ("--tissue-threshold", "2", "tissue_threshold: must be in [0, 1]; got 2.0"),
])
def test_a_given_setting_reaches_the_settings_check(tmp_path, capsys, option, value, says):
    """An option the user gives replaces the settings' default and is checked there: one line, nothing written."""
    out = tmp_path / "out"
    assert main(["infer", str(tmp_path / "m.skops"), str(tmp_path / "s.svs"), "-o", str(out), option, value]) == 1
    err = capsys.readouterr().err
    assert err.startswith("crystal-dask: error: ") and says in err and err.count("\n") == 1
    assert not out.exists()
