"""NEDC csv (csv_v1.0.0) and Aperio ImageScope xml annotations: one region model, readers, writers, checks.

Internally a polygon is level-0 (x, y) floats, x horizontal. NEDC csv stores (row, column) = (y, x); ImageScope
xml stores (X, Y). Bad input never raises out of a reader: every fault becomes an `Issue` naming the file and
the line (csv) or region (xml), and the remaining regions are still returned.
"""

from __future__ import annotations

import csv
import io
import math
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from crystal_dask.vocab import DEFAULT_LABELS, LabelMap, UnknownLabel

CSV_VERSION = "csv_v1.0.0"
CSV_COLUMNS = ("index", "region_id", "tissue", "label", "coord_index", "row", "column", "depth", "confidence")
_SIZE = re.compile(r"width\s*=\s*(\d+)\s*pixels\s*,\s*height\s*=\s*(\d+)\s*pixels")


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

    def issue(self, location: str, reason: str, region_id: int | None = None) -> None:
        """Record a fault of this file; readers go on with the rest."""
        self.errors.append(Issue(str(self.path), location, reason, region_id))


class AnnotationError(ValueError):
    """Raised only by callers that ask for strictness; carries the issues."""

    def __init__(self, issues: Sequence[Issue]):
        self.issues = list(issues)
        super().__init__("\n".join(map(str, self.issues)))


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
                                   f"{lines[i]!r}")
            where["width"] = f"line {i + 1}"
        elif eq:
            fields[key.strip()] = value.strip()
            where[key.strip()] = f"line {i + 1}"
        elif text:
            issue(f"line {i + 1}", f"header line not understood: {lines[i]!r}")
        i += 1
    return fields, where, i


def _header_from(fields: dict[str, str], where: dict[str, str], path: Path, issue) -> Header | None:
    if fields.get("version") != CSV_VERSION:
        issue(where.get("version", "header"), f"version is {fields.get('version')!r}, expected {CSV_VERSION!r}")
    mpp: float | None = None
    if "MicronsPerPixel" in fields:
        try:
            mpp = float(fields["MicronsPerPixel"])
            if not (mpp > 0 and math.isfinite(mpp)):
                raise ValueError
        except ValueError:
            issue(where["MicronsPerPixel"],
                  f"MicronsPerPixel is not a positive number: {fields['MicronsPerPixel']!r}")
            mpp = None
    if "width" not in fields:
        if "width" not in where:  # a garbled size line was reported where it stands
            issue("header", "no '# width = W pixels, height = H pixels' line")
        return None
    return Header(
        bname=fields.get("bname", path.stem),
        mpp=mpp,
        width=int(fields["width"]),
        height=int(fields["height"]),
        tissue=fields.get("tissue", "breast"),
    )


