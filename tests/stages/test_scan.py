"""Corpus scan and the `scan` verb on small corpora written in tmp_path: real Aperio-style slides, NEDC csv and
ImageScope xml annotations, in the NEDC and Fox Chase layouts.

Every region of every annotation file must end up either as a row of the regions table or in the rejects table.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from crystal_dask.cli import main
from crystal_dask.stages.scan import scan
from crystal_dask.store.schema import REGIONS, REJECTS, read_table
from crystal_dask.synthetic.slide_writer import write_slide
from crystal_dask.wsi.annotations import Header, Region, write_imagescope_xml, write_nedc_csv
from tests.helpers import REALDATA

W, H = 512, 384
MPP = 0.5


def make_slide(path: Path, mpp: float | None = MPP, size: tuple[int, int] = (W, H)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    image = np.zeros((h, w, 3), np.uint8)
    image[...] = (np.arange(w)[None, :, None] * 3 + np.arange(h)[:, None, None]) % 256
    write_slide(path, image, mpp)
    return path


def box(rid: int, label: str, x: int = 10, y: int = 20, side: int = 40) -> Region:
    return Region(rid, label, "breast", (x, x + side, x + side, x), (y, y, y + side, y + side))


def make_annotation(path: Path, regions: list[Region], size: tuple[int, int] = (W, H),
                    mpp: float | None = MPP) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = Header(bname=path.stem, mpp=mpp, width=size[0], height=size[1])
    (write_nedc_csv if path.suffix == ".csv" else write_imagescope_xml)(path, header, regions)
    return path


def nedc(root: Path, split: str, patient: str, session: str = "s000_2015_03_01", subject: str = "aaaaaaaa",
         t: str = "t000") -> Path:
    """A slide's path without suffix in the NEDC layout."""
    sess = session.split("_")[0]
    return (root / "svs" / split / f"{patient}_{subject}" / session / "breast"
            / f"{patient}_{subject}_{sess}_0hne_0000_a001_lvl002_{t}")


def fox(root: Path, patient: str, specimen: str = "001003366", site: str = "c50.2_c50.2") -> Path:
    """A slide's path without suffix in the Fox Chase layout (no split folder)."""
    return root / "svs" / "00000" / patient / specimen / site / f"{patient}_{specimen}_st065_xt1_t000"


def pair(stem: Path, regions: list[Region], suffix: str = ".csv", **header) -> tuple[Path, Path]:
    slide = make_slide(stem.with_name(stem.name + ".svs"))
    return slide, make_annotation(stem.with_name(stem.name + suffix), regions, **header)


def rows(result) -> list[dict]:
    return result.regions.to_pylist()


def rejects(result) -> list[dict]:
    return result.rejects.to_pylist()


# ------------------------------------------------------------------------------------------------ NEDC layout
@pytest.fixture
def nedc_corpus(tmp_path):
    root = tmp_path / "tubr"
    a = pair(nedc(root, "train", "00000001"), [box(1, "norm"), box(2, "cdcs", x=100), box(3, "", x=200),
                                                box(4, "INDC", x=300)])
    b = pair(nedc(root, "train", "00000001", session="s001_2017"), [box(1, "bckg"), box(2, "cnno", x=100)],
             suffix=".xml")
    c = pair(nedc(root, "dev", "00000002", subject="aaaaaaab", session="s000_2016"),
             [box(1, "dcis"), box(7, "cidc", x=100)])
    d = pair(nedc(root, "eval", "00000003", subject="aaaaaaac"), [box(1, "susp"), box(2, "infl", x=100)])
    xml = make_annotation(d[1].with_suffix(".xml"), [box(i, "artf", x=20 * i) for i in range(1, 6)])
    return root, {"a": a, "b": b, "c": c, "d": d, "d_xml": xml}


