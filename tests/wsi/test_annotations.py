"""NEDC csv and ImageScope xml: readers, writers, the row=Y/column=X convention, and every bad input as an Issue.

Files are written by hand here, as NEDC's tools and ImageScope write them, so the readers are not only tested
against our own writers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from crystal_dask.vocab import LabelMap
from crystal_dask.wsi.annotations import (
    Header,
    Issue,
    Region,
    format_nedc_csv,
    read_annotations,
    read_imagescope_xml,
    read_nedc_csv,
    write_imagescope_xml,
    write_nedc_csv,
)

BNAME = "00466205_aaaaaage_s000_0hne_0000_a001_lvl002_t000"
HEADER_LINES = (
    "# version = csv_v1.0.0\n"
    "# MicronsPerPixel = 0.502700\n"
    f"# bname = {BNAME}\n"
    "# width = 50000 pixels, height = 40000 pixels\n"
    "# tissue = breast\n"
    "#\n"
    "index,region_id,tissue,label,coord_index,row,column,depth,confidence\n"
)
FIRST_ROW_LINE = 8  # 1-based line number of the first data row after HEADER_LINES

# A file as NEDC writes it: regions grouped by region_id, ids not starting at 1 nor contiguous, an empty label,
# a crystalline label, and region 9 at column 45000 > height 40000: swapping row and column would put it outside.
REALISTIC_CSV = HEADER_LINES + (
    "0,1,breast,indc,0,10452,20311,0,1.0\n"
    "0,1,breast,indc,1,10480,20990,0,1.0\n"
    "0,1,breast,indc,2,11020,20950,0,1.0\n"
    "0,1,breast,indc,3,11000,20330,0,1.0\n"
    "1,4,breast,cdcs,0,200,300,0,1.0\n"
    "1,4,breast,cdcs,1,200,420,0,1.0\n"
    "1,4,breast,cdcs,2,290,360,0,1.0\n"
    "2,9,breast,bckg,0,30000,45000,0,1.0\n"
    "2,9,breast,bckg,1,30000,45500,0,1.0\n"
    "2,9,breast,bckg,2,30800,45500,0,1.0\n"
    "2,9,breast,bckg,3,30800,45000,0,1.0\n"
    "3,10,breast,,0,100,100,0,1.0\n"
    "3,10,breast,,1,100,150,0,1.0\n"
    "3,10,breast,,2,150,150,0,1.0\n"
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def square_rows(region_id: int, label: str = "norm", index: int = 0, y: int = 100, x: int = 200,
                side: int = 50) -> list[str]:
    """csv rows of an axis-aligned square with its top-left vertex at row y, column x."""
    pts = [(y, x), (y, x + side), (y + side, x + side), (y + side, x)]
    return [f"{index},{region_id},breast,{label},{i},{r},{c},0,1.0" for i, (r, c) in enumerate(pts)]


def csv_file(tmp_path: Path, rows: list[str], header: str = HEADER_LINES, name: str = "a.csv") -> Path:
    return write(tmp_path, name, header + "".join(r + "\n" for r in rows))


def only_issue(errors: list[Issue]) -> Issue:
    assert len(errors) == 1, [str(e) for e in errors]
    return errors[0]


# ------------------------------------------------------------------------------------------------ csv reading
def test_csv_header_fields(tmp_path):
    ann = read_nedc_csv(write(tmp_path, f"{BNAME}.csv", REALISTIC_CSV))
    assert ann.errors == []
    assert ann.header == Header(bname=BNAME, mpp=0.5027, width=50000, height=40000, tissue="breast")


def test_csv_row_is_y_and_column_is_x(tmp_path):
    ann = read_nedc_csv(write(tmp_path, "a.csv", REALISTIC_CSV))
    assert [r.region_id for r in ann.regions] == [1, 4, 9, 10]
    first = ann.regions[0]
    assert first.x == (20311, 20990, 20950, 20330)  # the column field
    assert first.y == (10452, 10480, 11020, 11000)  # the row field
    assert first.bbox == (20311, 10452, 20990, 11020)
    assert (first.label, first.tissue, first.confidence) == ("indc", "breast", 1.0)
    far = ann.regions[2]
    assert far.bbox == (45000, 30000, 45500, 30800)  # inside 50000 wide x 40000 high only as x=column
    assert ann.regions[3].label == ""  # kept as written; LabelMap reads it as null


def test_csv_vertices_ordered_by_coord_index(tmp_path):
    rows = square_rows(1)
    path = csv_file(tmp_path, [rows[2], rows[0], rows[3], rows[1]])
    (region,) = read_nedc_csv(path).regions
    assert region.x == (200, 250, 250, 200) and region.y == (100, 100, 150, 150)


def test_csv_region_area_and_bbox_of_fractional_vertices(tmp_path):
    path = csv_file(tmp_path, ["0,1,breast,norm,0,10.5,20.25,0,1.0", "0,1,breast,norm,1,10.5,30.75,0,1.0",
                               "0,1,breast,norm,2,20.5,30.75,0,1.0"])
    (region,) = read_nedc_csv(path).regions
    assert region.area == pytest.approx(0.5 * 10.5 * 10)
    assert region.bbox == (20, 10, 31, 21)  # floor of the minimum, ceil of the maximum


def test_realistic_csv_read_and_formatted_again_is_byte_identical(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(REALISTIC_CSV.encode())
    ann = read_nedc_csv(path)
    assert ann.errors == []
    assert format_nedc_csv(ann.header, ann.regions).encode() == path.read_bytes()
    again = tmp_path / "b.csv"
    write_nedc_csv(again, ann.header, ann.regions)
    assert again.read_bytes() == path.read_bytes()


def test_csv_write_then_read_gives_the_same_regions(tmp_path):
    header = Header(bname="s", mpp=0.25, width=1000, height=800, tissue="breast")
    regions = [
        Region(3, "cidc", "breast", (10.5, 300.0, 150.25), (20.0, 40.0, 500.5), 1.0),
        Region(7, "norm", "breast", (600, 700, 700, 600), (100, 100, 700, 700), 0.75),
        Region(8, "", "breast", (1, 2, 2), (1, 1, 2), 1.0),
    ]
    path = tmp_path / "s.csv"
    write_nedc_csv(path, header, regions)
    ann = read_nedc_csv(path)
    assert ann.errors == []
    assert ann.header == header
    assert ann.regions == regions


def test_csv_without_mpp_round_trips_to_none(tmp_path):
    header = Header(bname="s", mpp=None, width=100, height=100)
    path = tmp_path / "s.csv"
    write_nedc_csv(path, header, [Region(1, "norm", "breast", (1, 50, 50), (1, 1, 50))])
    ann = read_nedc_csv(path)
    assert ann.errors == [] and ann.header.mpp is None


# ------------------------------------------------------------------------------------------------ xml reading
def imagescope_xml(regions: str, mpp: str = "0.502700", attributes: str | None = None) -> str:
    """An ImageScope-style file: Annotation attributes carry width/height, regions as given."""
    if attributes is None:
        attributes = ('<Attribute Name="width" Id="0" Value="50000"/>'
                      '<Attribute Name="height" Id="0" Value="40000"/>')
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<Annotations MicronsPerPixel="{mpp}">\n'
        '  <Annotation Id="1" Name="" ReadOnly="0" NameReadOnly="0" LineColorReadOnly="0" Incremental="0" '
        'Type="4" LineColor="65280" Visible="1" Selected="1" MarkupImagePath="" MacroName="">\n'
        f"    <Attributes>{attributes}</Attributes>\n"
        "    <Regions>\n"
        '      <RegionAttributeHeaders><AttributeHeader Id="9999" Name="Region" ColumnWidth="-1"/>'
        "</RegionAttributeHeaders>\n"
        f"{regions}"
        "    </Regions>\n"
        "    <Plots/>\n"
        "  </Annotation>\n"
        "</Annotations>\n"
    )


def xml_region(rid: str, label: str, pts: list[tuple[str, str]], tissue: str = "breast") -> str:
    vertices = "".join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in pts)
    return (f'      <Region Id="{rid}" Type="0" Zoom="0.5" Selected="0" ImageLocation="" ImageFocus="-1" '
            f'Length="2216.0" Area="300000.0" LengthMicrons="1114.0" AreaMicrons="75800.0" Text="{label}" '
            f'NegativeROA="0" InputRegionId="0" Analyze="1" DisplayId="{rid}">'
            f'<Attributes><Attribute Name="tissue" Id="0" Value="{tissue}"/></Attributes>'
            f"<Vertices>{vertices}</Vertices></Region>\n")


def square_pts(x: int = 200, y: int = 100, side: int = 50) -> list[tuple[str, str]]:
    return [(str(x), str(y)), (str(x + side), str(y)), (str(x + side), str(y + side)), (str(x), str(y + side))]


def test_xml_header_and_x_y_convention(tmp_path):
    text = imagescope_xml(xml_region("1", "INDC", [("20311.000000", "10452.000000"), ("20990.5", "10480"),
                                                    ("20950", "11020.25")], tissue="breast"))
    ann = read_imagescope_xml(write(tmp_path, f"{BNAME}.xml", text))
    assert ann.errors == []
    assert ann.header == Header(bname=BNAME, mpp=0.5027, width=50000, height=40000, tissue="breast")
    (region,) = ann.regions
    assert region.region_id == 1 and region.label == "indc" and region.tissue == "breast"
    assert region.x == (20311.0, 20990.5, 20950.0)
    assert region.y == (10452.0, 10480.0, 11020.25)


def test_csv_and_xml_of_the_same_polygon_give_the_same_region(tmp_path):
    # The same polygon as NEDC's csv (row, column) and as ImageScope's xml (X, Y), both written by hand.
    pts_xy = [(45000, 30000), (45500, 30100), (45400, 30800), (45050, 30700)]
    csv_rows = [f"0,5,breast,cnno,{i},{y},{x},0,1.0" for i, (x, y) in enumerate(pts_xy)]
    from_csv = read_nedc_csv(csv_file(tmp_path, csv_rows, name="p.csv"))
    from_xml = read_imagescope_xml(write(tmp_path, "p.xml", imagescope_xml(
        xml_region("5", "cnno", [(str(x), str(y)) for x, y in pts_xy]))))
    assert from_csv.errors == [] and from_xml.errors == []
    assert from_csv.regions == from_xml.regions
    (region,) = from_xml.regions
    assert region.x == tuple(x for x, _ in pts_xy) and region.y == tuple(y for _, y in pts_xy)
    assert (from_csv.header.width, from_csv.header.height) == (from_xml.header.width, from_xml.header.height)


def test_xml_write_then_read_gives_the_same_regions_and_agrees_with_csv(tmp_path):
    csv_ann = read_nedc_csv(write(tmp_path, "a.csv", REALISTIC_CSV))
    path = tmp_path / "a.xml"
    write_imagescope_xml(path, csv_ann.header, csv_ann.regions)
    xml_ann = read_imagescope_xml(path)
    assert xml_ann.errors == []
    assert xml_ann.regions == csv_ann.regions
    assert (xml_ann.header.mpp, xml_ann.header.width, xml_ann.header.height) == (0.5027, 50000, 40000)


def test_xml_without_mpp_round_trips_to_none(tmp_path):
    path = tmp_path / "s.xml"
    write_imagescope_xml(path, Header("s", None, 100, 100), [Region(1, "norm", "breast", (1, 50, 50), (1, 1, 50))])
    ann = read_imagescope_xml(path)
    assert ann.errors == [] and ann.header.mpp is None


def test_read_annotations_dispatches_on_suffix(tmp_path):
    assert len(read_annotations(write(tmp_path, "a.CSV", REALISTIC_CSV)).regions) == 4
    xml = write(tmp_path, "a.xml", imagescope_xml(xml_region("1", "norm", square_pts())))
    assert len(read_annotations(xml).regions) == 1
    other = read_annotations(write(tmp_path, "a.json", "{}"))
    assert other.regions == [] and "unknown annotation format '.json'" in only_issue(other.errors).reason


# ------------------------------------------------------------------------------------------- csv bad inputs
def csv_with_bad_region(tmp_path: Path, bad: list[str]) -> tuple[Path, list[Region], int]:
    """Region 1 good, then the bad rows (region 2), then region 3 good; returns the path, regions, bad row's line."""
    rows = square_rows(1, index=0) + bad + square_rows(3, index=2, x=400)
    path = csv_file(tmp_path, rows)
    return path, read_nedc_csv(path).regions, FIRST_ROW_LINE + 4