def read_nedc_csv(path: str | Path, labels: LabelMap = DEFAULT_LABELS) -> AnnotationFile:
    path = Path(path)
    out = AnnotationFile(path, None)
    issue = out.issue

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        issue("", f"cannot read the file: {exc}")
        return out
    fields, where, start = _read_csv_header(lines, issue)
    out.header = _header_from(fields, where, path, issue)
    if start >= len(lines) or tuple(c.strip() for c in lines[start].split(",")) != CSV_COLUMNS:
        got = lines[start] if start < len(lines) else "end of file"
        issue(f"line {start + 1}", f"column line not understood: expected {','.join(CSV_COLUMNS)!r}, got {got!r}")
        return out

    # region_id -> (first line, label, tissue, confidence, [(coord_index, x, y, line)])
    groups: dict[int, dict] = {}
    bad_regions: set[int] = set()  # ids already reported: their regions are not used
    last_id: int | None = None
    for lineno, row in enumerate(csv.reader(lines[start + 1 :]), start=start + 2):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        where = f"line {lineno}"
        if len(row) != len(CSV_COLUMNS):
            # the region of a malformed row (when its id is readable) lost a vertex: it cannot be used either
            rid_text = row[1].strip() if len(row) > 1 else ""
            rid = int(rid_text) if rid_text.lstrip("-").isdigit() else None
            reason = f"malformed row: expected {len(CSV_COLUMNS)} fields, got {len(row)}: {','.join(row)!r}"
            if rid is not None:
                bad_regions.add(rid)
            issue(where, reason, rid)
            continue
        rec = dict(zip(CSV_COLUMNS, (c.strip() for c in row), strict=True))
        try:
            rid = int(rec["region_id"])
        except ValueError:
            issue(where, f"region_id is not an integer: {rec['region_id']!r}")
            continue
        try:
            ci = int(rec["coord_index"])
            y, x = float(rec["row"]), float(rec["column"])
            conf = float(rec["confidence"])
            if not (math.isfinite(x) and math.isfinite(y)):
                raise ValueError
        except ValueError:
            reason = (f"non-numeric value in coord_index/row/column/confidence: "
                      f"{rec['coord_index']!r}, {rec['row']!r}, {rec['column']!r}, {rec['confidence']!r}")
            bad_regions.add(rid)
            issue(where, reason, rid)
            continue
        g = groups.get(rid)
        if g is None:
            g = groups[rid] = {"line": lineno, "label": rec["label"].lower(), "tissue": rec["tissue"],
                               "confidence": conf, "coords": []}
        elif rid != last_id and rid not in bad_regions:
            bad_regions.add(rid)
            issue(where, f"duplicate region id {rid}: used again at {where} (first at line {g['line']})", rid)
        if rec["label"].lower() != g["label"] and rid not in bad_regions:
            bad_regions.add(rid)
            issue(where, f"label {rec['label']!r} differs from the region's {g['label']!r}", rid)
        g["coords"].append((ci, x, y, lineno))
        last_id = rid

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
def read_imagescope_xml(path: str | Path, labels: LabelMap = DEFAULT_LABELS) -> AnnotationFile:
    path = Path(path)
    out = AnnotationFile(path, None)
    issue = out.issue

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        issue("", f"not a readable ImageScope xml: {exc}")
        return out
    if root.tag != "Annotations":
        issue("", f"root element is <{root.tag}>, expected <Annotations>")
        return out
    attrs = {a.get("Name", "").lower(): a.get("Value", "") for a in root.iterfind("Annotation/Attributes/Attribute")}
    mpp_text = root.get("MicronsPerPixel")
    mpp = None
    try:
        mpp = float(mpp_text) if mpp_text else None
        if mpp is not None and not (mpp >= 0 and math.isfinite(mpp)):
            raise ValueError
        mpp = mpp or None  # 0 means unknown (what format_imagescope_xml writes for a header without MPP)
    except ValueError:
        issue("header", f"MicronsPerPixel is not a positive number (or 0 for unknown): {mpp_text!r}")
        mpp = None
    try:
        out.header = Header(path.stem, mpp, int(attrs["width"]), int(attrs["height"]), attrs.get("tissue", "breast"))
    except (KeyError, ValueError):
        issue("header", "width/height attributes missing or not integers")

    elements = list(root.iterfind("Annotation/Regions/Region"))
    ids = [_region_id(reg.get("Id", "")) for reg in elements]
    uses = Counter(ids)
    for n, (reg, rid) in enumerate(zip(elements, ids, strict=True), start=1):
        if rid is None:
            issue(f"region #{n}", f"Id is not an integer: {reg.get('Id', '')!r}")
            continue
        where = f"region {rid}"
        if uses[rid] > 1:
            # which polygon the id names cannot be told (as in csv): every region carrying it is rejected
            issue(where, f"duplicate region id {rid}: {uses[rid]} regions carry it (region #{n} of the file)", rid)
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


def _region_id(text: str) -> int | None:
    """An integral Region Id ("7", or "7.0" as some exporters write it); None for anything else."""
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


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
    if region.area <= 0:
        return "has zero area (its vertices are collinear or repeated)"
    try:
        labels.resolve(region.label)
    except UnknownLabel as exc:
        return str(exc)
    if header is not None:
        return check_bounds(region, header.width, header.height)
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