def test_nedc_regions_table(nedc_corpus):
    root, f = nedc_corpus
    result = scan(root)
    t = result.regions
    assert t.schema == REGIONS
    got = {(r["annotation"], r["region_id"]): r for r in rows(result)}
    assert len(got) == t.num_rows == 10
    first = got[(str(f["a"][1]), 2)]
    assert first == {
        "corpus": "tubr", "split": "train", "patient": "00000001", "slide": str(f["a"][0]),
        "annotation": str(f["a"][1]), "bname": f["a"][0].stem, "region_id": 2, "label": "cdcs", "cls": "dcis",
        "crystal": True, "tissue": "breast", "x0": 100, "y0": 20, "x1": 140, "y1": 60,
        "polygon_x": [100.0, 140.0, 140.0, 100.0], "polygon_y": [20.0, 20.0, 60.0, 60.0], "mpp": MPP,
        "slide_width": W, "slide_height": H,
    }
    assert (got[(str(f["a"][1]), 3)]["label"], got[(str(f["a"][1]), 3)]["cls"]) == ("null", "null")
    assert (got[(str(f["a"][1]), 4)]["label"], got[(str(f["a"][1]), 4)]["crystal"]) == ("indc", False)
    # the year-only session's xml slide, the dev and eval patients
    assert {(r["split"], r["patient"], r["cls"], r["crystal"]) for r in rows(result)
            if r["slide"] in (str(f["b"][0]), str(f["c"][0]))} == {
        ("train", "00000001", "bckg", False), ("train", "00000001", "nneo", True),
        ("dev", "00000002", "dcis", False), ("dev", "00000002", "indc", True)}
    # rows come sorted by split, patient, slide, region id
    keys = [(r["split"], r["patient"], r["slide"], r["region_id"]) for r in rows(result)]
    assert keys == sorted(keys) and keys[0][0] == "dev"


def test_csv_preferred_over_xml_and_the_xml_is_accounted(nedc_corpus):
    root, f = nedc_corpus
    result = scan(root)
    eval_rows = [r for r in rows(result) if r["split"] == "eval"]
    assert {r["annotation"] for r in eval_rows} == {str(f["d"][1])}
    assert sorted(r["label"] for r in eval_rows) == ["infl", "susp"]
    assert rejects(result) == [{"stage": "scan", "source": str(f["d_xml"]), "location": "", "region_id": None,
                                "reason": f"another annotation file is used for this slide: {f['d'][1].name}"}]


def test_unpaired_files_and_region_decisions_are_rejects(nedc_corpus):
    root, f = nedc_corpus
    lonely_csv = make_annotation(nedc(root, "train", "00000004").with_suffix(".csv"), [box(1, "norm")])
    lonely_slide = make_slide(nedc(root, "dev", "00000005").with_suffix(".svs"))
    decisions = make_annotation(f["a"][1].with_name(f["a"][0].stem + "_REGIONDECISIONS.csv"), [box(1, "indc")])
    result = scan(root)
    assert result.regions.num_rows == 10
    reasons = {r["source"]: r["reason"] for r in rejects(result)}
    assert reasons[str(lonely_csv)] == "no slide with the same name in its folder"
    assert reasons[str(lonely_slide)] == "no annotation file (.csv or .xml) with the same name"
    assert reasons[str(decisions)] == "model decisions, not annotations"


def test_patient_in_two_split_folders_is_rejected_for_the_later_slides(nedc_corpus):
    root, _ = nedc_corpus
    # patient 00000002 is in dev; the same patient under train (sorted after dev) is refused
    slide, _ = pair(nedc(root, "train", "00000002", subject="aaaaaaab"), [box(1, "norm"), box(2, "bckg", x=100)])
    result = scan(root)
    assert {r["split"] for r in rows(result) if r["patient"] == "00000002"} == {"dev"}
    refused = [r for r in rejects(result) if r["source"] == str(slide)]
    assert sorted(r["region_id"] for r in refused) == [1, 2]
    assert all(r["reason"] == "patient in two splits: 00000002 is also in 'dev'" for r in refused)
    assert result.regions.num_rows == 10


def test_summary_counts(nedc_corpus):
    root, _ = nedc_corpus
    summary = scan(root, corpus="TUBR").summary()
    assert summary == {
        "regions": 10, "slides": 4, "patients": 3, "rejects": 1, "notes": 0,
        "by_split": {"dev": {"cidc": 1, "dcis": 1}, "eval": {"infl": 1, "susp": 1},
                     "train": {"bckg": 1, "cdcs": 1, "cnno": 1, "indc": 1, "norm": 1, "null": 1}},
        "reject_reasons": {"another annotation file is used for this slide": 1},
    }
    assert set(scan(root, corpus="TUBR").regions.column("corpus").to_pylist()) == {"TUBR"}


