"""NEDC csv (csv_v1.0.0) and Aperio ImageScope xml annotations: one region model, readers, writers, checks.

Internally a polygon is level-0 (x, y) floats, x horizontal. NEDC csv stores (row, column) = (y, x); ImageScope
xml stores (X, Y). Bad input never raises out of a reader: every fault becomes an `Issue` naming the file and
the line (csv) or region (xml), and the remaining regions are still returned.

Every region a file's text names is either returned or named by an Issue (by its id, or by the line or element
that names it when the id itself is unusable), unless the whole file is refused (an Issue with location ""). A
region id is named by a csv row below the column line (its second field) or by any <Region> element of an xml
file. Text is read as UTF-8, UTF-16 or UTF-32 when a byte-order mark says so (the mark is not part of the text).
Numbers are checked against the types they are stored in (64-bit integers), and a polygon must be simple.
`notes` hold facts worth telling that are not faults (an MPP of 0, which means "unknown").
"""

from __future__ import annotations

import codecs
import io
import math
import re
import xml.etree.ElementTree as ET
import xml.parsers.expat as expat
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np

from crystal_dask.vocab import DEFAULT_LABELS, LabelMap, UnknownLabel
from crystal_dask.wsi.polygon import first_crossing

CSV_VERSION = "csv_v1.0.0"
CSV_COLUMNS = ("index", "region_id", "tissue", "label", "coord_index", "row", "column", "depth", "confidence")
_SIZE = re.compile(r"width\s*=\s*(\d+)\s*pixels\s*,\s*height\s*=\s*(\d+)\s*pixels")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # region ids and sizes are stored as int64 (store/schema.py)
_INTEGER = re.compile(r"[+-]?[0-9]+")  # ASCII digits only: int() would also take '1_000' and other scripts' digits
_NEWLINE = re.compile(r"\r\n|\r|\n")  # what editors count as a line end; str.splitlines also splits on \x0c etc.
# longest first: the UTF-32-LE mark begins with the UTF-16-LE one
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_SHOW = 120  # characters of a bad line or value quoted in a reason: a reason stays one readable line


@dataclass(frozen=True)
class Header:
    bname: str
    mpp: float | None
    width: int
    height: int
    tissue: str = "breast"


@dataclass(frozen=True)
class Region:
    region_id: int
    label: str  # raw label, lower case ("" is kept as written; LabelMap reads it as null)
    tissue: str
    x: tuple[float, ...]  # level-0 vertices, x horizontal (column)
    y: tuple[float, ...]  # level-0 vertices, y vertical (row)
    confidence: float = 1.0

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """Half-open level-0 box (x0, y0, x1, y1) covering every vertex."""
        return (math.floor(min(self.x)), math.floor(min(self.y)), math.ceil(max(self.x)), math.ceil(max(self.y)))

    @property
    def area(self) -> float:
        """Polygon area in level-0 pixels (shoelace formula)."""
        n = len(self.x)
        s = sum(self.x[i] * self.y[(i + 1) % n] - self.x[(i + 1) % n] * self.y[i] for i in range(n))
        return abs(s) / 2.0


@dataclass(frozen=True)
class Issue:
    """One fault in an input file; `location` is "line N", "region N" or "header"."""

    source: str
    location: str
    reason: str
    region_id: int | None = None

    def __str__(self) -> str:
        return f"{self.source}: {self.location}: {self.reason}"


@dataclass
class AnnotationFile:
    path: Path
    header: Header | None
    regions: list[Region] = field(default_factory=list)
    errors: list[Issue] = field(default_factory=list)
    notes: list[Issue] = field(default_factory=list)  # not faults: told, never rejected

    def issue(self, location: str, reason: str, region_id: int | None = None) -> None:
        """Record a fault of this file; readers go on with the rest."""
        self.errors.append(Issue(str(self.path), location, reason, region_id))

    def note(self, location: str, text: str) -> None:
        """Record something worth telling about this file that is not a fault."""
        self.notes.append(Issue(str(self.path), location, text))


def _show(text: str) -> str:
    """A value quoted in a reason: repr (one line, control characters escaped), cut to _SHOW characters."""
    return repr(text) if len(text) <= _SHOW else repr(text[:_SHOW]) + f"... ({len(text)} characters)"


