"""Hostile annotation files (issue 9, class 1): whatever one file holds, its reader returns (never raises), and
every region its text names is either returned or named by an Issue with file, line/region and reason.

Each case is a real file written to tmp_path; the fuzz tests mutate valid files byte by byte (hypothesis,
derandomized: the same examples on every run). The accounting property is defined in tests/wsi/accounting.py.
"""

from __future__ import annotations

import codecs
import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crystal_dask.wsi.annotations import (
    AnnotationFile,
    Header,
    Region,
    format_imagescope_xml,
    format_nedc_csv,
    read_annotations,
    read_imagescope_xml,
    read_nedc_csv,
)
from crystal_dask.wsi.polygon import first_crossing
from tests.wsi.accounting import Reject, check_accounting

HEADER = Header(bname="s", mpp=0.25, width=2000, height=1500)


def square(rid: int, label: str = "norm", x: float = 10, y: float = 10, side: float = 40) -> Region:
    return Region(rid, label, "breast", (x, x + side, x + side, x), (y, y, y + side, y + side))


REGIONS = [square(1), square(2, "cdcs", x=100), square(3, "", x=200), square(4, "indc", x=300),
           Region(9, "dcis", "breast", (500.5, 620.25, 560.0), (40.0, 60.5, 200.75))]
CSV_TEXT = format_nedc_csv(HEADER, REGIONS)
XML_TEXT = format_imagescope_xml(HEADER, REGIONS)


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def ids(ann: AnnotationFile) -> list[int]:
    return [r.region_id for r in ann.regions]


def account(path: Path, ann: AnnotationFile) -> None:
    check_accounting(path.suffix, path.read_bytes(), ids(ann),
                     [Reject(i.location, i.region_id, i.reason) for i in ann.errors])


def one_line(ann: AnnotationFile, path: Path) -> None:
    """Every fault a user sees is one line naming the file."""
    for issue in ann.errors:
        text = str(issue)
        assert text.startswith(f"{path}: ") and "\n" not in text and "\r" not in text and len(text) < 600, text


def data_line(rid: int, vertex: int = 0) -> int:
    """1-based line of region `rid`'s vertex in CSV_TEXT."""
    lines = CSV_TEXT.splitlines()
    return next(n for n, line in enumerate(lines, 1) if line.split(",")[1:2] == [str(rid)]
                and line.split(",")[4] == str(vertex))


# ------------------------------------------------------------------------------------------ csv module limits
def test_csv_field_longer_than_the_csv_modules_limit_is_one_region_reject(tmp_path):
    path = write(tmp_path, "a.csv", CSV_TEXT.replace(",1,breast,norm,", ",1,breast," + "x" * 200_000 + ","))
    ann = read_nedc_csv(path)
    assert ids(ann) == [2, 3, 4, 9]
    (issue,) = ann.errors
    assert (issue.location, issue.region_id) == (f"line {data_line(1)}", 1)
    assert "malformed" not in issue.reason  # read, not refused as a line: its only fault is the label
    assert issue.reason.startswith("region 1: unknown label 'xxxx") and "(200000 characters)" in issue.reason
    one_line(ann, path)
    account(path, ann)


@pytest.mark.parametrize("where", ["label", "region_id", "row"])
def test_csv_nul_bytes(tmp_path, where):
    line = CSV_TEXT.splitlines()[data_line(2, 1) - 1]
    fields = line.split(",")
    k = {"label": 3, "region_id": 1, "row": 5}[where]
    fields[k] = fields[k][:1] + "\x00" + fields[k][1:]
    path = write(tmp_path, "a.csv", CSV_TEXT.replace(line, ",".join(fields)))
    ann = read_nedc_csv(path)
    assert 2 not in ids(ann) and {1, 3, 4, 9} <= set(ids(ann))
    assert any(i.location == f"line {data_line(2, 1)}" for i in ann.errors)
    assert all("\x00" not in str(i) for i in ann.errors)  # shown escaped
    one_line(ann, path)
    account(path, ann)


def test_csv_stray_quote_spoils_its_line_only(tmp_path):
    # the csv module reads from an opening quote to the next one, across lines: every region after it vanished
    many = REGIONS + [square(20 + k, "norm", x=20 + 60 * k, y=400) for k in range(7)]
    text = format_nedc_csv(HEADER, many)
    bad = text.splitlines()[data_line(1, 1) - 1]
    path = write(tmp_path, "a.csv", text.replace(bad, bad.replace(",norm,", ',"norm,')))
    ann = read_nedc_csv(path)
    assert ids(ann) == [2, 3, 4, 9, *range(20, 27)]
    (issue,) = ann.errors
    assert issue.region_id == 1 and issue.location == f"line {data_line(1, 1)}"
    assert issue.reason.startswith("malformed row: a double quote that does not enclose a whole field")
    account(path, ann)