def test_summary_counts_reject_reasons_by_kind(tmp_path):
    bad = [box(1, "norm"), Region(5, "norm", "breast", (1, 2), (1, 2)), box(7, "tumour", x=200),
           box(8, "indc", x=W - 10), box(9, "dcis", x=W + 100)]
    pair(nedc(tmp_path, "train", "00000001"), bad)
    pair(nedc(tmp_path, "train", "00000001", session="s001_2016"), bad, suffix=".xml")
    pair(nedc(tmp_path, "dev", "00000002"), [box(1, "norm"), box(2, "norm", x=100)], size=(W, H + 1))
    pair(nedc(tmp_path, "dev", "00000003"), [box(1, "norm")])
    pair(nedc(tmp_path, "train", "00000003", subject="aaaaaaab"), [box(1, "norm")])
    summary = scan(tmp_path).summary()
    assert summary["rejects"] == 11
    assert summary["reject_reasons"] == {
        "has N vertices; a polygon needs at least N": 2,
        "unknown label 'tumour'": 2,
        "polygon bbox (N,N)-(N,N) lies partly outside the NxN slide": 2,
        "polygon bbox (N,N)-(N,N) lies wholly outside the NxN slide": 2,
        "header disagrees with the slide": 2,
        "patient in two splits": 1,
    }


# ---------------------------------------------------------------------------------------- faults of slides
def test_header_disagreeing_with_the_slide_rejects_every_region_naming_both_files(tmp_path):
    slide, ann = pair(nedc(tmp_path, "train", "00000001"), [box(1, "norm"), box(2, "dcis", x=100)],
                      size=(W * 2, H))
    result = scan(tmp_path)
    assert result.regions.num_rows == 0
    got = rejects(result)
    assert [(r["source"], r["location"], r["region_id"]) for r in got] == [(str(ann), "region 1", 1),
                                                                             (str(ann), "region 2", 2)]
    assert got[0]["reason"] == (f"header disagrees with the slide: {2 * W}x{H} pixels in {ann.name}, "
                                f"{W}x{H} in {slide.name}")


def test_garbage_slide_rejects_its_regions_as_unreadable(tmp_path):
    stem = nedc(tmp_path, "train", "00000001")
    slide = stem.with_name(stem.name + ".svs")
    slide.parent.mkdir(parents=True)
    slide.write_bytes(b"II*\x00" + bytes(range(256)) * 8)  # a TIFF signature, then garbage
    make_annotation(stem.with_name(stem.name + ".csv"), [box(1, "norm"), box(2, "indc", x=100)])
    pair(nedc(tmp_path, "dev", "00000002"), [box(1, "norm")])  # another slide: the scan goes on
    result = scan(tmp_path)
    assert [r["patient"] for r in rows(result)] == ["00000002"]
    got = [r for r in rejects(result) if r["source"] == str(slide)]
    assert [(r["location"], r["region_id"]) for r in got] == [("region 1", 1), ("region 2", 2)]
    assert all(r["reason"].startswith(f"slide unreadable: {slide}") for r in got)


@pytest.mark.skipif(not (REALDATA / "unopenable.tiff").is_file(),
                    reason=f"real slide files not found at {REALDATA}")
def test_slide_with_unknown_compression_rejects_its_regions(tmp_path):
    stem = nedc(tmp_path, "train", "00000001")
    slide = stem.with_name(stem.name + ".svs")
    slide.parent.mkdir(parents=True)
    shutil.copyfile(REALDATA / "unopenable.tiff", slide)
    make_annotation(stem.with_name(stem.name + ".csv"), [box(1, "norm"), box(2, "susp", x=100)])
    result = scan(tmp_path)
    assert result.regions.num_rows == 0
    got = rejects(result)
    assert [r["region_id"] for r in got] == [1, 2]
    assert all(r["source"] == str(slide) and r["reason"].startswith("slide unreadable:") and "52479" in r["reason"]
               for r in got)