@pytest.mark.parametrize(
    ("bad", "line_offset", "reason"),
    [
        # a row with a missing field (8 instead of 9), in the middle of region 2
        (["1,2,breast,norm,0,500,500,0,1.0", "1,2,breast,norm,1,500,600,1.0", "1,2,breast,norm,2,600,600,0,1.0",
          "1,2,breast,norm,3,600,500,0,1.0"], 1, "malformed row: expected 9 fields, got 8"),
        # a row with one field too many, as the region's last vertex
        (["1,2,breast,norm,0,500,500,0,1.0", "1,2,breast,norm,1,500,600,0,1.0", "1,2,breast,norm,2,600,600,0,1.0",
          "1,2,breast,norm,3,600,500,0,1.0,x"], 3, "malformed row: expected 9 fields, got 10"),
        (["1,2,breast,norm,0,500,500,0,1.0", "1,2,breast,norm,1,5OO,600,0,1.0",
          "1,2,breast,norm,2,600,600,0,1.0"], 1, "non-numeric value"),
        (["1,2,breast,norm,0,500,500,0,1.0", "1,2,breast,norm,1,500,nan,0,1.0",
          "1,2,breast,norm,2,600,600,0,1.0"], 1, "non-numeric value"),
        (["1,2,breast,norm,0,500,500,0,1.0", "1,2,breast,norm,1,500,600,0,1.0"], 0,
         "region 2: has 2 vertices; a polygon needs at least 3"),
        (["1,2,breast,norm,0,500,500,0,1.0", "1,2,breast,norm,1,600,600,0,1.0", "1,2,breast,norm,2,700,700,0,1.0"],
         0, "region 2: has zero area"),
        (["1,2,breast,tumr,0,500,500,0,1.0", "1,2,breast,tumr,1,500,600,0,1.0", "1,2,breast,tumr,2,600,600,0,1.0"],
         0, "region 2: unknown label 'tumr'"),
        (["1,2,breast,norm,0,500,500,0,1.0", "1,2,breast,indc,1,500,600,0,1.0", "1,2,breast,norm,2,600,600,0,1.0"],
         1, "label 'indc' differs from the region's 'norm'"),
        (["1,2,breast,norm,0,500,500,0,1.0", "1,2,breast,norm,1,500,600,0,1.0", "1,2,breast,norm,3,600,600,0,1.0"],
         0, "region 2: coord_index is not 0..2"),
        # partly outside: column 50100 > width 50000
        (["1,2,breast,norm,0,500,49900,0,1.0", "1,2,breast,norm,1,500,50100,0,1.0",
          "1,2,breast,norm,2,600,50000,0,1.0"], 0,
         "region 2: polygon bbox (49900,500)-(50100,600) lies partly outside the 50000x40000 slide"),
        # wholly outside: row 41000 > height 40000
        (["1,2,breast,norm,0,41000,500,0,1.0", "1,2,breast,norm,1,41000,600,0,1.0",
          "1,2,breast,norm,2,41100,600,0,1.0"], 0, "wholly outside the 50000x40000 slide"),
        (["1,2,breast,norm,0,-300,500,0,1.0", "1,2,breast,norm,1,-300,600,0,1.0",
          "1,2,breast,norm,2,-200,600,0,1.0"], 0, "wholly outside"),
    ],
    ids=["short-row", "long-row", "non-numeric", "nan", "two-vertices", "collinear", "unknown-label",
         "mixed-label", "coord-gap", "partly-outside", "wholly-outside", "negative"],
)
def test_csv_bad_region_is_one_issue_naming_file_and_line_and_others_survive(tmp_path, bad, line_offset, reason):
    path, regions, first_bad_line = csv_with_bad_region(tmp_path, bad)
    ann = read_nedc_csv(path)
    issue = only_issue(ann.errors)
    assert issue.source == str(path)
    assert issue.location == f"line {first_bad_line + line_offset}"
    assert reason in issue.reason
    assert issue.region_id == 2
    assert str(issue).startswith(f"{path}: line {first_bad_line + line_offset}: ")
    assert [r.region_id for r in regions] == [1, 3]