def test_csv_quoted_fields_are_read(tmp_path):
    quoted = "\n".join(line if line.startswith("#") or line.startswith("index") else
                       ",".join(f'"{f}"' for f in line.split(",")) for line in CSV_TEXT.splitlines()) + "\n"
    ann = read_nedc_csv(write(tmp_path, "a.csv", quoted))
    assert ann.errors == [] and ann.regions == read_nedc_csv(write(tmp_path, "b.csv", CSV_TEXT)).regions


def test_csv_form_feed_and_other_separators_do_not_split_lines(tmp_path):
    # str.splitlines would break at \x0c, \x1c, \x85, \u2028: line numbers would no longer match an editor's
    line = CSV_TEXT.splitlines()[data_line(4, 2) - 1]
    path = write(tmp_path, "a.csv", CSV_TEXT.replace(line, line.replace("indc", "in\x0cd\u2028c")))
    ann = read_nedc_csv(path)
    (issue,) = ann.errors
    assert (issue.location, issue.region_id) == (f"line {data_line(4, 2)}", 4)  # the line an editor shows
    assert "differs from the region's 'indc'" in issue.reason


def test_csv_old_mac_line_ends(tmp_path):
    ann = read_nedc_csv(write(tmp_path, "a.csv", CSV_TEXT.replace("\n", "\r")))
    assert ann.errors == [] and ids(ann) == [1, 2, 3, 4, 9]


def test_csv_row_with_unreadable_id_inside_a_region_spoils_that_region(tmp_path):
    # the last vertex of region 4 loses its id: region 4 must not be used as a triangle
    line = CSV_TEXT.splitlines()[data_line(4, 3) - 1]
    path = write(tmp_path, "a.csv", CSV_TEXT.replace(line, line.replace(",4,", ",4x,")))
    ann = read_nedc_csv(path)
    assert ids(ann) == [1, 2, 3, 9]
    where = f"line {data_line(4, 3)}"
    assert [(i.location, i.region_id) for i in ann.errors] == [(where, None), (where, 4)]
    assert "region_id is not an integer: '4x'" in ann.errors[0].reason
    assert ann.errors[1].reason == f"region 4: a row next to its rows, at {where}, could not be read; " \
                                   "the region may have lost a vertex"
    account(path, ann)


# ------------------------------------------------------------------------------------------- integer ranges
@pytest.mark.parametrize(("rid", "kept"), [(str(2**63 - 1), True), (str(-(2**63)), True), (str(2**63), False),
                                           (str(10**22), False), ("9" * 5000, False)])
def test_csv_region_id_must_fit_int64(tmp_path, rid, kept):
    path = write(tmp_path, "a.csv", CSV_TEXT.replace(",9,breast,", f",{rid},breast,"))
    ann = read_nedc_csv(path)
    assert ids(ann) == [1, 2, 3, 4] + ([int(rid)] if kept else [])
    if not kept:
        assert [i.location for i in ann.errors] == [f"line {data_line(9, v)}" for v in range(3)]
        assert all(i.region_id is None and "region_id does not fit a 64-bit integer" in i.reason for i in ann.errors)
    account(path, ann)


@pytest.mark.parametrize("size", ["9" * 5000, str(2**63)])
def test_csv_slide_size_must_fit_int64(tmp_path, size):
    path = write(tmp_path, "a.csv", CSV_TEXT.replace("width = 2000", f"width = {size}"))
    ann = read_nedc_csv(path)
    (issue,) = ann.errors
    assert issue.location == "line 4" and "does not fit a 64-bit integer" in issue.reason
    assert ann.header is None and ids(ann) == [1, 2, 3, 4, 9]  # bounds are then checked against the slide
    one_line(ann, path)


@pytest.mark.parametrize("rid", ["1e300", str(2**63), "9" * 5000, "1e999999999"])
def test_xml_region_id_must_fit_int64(tmp_path, rid):
    path = write(tmp_path, "a.xml", XML_TEXT.replace('Id="9"', f'Id="{rid}"'))
    ann = read_imagescope_xml(path)
    assert ids(ann) == [1, 2, 3, 4]
    (issue,) = ann.errors
    assert issue.location == "region #5" and issue.reason.startswith("Id does not fit a 64-bit integer: ")
    one_line(ann, path)
    account(path, ann)