def test_unreadable_slide_with_no_usable_region_is_still_reported(tmp_path):
    stem = nedc(tmp_path, "train", "00000001")
    slide = stem.with_name(stem.name + ".svs")
    slide.parent.mkdir(parents=True)
    slide.write_bytes(b"not a tiff at all")
    make_annotation(stem.with_name(stem.name + ".csv"), [])
    got = rejects(scan(tmp_path))
    assert [(r["source"], r["location"], r["region_id"]) for r in got] == [(str(slide), "", None)]
    assert got[0]["reason"].startswith("slide unreadable:")


def test_mpp_comes_from_the_slide_else_from_the_header(tmp_path):
    no_mpp = make_slide(nedc(tmp_path, "train", "00000001").with_suffix(".svs"), mpp=None)
    make_annotation(no_mpp.with_suffix(".csv"), [box(1, "norm")], mpp=0.2527)
    with_mpp = make_slide(nedc(tmp_path, "dev", "00000002").with_suffix(".svs"), mpp=0.25)
    make_annotation(with_mpp.with_suffix(".csv"), [box(1, "norm")], mpp=0.5027)
    neither = make_slide(nedc(tmp_path, "eval", "00000003").with_suffix(".svs"), mpp=None)
    make_annotation(neither.with_suffix(".csv"), [box(1, "norm")], mpp=None)
    mpp = {r["split"]: r["mpp"] for r in rows(scan(tmp_path))}
    assert mpp == {"train": 0.2527, "dev": 0.25, "eval": None}


def test_regions_are_checked_against_the_slide_when_the_header_has_no_size(tmp_path):
    slide = make_slide(nedc(tmp_path, "train", "00000001").with_suffix(".svs"))
    ann = slide.with_suffix(".csv")
    text = "".join(f"0,{rid},breast,norm,{i},{y},{x},0,1.0\n" for rid, x0 in ((1, 10), (2, W - 20))
                   for i, (x, y) in enumerate([(x0, 10), (x0 + 40, 10), (x0 + 40, 50)]))
    ann.write_text("index,region_id,tissue,label,coord_index,row,column,depth,confidence\n" + text)
    result = scan(tmp_path)
    assert [r["region_id"] for r in rows(result)] == [1]
    outside = [r for r in rejects(result) if r["region_id"] == 2]
    assert [(r["source"], r["location"]) for r in outside] == [(str(ann), "region 2")]
    assert f"partly outside the {W}x{H} slide" in outside[0]["reason"]
    assert {r["location"] for r in rejects(result) if r["region_id"] is None} == {"header"}


