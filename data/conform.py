"""Conforming arbitrary input to a table spec of :mod:`data.schemas`.

Every read and every write of the store goes through :func:`conform` (or :func:`from_rows`, which
builds a table from dicts first): it returns the table with exactly the spec's columns, order and
types, accepts the lossless widenings other writers produce (pandas writes int64/float64/ns),
refuses a ``schema_version`` newer than this code, and runs the spec's value checks.
"""

from __future__ import annotations

import pyarrow as pa

from core.errors import DataError
from data.schemas import SCHEMA_VERSION, TableSpec


def conform(spec: TableSpec, table: pa.Table, source: str) -> pa.Table:
    """Return ``table`` with exactly the spec's columns, order and types, or raise DataError.

    ``source`` names where the data came from (a file path, "append") for the error message.
    Extra columns are dropped (a newer writer may add some); a column missing from an older part
    gets the spec's default (:attr:`TableSpec.defaults`: the migration on read); any other missing column, a type that
    cannot be cast without loss, a null in a non-nullable column, or a schema_version newer than
    this code are errors.
    """
    meta = table.schema.metadata or {}
    version = meta.get(b"schema_version")
    if version is not None and int(version) > SCHEMA_VERSION:
        raise DataError(
            f"{source}: written with schema_version {int(version)} of table '{spec.name}', "
            f"this code reads up to {SCHEMA_VERSION}.",
            "upgrade the toolkit to read this dataset.",
        )
    columns = []
    for f in spec.schema:
        if f.name not in table.column_names and f.name in spec.defaults:
            # a column a later schema version added (an older part, or an append that leaves it out)
            columns.append(pa.array([spec.defaults[f.name]] * table.num_rows, type=f.type))
            continue
        if f.name not in table.column_names:
            raise DataError(
                f"{source}: table '{spec.name}' is missing column '{f.name}' "
                f"(has {table.column_names}).",
                f"write the file with the schema in data/schemas.py ({spec.name}).",
            )
        col = table[f.name]
        if col.type != f.type:
            if not _castable(col.type, f.type):
                raise DataError(
                    f"{source}: column '{f.name}' of table '{spec.name}' has type {col.type}, "
                    f"expected {f.type}.",
                    f"write the file with the schema in data/schemas.py ({spec.name}).",
                )
            try:
                col = col.cast(f.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise DataError(
                    f"{source}: column '{f.name}' of table '{spec.name}' cannot be read as "
                    f"{f.type}: {e}.",
                    f"write the file with the schema in data/schemas.py ({spec.name}).",
                ) from None
        if not f.nullable and col.null_count:
            raise DataError(f"{source}: column '{f.name}' of table '{spec.name}' holds "
                            f"{col.null_count} null value(s).", f"give every row a {f.name}.")
        columns.append(col)
    out = pa.Table.from_arrays(columns, schema=spec.schema)
    if spec.check is not None:
        try:
            spec.check(out)
        except DataError as e:
            raise DataError(f"{source}: table '{spec.name}': {e.problem}", e.fix) from None
    return out


def _castable(src: pa.DataType, dst: pa.DataType) -> bool:
    """Lossless widenings we accept from other writers (pandas writes int64/float64/ns)."""
    if pa.types.is_integer(src) and pa.types.is_integer(dst):
        return True  # a safe cast still fails loudly on overflow
    if pa.types.is_floating(src) and pa.types.is_floating(dst):
        return True
    if pa.types.is_integer(src) and pa.types.is_floating(dst):
        return True
    if pa.types.is_timestamp(src) and pa.types.is_timestamp(dst):
        return src.tz is not None or dst.tz is None
    if pa.types.is_large_string(src) and pa.types.is_string(dst):
        return True
    if pa.types.is_dictionary(src) and pa.types.is_string(dst):
        return True
    if (pa.types.is_list(src) or pa.types.is_large_list(src)) and pa.types.is_list(dst):
        return _castable(src.value_type, dst.value_type) or src.value_type == dst.value_type
    if pa.types.is_null(src):
        return True
    return False


def from_rows(spec: TableSpec, rows: list[dict], source: str = "rows") -> pa.Table:
    """Build a conforming table from a list of dicts (missing nullable keys become null)."""
    data = {f.name: [r.get(f.name, spec.defaults.get(f.name)) for r in rows] for f in spec.schema}
    try:
        table = pa.table({f.name: pa.array(data[f.name], type=f.type) for f in spec.schema})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise DataError(f"{source}: rows do not fit table '{spec.name}': {e}.",
                        f"see the schema in data/schemas.py ({spec.name}).") from None
    return conform(spec, table, source)
