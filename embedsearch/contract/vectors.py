"""Bad vectors, resolved as LanceDB's ``on_bad_vectors`` resolves them: a vector with a NaN,
a missing one, or one of another length than the column's. Shared by the SDK (tables created
from data alone) and the gateway (rows added to a table, and what functions return)."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.compute as pc

from embedsearch.contract.errors import BadVectors

REMEDIES = (
    "Set on_bad_vectors='drop' to remove them, set on_bad_vectors='fill' and "
    "fill_value=<value> to replace them, or set on_bad_vectors='null' to replace them with null."
)


def modal_length(column: pa.ChunkedArray) -> int | None:
    lengths = pc.list_value_length(column).drop_null()
    if not len(lengths):
        return None
    return pc.mode(lengths)[0]["mode"].as_py()


def resolve_bad_vectors(
    rows: pa.Table,
    name: str,
    on_bad_vectors: str,
    fill_value: float,
    dims: int | None = None,
    missing_is_bad: bool = True,
) -> pa.Table:
    """``rows`` with column ``name``'s bad vectors resolved by the policy: "error" raises
    BadVectors naming the remedies, "drop" drops the rows, "fill" cuts or pads each bad
    vector to ``dims`` with ``fill_value`` in every padded or NaN slot, "null" nulls it.

    ``dims`` is the column's length (default: its fixed size, or its rows' most common
    length). A missing (null) vector is bad unless ``missing_is_bad`` is false: a column
    bound to a function is embedded where it is null.
    """
    column = rows.column(name).combine_chunks()
    if dims is None:
        dims = (
            column.type.list_size
            if pa.types.is_fixed_size_list(column.type)
            else modal_length(column)
        )
    if dims is None:
        return rows
    lengths = pc.list_value_length(column)
    wrong_length = pc.not_equal(lengths, dims).fill_null(missing_is_bad)
    nan_at = pc.is_nan(pc.list_flatten(column)).fill_null(False)
    nan_rows = pc.unique(pc.filter(pc.list_parent_indices(column), nan_at))
    has_nan = pc.is_in(pa.array(range(len(column)), nan_rows.type), value_set=nan_rows)
    bad = pc.or_(wrong_length, has_nan)
    if not pc.any(bad).as_py():
        return rows
    if on_bad_vectors == "error":
        # LanceDB's message, after the first bad row's particulars.
        if pc.any(wrong_length).as_py():
            row = pc.index(wrong_length, True).as_py()
            length = lengths[row].as_py()
            found = "no vector" if length is None else f"{length} values"
            where, what = (
                f"row {row} has {found}, the column holds {dims}",
                "variable length vectors",
            )
        else:
            where, what = f"row {pc.index(has_nan, True).as_py()} has a NaN", "NaNs"
        raise BadVectors(f"{where}: Vector column '{name}' has {what}. {REMEDIES}")
    if on_bad_vectors == "drop":
        return rows.filter(pc.invert(bad))
    as_list = column.cast(pa.list_(column.type.value_type))
    if on_bad_vectors == "null":
        values = pc.if_else(bad, pa.scalar(None, as_list.type), as_list)
    else:  # fill: cut or pad to the length, fill_value in every padded or NaN slot
        replacements = [_filled(v, dims, fill_value) for v in as_list.filter(bad).to_pylist()]
        # Row i's replacement is the (number of bad rows up to i) - 1'th.
        which = pc.max_element_wise(pc.subtract(pc.cumulative_sum(bad.cast(pa.int64())), 1), 0)
        spread = pa.array(replacements, as_list.type).take(which)
        values = pc.if_else(bad, spread, as_list)
    position = rows.schema.get_field_index(name)
    return rows.set_column(position, rows.schema.field(name).with_type(values.type), values)


def _filled(vector: list[float] | None, dims: int, fill_value: float) -> list[float]:
    values = list(vector or [])[:dims]
    values += [fill_value] * (dims - len(values))
    return [fill_value if v is None or math.isnan(v) else v for v in values]