def test_xml_huge_size_attribute(tmp_path):
    ann = read_imagescope_xml(write(tmp_path, "a.xml", XML_TEXT.replace('Value="2000"', f'Value="{"9" * 5000}"')))
    assert [i.location for i in ann.errors] == ["header"] and ann.header is None and len(ann.regions) == 5


# ----------------------------------------------------------------------------------------------- encodings
@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"])
def test_csv_byte_order_mark_is_read_not_rejected(tmp_path, encoding):
    bom = {"utf-8-sig": b"", "utf-16-le": codecs.BOM_UTF16_LE, "utf-16-be": codecs.BOM_UTF16_BE,
           "utf-32-le": codecs.BOM_UTF32_LE, "utf-32-be": codecs.BOM_UTF32_BE}[encoding]
    ann = read_nedc_csv(write(tmp_path, "a.csv", bom + CSV_TEXT.encode(encoding)))
    assert ann.errors == [] and ann.header == HEADER
    assert ann.regions == read_nedc_csv(write(tmp_path, "b.csv", CSV_TEXT)).regions


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_xml_byte_order_mark_is_read(tmp_path, encoding):
    text = XML_TEXT.replace("encoding='utf-8'", "encoding='utf-16'") if encoding == "utf-16" else XML_TEXT
    ann = read_imagescope_xml(write(tmp_path, "a.xml", text.encode(encoding)))
    assert ann.errors == [] and ids(ann) == [1, 2, 3, 4, 9]


@pytest.mark.parametrize(("name", "data", "says"), [
    ("a.csv", CSV_TEXT.replace("norm", "n\xe9rm").encode("latin-1"), "not UTF-8 text: byte 0xe9 at offset"),
    ("a.csv", codecs.BOM_UTF16_LE + CSV_TEXT.encode("utf-16-le")[:-1], "not UTF-16-LE text"),
    ("a.xml", XML_TEXT.replace("norm", "n\xe9rm").encode("latin-1"), "not a readable ImageScope xml"),
    ("a.xml", XML_TEXT.encode("utf-16"), "not a readable ImageScope xml: encoding specified in XML declaration"),
    ("a.xml", XML_TEXT.replace("utf-8", "utf-7").encode(), "multi-byte encodings are not supported"),
    ("a.xml", XML_TEXT.replace("utf-8", "no-such-codec").encode(), "unknown encoding"),
])
def test_undecodable_file_is_one_whole_file_reject_naming_it(tmp_path, name, data, says):
    path = write(tmp_path, name, data)
    ann = read_annotations(path)
    (issue,) = ann.errors
    assert (issue.source, issue.location, issue.region_id) == (str(path), "", None) and says in issue.reason
    assert ann.regions == []
    one_line(ann, path)


# ------------------------------------------------------------------------------------------------ entities
@pytest.mark.parametrize("doctype", ['<!DOCTYPE Annotations SYSTEM "labels.dtd">',
                                     '<!DOCTYPE Annotations [<!ENTITY % ext SYSTEM "labels.dtd"> %ext;]>'])
def test_xml_entity_the_parser_will_not_expand_is_a_reject_not_an_empty_label(tmp_path, doctype):
    text = XML_TEXT.replace("<Annotations", doctype + "\n<Annotations", 1).replace('Text="norm"', 'Text="&lbl;"')
    path = write(tmp_path, "a.xml", text)
    ann = read_imagescope_xml(path)
    (issue,) = ann.errors
    assert issue.location == "" and "external DTD or parameter entity" in issue.reason
    assert ann.regions == []  # not region 1 with label '' (read as null)
    one_line(ann, path)


def test_xml_internal_entity_is_expanded_and_an_undeclared_one_refused(tmp_path):
    declared = XML_TEXT.replace("<Annotations", '<!DOCTYPE Annotations [<!ENTITY lbl "bckg">]>\n<Annotations', 1)
    ann = read_imagescope_xml(write(tmp_path, "a.xml", declared.replace('Text="norm"', 'Text="&lbl;"')))
    assert ann.errors == [] and ann.regions[0].label == "bckg"
    ann = read_imagescope_xml(write(tmp_path, "b.xml", XML_TEXT.replace('Text="norm"', 'Text="&lbl;"')))
    (issue,) = ann.errors
    assert issue.location == "" and "undefined entity" in issue.reason and ann.regions == []