def _brief(message: object) -> str:
    """A library's error message as one line of reasonable length (parsers quote the offending text)."""
    text = " ".join(str(message).split())
    return text if len(text) <= 2 * _SHOW else text[: 2 * _SHOW] + "..."


def parse_int64(text: str) -> int | None:
    """A decimal integer that fits int64 (the type ids and sizes are stored in); None for anything else."""
    text = text.strip()
    if len(text) > 21 or not _INTEGER.fullmatch(text):  # 21: sign + 20 digits; longer cannot fit (nor hang int())
        return None
    value = int(text)
    return value if INT64_MIN <= value <= INT64_MAX else None


def decode_text(data: bytes) -> str:
    """Bytes of a text file as str: a byte-order mark chooses UTF-8/16/32 (and is dropped), else UTF-8.

    Raises UnicodeDecodeError for bytes that are not text in that encoding.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return data.decode(encoding)
    return data.decode("utf-8")


def _read_text(path: Path, issue) -> str | None:
    """The file's text, or None after a whole-file issue naming why it cannot be read."""
    try:
        return decode_text(path.read_bytes())
    except OSError as exc:
        issue("", f"cannot read the file: {_brief(exc.strerror or exc)}")
    except UnicodeDecodeError as exc:
        issue("", f"cannot read the file: not {exc.encoding.upper()} text: byte {exc.object[exc.start]:#04x} at "
                  f"offset {exc.start} ({exc.reason})")
    return None


def _num(v: float) -> str:
    """Canonical number text: integers without a decimal point, other floats in shortest repr."""
    return str(int(v)) if float(v).is_integer() else repr(float(v))


# ----------------------------------------------------------------------------------------------- NEDC csv
def _read_csv_header(lines: list[str], issue) -> tuple[dict[str, str], dict[str, str], int]:
    """Parse the leading '#' lines; return (fields, each field's "line N", index of the first non-comment line)."""
    fields: dict[str, str] = {}
    where: dict[str, str] = {}
    i = 0
    while i < len(lines) and lines[i].startswith("#"):
        text = lines[i][1:].strip()
        key, eq, value = text.partition("=")
        m = _SIZE.fullmatch(text)
        if m:
            fields["width"], fields["height"] = m.groups()
            where["width"] = where["height"] = f"line {i + 1}"
        elif key.strip().lower() in ("width", "height"):
            # a garbled size line would otherwise pass as a 'width' field and fail int() later
            issue(f"line {i + 1}", f"size line not understood (expected '# width = W pixels, height = H pixels'): "
                                   f"{_show(lines[i])}")
            where["width"] = f"line {i + 1}"
        elif eq:
            fields[key.strip()] = value.strip()
            where[key.strip()] = f"line {i + 1}"
        elif text:
            issue(f"line {i + 1}", f"header line not understood: {_show(lines[i])}")
        i += 1
    return fields, where, i


def _parse_mpp(text: str | None) -> tuple[float | None, bool]:
    """(MPP, ok) of a header value: a positive number, or 0 which slides without a pixel size carry (unknown)."""
    if text is None or not text.strip():
        return None, True
    try:
        mpp = float(text)
    except ValueError:
        return None, False
    if not (mpp >= 0 and math.isfinite(mpp)):
        return None, False
    return (mpp or None), True


def _header_from(fields: dict[str, str], where: dict[str, str], path: Path, out: AnnotationFile) -> Header | None:
    issue = out.issue
    if fields.get("version") != CSV_VERSION:
        version = fields.get("version")
        issue(where.get("version", "header"), f"version is {_show(version) if version is not None else None}, "
                                              f"expected {CSV_VERSION!r}")
    mpp: float | None = None
    if "MicronsPerPixel" in fields:
        mpp, ok = _parse_mpp(fields["MicronsPerPixel"])
        if not ok:
            issue(where["MicronsPerPixel"], f"MicronsPerPixel is not a positive number (or 0 for unknown): "
                                            f"{_show(fields['MicronsPerPixel'])}")
        elif mpp is None:
            out.note(where["MicronsPerPixel"], f"MicronsPerPixel is {fields['MicronsPerPixel']}: pixel size unknown")
    if "width" not in fields:
        if "width" not in where:  # a garbled size line was reported where it stands
            issue("header", "no '# width = W pixels, height = H pixels' line")
        return None
    width, height = parse_int64(fields["width"]), parse_int64(fields["height"])
    if width is None or height is None:
        issue(where["width"], f"slide size {_show(fields['width'])} x {_show(fields['height'])} does not fit a "
                              "64-bit integer")
        return None
    return Header(bname=fields.get("bname", path.stem), mpp=mpp, width=width, height=height,
                  tissue=fields.get("tissue", "breast"))


