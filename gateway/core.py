"""The gateway's core: applies embedding bindings on create, add and search. No gRPC here."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedsearch.errors import FailedPrecondition, InvalidArgument, InvalidSchema
from embedsearch.rpc.convert import args_from_pb, copy_shared_fields
from embedsearch.schema import check_vector_lengths, is_vector, vector_type
from embedsearch.v1 import store_pb2
from embedsearch.wire import ipc_to_schema, ipc_to_table, schema_to_ipc, table_to_ipc
from gateway.mapping import Binding, bindings_from_schema, pick_binding, schema_with_bindings

if TYPE_CHECKING:
    from gateway.clients import EmbedderClient, StoreClient

ERROR, DROP, FILL, NULL = "error", "drop", "fill", "null"
Rows = pa.Table | list[dict[str, Any]]


@dataclass
class Table:
    """A table as the gateway sees it: the store's description plus its bindings."""

    info: store_pb2.StoreTableInfo
    schema: pa.Schema
    bindings: list[Binding]


@dataclass
class BadVectors:
    """What to do with rows whose source value is null or empty (LanceDB's on_bad_vectors)."""

    policy: str = ERROR
    fill_value: float = 0.0


class GatewayCore:
    """Creates tables with bindings, embeds rows on add and queries on search."""

    def __init__(self, embedder: EmbedderClient, store: StoreClient) -> None:
        self.embedder = embedder
        self.store = store

    async def table(self, name: str) -> Table:
        info = await self.store.call(
            "DescribeTable", store_pb2.StoreDescribeTableRequest(name=name)
        )
        schema = ipc_to_schema(info.arrow_schema)
        return Table(info=info, schema=schema, bindings=bindings_from_schema(schema))

    async def create_table(
        self,
        name: str,
        schema: pa.Schema,
        bindings: list[Binding],
        mode: int,
        rows: Rows | None,
        bad: BadVectors,
    ) -> Table:
        """Create a table whose schema carries the (canonical) bindings in its metadata."""
        bindings = bindings or bindings_from_schema(schema)
        resolved = await asyncio.gather(*(self._bind(schema, b) for b in bindings))
        for binding, ndims in resolved:
            schema = _with_vector_column(schema, binding, ndims)
        canonical = [binding for binding, _ in resolved]
        if canonical:
            schema = schema_with_bindings(schema, canonical)
        request = store_pb2.StoreCreateTableRequest(
            name=name, arrow_schema=schema_to_ipc(schema), mode=mode
        )
        if rows is not None:
            data = await self.embed_rows(to_table(rows, schema), schema, canonical, bad)
            request.arrow_ipc = table_to_ipc(data)
        info = await self.store.call("CreateTable", request)
        schema = ipc_to_schema(info.arrow_schema)
        return Table(info=info, schema=schema, bindings=bindings_from_schema(schema))

    async def _bind(self, schema: pa.Schema, binding: Binding) -> tuple[Binding, int]:
        if schema.get_field_index(binding.source_column) < 0:
            raise InvalidSchema(
                f"source column {binding.source_column!r} is not in the schema {schema.names}"
            )
        resolved = await self.embedder.resolve(binding.provider, binding.args)
        canonical = Binding(
            provider=resolved.canonical.provider,
            args=args_from_pb(resolved.canonical.args),
            source_column=binding.source_column,
            vector_column=binding.vector_column,
        )
        return canonical, resolved.ndims

    async def add(self, name: str, rows: Rows, bad: BadVectors) -> Any:
        """Embed the rows' missing vectors, then append them as one commit."""
        table = await self.table(name)
        data = await self.embed_rows(
            to_table(rows, table.schema), table.schema, table.bindings, bad
        )
        return await self.store.call(
            "Add", store_pb2.StoreAddRequest(name=name, arrow_ipc=table_to_ipc(data))
        )

    async def merge_insert(
        self, request: store_pb2.StoreMergeInsertRequest, rows: Rows, bad: BadVectors
    ) -> Any:
        """Embed the rows' missing vectors, then upsert them on the key columns."""
        table = await self.table(request.name)
        data = await self.embed_rows(
            to_table(rows, table.schema), table.schema, table.bindings, bad
        )
        request.arrow_ipc = table_to_ipc(data)
        return await self.store.call("MergeInsert", request)

    async def embed_rows(
        self, rows: pa.Table, schema: pa.Schema, bindings: list[Binding], bad: BadVectors
    ) -> pa.Table:
        """Fill each bound vector column for the rows where it is missing or null."""
        if rows.num_rows == 0 or not bindings:
            return rows
        drop = np.zeros(rows.num_rows, dtype=bool)
        columns = await asyncio.gather(
            *(self._vectors(rows, schema.field(b.vector_column), b, bad, drop) for b in bindings)
        )
        for binding, column in zip(bindings, columns, strict=True):
            index = rows.schema.get_field_index(binding.vector_column)
            field = schema.field(binding.vector_column)
            rows = (
                rows.set_column(index, field, column)
                if index >= 0
                else rows.append_column(field, column)
            )
        return rows.filter(pa.array(~drop)) if drop.any() else rows

    async def _vectors(
        self, rows: pa.Table, field: pa.Field, binding: Binding, bad: BadVectors, drop: np.ndarray
    ) -> pa.Array:
        ndims = field.type.list_size
        matrix = np.zeros((rows.num_rows, ndims), dtype=np.float32)
        valid = np.zeros(rows.num_rows, dtype=bool)
        if binding.vector_column in rows.column_names:
            given = rows.column(binding.vector_column)
            check_vector_lengths(given, field)
            valid = ~np.asarray(given.is_null().to_numpy(zero_copy_only=False), dtype=bool)
            if valid.any():
                present = pc.cast(given.filter(pa.array(valid)), field.type).combine_chunks()
                matrix[valid] = present.values.to_numpy().reshape(-1, ndims)
        todo = np.flatnonzero(~valid)
        if todo.size:
            if binding.source_column not in rows.column_names:
                raise InvalidSchema(
                    f"rows have neither {binding.vector_column!r} nor its source column "
                    f"{binding.source_column!r}"
                )
            source = rows.column(binding.source_column).take(pa.array(todo)).to_pylist()
            ok = np.array([isinstance(v, str) and bool(v.strip()) for v in source], dtype=bool)
            if not ok.all():
                valid = self._bad_rows(todo[~ok], binding, field, bad, drop, matrix, valid)
            good = todo[ok]
            if good.size:
                texts = [source[i] for i in np.flatnonzero(ok)]
                vectors = await self.embedder.embed(binding.provider, binding.args, "source", texts)
                if vectors.shape[1] != ndims:
                    raise FailedPrecondition(
                        f"{binding.provider} returns {vectors.shape[1]}-dimensional vectors but "
                        f"column {binding.vector_column!r} holds {ndims}"
                    )
                matrix[good] = vectors
                valid[good] = True
        flat = pa.array(matrix.ravel(), type=pa.float32())
        return pa.FixedSizeListArray.from_arrays(
            flat, type=vector_type(ndims), mask=pa.array(~valid)
        )

    @staticmethod
    def _bad_rows(
        rows: np.ndarray,
        binding: Binding,
        field: pa.Field,
        bad: BadVectors,
        drop: np.ndarray,
        matrix: np.ndarray,
        valid: np.ndarray,
    ) -> np.ndarray:
        where = f"source column {binding.source_column!r} is null or empty"
        if bad.policy == ERROR:
            raise InvalidArgument(
                f"row {int(rows[0])}: {where}; fix the row, or set on_bad_vectors "
                "to drop, fill or null"
            )
        if bad.policy == DROP:
            drop[rows] = True
        elif bad.policy == FILL:
            matrix[rows] = bad.fill_value
            valid = valid.copy()
            valid[rows] = True
        elif not field.nullable:
            raise InvalidArgument(
                f"row {int(rows[0])}: {where}, and {field.name!r} is not nullable"
            )
        return valid

    async def search(self, request: Any, vector: np.ndarray | None) -> pa.Table:
        """Search by ``vector``, or embed the request's text with the bound function first."""
        table = await self.table(request.table)
        binding = pick_binding(table.bindings, request.vector_column, request.table)
        column = request.vector_column or (binding.vector_column if binding else "")
        if not column:
            vectors = [f.name for f in table.schema if is_vector(f)]
            if len(vectors) != 1:
                raise InvalidArgument(
                    f"table {request.table!r} has vector columns {vectors}; "
                    "name one in vector_column"
                )
            column = vectors[0]
        if vector is None:
            if binding is None:
                raise InvalidArgument(
                    f"column {column!r} of table {request.table!r} has no embedding function; "
                    "search it with a vector"
                )
            query = request.text
            if not query.strip():
                raise InvalidArgument("the text query is empty")
            vector = (await self.embedder.embed(binding.provider, binding.args, "query", [query]))[
                0
            ]
        store_request = copy_shared_fields(request, store_pb2.StoreSearchRequest())
        store_request.name = request.table
        store_request.vector_column = column
        store_request.vector = np.ascontiguousarray(vector, dtype="<f4").tobytes()
        reply = await self.store.call("Search", store_request)
        return ipc_to_table(reply.arrow_ipc, "search results")