def test_xml_region_outside_its_place_is_accounted(tmp_path):
    stray = '<Region Id="77" Text="norm"><Vertices><Vertex X="1" Y="1"/></Vertices></Region>'
    path = write(tmp_path, "a.xml", XML_TEXT.replace("</Annotations>", stray + "</Annotations>"))
    ann = read_imagescope_xml(path)
    (issue,) = ann.errors
    assert (issue.location, issue.region_id) == ("region 77", 77) and "outside" in issue.reason
    assert ids(ann) == [1, 2, 3, 4, 9]
    account(path, ann)


# -------------------------------------------------------------------------------------------- simple polygons
BOWTIE = ((0, 40, 0, 30), (0, 40, 20, 0))  # edges 0->1 and 2->3 cross at (12, 12); area 100, not 0


@pytest.mark.parametrize("fmt", [format_nedc_csv, format_imagescope_xml])
@pytest.mark.parametrize(("shape", "says"), [
    (BOWTIE, "the edge from vertex 0 meets the edge from vertex 2"),
    (((0, 40, 40, 20, 20, 0), (0, 0, 40, 40, 0, 40)), "meets"),  # a vertex touches another edge's inside
    # edge 4 runs along edge 0 (collinear overlap); edge 3 ends on edge 0 first
    (((0, 40, 40, 30, 30, 20, 20, 0), (20, 20, 40, 40, 20, 20, 0, 0)),
     "edge from vertex 0 meets the edge from vertex 3"),
    (((0, 40, 40, 40, 40, 0), (0, 0, 30, 10, 40, 40)), "turns back on itself at vertex 2"),  # a spike
])
def test_self_intersecting_polygon_is_rejected_naming_the_region(tmp_path, fmt, shape, says):
    x, y = (tuple(float(v) + 500 for v in c) for c in shape)
    regions = [square(1), Region(2, "norm", "breast", x, y), square(3, x=900)]
    path = write(tmp_path, "a" + (".csv" if fmt is format_nedc_csv else ".xml"), fmt(HEADER, regions))
    ann = read_annotations(path)
    assert ids(ann) == [1, 3]
    (issue,) = ann.errors
    assert issue.region_id == 2 and "self-intersecting polygon" in issue.reason and says in issue.reason
    assert issue.location == ("line 12" if fmt is format_nedc_csv else "region 2")
    one_line(ann, path)


def test_closed_rings_and_repeated_vertices_are_simple(tmp_path):
    ring = Region(2, "norm", "breast", (500, 540, 540, 540, 500, 500), (500, 500, 500, 540, 540, 500))
    ann = read_nedc_csv(write(tmp_path, "a.csv", format_nedc_csv(HEADER, [square(1), ring])))
    assert ann.errors == [] and ids(ann) == [1, 2]