# -------------------------------------------------------------------------------------------- accounting
def test_every_region_is_a_row_or_a_reject(tmp_path):
    bad_shapes = [box(1, "norm"), box(2, "cdcs", x=100),
                  Region(5, "norm", "breast", (1, 2), (1, 2)),  # two vertices
                  Region(6, "norm", "breast", (1, 2, 3), (1, 2, 3)),  # collinear
                  box(7, "tumour", x=200),  # unknown label
                  box(8, "indc", x=W - 10),  # partly outside
                  box(9, "dcis", x=W + 100)]  # wholly outside
    written: dict[Path, list[int]] = {}  # annotation file -> region ids written in it
    slide_of: dict[str, Path] = {}

    def add(stem: Path, regions: list[Region], suffix: str = ".csv", slide: bool = True, **kw) -> Path:
        ann = make_annotation(stem.with_name(stem.name + suffix), regions, **kw)
        written[ann] = [r.region_id for r in regions]
        if slide:
            slide_of[str(make_slide(stem.with_name(stem.name + ".svs")))] = ann
        return ann

    add(nedc(tmp_path, "train", "00000001"), bad_shapes)
    add(nedc(tmp_path, "train", "00000001", session="s001_2016"), bad_shapes, suffix=".xml")
    add(nedc(tmp_path, "dev", "00000002"), [box(1, "norm"), box(2, "infl", x=100)], size=(W, H + 1))
    dup = add(nedc(tmp_path, "dev", "00000003"), [box(1, "norm"), box(2, "infl", x=100), box(1, "indc", x=200)],
              suffix=".xml")
    add(nedc(tmp_path, "eval", "00000004"), [box(1, "artf"), box(3, "nneo", x=100)], slide=False)
    add(nedc(tmp_path, "eval", "00000005"), [box(1, "bckg")])
    add(nedc(tmp_path, "train", "00000005"), [box(1, "bckg"), box(4, "susp", x=100)])  # patient in two splits
    garbage = nedc(tmp_path, "eval", "00000006")
    add(garbage, [box(1, "norm"), box(2, "dcis", x=100)], slide=False)
    garbage.with_name(garbage.name + ".svs").write_bytes(b"\x00" * 100)
    slide_of[str(garbage.with_name(garbage.name + ".svs"))] = garbage.with_name(garbage.name + ".csv")
    both = add(nedc(tmp_path, "eval", "00000007"), [box(1, "norm")])
    add(both.with_suffix(""), [box(1, "norm"), box(2, "norm", x=100)], suffix=".xml", slide=False)
    add(both.with_name(both.stem + "_REGIONDECISIONS"), [box(1, "indc")], slide=False)
    no_header = nedc(tmp_path, "eval", "00000008")
    slide_of[str(make_slide(no_header.with_name(no_header.name + ".svs")))] = no_header.with_name(
        no_header.name + ".csv")
    (no_header.with_name(no_header.name + ".csv")).write_text(
        "index,region_id,tissue,label,coord_index,row,column,depth,confidence\n"
        "0,1,breast,norm,0,10,10,0,1.0\n0,1,breast,norm,1,10,50,0,1.0\n0,1,breast,norm,2,50,50,0,1.0\n"
        "1,2,breast,norm,0,10,10,0,1.0\n1,2,breast,norm,1,10,50\n1,2,breast,norm,2,50,50,0,1.0\n")
    written[no_header.with_name(no_header.name + ".csv")] = [1, 2]

    result = scan(tmp_path)
    kept = {(r["annotation"], r["region_id"]) for r in rows(result)}
    assert len(kept) == result.regions.num_rows  # no region twice
    whole_file = {r["source"] for r in rejects(result) if r["location"] == ""}
    refused = {(str(slide_of.get(r["source"], r["source"])), r["region_id"])
               for r in rejects(result) if r["region_id"] is not None}
    assert not kept & refused
    expected = {(str(ann), rid) for ann, ids in written.items() if str(ann) not in whole_file for rid in ids}
    assert kept | refused == expected
    assert result.regions.num_rows + len(refused) == len(expected) == 26
    assert result.regions.num_rows == 8
    # the files that contribute no region at all are named as a whole
    assert whole_file == {str(both.with_suffix(".xml")), str(both.with_name(both.stem + "_REGIONDECISIONS.csv")),
                          str(nedc(tmp_path, "eval", "00000004")) + ".csv"}
    assert {r["region_id"] for r in rejects(result) if r["source"] == str(dup)} == {1}
    assert result.rejects.schema == REJECTS


# -------------------------------------------------------------------------------------- Fox Chase layout
def fox_corpus(root: Path, n: int = 24) -> dict[str, set[str]]:
    """n patients with common classes; cnno and cdcs each held by 3 patients only. Returns patient -> labels."""
    labels: dict[str, set[str]] = {}
    for i in range(n):
        patient = f"{197 + 7 * i:09d}"
        regions = [box(1, "norm"), box(2, "bckg", x=60)]
        if i % 2:
            regions.append(box(3, "indc", x=120))
        if i in (3, 11, 19):
            regions.append(box(4, "cnno", x=180))
        if i in (4, 5, 6):
            regions.append(box(5, "cdcs", x=240))
        pair(fox(root, patient, specimen=f"{1003366 + i:09d}"), regions)
        labels[patient] = {r.label for r in regions}
    # one patient with two specimens
    pair(fox(root, f"{197:09d}", specimen="001009999", site="c50.9_c50.9"), [box(1, "dcis")], suffix=".xml")
    labels[f"{197:09d}"].add("dcis")
    return labels