def _fields(line: str) -> list[str] | None:
    """The comma-separated fields of one csv line; None when a double quote makes it ambiguous.

    NEDC csv never quotes. A field wholly inside double quotes is unquoted ('"a""b"' -> 'a"b'), as other csv
    writers do; any other quote is refused for this line alone. Fields never span lines, so one stray quote
    cannot swallow the rows after it, and there is no field size limit (the csv module has both).
    """
    out = []
    for f in line.split(","):
        g = f.strip()
        if '"' in g:
            inner = g[1:-1]
            if not (len(g) >= 2 and g[0] == g[-1] == '"' and '"' not in inner.replace('""', "")):
                return None
            g = inner.replace('""', '"')
        out.append(g)
    return out


def _id_field(line: str) -> int | None:
    """The region id of a csv line read as leniently as possible (for rows that are otherwise malformed)."""
    parts = line.split(",")
    return parse_int64(parts[1].strip().strip('"')) if len(parts) > 1 else None


def read_nedc_csv(path: str | Path, labels: LabelMap = DEFAULT_LABELS) -> AnnotationFile:
    """Read a NEDC csv file: header lines, the column line, then one row per polygon vertex."""
    path = Path(path)
    out = AnnotationFile(path, None)
    issue = out.issue

    text = _read_text(path, issue)
    if text is None:
        return out
    lines = _NEWLINE.split(text)
    if lines and lines[-1] == "":
        lines.pop()  # the text after the last line end
    fields, where, start = _read_csv_header(lines, issue)
    out.header = _header_from(fields, where, path, out)
    columns = _fields(lines[start]) if start < len(lines) else None
    if columns is None or tuple(columns) != CSV_COLUMNS:
        got = _show(lines[start]) if start < len(lines) else "the end of the file"
        issue(f"line {start + 1}", f"column line not understood: expected {','.join(CSV_COLUMNS)!r}, got {got}")
        return out

    # region_id -> {"line": first line, "index", "label", "tissue", "confidence", "coords": [(ci, x, y, line)]}
    groups: dict[int, dict] = {}
    bad_regions: set[int] = set()  # ids already reported: their regions are not used
    last: tuple[int, str] | None = None  # (region id, index field) of the last row whose id could be read
    orphan: tuple[str, str] | None = None  # (location, index field) of a row whose id could not, still pending

    def refuse(rid: int, location: str, reason: str) -> None:
        if rid not in bad_regions:
            bad_regions.add(rid)
            issue(location, reason, rid)

    def related(index: str, other: str) -> bool:
        """Might a row with this index field belong to the region whose rows carry `other`?"""
        return index == other or parse_int64(index) is None

    for lineno, line in enumerate(lines[start + 1 :], start=start + 2):
        if not line.strip():
            continue
        where = f"line {lineno}"
        row = _fields(line)
        rid: int | None = None
        if row is None or len(row) != len(CSV_COLUMNS):
            rid = _id_field(line)  # the region lost a vertex: when its id is readable, it cannot be used either
            what = "a double quote that does not enclose a whole field" if row is None else (
                f"expected {len(CSV_COLUMNS)} fields, got {len(row)}")
            reason = f"malformed row: {what}: {_show(line)}"
        else:
            rec = dict(zip(CSV_COLUMNS, row, strict=True))
            rid = parse_int64(rec["region_id"])
            if rid is None:
                fits = "does not fit a 64-bit integer" if _INTEGER.fullmatch(rec["region_id"]) else "is not an integer"
                reason = f"region_id {fits}: {_show(rec['region_id'])}"
            else:
                reason = None
        if rid is None:
            # Which region this row belonged to cannot be told. A neighbouring region with the same index field
            # (or any, when the index is unreadable too) may have lost a vertex here: it is refused, not used
            # with a hole in its outline.
            index = line.split(",")[0].strip().strip('"')
            issue(where, reason)
            if last is not None and related(index, last[1]):
                refuse(last[0], where, f"region {last[0]}: a row next to its rows, at {where}, could not be read; "
                                       "the region may have lost a vertex")
            orphan = (where, index)
            continue
        index = row[0] if row is not None else line.split(",")[0].strip()
        if orphan is not None and related(orphan[1], index):
            refuse(rid, orphan[0], f"region {rid}: a row next to its rows, at {orphan[0]}, could not be read; "
                                   "the region may have lost a vertex")
        orphan = None
        if reason is not None:  # a malformed row with a readable id
            bad_regions.add(rid)
            issue(where, reason, rid)
            last = (rid, index)
            continue
        ci = parse_int64(rec["coord_index"])
        try:
            y, x = float(rec["row"]), float(rec["column"])
            conf = float(rec["confidence"])
            if ci is None or not (math.isfinite(x) and math.isfinite(y)):
                raise ValueError
        except ValueError:
            bad_regions.add(rid)
            issue(where, "non-numeric value in coord_index/row/column/confidence: "
                         + ", ".join(_show(rec[k]) for k in ("coord_index", "row", "column", "confidence")), rid)
            last = (rid, index)
            continue
        g = groups.get(rid)
        if g is None:
            g = groups[rid] = {"line": lineno, "label": rec["label"].lower(), "tissue": rec["tissue"],
                               "confidence": conf, "coords": []}
        elif (last is None or rid != last[0]) and rid not in bad_regions:
            refuse(rid, where, f"duplicate region id {rid}: used again at {where} (first at line {g['line']})")
        if rec["label"].lower() != g["label"]:
            refuse(rid, where, f"label {_show(rec['label'])} differs from the region's {_show(g['label'])}")
        g["coords"].append((ci, x, y, lineno))
        last = (rid, index)

    for rid, g in groups.items():
        if rid in bad_regions:
            continue
        coords = sorted(g["coords"])
        if [c[0] for c in coords] != list(range(len(coords))):
            issue(f"line {g['line']}", f"region {rid}: coord_index is not 0..{len(coords) - 1}", rid)
            continue
        region = Region(rid, g["label"], g["tissue"], tuple(c[1] for c in coords), tuple(c[2] for c in coords),
                        g["confidence"])
        reason = check_region(region, out.header, labels)
        if reason:
            issue(f"line {g['line']}", f"region {rid}: {reason}", rid)
        else:
            out.regions.append(region)
    return out