def test_csv_duplicate_region_id_when_reused_non_contiguously(tmp_path):
    rows = square_rows(1) + square_rows(2, index=1, x=400) + square_rows(1, index=2, x=600)
    path = csv_file(tmp_path, rows)
    ann = read_nedc_csv(path)
    issue = only_issue(ann.errors)
    assert issue.location == f"line {FIRST_ROW_LINE + 8}" and issue.region_id == 1
    assert issue.reason == f"duplicate region id 1: used again at line {FIRST_ROW_LINE + 8} (first at line 8)"
    # which polygon is region 1 cannot be told: neither is used
    assert [r.region_id for r in ann.regions] == [2]


def test_csv_contiguous_rows_of_one_region_are_not_duplicates(tmp_path):
    ann = read_nedc_csv(csv_file(tmp_path, square_rows(1) + square_rows(2, index=1, x=400)))
    assert ann.errors == [] and [r.region_id for r in ann.regions] == [1, 2]


def test_csv_non_integer_region_id(tmp_path):
    path = csv_file(tmp_path, square_rows(1) + ["1,two,breast,norm,0,1,1,0,1.0"])
    ann = read_nedc_csv(path)
    issue = only_issue(ann.errors)
    assert issue.location == f"line {FIRST_ROW_LINE + 4}" and "region_id is not an integer: 'two'" in issue.reason
    assert [r.region_id for r in ann.regions] == [1]