def test_fox_chase_layout_gets_a_patient_level_split(tmp_path):
    labels = fox_corpus(tmp_path)
    result = scan(tmp_path)
    assert result.rejects.num_rows == 0
    split_of: dict[str, set[str]] = {}
    for r in rows(result):
        split_of.setdefault(r["patient"], set()).add(r["split"])
    assert set(split_of) == set(labels)
    assert all(len(s) == 1 for s in split_of.values())  # no patient in two sets
    counts = Counter(next(iter(s)) for s in split_of.values())
    assert abs(counts["train"] - 12) <= 1 and abs(counts["dev"] - 6) <= 1 and abs(counts["eval"] - 6) <= 1
    for label in ("norm", "bckg", "indc", "cnno", "cdcs"):  # rare crystalline labels too
        assert {r["split"] for r in rows(result) if r["label"] == label} == {"train", "dev", "eval"}, label
    two = [r for r in rows(result) if r["patient"] == f"{197:09d}"]
    assert len({r["slide"] for r in two}) == 2 and len({r["split"] for r in two}) == 1


def test_fox_chase_split_is_seeded(tmp_path):
    fox_corpus(tmp_path, n=16)

    def assignment(seed: int) -> dict[str, str]:
        return {r["patient"]: r["split"] for r in rows(scan(tmp_path, split_seed=seed))}

    assert assignment(3) == assignment(3)
    assert assignment(3) != assignment(4)
    assert scan(tmp_path, split_seed=3).regions.equals(scan(tmp_path, split_seed=3).regions)


def test_unsplit_slides_of_a_patient_with_a_split_folder_follow_that_split(tmp_path):
    fox_corpus(tmp_path, n=8)
    patient = f"{197 + 7:09d}"
    pair(tmp_path / "svs" / "eval" / patient / f"{patient}_001000001_st065_xt1_t000", [box(1, "infl")])
    result = scan(tmp_path)
    assert {r["split"] for r in rows(result) if r["patient"] == patient} == {"eval"}
    assert len([r for r in rows(result) if r["patient"] == patient]) == 3 + 1


def test_split_fractions_are_passed_on(tmp_path):
    fox_corpus(tmp_path, n=8)
    got = Counter(r["split"] for r in rows(scan(tmp_path, split_fractions=(1.0, 0.0, 0.0))))
    assert set(got) == {"train"}
    with pytest.raises(ValueError, match="split fractions"):
        scan(tmp_path, split_fractions=(0.5, 0.5))


# ----------------------------------------------------------------------------------------------------- CLI
def test_cli_scan_writes_both_tables_and_prints_the_summary(nedc_corpus, tmp_path, capsys):
    root, f = nedc_corpus
    out = tmp_path / "out"
    assert main(["scan", str(root), "-o", str(out), "--corpus", "TUBR"]) == 0
    regions = read_table(out / "regions.parquet", REGIONS)
    assert regions.equals(scan(root, corpus="TUBR").regions)
    rejected = read_table(out / "rejects.parquet", REJECTS)
    assert rejected.column("source").to_pylist() == [str(f["d_xml"])]
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert (summary["regions"], summary["patients"], summary["rejects"]) == (10, 3, 1)
    assert f"rejected: {f['d_xml']}: : another annotation file is used for this slide" in captured.err


def test_cli_scan_strict_exits_1_only_when_something_was_rejected(nedc_corpus, tmp_path, capsys):
    root, f = nedc_corpus
    assert main(["scan", str(root), "-o", str(tmp_path / "a"), "--strict"]) == 1
    f["d_xml"].unlink()
    assert main(["scan", str(root), "-o", str(tmp_path / "b"), "--strict"]) == 0
    assert read_table(tmp_path / "b" / "rejects.parquet", REJECTS).num_rows == 0


def test_cli_scan_split_seed(tmp_path, capsys):
    fox_corpus(tmp_path / "fcbr", n=16)
    for seed in ("3", "4"):
        assert main(["scan", str(tmp_path / "fcbr"), "-o", str(tmp_path / seed), "--split-seed", seed]) == 0
    a, b = (read_table(tmp_path / s / "regions.parquet", REGIONS) for s in ("3", "4"))
    split_of = [dict(zip(t.column("patient").to_pylist(), t.column("split").to_pylist(), strict=True)) for t in (a, b)]
    assert split_of[0] != split_of[1]
    assert a.equals(scan(tmp_path / "fcbr", split_seed=3).regions)


def test_cli_scan_missing_root_is_a_clear_error(tmp_path, capsys):
    assert main(["scan", str(tmp_path / "nowhere"), "-o", str(tmp_path / "out")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