def format_nedc_csv(header: Header, regions: Sequence[Region]) -> str:
    buf = io.StringIO()
    buf.write(f"# version = {CSV_VERSION}\n")
    if header.mpp is not None:
        buf.write(f"# MicronsPerPixel = {header.mpp:.6f}\n")
    buf.write(f"# bname = {header.bname}\n")
    buf.write(f"# width = {header.width} pixels, height = {header.height} pixels\n")
    buf.write(f"# tissue = {header.tissue}\n#\n")
    buf.write(",".join(CSV_COLUMNS) + "\n")
    for index, r in enumerate(regions):
        for ci, (x, y) in enumerate(zip(r.x, r.y, strict=True)):
            buf.write(f"{index},{r.region_id},{r.tissue},{r.label},{ci},{_num(y)},{_num(x)},0,{r.confidence!r}\n")
    return buf.getvalue()


def write_nedc_csv(path: str | Path, header: Header, regions: Sequence[Region]) -> None:
    Path(path).write_text(format_nedc_csv(header, regions), encoding="utf-8")


# ------------------------------------------------------------------------------------------ ImageScope xml
def _parse_xml(path: Path, issue) -> ET.Element | None:
    """The root element of an xml file, or None after a whole-file issue saying why it cannot be used.

    A first pass with expat refuses a document that refers to an external DTD or parameter entity: such a
    document may use entities that are declared there, and since nothing outside the file is read, expat would
    silently skip them (an attribute Text="&label;" would read as ""). Entity bombs are refused by expat itself.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        issue("", f"cannot read the file: {_brief(exc.strerror or exc)}")
        return None
    first = expat.ParserCreate()
    first.NotStandaloneHandler = lambda: 0  # 0: make "not standalone" (external subset or %entity;) an error
    try:
        first.Parse(data, True)
        return ET.fromstring(data)
    except expat.ExpatError as exc:
        if exc.code == expat.errors.codes[expat.errors.XML_ERROR_NOT_STANDALONE]:
            issue("", f"refers to an external DTD or parameter entity (line {exc.lineno}), which is not read: "
                      "entities declared there cannot be expanded")
        else:
            issue("", f"not a readable ImageScope xml: {_brief(exc)}")
    except (ET.ParseError, ValueError, LookupError) as exc:  # ValueError/LookupError: an encoding expat lacks
        issue("", f"not a readable ImageScope xml: {_brief(exc)}")
    return None


def read_imagescope_xml(path: str | Path, labels: LabelMap = DEFAULT_LABELS) -> AnnotationFile:
    """Read an ImageScope xml file: every <Region> element is one region (or one issue)."""
    path = Path(path)
    out = AnnotationFile(path, None)
    issue = out.issue

    root = _parse_xml(path, issue)
    if root is None:
        return out
    if root.tag != "Annotations":
        issue("", f"root element is <{_show(root.tag)[1:-1]}>, expected <Annotations>")
        return out
    attrs = {a.get("Name", "").lower(): a.get("Value", "") for a in root.iterfind("Annotation/Attributes/Attribute")}
    mpp_text = root.get("MicronsPerPixel")
    mpp, ok = _parse_mpp(mpp_text)
    if not ok:
        issue("header", f"MicronsPerPixel is not a positive number (or 0 for unknown): {_show(str(mpp_text))}")
    elif mpp is None and mpp_text is not None:
        out.note("header", f"MicronsPerPixel is {mpp_text}: pixel size unknown")
    width, height = parse_int64(attrs.get("width", "")), parse_int64(attrs.get("height", ""))
    if width is None or height is None:
        issue("header", "width/height attributes missing or not integers (that fit 64 bits)")
    else:
        out.header = Header(path.stem, mpp, width, height, attrs.get("tissue", "breast"))

    # Every <Region> names a region, wherever it stands; only those at Annotation/Regions are used.
    placed = {id(e) for e in root.iterfind("Annotation/Regions/Region")}
    elements = list(root.iter("Region"))
    ids = [_region_id(reg.get("Id", "")) for reg in elements]
    uses = Counter(ids)
    for n, (reg, rid) in enumerate(zip(elements, ids, strict=True), start=1):
        if rid is None:
            text = reg.get("Id", "")
            issue(f"region #{n}", f"Id {'does not fit a 64-bit integer' if _integral(text) else 'is not an integer'}: "
                                  f"{_show(text)}")
            continue
        where = f"region {rid}"
        if uses[rid] > 1:
            # which polygon the id names cannot be told (as in csv): every region carrying it is rejected
            issue(where, f"duplicate region id {rid}: {uses[rid]} regions carry it (region #{n} of the file)", rid)
            continue
        if id(reg) not in placed:
            issue(where, f"<Region> outside Annotations/Annotation/Regions (region #{n} of the file)", rid)
            continue
        try:
            pts = [(float(v.get("X", "")), float(v.get("Y", ""))) for v in reg.iterfind("Vertices/Vertex")]
            if not all(math.isfinite(c) for p in pts for c in p):
                raise ValueError
        except ValueError:
            issue(where, "a vertex has a non-numeric X or Y", rid)
            continue
        tissue_attr = reg.find("Attributes/Attribute")
        tissue = tissue_attr.get("Value", "") if tissue_attr is not None else ""
        region = Region(rid, reg.get("Text", "").strip().lower(), tissue or "breast",
                        tuple(p[0] for p in pts), tuple(p[1] for p in pts))
        reason = check_region(region, out.header, labels)
        if reason:
            issue(where, reason, rid)
        else:
            out.regions.append(region)
    return out


def _integral(text: str) -> bool:
    """Is the text a finite integral number (of any size)?"""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        return False
    return value.is_finite() and (value.adjusted() > 19 or value == value.to_integral_value())


def _region_id(text: str) -> int | None:
    """An integral Region Id that fits int64 ("7", or "7.0" / "7e0" as some exporters write it); else None."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        return None
    # adjusted() is the exponent of the leading digit: checked before int() so "1e999999999" is not expanded
    if not value.is_finite() or value.adjusted() > 19 or value != value.to_integral_value():
        return None
    n = int(value)
    return n if INT64_MIN <= n <= INT64_MAX else None


