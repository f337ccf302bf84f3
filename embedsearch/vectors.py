"""Vector columns found in data that comes without a schema, as LanceDB finds them.

``create_table("t", data=[{"vector": [3.1, 4.1], ...}])`` has no schema to say that ``vector``
is a vector: Arrow reads it as ``list<double>``, which no search can use. LanceDB (0.40) decides
on the client, before anything is written, and so does the SDK, with the same rules:

- a list column whose name contains "vector" or "embedding" (any case) becomes a fixed-size
  list of the most common length among its rows: of float32 for floating values, of uint8 for
  integers within 0..255, of float32 for other integers;
- before that, the column named exactly ``vector`` (a list of floats) and any fixed-size list of
  at least 10 floats are checked for bad vectors (a NaN, a missing vector, or a length other
  than the most common one), which ``on_bad_vectors`` resolves: "error" names the column and
  the remedies, "drop" drops those rows, "fill" cuts or pads the vector to the length and
  writes ``fill_value`` in each padded or NaN slot, "null" leaves the vector null.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from embedsearch.contract.errors import InvalidArgument
from embedsearch.contract.schema import is_list_type
from embedsearch.contract.vectors import modal_length, resolve_bad_vectors

VECTOR_COLUMN = "vector"
# Fixed-size lists of floats at least this long are vectors whatever their name (LanceDB's rule).
LIKELY_VECTOR_DIMS = 10


def _named_like_a_vector(name: str) -> bool:
    lowered = name.lower()
    return "vector" in lowered or "embedding" in lowered


def _checked_for_bad_vectors(field: pa.Field) -> bool:
    if not is_list_type(field.type) or not pa.types.is_floating(field.type.value_type):
        return False
    if pa.types.is_fixed_size_list(field.type):
        return field.type.list_size >= LIKELY_VECTOR_DIMS
    return field.name == VECTOR_COLUMN


def _target_type(column: pa.ChunkedArray) -> pa.DataType | None:
    dims = modal_length(column)
    value_type = column.type.value_type
    if dims is None:
        return None
    if pa.types.is_floating(value_type):
        return pa.list_(pa.float32(), dims)
    if pa.types.is_integer(value_type):
        bounds = pc.min_max(pc.list_flatten(column))
        low, high = bounds["min"].as_py(), bounds["max"].as_py()
        within_bytes = low is None or (low >= 0 and high <= 255)
        return pa.list_(pa.uint8() if within_bytes else pa.float32(), dims)
    return None


def infer_vector_columns(rows: pa.Table, on_bad_vectors: str, fill_value: float) -> pa.Table:
    """``rows`` with their vector columns resolved and typed as LanceDB types them when a
    table is created from data alone (see the module docstring)."""
    for field in rows.schema:
        if _checked_for_bad_vectors(field):
            rows = resolve_bad_vectors(rows, field.name, on_bad_vectors, fill_value)
    for index, field in enumerate(rows.schema):
        if not (_named_like_a_vector(field.name) and is_list_type(field.type)):
            continue
        if pa.types.is_fixed_size_list(field.type):
            continue
        target = _target_type(rows.column(index))
        if target is None:
            continue
        try:
            column = rows.column(index).cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise InvalidArgument(
                f"column {field.name!r} looks like a vector column but its rows do not all "
                f"have {target.list_size} values: {exc}"
            ) from None
        rows = rows.set_column(index, field.with_type(target), column)
    return rows