def test_csv_faults_are_collected_per_file(tmp_path):
    rows = (square_rows(1)
            + ["1,2,breast,norm,0,1,1,0,1.0", "1,2,breast,norm,1,2,2,0,1.0"]  # 2 vertices
            + square_rows(3, label="tumr", index=2)
            + square_rows(4, index=3, x=600)
            + ["4,5,breast,norm,0,1,x,0,1.0"] + square_rows(5, index=4)[1:]
            + square_rows(6, index=5, x=49990))  # partly outside
    path = csv_file(tmp_path, rows)
    ann = read_nedc_csv(path)
    assert [r.region_id for r in ann.regions] == [1, 4]
    assert sorted(i.region_id for i in ann.errors) == [2, 3, 5, 6]
    assert all(i.source == str(path) and i.location.startswith("line ") for i in ann.errors)


def test_csv_missing_header_is_reported_and_regions_still_read(tmp_path):
    path = csv_file(tmp_path, square_rows(1), header=HEADER_LINES.splitlines(keepends=True)[-1])
    ann = read_nedc_csv(path)
    assert ann.header is None
    assert {i.location for i in ann.errors} == {"header"}
    reasons = " | ".join(i.reason for i in ann.errors)
    assert "version is None" in reasons and "no '# width = W pixels, height = H pixels' line" in reasons
    assert [r.region_id for r in ann.regions] == [1]  # bounds are then checked against the slide by the scan