def _with_vector_column(schema: pa.Schema, binding: Binding, ndims: int) -> pa.Schema:
    """Add the binding's vector column if absent; otherwise check its dimension."""
    index = schema.get_field_index(binding.vector_column)
    if index < 0:
        return schema.append(pa.field(binding.vector_column, vector_type(ndims), nullable=True))
    field = schema.field(index)
    if not is_vector(field) or field.type.list_size != ndims:
        raise InvalidSchema(
            f"vector column {binding.vector_column!r} is {field.type}, but {binding.provider} "
            f"returns {ndims}-dimensional vectors: declare it as Vector({ndims})"
        )
    return schema


def to_table(rows: Rows, schema: pa.Schema) -> pa.Table:
    """Rows as an Arrow table; JSON rows are typed by the table's schema."""
    if isinstance(rows, pa.Table):
        return rows
    if not all(isinstance(row, dict) for row in rows):
        raise InvalidArgument("JSON rows must be an array of objects")
    names = list(dict.fromkeys(key for row in rows for key in row))
    unknown = [n for n in names if schema.get_field_index(n) < 0]
    if unknown:
        raise InvalidSchema(f"unknown column(s) {unknown}; the table has {schema.names}")
    subset = pa.schema([schema.field(n) for n in names])
    try:
        return pa.Table.from_pylist(rows, schema=subset)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        raise InvalidSchema(f"JSON rows do not fit the table's schema: {exc}") from exc
