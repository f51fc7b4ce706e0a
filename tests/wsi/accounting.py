"""What an annotation file's text names, counted independently of the readers, and the accounting property.

Definition (the property of issue 9, class 1, made exact):

- A csv file names one *unit* per non-blank line below its column line (lines end at \\r\\n, \\r or \\n, the
  text read as UTF-8 unless a byte-order mark says UTF-16/32). The unit's region id is the line's second
  comma-separated field, read as a decimal integer that fits int64 (spaces and enclosing double quotes allowed);
  otherwise the unit has no id. When the column line is not exactly the nine NEDC column names (each may be
  enclosed in double quotes), which field holds
  the id cannot be told: the file names no unit, and it must be rejected (at least one reject, no region).
- An xml file names one unit per <Region> element, wherever it stands, numbered #1, #2, ... in document order;
  its id is the Id attribute when that is an integral number that fits int64.
- A unit is accounted for when its id is the id of a region kept from the file or of a reject of the file, or
  when a reject of the file stands at the unit's location ("line N", "region #N"). A file refused as a whole
  (a reject with location "" other than "no regions") accounts for all its units and gives no region.

The property: every unit is accounted for, no region is both kept and rejected, and no region is kept that the
text does not name.
"""

from __future__ import annotations

import codecs
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

CSV_COLUMNS = ("index", "region_id", "tissue", "label", "coord_index", "row", "column", "depth", "confidence")
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_ID = re.compile(r'\s*"?\s*([+-]?[0-9]{1,20})\s*"?\s*')


@dataclass(frozen=True)
class Reject:
    location: str
    region_id: int | None
    reason: str


def _int64(value: int) -> int | None:
    return value if -(2**63) <= value < 2**63 else None


def _text(data: bytes) -> str | None:
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError:
                return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _unquote(field: str) -> str:
    field = field.strip()
    return field[1:-1] if len(field) >= 2 and field[0] == field[-1] == '"' else field


def csv_units(data: bytes) -> list[tuple[str, int | None]] | None:
    """(location, id) of every unit a csv file names; None when it names none because its column line is bad
    or its bytes are not text (the file must then be rejected)."""
    text = _text(data)
    if text is None:
        return None
    lines = re.split(r"\r\n|\r|\n", text)
    i = 0
    while i < len(lines) and lines[i].startswith("#"):
        i += 1
    if i >= len(lines) or tuple(_unquote(f) for f in lines[i].split(",")) != CSV_COLUMNS:
        return None
    units = []
    for n, line in enumerate(lines[i + 1 :], start=i + 2):
        if not line.strip():
            continue
        parts = line.split(",")
        m = _ID.fullmatch(parts[1]) if len(parts) > 1 else None
        units.append((f"line {n}", _int64(int(m.group(1))) if m else None))
    return units


def xml_units(data: bytes) -> list[tuple[str, int | None]] | None:
    """(location, id) of every <Region> element; None when the bytes are not an xml document."""
    try:
        root = ET.fromstring(data)
    except (ET.ParseError, ValueError, LookupError):
        return None
    units = []
    for n, el in enumerate(root.iter("Region"), start=1):
        try:
            v = Decimal(el.get("Id", "").strip())
            rid = (_int64(int(v)) if v.is_finite() and v.adjusted() < 25 and v == v.to_integral_value()
                   else None)
        except InvalidOperation:
            rid = None
        units.append((f"region #{n}", rid))
    return units


def check_accounting(suffix: str, data: bytes, kept: list[int], rejects: list[Reject]) -> None:
    """Assert the property above for one file: its bytes, the ids of the regions kept from it, its rejects."""
    whole = [r for r in rejects if r.location == "" and not r.reason.startswith("no regions")]
    if whole:
        assert kept == [], f"a file refused as a whole gave regions {kept}: {whole}"
        return
    units = (csv_units if suffix == ".csv" else xml_units)(data)
    if units is None:
        assert kept == [] and rejects, f"nothing readable, yet kept={kept} rejects={rejects}"
        return
    rejected_ids = {r.region_id for r in rejects if r.region_id is not None}
    at = {r.location for r in rejects}
    lost = [(loc, rid) for loc, rid in units if not ((rid is not None and (rid in kept or rid in rejected_ids))
                                                    or loc in at)]
    assert not lost, f"named but neither kept nor rejected: {lost[:5]} (kept={kept}, rejects={rejects[:5]})"
    assert len(kept) == len(set(kept)), f"a region kept twice: {kept}"
    assert not set(kept) & rejected_ids, f"kept and rejected: {set(kept) & rejected_ids}"
    named = {rid for _, rid in units if rid is not None}
    assert set(kept) <= named, f"kept regions the text does not name: {set(kept) - named}"