def test_csv_garbled_size_line_names_its_line(tmp_path):
    header = HEADER_LINES.replace("# width = 50000 pixels, height = 40000 pixels", "# width = 5OOOO pixels, height")
    ann = read_nedc_csv(csv_file(tmp_path, square_rows(1), header=header))
    assert ann.header is None
    issue = only_issue(ann.errors)
    assert issue.location == "line 4" and "5OOOO" in issue.reason
    assert [r.region_id for r in ann.regions] == [1]


@pytest.mark.parametrize("value", ["abc", "-0.5", "inf"])
def test_csv_bad_mpp_names_its_line_and_keeps_the_size(tmp_path, value):
    header = HEADER_LINES.replace("0.502700", value)
    ann = read_nedc_csv(csv_file(tmp_path, square_rows(1), header=header))
    issue = only_issue(ann.errors)
    assert issue.location == "line 2"
    assert f"MicronsPerPixel is not a positive number (or 0 for unknown): {value!r}" in issue.reason
    assert ann.header is not None and ann.header.mpp is None and ann.header.width == 50000
    assert len(ann.regions) == 1


@pytest.mark.parametrize("value", ["0.000000", "0"])
def test_csv_zero_mpp_means_unknown_and_is_a_note(tmp_path, value):
    # what files from slides without a pixel size carry: not a fault, so `scan --strict` passes on them
    ann = read_nedc_csv(csv_file(tmp_path, square_rows(1), header=HEADER_LINES.replace("0.502700", value)))
    assert ann.errors == [] and ann.header.mpp is None and len(ann.regions) == 1
    (note,) = ann.notes
    assert (note.location, note.reason) == ("line 2", f"MicronsPerPixel is {value}: pixel size unknown")


