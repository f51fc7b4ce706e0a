"""schema.py: the declared stage-boundary tables, make_table, conform and the parquet round trip."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crystal_dask.store.schema import (
    PATCHES,
    PREDICTIONS,
    REGIONS,
    REJECTS,
    conform,
    make_table,
    read_table,
    write_table,
)

SCHEMAS = {"REGIONS": REGIONS, "REJECTS": REJECTS, "PATCHES": PATCHES, "PREDICTIONS": PREDICTIONS}


def sample_value(t: pa.DataType, name: str, i: int):
    """A value of type `t` that differs per row and per column; floats exact in float32."""
    if t == pa.string():
        return f"{name}-{i}-é"
    if t == pa.int64():
        return 2**40 + 7 * i + len(name)
    if t == pa.float64():
        return i + 0.125 + len(name)
    if t == pa.bool_():
        return i % 2 == 0
    if t == pa.list_(pa.float64()):
        return [float(i), -1.5, 1e-300][: i + 1]
    if t == pa.list_(pa.float32()):
        return [0.25, 0.5, 0.75][: i + 1]
    raise AssertionError(f"no sample for {name}: {t}")


def sample_rows(schema: pa.Schema, n: int = 3) -> list[dict]:
    """n filled rows, then one row of nulls (every declared field is nullable) and one with empty lists."""
    rows = [{f.name: sample_value(f.type, f.name, i) for f in schema} for i in range(n)]
    rows.append(dict.fromkeys(schema.names))
    rows.append({f.name: [] if pa.types.is_list(f.type) else sample_value(f.type, f.name, 9) for f in schema})
    return rows


# ------------------------------------------------------------------------------------------- declared schemas
@pytest.mark.parametrize("name", SCHEMAS)
def test_schema_field_names_are_unique(name):
    names = SCHEMAS[name].names
    assert len(set(names)) == len(names)


def test_patches_carry_every_region_field_but_the_polygon_with_the_same_type():
    regions = {f.name: f.type for f in REGIONS}
    patches = {f.name: f.type for f in PATCHES}
    for field, t in regions.items():
        if field in ("polygon_x", "polygon_y"):
            assert field not in patches
        else:
            assert patches[field] == t, field
    assert set(patches) - set(regions) == {"row", "wx0", "wy0", "wx1", "wy1", "overlap", "level", "downsample"}


def test_predictions_share_types_with_patches():
    for field in ("row", "patient", "cls", "crystal"):
        assert PREDICTIONS.field(field).type == PATCHES.field(field).type, field
    assert PREDICTIONS.field("proba").type == pa.list_(pa.float32())


# ---------------------------------------------------------------------------------------------- make_table
@pytest.mark.parametrize("name", SCHEMAS)
def test_make_table_keeps_every_value_in_schema_order(name):
    schema = SCHEMAS[name]
    rows = sample_rows(schema)
    # keys given in reverse order: the table still follows the schema
    table = make_table(schema, [dict(reversed(r.items())) for r in rows])
    assert table.schema.equals(schema, check_metadata=True)
    assert table.num_rows == len(rows)
    assert table.to_pylist() == rows


@pytest.mark.parametrize("name", SCHEMAS)
def test_make_table_without_rows_is_empty_with_the_schema(name):
    table = make_table(SCHEMAS[name], [])
    assert table.num_rows == 0
    assert table.schema.equals(SCHEMAS[name], check_metadata=True)


def test_make_table_accepts_a_generator():
    rows = sample_rows(REJECTS)
    assert make_table(REJECTS, (r for r in rows)).to_pylist() == rows


def test_make_table_refuses_a_missing_key_naming_the_row_and_key():
    rows = sample_rows(REJECTS)
    del rows[1]["reason"]
    with pytest.raises(ValueError, match=r"^row 1 does not fit the schema: missing \['reason'\], extra \[\]$"):
        make_table(REJECTS, rows)


def test_make_table_refuses_an_extra_key_naming_the_row_and_key():
    rows = sample_rows(REJECTS)
    rows[2] |= {"zz": 1, "aa": 2}
    with pytest.raises(ValueError, match=r"^row 2 does not fit the schema: missing \[\], extra \['aa', 'zz'\]$"):
        make_table(REJECTS, rows)


@pytest.mark.parametrize(("field", "value"), [("reason", 7), ("region_id", "seven"), ("region_id", [1])])
def test_make_table_refuses_a_value_of_the_wrong_type(field, value):
    rows = sample_rows(REJECTS)
    rows[0][field] = value
    with pytest.raises(ValueError, match=rf"^column '{field}' \("):
        make_table(REJECTS, rows)


def test_make_table_refuses_a_fractional_float_for_an_int_column():
    rows = sample_rows(REJECTS)
    rows[0]["region_id"] = 1.5
    with pytest.raises((ValueError, pa.ArrowException)):
        make_table(REJECTS, rows)


# ------------------------------------------------------------------------------------- write/read round trip
@pytest.mark.parametrize("name", SCHEMAS)
def test_round_trip_keeps_every_value_and_the_exact_schema(tmp_path: Path, name):
    schema = SCHEMAS[name]
    rows = sample_rows(schema)
    path = write_table(make_table(schema, rows), tmp_path / "deep" / f"{name}.parquet", schema)
    assert path == tmp_path / "deep" / f"{name}.parquet"
    assert pq.read_schema(path).remove_metadata().equals(schema)  # the file itself, not only what read_table returns
    back = read_table(path, schema)
    assert back.schema.equals(schema, check_metadata=True)
    assert back.to_pylist() == rows
    assert [p.name for p in tmp_path.rglob("*")] == ["deep", f"{name}.parquet"]  # no temporary file left


def test_write_table_puts_columns_in_schema_order(tmp_path: Path):
    rows = sample_rows(REJECTS)
    shuffled = make_table(REJECTS, rows).select(list(reversed(REJECTS.names)))
    path = write_table(shuffled, tmp_path / "r.parquet", REJECTS)
    assert pq.read_schema(path).names == REJECTS.names
    assert read_table(path, REJECTS).to_pylist() == rows


def test_write_table_refuses_a_missing_column_and_writes_nothing(tmp_path: Path):
    table = make_table(REJECTS, sample_rows(REJECTS)).drop_columns(["location"])
    path = tmp_path / "r.parquet"
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: missing column\(s\) \['location'\]$"):
        write_table(table, path, REJECTS)
    assert list(tmp_path.iterdir()) == []


def test_write_table_keeps_an_existing_file_when_refusing(tmp_path: Path):
    path = write_table(make_table(REJECTS, sample_rows(REJECTS)), tmp_path / "r.parquet", REJECTS)
    before = path.read_bytes()
    with pytest.raises(ValueError):
        write_table(make_table(REJECTS, []).drop_columns(["reason"]), path, REJECTS)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.parquet"]


# -------------------------------------------------------------------------------------- reading what is wrong
def write_raw(tmp_path: Path, table: pa.Table) -> Path:
    """A parquet file written around the schema check, as a stale or foreign writer would."""
    path = tmp_path / "raw.parquet"
    pq.write_table(table, path)
    return path


def test_read_table_refuses_missing_columns_naming_file_and_columns(tmp_path: Path):
    table = make_table(REJECTS, sample_rows(REJECTS)).drop_columns(["stage", "reason"])
    path = write_raw(tmp_path, table)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: missing column\(s\) \['stage', 'reason'\]$"):
        read_table(path, REJECTS)


@pytest.mark.parametrize(("field", "column"), [
    ("region_id", pa.array(["seven"] * 5)),  # text in an int64 column
    ("region_id", pa.array([0.5] * 5)),  # fractions in an int64 column
    ("polygon_x", pa.array([1.0] * 5)),  # a scalar where a list is declared
])
def test_read_table_refuses_a_column_that_cannot_be_the_declared_type(tmp_path: Path, field, column):
    schema = REGIONS if field.startswith("polygon") else REJECTS
    table = make_table(schema, sample_rows(schema))
    table = table.set_column(schema.get_field_index(field), field, column)
    path = write_raw(tmp_path, table)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: columns do not match the declared schema"):
        read_table(path, schema)


def test_conform_names_what_and_returns_schema_order():
    rows = sample_rows(PREDICTIONS)
    table = make_table(PREDICTIONS, rows)
    back = conform(table.select(list(reversed(PREDICTIONS.names))), PREDICTIONS, "predictions of x")
    assert back.schema.equals(PREDICTIONS) and back.to_pylist() == rows
    with pytest.raises(ValueError, match=r"^predictions of x: missing column\(s\) \['proba'\]$"):
        conform(table.drop_columns(["proba"]), PREDICTIONS, "predictions of x")


def test_conform_accepts_a_narrower_int_that_converts_exactly():
    table = make_table(REJECTS, sample_rows(REJECTS))
    i = REJECTS.get_field_index("region_id")
    narrow = table.set_column(i, "region_id", pa.array([1, 2, None, 4, 5], pa.int32()))
    assert conform(narrow, REJECTS, "t").column("region_id").to_pylist() == [1, 2, None, 4, 5]


def test_read_table_refuses_an_extra_column(tmp_path: Path):
    table = make_table(REJECTS, sample_rows(REJECTS)).append_column("surplus", pa.array(range(5)))
    path = write_raw(tmp_path, table)
    with pytest.raises(ValueError, match="surplus"):
        read_table(path, REJECTS)


@pytest.mark.parametrize(("field", "column"), [
    ("reason", pa.array([5] * 5)),
    ("reason", pa.array([True] * 5)),
    ("region_id", pa.array(["12"] * 5)),
    ("region_id", pa.array([True] * 5)),
])
def test_read_table_refuses_a_wrongly_typed_column_that_casts(tmp_path: Path, field, column):
    table = make_table(REJECTS, sample_rows(REJECTS))
    table = table.set_column(REJECTS.get_field_index(field), field, column)
    path = write_raw(tmp_path, table)
    with pytest.raises(ValueError, match=field):
        read_table(path, REJECTS)


def test_read_table_type_error_names_the_column(tmp_path: Path):
    table = make_table(REJECTS, sample_rows(REJECTS))
    table = table.set_column(REJECTS.get_field_index("region_id"), "region_id", pa.array(["seven"] * 5))
    path = write_raw(tmp_path, table)
    with pytest.raises(ValueError, match="region_id"):
        read_table(path, REJECTS)
