"""Bulk data on the wire: Arrow IPC streams for rows and schemas, packed float32 for vectors."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa

from embedsearch.contract.errors import InvalidArgument

_F32 = np.dtype("<f4")
# Deepest nesting of types (struct, list, map) in rows and schemas on the wire.
MAX_TYPE_DEPTH = 32


def table_to_ipc(table: pa.Table | pa.RecordBatch) -> bytes:
    """Serialize rows as an Arrow IPC stream."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write(table)
    return sink.getvalue().to_pybytes()


def ipc_to_table(data: bytes, what: str = "rows") -> pa.Table:
    """Read an Arrow IPC stream, answering InvalidArgument for bytes that are not one.

    The table is validated in full (offsets, UTF-8 of strings): IPC readers trust the buffers,
    and a malformed one would otherwise fail later, deep inside a tokenizer or a commit.
    """
    try:
        table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
        table.validate(full=True)
        _check_names(table.schema)
        return table
    # Every Arrow error, ArrowNotImplementedError included: a corrupt type id or bit width
    # in the bytes reads as a type Arrow does not implement.
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{what} are not a valid Arrow IPC stream: {exc}") from exc


def schema_to_ipc(schema: pa.Schema) -> bytes:
    """Serialize a schema (metadata included) as an Arrow IPC schema message."""
    return schema.serialize().to_pybytes()


def ipc_to_schema(data: bytes) -> pa.Schema:
    """Read an Arrow IPC schema message, answering InvalidArgument on malformed bytes."""
    try:
        schema = pa.ipc.read_schema(pa.py_buffer(data))
        _check_names(schema)
        return schema
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"arrow_schema is not a valid Arrow IPC schema: {exc}") from exc


def _check_names(fields: Iterable[pa.Field], depth: int = 0) -> None:
    """Decode every field name, nested ones too, and refuse a name used twice at one level and
    types nested deeper than MAX_TYPE_DEPTH: a name that is not UTF-8, two columns of one name,
    or a struct of a struct of ... (a thousand levels took Lance 4.6 s to create, five thousand
    crashed it) fail here, as bad input, rather than in whatever step first meets them."""
    if depth > MAX_TYPE_DEPTH:
        raise InvalidArgument(f"types nest more than {MAX_TYPE_DEPTH} levels deep")
    seen: set[str] = set()
    for field in fields:
        if field.name in seen:
            raise InvalidArgument(f"two columns are named {field.name[:80]!r}: names must differ")
        seen.add(field.name)
        _check_names((field.type.field(i) for i in range(field.type.num_fields)), depth + 1)


def pack_vectors(vectors: np.ndarray) -> bytes:
    """Pack a (count, ndims) or (ndims,) array as little-endian float32 bytes."""
    return np.ascontiguousarray(vectors, dtype=_F32).tobytes()


def unpack_vectors(data: bytes, ndims: int) -> np.ndarray:
    """Unpack little-endian float32 bytes into a (count, ndims) array."""
    if ndims <= 0 or len(data) % (4 * ndims):
        raise InvalidArgument(
            f"vector bytes ({len(data)}) are not a whole number of float32[{ndims}] vectors"
        )
    return np.frombuffer(data, dtype=_F32).reshape(-1, ndims)


def unpack_vector(data: bytes) -> np.ndarray:
    """Unpack one query vector of little-endian float32."""
    if not data or len(data) % 4:
        raise InvalidArgument(
            f"a query vector must be little-endian float32 bytes, got {len(data)} bytes"
        )
    vector = np.frombuffer(data, dtype=_F32)
    if not distances_fit(vector[None, :]):  # NaN and infinity overflow the squared length too
        if not np.isfinite(vector).all():
            raise InvalidArgument("the query vector contains NaN or infinity")
        raise InvalidArgument(OVERFLOW_HINT.format(what="the query vector"))
    return vector


# Distances are computed in float32: a vector whose squared length overflows it has no distance.
OVERFLOW_HINT = (
    "{what} is too long: its squared length overflows float32, so no distance to it exists; "
    "scale it down (keep every value well below 1e18)"
)


def distances_fit(vectors: np.ndarray) -> bool:
    """Whether every row's squared length, and so its distances, is finite in float32."""
    rows = np.asarray(vectors, dtype=np.float32)
    with np.errstate(over="ignore"):
        return bool(np.isfinite(np.einsum("ij,ij->i", rows, rows)).all())