def test_csv_wrong_version_and_unknown_header_line(tmp_path):
    header = HEADER_LINES.replace("csv_v1.0.0", "csv_v2.0.0").replace("# tissue = breast", "# what is this")
    ann = read_nedc_csv(csv_file(tmp_path, square_rows(1), header=header))
    assert sorted((i.location, i.reason.split(":")[0]) for i in ann.errors) == [
        ("line 1", "version is 'csv_v2.0.0', expected 'csv_v1.0.0'"), ("line 5", "header line not understood")]
    assert len(ann.regions) == 1


def test_csv_wrong_column_line(tmp_path):
    header = HEADER_LINES.replace("row,column", "column,row")
    ann = read_nedc_csv(csv_file(tmp_path, square_rows(1), header=header))
    issue = only_issue(ann.errors)
    assert issue.location == "line 7" and issue.reason.startswith("column line not understood: expected 'index,")
    assert ann.regions == []


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe binary", b"just some text\n"])
def test_csv_that_is_not_a_nedc_csv(tmp_path, content):
    path = tmp_path / "a.csv"
    path.write_bytes(content)
    ann = read_nedc_csv(path)
    assert ann.regions == [] and ann.errors
    assert all(i.source == str(path) for i in ann.errors)


def test_csv_with_crlf_line_endings_reads_the_same(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(REALISTIC_CSV.replace("\n", "\r\n").encode())
    ann = read_nedc_csv(path)
    assert ann.errors == [] and len(ann.regions) == 4


def test_csv_labels_are_checked_with_the_jobs_label_map(tmp_path):
    path = csv_file(tmp_path, square_rows(1, label="tumor"))
    assert "unknown label 'tumor'" in only_issue(read_nedc_csv(path).errors).reason
    ann = read_nedc_csv(path, LabelMap.from_config({"remap": {"tumor": "indc"}}))
    assert ann.errors == [] and ann.regions[0].label == "tumor"  # raw label kept; the map resolves it later


# ------------------------------------------------------------------------------------------- xml bad inputs
@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (xml_region("2", "norm", [("500", "500"), ("6OO", "500"), ("600", "600")]), "non-numeric X or Y"),
        (xml_region("2", "norm", [("500", "500"), ("600", "500")]), "has 2 vertices"),
        (xml_region("2", "norm", []), "has 0 vertices"),
        (xml_region("2", "norm", [("500", "500"), ("600", "600"), ("700", "700")]), "has zero area"),
        (xml_region("2", "tumr", square_pts(500, 500)), "unknown label 'tumr'"),
        (xml_region("2", "norm", square_pts(49980, 500)),
         "(49980,500)-(50030,550) lies partly outside the 50000x40000 slide"),
        (xml_region("2", "norm", square_pts(500, 40010)), "wholly outside the 50000x40000 slide"),
    ],
    ids=["non-numeric", "two-vertices", "no-vertices", "collinear", "unknown-label", "partly-outside",
         "wholly-outside"],
)
def test_xml_bad_region_is_one_issue_naming_file_and_region_and_others_survive(tmp_path, bad, reason):
    text = imagescope_xml(xml_region("1", "norm", square_pts()) + bad + xml_region("3", "dcis", square_pts(900)))
    path = write(tmp_path, "a.xml", text)
    ann = read_imagescope_xml(path)
    issue = only_issue(ann.errors)
    assert (issue.source, issue.location, issue.region_id) == (str(path), "region 2", 2)
    assert reason in issue.reason
    assert [r.region_id for r in ann.regions] == [1, 3]


