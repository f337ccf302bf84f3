"""Arrow schema helpers: rows checked against a table before writing, vector types, column specs."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedsearch.contract.errors import InvalidSchema
from embedsearch.contract.wire import OVERFLOW_HINT, distances_fit


def is_vector(field: pa.Field) -> bool:
    """A vector column: fixed_size_list of floats."""
    return pa.types.is_fixed_size_list(field.type) and pa.types.is_floating(field.type.value_type)


def is_multivector(field: pa.Field) -> bool:
    """A multi-vector column (LanceDB's ``MultiVector``): list<fixed_size_list of floats>."""
    dtype = field.type
    return (
        (pa.types.is_list(dtype) or pa.types.is_large_list(dtype))
        and pa.types.is_fixed_size_list(dtype.value_type)
        and pa.types.is_floating(dtype.value_type.value_type)
    )


def vector_dims(field: pa.Field) -> int:
    """The length of each vector of a vector or multi-vector column."""
    dtype = field.type.value_type if is_multivector(field) else field.type
    return int(dtype.list_size)


def multivector_type(ndims: int) -> pa.DataType:
    """The Arrow type of a multi-vector column: list<fixed_size_list<float32>[ndims]>."""
    return pa.list_(vector_type(ndims))


def is_list_type(arrow_type: pa.DataType) -> bool:
    """A list of any kind: variable, large or fixed-size."""
    return (
        pa.types.is_list(arrow_type)
        or pa.types.is_large_list(arrow_type)
        or pa.types.is_fixed_size_list(arrow_type)
    )


def conform(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """Return ``rows`` cast to ``schema``: columns reordered, absent nullable columns filled with
    nulls. Raises InvalidSchema naming the column (and row) for anything that does not fit."""
    unknown = [name for name in rows.column_names if schema.get_field_index(name) < 0]
    if unknown:
        raise InvalidSchema(f"unknown column(s) {unknown}; the table has {schema.names}")
    columns = []
    for field in schema:
        if field.name not in rows.column_names:
            if not field.nullable:
                raise InvalidSchema(f"column {field.name!r} is required (not nullable)")
            columns.append(pa.nulls(rows.num_rows, field.type))
            continue
        columns.append(_cast(rows.column(field.name), field))
    return pa.Table.from_arrays(columns, schema=schema)


def _cast(column: pa.ChunkedArray, field: pa.Field) -> pa.ChunkedArray:
    if is_vector(field):
        check_vector_lengths(column, field)
    try:
        cast = pc.cast(column, field.type, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise InvalidSchema(
            f"column {field.name!r}: cannot convert {column.type} to {field.type}: {exc}"
        ) from exc
    if not field.nullable and cast.null_count:
        row = _first_true(pc.is_null(cast))
        raise InvalidSchema(f"column {field.name!r} is not nullable but row {row} is null")
    if is_vector(field):
        _check_finite(cast, field)
    elif is_multivector(field):
        _check_finite(pc.list_flatten(cast), pa.field(field.name, field.type.value_type))
    return cast


def check_vector_lengths(column: pa.ChunkedArray, field: pa.Field) -> None:
    ndims = field.type.list_size
    if pa.types.is_null(column.type):
        return  # no vector in any row (a model's VectorField(default=None)): all missing
    if pa.types.is_fixed_size_list(column.type):
        if column.type.list_size != ndims:
            raise InvalidSchema(
                f"column {field.name!r} holds {ndims}-dimensional vectors, "
                f"got {column.type.list_size} dimensions"
            )
        return
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
        raise InvalidSchema(
            f"column {field.name!r} needs vectors (lists of floats), got {column.type}"
        )
    lengths = pc.list_value_length(column)
    wrong = pc.and_(pc.is_valid(lengths), pc.not_equal(lengths, ndims))
    if pc.any(wrong).as_py():
        row = _first_true(wrong)
        raise InvalidSchema(
            f"column {field.name!r} holds {ndims}-dimensional vectors, "
            f"row {row} has {lengths[row].as_py()}"
        )


def _check_finite(column: pa.ChunkedArray, field: pa.Field) -> None:
    for chunk in column.chunks:
        values = chunk.flatten().to_numpy(zero_copy_only=False)
        # One pass: NaN and infinity make the squared length non-finite too.
        if values.size and not distances_fit(values.reshape(-1, field.type.list_size)):
            if not np.isfinite(values).all():
                raise InvalidSchema(f"column {field.name!r} contains NaN or infinite values")
            raise InvalidSchema(OVERFLOW_HINT.format(what=f"a vector of column {field.name!r}"))


def _first_true(mask: pa.ChunkedArray | pa.Array) -> int:
    return int(np.flatnonzero(np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool))[0])


def vector_type(ndims: int) -> pa.DataType:
    """The Arrow type of a vector column: fixed_size_list<float32>[ndims], as LanceDB uses."""
    return pa.list_(pa.float32(), ndims)


_SIMPLE_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "large_string": pa.large_string(),
    "binary": pa.binary(),
    "large_binary": pa.large_binary(),
    "bool": pa.bool_(),
    **{f"int{b}": getattr(pa, f"int{b}")() for b in (8, 16, 32, 64)},
    **{f"uint{b}": getattr(pa, f"uint{b}")() for b in (8, 16, 32, 64)},
    "float16": pa.float16(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "date32": pa.date32(),
    "timestamp[us]": pa.timestamp("us"),
}
_VECTOR = re.compile(r"vector\((\d{1,5})\)")


def parse_type(spec: str) -> pa.DataType:
    """Arrow type for a column-spec type name: ``string``, ``int64``, ``vector(384)``, ..."""
    name = spec.strip().lower()
    if name in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[name]
    match = _VECTOR.fullmatch(name)
    if match and int(match.group(1)) > 0:
        return vector_type(int(match.group(1)))
    raise InvalidSchema(
        f"unknown column type {spec!r}; use one of {sorted(_SIMPLE_TYPES)} or vector(N)"
    )


def type_name(dtype: pa.DataType) -> str:
    """The column-spec name of an Arrow type (the inverse of :func:`parse_type`)."""
    if pa.types.is_fixed_size_list(dtype):
        return f"vector({dtype.list_size})"
    for name, known in _SIMPLE_TYPES.items():
        if known == dtype:
            return name
    return str(dtype)


@dataclass
class VectorFill:
    """A vector column being completed: the vectors rows came with, and which rows lack one."""

    field: pa.Field
    matrix: np.ndarray
    valid: np.ndarray
    # A multi-vector column's rows: a (vectors, ndims) array each (matrix is then unused).
    groups: list[np.ndarray] | None = None

    @classmethod
    def start(cls, rows: pa.Table, field: pa.Field) -> VectorFill:
        """Read the vectors ``rows`` carry in ``field`` (checked against its dimension)."""
        if is_multivector(field):
            return cls._start_groups(rows, field)
        ndims = field.type.list_size
        matrix = np.zeros((rows.num_rows, ndims), dtype=np.float32)
        valid = np.zeros(rows.num_rows, dtype=bool)
        if field.name in rows.column_names:
            given = rows.column(field.name)
            check_vector_lengths(given, field)
            valid = ~np.asarray(given.is_null().to_numpy(zero_copy_only=False), dtype=bool)
            if valid.any():
                present = pc.cast(given.filter(pa.array(valid)), field.type).combine_chunks()
                matrix[valid] = present.values.to_numpy().reshape(-1, ndims)
        return cls(field, matrix, valid)

    @classmethod
    def _start_groups(cls, rows: pa.Table, field: pa.Field) -> VectorFill:
        ndims = vector_dims(field)
        empty = np.zeros((0, ndims), dtype=np.float32)
        groups = [empty] * rows.num_rows
        valid = np.zeros(rows.num_rows, dtype=bool)
        if field.name in rows.column_names:
            given = _cast(rows.column(field.name), field.with_nullable(True))
            for row, value in enumerate(given.to_pylist()):
                if value is not None:
                    groups[row] = np.asarray(value, dtype=np.float32).reshape(-1, ndims)
                    valid[row] = True
        return cls(field, empty, valid, groups)

    def missing(self) -> np.ndarray:
        """Indices of the rows that still need a vector."""
        return np.flatnonzero(~self.valid)

    def set(self, rows: np.ndarray, vectors: np.ndarray | float) -> None:
        """Give ``rows`` these vectors (or one value in every dimension). A multi-vector
        column takes a sequence of (vectors, ndims) arrays, one per row, or one value (then
        each row gets one vector of it)."""
        if self.groups is None:
            self.matrix[rows] = vectors
        else:
            scalar = isinstance(vectors, float | int)
            for i, row in enumerate(np.atleast_1d(rows).tolist()):
                value = np.full((1, vector_dims(self.field)), vectors) if scalar else vectors[i]  # type: ignore[index]
                self.groups[row] = np.asarray(value, dtype=np.float32)
        self.valid[rows] = True

    def apply(self, rows: pa.Table) -> pa.Table:
        """``rows`` with this column replaced (or added); rows without a vector get null."""
        if self.groups is not None:
            column = _multivector_array(self.groups, self.valid, self.field.type)
        else:
            flat = pa.array(self.matrix.ravel(), type=pa.float32())
            column = pa.FixedSizeListArray.from_arrays(
                flat, type=self.field.type, mask=pa.array(~self.valid)
            )
        index = rows.schema.get_field_index(self.field.name)
        if index >= 0:
            return rows.set_column(index, self.field, column)
        return rows.append_column(self.field, column)


def _multivector_array(groups: list[np.ndarray], valid: np.ndarray, dtype: pa.DataType) -> pa.Array:
    """A list<fixed_size_list> array of one (vectors, ndims) group per row; null where not
    ``valid``."""
    counts = np.array([len(g) if ok else 0 for g, ok in zip(groups, valid, strict=True)])
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    ndims = dtype.value_type.list_size
    kept = [g for g, ok in zip(groups, valid, strict=True) if ok and len(g)]
    flat = np.concatenate(kept).ravel() if kept else np.zeros(0, np.float32)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), ndims)
    lists = pa.ListArray.from_arrays(pa.array(offsets), vectors, mask=pa.array(~valid))
    return lists.cast(dtype)


def embeddable(value: object) -> bool:
    """A source value that can be embedded: non-blank text, or non-empty bytes."""
    if isinstance(value, str):
        return bool(value.strip())
    return isinstance(value, bytes) and bool(value)