def _brute_simple(x: list[int], y: list[int]) -> bool:
    """The definition of first_crossing, pair by pair in exact integer arithmetic."""
    pts = [(a, b) for a, b in zip(x, y, strict=True)]
    pts = [p for i, p in enumerate(pts) if p != pts[(i + 1) % len(pts)]]
    n = len(pts)
    if n < 3:
        return True

    def orient(a, b, c):
        v = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
        return (v > 0) - (v < 0)

    def on(a, b, c):  # c within the box of a-b
        return min(a[0], b[0]) <= c[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= c[1] <= max(a[1], b[1])

    def meet(a, b, c, d):
        o1, o2, o3, o4 = orient(a, b, c), orient(a, b, d), orient(c, d, a), orient(c, d, b)
        if o1 * o2 < 0 and o3 * o4 < 0:
            return True
        return ((o1 == 0 and on(a, b, c)) or (o2 == 0 and on(a, b, d)) or (o3 == 0 and on(c, d, a))
                or (o4 == 0 and on(c, d, b)))

    for k in range(n):  # turning back by 180 degrees at vertex k+1
        a, b, c = pts[k], pts[(k + 1) % n], pts[(k + 2) % n]
        if orient(a, b, c) == 0 and (a[0] - b[0]) * (c[0] - b[0]) + (a[1] - b[1]) * (c[1] - b[1]) > 0:
            return False
    for i, j in itertools.combinations(range(n), 2):
        if j - i > 1 and not (i == 0 and j == n - 1) and meet(pts[i], pts[(i + 1) % n], pts[j], pts[(j + 1) % n]):
            return False
    return True


def test_first_crossing_agrees_with_the_pairwise_definition():
    rng = np.random.default_rng(9)
    simple = 0
    for _ in range(3000):
        n = int(rng.integers(3, 9))
        x, y = rng.integers(0, 5, n).tolist(), rng.integers(0, 5, n).tolist()  # small grid: many degenerate cases
        expected = _brute_simple(x, y)
        simple += expected
        assert (first_crossing(x, y) is None) == expected, (x, y)
    assert 200 < simple < 2800  # both outcomes well exercised


def test_first_crossing_of_a_large_polygon_is_fast_and_finds_one_crossing():
    k = 20_000
    ang = np.arange(k) * 2 * np.pi / k
    x, y = 5000 + 1000 * np.cos(ang), 5000 + 1000 * np.sin(ang)
    assert first_crossing(x, y) is None
    x[[100, 101]] = x[[101, 100]] + np.array([0.0, 0.0])  # swap two neighbours' x: their edges now cross
    y[[100, 101]] = y[[101, 100]]
    assert first_crossing(x, y) == (99, 101)


# ---------------------------------------------------------------------------------------------- MPP, regions
def test_file_with_no_region_rows_reads_empty(tmp_path):
    ann = read_nedc_csv(write(tmp_path, "a.csv", format_nedc_csv(HEADER, [])))
    assert ann.errors == [] and ann.regions == []  # the scan rejects the slide ("no regions")


# --------------------------------------------------------------------------------------------------- fuzzing
TOKENS = [b'"', b",", b",,", b"\x00", b"\n", b"\r", b"\r\n", codecs.BOM_UTF8, codecs.BOM_UTF16_LE, b"\xff",
          b"\xe9", b"99999999999999999999999", b"9" * 5000, b"1e309", b"-1", b"nan", b" ", b"#", b"x" * 140_000,
          b"&lbl;", b"<", b">", b"</Region>", b'<Region Id="7">', b"<!DOCTYPE a SYSTEM 'x'>", b'"""', b"\x0c"]

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.integers(0, len(TOKENS) - 1)),
    st.tuples(st.just("duplicate"), st.integers(0, 1 << 20), st.just(0)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 20), st.just(0)),
)


def mutate(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    """Apply byte-level mutations; positions are taken modulo the current length (lines for duplicate/delete)."""
    for op, pos, arg in ops:
        if op in ("duplicate", "delete"):
            lines = data.split(b"\n")
            k = pos % len(lines)
            lines[k:k + 1] = [lines[k], lines[k]] if op == "duplicate" else []
            data = b"\n".join(lines)
            continue
        if not data:
            data = TOKENS[arg % len(TOKENS)] if op == "insert" else data
            continue
        p = pos % len(data)
        if op == "flip":
            data = data[:p] + bytes([data[p] ^ (1 << arg)]) + data[p + 1:]
        elif op == "truncate":
            data = data[:p]
        else:
            data = data[:p] + TOKENS[arg] + data[p:]
    return data


FUZZ = settings(max_examples=250, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("suffix", [".csv", ".xml"])
@FUZZ
@given(ops=st.lists(mutation, min_size=1, max_size=4))
def test_fuzz_readers_never_raise_and_account_for_every_named_region(tmp_path_factory, suffix, ops):
    base = (CSV_TEXT if suffix == ".csv" else XML_TEXT).encode()
    path = tmp_path_factory.getbasetemp() / f"fuzz{suffix}"
    path.write_bytes(mutate(base, ops))
    ann = read_annotations(path)
    one_line(ann, path)
    account(path, ann)


def test_the_fuzz_mutations_reach_the_faults_they_are_meant_to(tmp_path):
    """The fuzz is only as good as its mutations: check that they produce the kinds of fault the readers know."""
    seen = set()
    rng = np.random.default_rng(0)
    for suffix, base in ((".csv", CSV_TEXT.encode()), (".xml", XML_TEXT.encode())):
        path = tmp_path / f"m{suffix}"
        for _ in range(100):
            ops = []
            for _ in range(int(rng.integers(1, 4))):
                op = ("flip", "truncate", "insert", "duplicate", "delete")[int(rng.integers(5))]
                ops.append((op, int(rng.integers(1 << 20)), int(rng.integers(8 if op == "flip" else len(TOKENS)))))
            path.write_bytes(mutate(base, ops))
            for issue in read_annotations(path).errors:
                seen.add((suffix, "whole file" if issue.location == "" else issue.reason.split(" ")[0]))
    assert {(".csv", "whole file"), (".csv", "malformed"), (".csv", "region_id"), (".xml", "whole file")} <= seen, seen