def test_xml_duplicate_region_id_rejects_every_region_carrying_it(tmp_path):
    text = imagescope_xml(xml_region("1", "norm", square_pts()) + xml_region("2", "dcis", square_pts(900))
                          + xml_region("1.0", "indc", square_pts(2000)))
    ann = read_imagescope_xml(write(tmp_path, "a.xml", text))
    assert [(i.location, i.region_id) for i in ann.errors] == [("region 1", 1), ("region 1", 1)]
    assert [i.reason for i in ann.errors] == ["duplicate region id 1: 2 regions carry it (region #1 of the file)",
                                              "duplicate region id 1: 2 regions carry it (region #3 of the file)"]
    assert [(r.region_id, r.label) for r in ann.regions] == [(2, "dcis")]


@pytest.mark.parametrize("rid", ["one", "", "1.5", "inf", "nan"])
def test_xml_region_id_not_an_integer(tmp_path, rid):
    text = imagescope_xml(xml_region(rid, "norm", square_pts()) + xml_region("2", "norm", square_pts(900)))
    ann = read_imagescope_xml(write(tmp_path, "a.xml", text))
    issue = only_issue(ann.errors)
    assert issue.location == "region #1" and f"Id is not an integer: {rid!r}" in issue.reason
    assert [r.region_id for r in ann.regions] == [2]


def test_xml_missing_size_attributes(tmp_path):
    text = imagescope_xml(xml_region("1", "norm", square_pts()), attributes='<Attribute Name="" Id="0" Value=""/>')
    ann = read_imagescope_xml(write(tmp_path, "a.xml", text))
    issue = only_issue(ann.errors)
    assert issue.location == "header" and "width/height" in issue.reason
    assert ann.header is None and [r.region_id for r in ann.regions] == [1]


@pytest.mark.parametrize("value", ["half", "-0.5", "inf"])
def test_xml_bad_mpp(tmp_path, value):
    ann = read_imagescope_xml(write(tmp_path, "a.xml", imagescope_xml(xml_region("1", "norm", square_pts()),
                                                                        mpp=value)))
    issue = only_issue(ann.errors)
    assert issue.location == "header" and "MicronsPerPixel is not a positive number" in issue.reason
    assert value in issue.reason
    assert ann.header.mpp is None and len(ann.regions) == 1


def test_xml_zero_mpp_means_unknown(tmp_path):
    ann = read_imagescope_xml(write(tmp_path, "a.xml", imagescope_xml(xml_region("1", "norm", square_pts()),
                                                                        mpp="0")))
    assert ann.errors == [] and ann.header.mpp is None
    assert [(n.location, n.reason) for n in ann.notes] == [("header", "MicronsPerPixel is 0: pixel size unknown")]


@pytest.mark.parametrize("content", [b"", b"index,region_id\n0,1\n", b"\xff\xd8\xff\xe0 binary \x00\x01",
                                     b"<Annotations><Annotation>"])
def test_non_xml_file(tmp_path, content):
    path = tmp_path / "a.xml"
    path.write_bytes(content)
    ann = read_imagescope_xml(path)
    issue = only_issue(ann.errors)
    assert issue.source == str(path) and "not a readable ImageScope xml" in issue.reason
    assert ann.regions == [] and ann.header is None


def test_xml_wrong_root_element(tmp_path):
    path = write(tmp_path, "a.xml", '<?xml version="1.0"?>\n<Annotation><Regions/></Annotation>\n')
    ann = read_imagescope_xml(path)
    issue = only_issue(ann.errors)
    assert issue.source == str(path) and "root element is <Annotation>, expected <Annotations>" in issue.reason
    assert ann.regions == []