def format_imagescope_xml(header: Header, regions: Sequence[Region]) -> str:
    mpp = header.mpp or 0.0
    root = ET.Element("Annotations", MicronsPerPixel=f"{mpp:.6f}")
    ann = ET.SubElement(root, "Annotation", Id="1", Name="", Type="4", LineColor="65280")
    a = ET.SubElement(ann, "Attributes")
    for name, value in (("width", header.width), ("height", header.height), ("tissue", header.tissue)):
        ET.SubElement(a, "Attribute", Name=name, Id="0", Value=str(value))
    regs = ET.SubElement(ann, "Regions")
    for r in regions:
        length = sum(math.dist((r.x[i], r.y[i]), (r.x[i - 1], r.y[i - 1])) for i in range(len(r.x)))
        el = ET.SubElement(regs, "Region", Id=str(r.region_id), Type="0", Text=r.label,
                           Length=f"{length:.1f}", Area=f"{r.area:.1f}",
                           LengthMicrons=f"{length * mpp:.1f}", AreaMicrons=f"{r.area * mpp * mpp:.1f}")
        ET.SubElement(ET.SubElement(el, "Attributes"), "Attribute", Name="tissue", Id="0", Value=r.tissue)
        v = ET.SubElement(el, "Vertices")
        for x, y in zip(r.x, r.y, strict=True):
            ET.SubElement(v, "Vertex", X=_num(x), Y=_num(y), Z="0")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write_imagescope_xml(path: str | Path, header: Header, regions: Sequence[Region]) -> None:
    Path(path).write_text(format_imagescope_xml(header, regions), encoding="utf-8")


