"""Declared schemas of every table that crosses a stage boundary, and the one way to write and read them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from crystal_dask.store.files import write_atomic

# scan -> extract: one row per annotated region that passed every check.
REGIONS = pa.schema(
    [
        ("corpus", pa.string()),  # corpus name (job key or root folder name)
        ("split", pa.string()),  # train / dev / eval
        ("patient", pa.string()),
        ("slide", pa.string()),  # absolute path of the slide file
        ("annotation", pa.string()),  # absolute path of the annotation file the region came from
        ("bname", pa.string()),  # file stem shared by slide and annotation
        ("region_id", pa.int64()),
        ("label", pa.string()),  # raw label, lower case
        ("cls", pa.string()),  # scored class (crystalline labels mapped to theirs)
        ("crystal", pa.bool_()),
        ("tissue", pa.string()),
        ("x0", pa.int64()),  # bounding box in level-0 pixels, x horizontal, half-open [x0, x1)
        ("y0", pa.int64()),
        ("x1", pa.int64()),
        ("y1", pa.int64()),
        ("polygon_x", pa.list_(pa.float64())),  # level-0 vertices
        ("polygon_y", pa.list_(pa.float64())),
        ("mpp", pa.float64()),  # microns per pixel at level 0; null when the slide records none
        ("slide_width", pa.int64()),
        ("slide_height", pa.int64()),
    ]
)

# every stage: an input that was not used, and why. Nothing is dropped silently.
REJECTS = pa.schema(
    [
        ("stage", pa.string()),  # scan / extract / ...
        ("source", pa.string()),  # the file at fault
        ("location", pa.string()),  # "line 12", "region 7", "" for the whole file
        ("region_id", pa.int64()),  # null when the fault is not one region's
        ("reason", pa.string()),
    ]
)



def reject_row(stage: str, source: str | Path, location: str, reason: str, region_id: int | None = None) -> dict:
    """One row of REJECTS: `stage` refused `source` at `location` ("line 12", "region 7", "" for the whole file)."""
    return {"stage": stage, "source": str(source), "location": location, "region_id": region_id, "reason": reason}


# extract -> train/evaluate: one row per patch in patches.zarr, same order as the zarr rows.
PATCHES = pa.schema(
    [
        ("row", pa.int64()),
        *[f for f in REGIONS if f.name not in ("polygon_x", "polygon_y")],
        ("wx0", pa.int64()),  # the patch's own box in level-0 pixels (the region bbox in region mode)
        ("wy0", pa.int64()),
        ("wx1", pa.int64()),
        ("wy1", pa.int64()),
        ("overlap", pa.float64()),  # fraction of the patch box inside the region polygon
        ("level", pa.int64()),  # pyramid level read
        ("downsample", pa.float64()),
    ]
)

# evaluate -> report: one row per evaluated patch.
PREDICTIONS = pa.schema(
    [
        ("row", pa.int64()),
        ("patient", pa.string()),
        ("cls", pa.string()),
        ("crystal", pa.bool_()),
        ("y_true", pa.int64()),
        ("y_pred", pa.int64()),
        ("proba", pa.list_(pa.float32())),
    ]
)


# infer -> users and report: one row per (slide, predicted class) of a whole-slide inference run.
INFER_SUMMARY = pa.schema(
    [
        ("corpus", pa.string()),
        ("slide", pa.string()),  # the slide's path
        ("bname", pa.string()),  # its output name
        ("cls", pa.string()),  # the predicted class
        ("windows", pa.int64()),  # scored windows predicted as this class
        ("area_mm2", pa.float64()),  # the area those windows stand for; null when the slide has no MPP
        ("mean_probability", pa.float64()),  # of this class over those windows
        ("max_probability", pa.float64()),
    ]
)


def make_table(schema: pa.Schema, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Build a table of exactly `schema` from row dicts; a missing or extra key, or a value of the wrong type
    (a float for an integer column included: pyarrow would truncate it), is an error naming row or column."""
    rows = list(rows)
    names = schema.names
    for i, r in enumerate(rows):
        if set(r) != set(names):
            missing, extra = set(names) - set(r), set(r) - set(names)
            raise ValueError(f"row {i} does not fit the schema: missing {sorted(missing)}, extra {sorted(extra)}")
    columns = []
    for field in schema:
        values = [r[field.name] for r in rows]
        if pa.types.is_integer(field.type):
            bad = next((i for i, v in enumerate(values) if isinstance(v, float)), None)
            if bad is not None:
                raise ValueError(f"row {bad}: column {field.name!r} is {field.type}; got the float {values[bad]!r}")
        try:
            columns.append(pa.array(values, type=field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ValueError(f"column {field.name!r} ({field.type}): {exc}") from None
    return pa.Table.from_arrays(columns, schema=schema)


def conform(table: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    """Check a table against its declared schema and return it in schema order. Column names must match
    exactly and types too, except an all-null column and a narrower integer (cast only when every value fits)."""
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}")
    extra = [n for n in table.column_names if n not in schema.names]
    if extra:
        raise ValueError(f"{what}: column(s) not in the declared schema {extra}")

    def fits(actual: pa.DataType, declared: pa.DataType) -> bool:
        return actual in (declared, pa.null()) or (pa.types.is_integer(actual) and pa.types.is_integer(declared))

    wrong = [f"{f.name!r} is {table.schema.field(f.name).type}, declared {f.type}" for f in schema
             if not fits(table.schema.field(f.name).type, f.type)]
    if wrong:
        raise ValueError(f"{what}: columns do not match the declared schema: {'; '.join(wrong)}")
    try:
        return table.select(schema.names).cast(schema)  # safe cast: an integer that does not fit is refused
    except pa.ArrowInvalid as exc:
        raise ValueError(f"{what}: columns do not match the declared schema: {exc}") from exc


def write_table(table: pa.Table, path: str | Path, schema: pa.Schema) -> Path:
    """Write a table as parquet after checking it against its schema; atomic (tmp + rename)."""
    buf = pa.BufferOutputStream()
    pq.write_table(conform(table, schema, str(path)), buf)
    return write_atomic(path, buf.getvalue().to_pybytes())


def read_table(path: str | Path, schema: pa.Schema) -> pa.Table:
    return conform(pq.read_table(path), schema, str(path))
