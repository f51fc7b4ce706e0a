"""Corpus layout discovery: pairing slides with annotation files, patient and split from the path, what is skipped.

`discover` reads no file contents, so empty files stand in for slides and annotations here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from crystal_dask.vocab import SPLITS
from crystal_dask.wsi.layout import SlideEntry, discover


def touch(root: Path, rel: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def nedc(split: str, patient: str, subject: str, session: str, t: str = "t000") -> str:
    """Relative path stem of a slide in the NEDC layout."""
    return f"svs/{split}/{patient}_{subject}/{session}/breast/{patient}_{subject}_s000_0hne_0000_a001_lvl002_{t}"


FOX = "svs/00000/000000197/001003366/c50.2_c50.2/000000197_001003366_st065_xt1_t000"


def skipped_reasons(layout) -> dict[str, str]:
    return {p.name: reason for p, reason in layout.skipped}


def test_nedc_layout_pairs_and_reads_patient_and_split(tmp_path):
    a = nedc("train", "00466205", "aaaaaage", "s000_2015_03_01")
    b = nedc("dev", "00466206", "aaaaaagf", "s000_2017")  # session folder with only a year
    c = nedc("eval", "00466207", "aaaaaagg", "s001_2016_11_30", t="t001")
    for stem in (a, b, c):
        touch(tmp_path, f"{stem}.svs")
    touch(tmp_path, f"{a}.csv")
    touch(tmp_path, f"{b}.xml")
    touch(tmp_path, f"{c}.csv")
    layout = discover(tmp_path)
    assert layout.skipped == []
    got = {e.patient: e for e in layout.entries}
    assert set(got) == {"00466205", "00466206", "00466207"}
    assert got["00466205"] == SlideEntry(tmp_path / f"{a}.svs", tmp_path / f"{a}.csv", Path(a).name, "00466205",
                                         "train")
    assert (got["00466206"].split, got["00466206"].annotation.suffix) == ("dev", ".xml")
    assert (got["00466207"].split, got["00466207"].bname) == ("eval", Path(c).name)


def test_fox_chase_layout_has_no_split(tmp_path):
    touch(tmp_path, f"{FOX}.svs")
    touch(tmp_path, f"{FOX}.csv")
    other = "svs/00000/000000233/001004100/c50.9_c50.9/000000233_001004100_st065_xt1_t000"
    touch(tmp_path, f"{other}.svs")
    touch(tmp_path, f"{other}.xml")
    layout = discover(tmp_path)
    assert layout.skipped == []
    assert [(e.patient, e.split, e.bname) for e in layout.entries] == [
        ("000000197", None, "000000197_001003366_st065_xt1_t000"),
        ("000000233", None, "000000233_001004100_st065_xt1_t000"),
    ]


def test_csv_is_preferred_and_the_xml_is_accounted_as_skipped(tmp_path):
    stem = nedc("train", "00000001", "aaaaaaaa", "s000_2015")
    slide, csv, xml = (touch(tmp_path, f"{stem}{s}") for s in (".svs", ".csv", ".xml"))
    layout = discover(tmp_path)
    assert [(e.slide, e.annotation) for e in layout.entries] == [(slide, csv)]
    assert layout.skipped == [(xml, f"another annotation file is used for this slide: {csv.name}")]


def test_unpaired_files_are_skipped_with_a_reason(tmp_path):
    lonely_csv = touch(tmp_path, f"{nedc('train', '00000001', 'aaaaaaaa', 's000_2015')}.csv")
    lonely_slide = touch(tmp_path, f"{nedc('train', '00000002', 'aaaaaaab', 's000_2015')}.svs")
    # same stem, different folders: not a pair
    stem = nedc("dev", "00000003", "aaaaaaac", "s000_2015")
    far_slide = touch(tmp_path, f"{stem}.svs")
    far_xml = touch(tmp_path, f"{stem.replace('/breast/', '/other/')}.xml")
    layout = discover(tmp_path)
    assert layout.entries == []
    assert sorted(layout.skipped) == sorted([
        (lonely_csv, "no slide with the same name in its folder"),
        (lonely_slide, "no annotation file (.csv or .xml) with the same name"),
        (far_slide, "no annotation file (.csv or .xml) with the same name"),
        (far_xml, "no slide with the same name in its folder"),
    ])


def test_region_decisions_are_ignored_with_a_reason(tmp_path):
    stem = nedc("eval", "00000001", "aaaaaaaa", "s000_2015_01_02")
    touch(tmp_path, f"{stem}.svs")
    touch(tmp_path, f"{stem}.csv")
    decisions = touch(tmp_path, f"{stem}_REGIONDECISIONS.csv")
    layout = discover(tmp_path)
    assert [e.annotation.name for e in layout.entries] == [f"{Path(stem).name}.csv"]
    assert layout.skipped == [(decisions, "model decisions, not annotations")]


def test_other_slide_formats_pair_by_stem(tmp_path):
    for i, suffix in enumerate((".tif", ".tiff", ".ndpi", ".ome.tif", ".SVS")):
        stem = nedc("train", f"0000000{i}", "aaaaaaaa", "s000_2015")
        touch(tmp_path, f"{stem}{suffix}")
        touch(tmp_path, f"{stem}.csv")
    touch(tmp_path, "svs/README.txt")  # not a slide nor an annotation: not mentioned at all
    layout = discover(tmp_path)
    assert layout.skipped == []
    assert len(layout.entries) == 5
    ome = next(e for e in layout.entries if e.slide.name.endswith(".ome.tif"))
    assert ome.bname == ome.annotation.stem and ome.patient == "00000003"


def test_two_slides_with_one_name_are_both_skipped(tmp_path):
    stem = nedc("train", "00000001", "aaaaaaaa", "s000_2015")
    files = [touch(tmp_path, f"{stem}{s}") for s in (".svs", ".tif", ".csv")]
    layout = discover(tmp_path)
    assert layout.entries == []
    assert sorted(p for p, _ in layout.skipped) == sorted(files)
    assert all(reason == f"several slides share one name: {Path(stem).name}" for _, reason in layout.skipped)


def test_split_is_read_only_right_under_svs(tmp_path):
    # a folder called 'dev' deeper down is not a split folder
    stem = "svs/00000/000000197/dev/c50.2/000000197_001003366_st065_xt1_t000"
    touch(tmp_path, f"{stem}.svs")
    touch(tmp_path, f"{stem}.csv")
    (entry,) = discover(tmp_path).entries
    assert entry.split is None


@pytest.mark.parametrize("split", SPLITS)
def test_root_may_be_the_svs_folder_or_above_the_corpus(tmp_path, split):
    stem = nedc(split, "00000001", "aaaaaaaa", "s000_2015")
    touch(tmp_path, f"corpus/{stem}.svs")
    touch(tmp_path, f"corpus/{stem}.csv")
    for root in (tmp_path, tmp_path / "corpus", tmp_path / "corpus" / "svs"):
        (entry,) = discover(root).entries
        assert entry.split == split and entry.patient == "00000001"


def test_discovery_order_is_sorted_and_stable(tmp_path):
    stems = [nedc(s, f"0000000{i}", "aaaaaaaa", "s000_2015") for i, s in enumerate(("train", "dev", "eval", "train"))]
    for stem in stems:
        touch(tmp_path, f"{stem}.svs")
        touch(tmp_path, f"{stem}.csv")
    first = discover(tmp_path).entries
    assert first == discover(tmp_path).entries
    assert [e.slide for e in first] == sorted(e.slide for e in first)


def test_missing_root_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        discover(tmp_path / "nowhere")