# ------------------------------------------------------------------------------------------------ shared
def check_region(region: Region, header: Header | None, labels: LabelMap = DEFAULT_LABELS) -> str | None:
    """Why a region cannot be used (None when it can): vertices, area, label, and bounds against the header."""
    if len(region.x) < 3:
        return f"has {len(region.x)} vertices; a polygon needs at least 3"
    if not region.area > 0:  # `not >`: an area that overflowed to nan is no area either
        return "has zero area (its vertices are collinear or repeated)"
    try:
        labels.resolve(region.label)
    except UnknownLabel as exc:
        return str(exc) if len(region.label) <= _SHOW else f"unknown label {_show(region.label)}"
    if header is not None:
        reason = check_bounds(region, header.width, header.height)
        if reason:
            return reason
    with np.errstate(all="ignore"):  # coordinates near the float limit overflow; the test then finds nothing
        crossing = first_crossing(region.x, region.y)
    if crossing is not None:
        i, j = crossing
        if i == j:
            return f"self-intersecting polygon: the outline turns back on itself at vertex {i}"
        return f"self-intersecting polygon: the edge from vertex {i} meets the edge from vertex {j}"
    return None


def check_bounds(region: Region, width: int, height: int) -> str | None:
    x0, y0, x1, y1 = region.bbox
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        return f"polygon bbox ({x0},{y0})-({x1},{y1}) lies wholly outside the {width}x{height} slide"
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        return f"polygon bbox ({x0},{y0})-({x1},{y1}) lies partly outside the {width}x{height} slide"
    return None


READERS = {".csv": read_nedc_csv, ".xml": read_imagescope_xml}


def read_annotations(path: str | Path, labels: LabelMap = DEFAULT_LABELS) -> AnnotationFile:
    """Read a NEDC csv or ImageScope xml file, chosen by its suffix."""
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        return AnnotationFile(path, None, errors=[Issue(str(path), "", f"unknown annotation format {path.suffix!r}")])
    return reader(path, labels)
