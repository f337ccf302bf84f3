"""The gateway's core: applies embedding bindings on create, add and search. No gRPC here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from embedsearch.contract.convert import args_from_pb, copy_shared_fields
from embedsearch.contract.errors import (
    EmbedsearchError,
    FailedPrecondition,
    InvalidArgument,
    InvalidSchema,
)
from embedsearch.contract.schema import VectorFill, embeddable, is_vector, vector_type
from embedsearch.contract.sql import keys_filter
from embedsearch.contract.wire import ipc_to_schema, ipc_to_table, schema_to_ipc, table_to_ipc
from embedsearch.v1 import common_pb2, gateway_pb2, store_pb2
from gateway.mapping import (
    Binding,
    bindings_from_schema,
    client_side_error,
    pick_binding,
    schema_with_bindings,
)

if TYPE_CHECKING:
    from gateway.clients import EmbedderClient, StoreClient

ERROR, DROP, FILL, NULL = "error", "drop", "fill", "null"
Rows = pa.Table | list[dict[str, Any]]
# Source keys looked up per Scan when working out which merge_insert rows are written.
KEY_LOOKUP_BATCH = 500
# Operators in one lookup filter: within the store's default --max-expression-operators.
KEY_LOOKUP_OPERATORS = 256
DEFAULT_MAX_ROWS = 100_000  # rows in one request message; GatewaySettings.max_rows_per_request
# Reciprocal rank fusion's constant (Cormack et al.; LanceDB's RRFReranker uses the same).
RRF_K = 60


@dataclass
class Table:
    """A table as the gateway sees it: the store's description plus its bindings."""

    info: store_pb2.StoreTableInfo
    schema: pa.Schema
    bindings: list[Binding]

    def has_text_index(self) -> bool:
        return any(i.index_type == common_pb2.INDEX_TYPE_INVERTED for i in self.info.indexes)


@dataclass
class Chunk:
    """One message of an AddStream."""

    table: str
    rows: Rows
    bad: BadVectors
    commit_per_chunk: bool = False


@dataclass
class BadVectors:
    """What to do with rows whose source value is null or empty (LanceDB's on_bad_vectors)."""

    policy: str = ERROR
    fill_value: float = 0.0


class GatewayCore:
    """Creates tables with bindings, embeds rows on add and queries on search."""

    def __init__(
        self, embedder: EmbedderClient, store: StoreClient, max_rows: int = DEFAULT_MAX_ROWS
    ) -> None:
        self.embedder = embedder
        self.store = store
        self.max_rows = max_rows

    def _conform(self, rows: Rows, schema: pa.Schema) -> pa.Table:
        """The rows of one request message, typed by the table's schema, within the row limit."""
        if len(rows) > self.max_rows:
            raise InvalidArgument(
                f"{len(rows)} rows in one message is over the limit of {self.max_rows} "
                "(--max-rows-per-request): split them, or stream them with AddStream"
            )
        return to_table(rows, schema)

    async def table(self, name: str, version: int = 0) -> Table:
        request = store_pb2.StoreDescribeTableRequest(name=name, version=version)
        info = await self.store.call("DescribeTable", request)
        schema = ipc_to_schema(info.arrow_schema)
        return Table(info=info, schema=schema, bindings=bindings_from_schema(schema))

    # -- create ------------------------------------------------------------------------------

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
        _check_targets(bindings)
        canonical = list(await asyncio.gather(*(self._bind(schema, b) for b in bindings)))
        for binding in canonical:
            schema = _with_vector_column(schema, binding)
        if canonical:
            schema = schema_with_bindings(schema, canonical)
        request = store_pb2.StoreCreateTableRequest(
            name=name, arrow_schema=schema_to_ipc(schema), mode=mode
        )
        if rows is not None:
            data = await self.embed_rows(self._conform(rows, schema), schema, canonical, bad)
            request.arrow_ipc = table_to_ipc(data)
        info = await self.store.call("CreateTable", request)
        schema = ipc_to_schema(info.arrow_schema)
        return Table(info=info, schema=schema, bindings=bindings_from_schema(schema))

    async def _bind(self, schema: pa.Schema, binding: Binding) -> Binding:
        """The binding with canonical arguments and its vector length."""
        if schema.get_field_index(binding.source_column) < 0:
            raise InvalidSchema(
                f"source column {binding.source_column!r} is not in the schema {schema.names}"
            )
        source = schema.field(binding.source_column).type
        text, binary = _is_text(source), _is_binary(source)
        if not (text or binary):
            raise InvalidSchema(
                f"source column {binding.source_column!r} is {source}: a function embeds a "
                "string column (text) or a binary one (images, audio)"
            )
        if binding.client_side:
            if binding.ndims <= 0:
                raise InvalidArgument(
                    f"client-side function {binding.provider!r} needs ndims in its binding"
                )
            return binding
        resolved = await self.embedder.resolve(binding.provider, binding.args)
        takes_text = common_pb2.MODALITY_TEXT in resolved.modalities
        if (text and not takes_text) or (
            binary and resolved.modalities == [common_pb2.MODALITY_TEXT]
        ):
            raise InvalidSchema(
                f"{binding.provider!r} cannot embed source column {binding.source_column!r} "
                f"of type {source}: it takes "
                f"{', '.join(common_pb2.Modality.Name(m) for m in resolved.modalities)}"
            )
        return Binding(
            provider=resolved.canonical.provider,
            args=args_from_pb(resolved.canonical.args),
            source_column=binding.source_column,
            vector_column=binding.vector_column,
            ndims=resolved.ndims,
        )

    # -- writes ------------------------------------------------------------------------------

    async def add(self, name: str, rows: Rows, bad: BadVectors) -> Any:
        """Embed the rows' missing vectors, then append them as one commit."""
        table = await self.table(name)
        data = await self.embed_rows(
            self._conform(rows, table.schema), table.schema, table.bindings, bad
        )
        return await self.store.call(
            "Add", store_pb2.StoreAddRequest(name=name, arrow_ipc=table_to_ipc(data))
        )

    async def add_stream(self, chunks: AsyncIterator[Chunk]) -> common_pb2.WriteResult:
        """Embed and write a stream of chunks, embedding chunk n+1 while chunk n is written.

        The store commits the whole stream as one version when it ends; with commit_per_chunk
        every chunk is its own version. An error stops both stages and commits nothing more.
        """
        first = await anext(chunks, None)
        if first is None or not first.table:
            raise InvalidArgument("AddStream's first message must name the table")
        table = await self.table(first.table)
        # Embedded chunks, then None at the end, or the error that stopped embedding: the
        # writer raises it after writing what came before (kept with commit_per_chunk).
        embedded: asyncio.Queue[pa.Table | Exception | None] = asyncio.Queue(maxsize=2)

        async def embed_all() -> None:
            chunk: Chunk | None = first
            index = 0
            try:
                while chunk is not None:
                    if chunk.table not in ("", first.table):
                        raise InvalidArgument(
                            f"an AddStream writes one table: message {index} names "
                            f"{chunk.table[:80]!r} after {first.table!r}"
                        )
                    rows = self._conform(chunk.rows, table.schema)
                    await embedded.put(
                        await self.embed_rows(rows, table.schema, table.bindings, first.bad)
                    )
                    chunk, index = await anext(chunks, None), index + 1
            except EmbedsearchError as exc:
                await embedded.put(type(exc)(f"chunk {index}: {exc}"))
            except Exception as exc:
                await embedded.put(exc)
            else:
                await embedded.put(None)

        async def requests() -> AsyncIterator[store_pb2.StoreAddRequest]:
            while (rows := await embedded.get()) is not None:
                if isinstance(rows, Exception):
                    raise rows
                yield store_pb2.StoreAddRequest(name=first.table, arrow_ipc=table_to_ipc(rows))

        async def write_all() -> common_pb2.WriteResult:
            if not first.commit_per_chunk:
                return await self.store.stream("AddStream", requests())
            total = common_pb2.WriteResult(version=table.info.version)
            async for request in requests():
                result = await self.store.call("Add", request)
                total.version = result.version
                total.rows_inserted += result.rows_inserted
            return total

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(embed_all())
                writer = group.create_task(write_all())
        except BaseExceptionGroup as failed:  # the first stage to fail says why
            raise failed.exceptions[0] from None
        return writer.result()

    async def merge_insert(
        self, request: store_pb2.StoreMergeInsertRequest, rows: Rows, bad: BadVectors
    ) -> Any:
        """Upsert on the key columns, embedding only the rows the upsert will write (LanceDB
        embeds every source row, lancedb#2523): matched rows when only updating, unmatched
        rows when only inserting, none when only deleting."""
        table = await self.table(request.name)
        data = self._conform(rows, table.schema)
        written = await self._rows_written(request, data)
        data = await self.embed_rows(data, table.schema, table.bindings, bad, only=written)
        request.arrow_ipc = table_to_ipc(data)
        return await self.store.call("MergeInsert", request)

    async def _rows_written(
        self, request: store_pb2.StoreMergeInsertRequest, rows: pa.Table
    ) -> np.ndarray | None:
        """Which source rows the upsert writes (None: all of them)."""
        update, insert = request.when_matched_update_all, request.when_not_matched_insert_all
        if update and insert:
            return None
        if not (update or insert) or rows.num_rows == 0:
            return np.zeros(rows.num_rows, dtype=bool)
        on = list(request.on)
        if not on or any(column not in rows.column_names for column in on):
            return None  # the store reports the missing key column
        keys = [tuple(row.values()) for row in rows.select(on).to_pylist()]
        found: set[tuple[Any, ...]] = set()
        # One key column is one IN list; several are an OR of ANDs, 2 operators a column.
        batch = KEY_LOOKUP_BATCH if len(on) == 1 else KEY_LOOKUP_OPERATORS // (2 * len(on))
        for start in range(0, len(keys), max(1, batch)):
            try:
                where = keys_filter(on, keys[start : start + max(1, batch)])
            except TypeError:
                return None  # keys of a type with no SQL literal: embed every row
            scan = store_pb2.StoreScanRequest(name=request.name, filter=where, columns=on)
            reply = await self.store.call("Scan", scan)
            existing = ipc_to_table(reply.arrow_ipc, "key lookup").to_pylist()
            found.update(tuple(row.values()) for row in existing)
        matched = np.array([key in found for key in keys], dtype=bool)
        return matched if update else ~matched

    async def embed_rows(
        self,
        rows: pa.Table,
        schema: pa.Schema,
        bindings: list[Binding],
        bad: BadVectors,
        only: np.ndarray | None = None,
    ) -> pa.Table:
        """Fill each bound vector column for the rows where it is missing or null (of the rows
        in ``only``, if given: the others are left as they are)."""
        if rows.num_rows == 0 or not bindings:
            return rows
        drop = np.zeros(rows.num_rows, dtype=bool)
        fills = await asyncio.gather(
            *(self._fill(rows, schema.field(b.vector_column), b, bad, drop, only) for b in bindings)
        )
        for fill in fills:
            rows = fill.apply(rows)
        return rows.filter(pa.array(~drop)) if drop.any() else rows

    async def _fill(
        self,
        rows: pa.Table,
        field: pa.Field,
        binding: Binding,
        bad: BadVectors,
        drop: np.ndarray,
        only: np.ndarray | None,
    ) -> VectorFill:
        fill = VectorFill.start(rows, field)
        todo = fill.missing()
        if only is not None:
            todo = todo[only[todo]]
        if not todo.size:
            return fill
        if binding.source_column not in rows.column_names:
            raise InvalidSchema(
                f"rows have neither {binding.vector_column!r} nor its source column "
                f"{binding.source_column!r}"
            )
        source = rows.column(binding.source_column).take(pa.array(todo)).to_pylist()
        ok = np.array([embeddable(value) for value in source], dtype=bool)
        if not ok.all():
            _bad_rows(todo[~ok], binding, field, bad, drop, fill)
        good = todo[ok]
        if not good.size:
            return fill
        if binding.client_side:
            raise client_side_error(binding, f"{good.size} row(s) have no vector")
        inputs = [source[i] for i in np.flatnonzero(ok)]
        vectors = await self.embedder.embed(binding.provider, binding.args, "source", inputs)
        if vectors.shape[1] != field.type.list_size:
            raise FailedPrecondition(
                f"{binding.provider} returns {vectors.shape[1]}-dimensional vectors but "
                f"column {binding.vector_column!r} holds {field.type.list_size}"
            )
        fill.set(good, vectors)
        return fill

    # -- search ------------------------------------------------------------------------------

    async def search(
        self, request: gateway_pb2.SearchRequest, vector: np.ndarray | None
    ) -> pa.Table:
        """Vector, full-text or hybrid search; text and images are embedded in query mode."""
        table = await self.table(request.table, request.version)
        query_type = request.query_type
        kind = request.WhichOneof("query")
        if query_type == gateway_pb2.QUERY_TYPE_UNSPECIFIED:
            query_type = _default_query_type(table, request, kind)
        if query_type == gateway_pb2.QUERY_TYPE_FTS:
            return await self._text_search(request, with_row_id=request.with_row_id)
        if query_type == gateway_pb2.QUERY_TYPE_HYBRID:
            if kind != "text":
                raise InvalidArgument("hybrid search needs a text query")
            found, texts = await asyncio.gather(
                self._vector_search(table, request, vector, with_row_id=True),
                self._text_search(request, with_row_id=True),
            )
            return fuse(found, texts, request.k or 10, request.with_row_id)
        return await self._vector_search(table, request, vector, request.with_row_id)

    async def _vector_search(
        self,
        table: Table,
        request: gateway_pb2.SearchRequest,
        vector: np.ndarray | None,
        with_row_id: bool,
    ) -> pa.Table:
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
            vector = await self._query_vector(request, binding, column)
        store_request = copy_shared_fields(request, store_pb2.StoreSearchRequest())
        store_request.name = request.table
        store_request.vector_column = column
        store_request.vector = np.ascontiguousarray(vector, dtype="<f4").tobytes()
        store_request.with_row_id = with_row_id
        reply = await self.store.call("Search", store_request)
        return ipc_to_table(reply.arrow_ipc, "search results")

    async def _query_vector(
        self, request: gateway_pb2.SearchRequest, binding: Binding | None, column: str
    ) -> np.ndarray:
        if binding is None:
            raise InvalidArgument(
                f"column {column!r} of table {request.table!r} has no embedding function; "
                "search it with a vector"
            )
        if binding.client_side:
            raise client_side_error(binding, "cannot embed the query on the server")
        query: Any = request.text if request.WhichOneof("query") == "text" else request.blob.data
        if not embeddable(query):
            raise InvalidArgument("the query is empty")
        vectors = await self.embedder.embed(binding.provider, binding.args, "query", [query])
        return vectors[0]

    async def _text_search(self, request: gateway_pb2.SearchRequest, with_row_id: bool) -> pa.Table:
        if request.WhichOneof("query") != "text" or not request.text.strip():
            raise InvalidArgument("full-text search needs a non-empty text query")
        store_request = copy_shared_fields(request, store_pb2.StoreTextSearchRequest())
        store_request.name = request.table
        store_request.query = request.text
        store_request.search_columns.extend(request.fts_columns)
        store_request.with_row_id = with_row_id
        reply = await self.store.call("TextSearch", store_request)
        return ipc_to_table(reply.arrow_ipc, "search results")


def _default_query_type(table: Table, request: gateway_pb2.SearchRequest, kind: str | None) -> int:
    """Vector search, unless a text query meets a full-text index: then hybrid (or full-text
    alone when no function can embed the text). A client-side function never falls back."""
    if kind != "text" or not table.has_text_index():
        return gateway_pb2.QUERY_TYPE_VECTOR
    binding = pick_binding(table.bindings, request.vector_column, request.table)
    if binding is None:
        return gateway_pb2.QUERY_TYPE_FTS
    return gateway_pb2.QUERY_TYPE_VECTOR if binding.client_side else gateway_pb2.QUERY_TYPE_HYBRID


def fuse(vector_rows: pa.Table, text_rows: pa.Table, k: int, keep_row_id: bool) -> pa.Table:
    """Reciprocal rank fusion of two result lists, best first, with ``_relevance_score``."""
    scores: dict[int, float] = {}
    for rows in (vector_rows, text_rows):
        for rank, row_id in enumerate(rows.column("_rowid").to_pylist()):
            scores[row_id] = scores.get(row_id, 0.0) + 1.0 / (RRF_K + rank + 1)
    best = sorted(scores, key=lambda row_id: -scores[row_id])[:k]
    combined = pa.concat_tables([vector_rows, text_rows], promote_options="default")
    first: dict[int, int] = {}
    for index, row_id in enumerate(combined.column("_rowid").to_pylist()):
        first.setdefault(row_id, index)
    fused = combined.take([first[row_id] for row_id in best])
    for name, source in (("_distance", vector_rows), ("_score", text_rows)):
        if name in source.column_names:
            ids, values = source.column("_rowid").to_pylist(), source.column(name).to_pylist()
            by_id = dict(zip(ids, values, strict=True))
            fused = _replace(fused, name, pa.array([by_id.get(r) for r in best], pa.float32()))
    fused = fused.append_column(
        "_relevance_score", pa.array([scores[r] for r in best], pa.float32())
    )
    return fused if keep_row_id else fused.drop_columns(["_rowid"])


def _replace(table: pa.Table, name: str, column: pa.Array) -> pa.Table:
    index = table.schema.get_field_index(name)
    if index < 0:
        return table.append_column(name, column)
    return table.set_column(index, name, column)


def _bad_rows(
    rows: np.ndarray,
    binding: Binding,
    field: pa.Field,
    bad: BadVectors,
    drop: np.ndarray,
    fill: VectorFill,
) -> None:
    """Apply on_bad_vectors to rows whose source value is null or empty."""
    where = f"source column {binding.source_column!r} is null or empty"
    if bad.policy == ERROR:
        raise InvalidArgument(
            f"row {int(rows[0])}: {where}; fix the row, or set on_bad_vectors to drop, fill or null"
        )
    if bad.policy == DROP:
        drop[rows] = True
    elif bad.policy == FILL:
        fill.set(rows, bad.fill_value)
    elif not field.nullable:
        raise InvalidArgument(f"row {int(rows[0])}: {where}, and {field.name!r} is not nullable")


def _with_vector_column(schema: pa.Schema, binding: Binding) -> pa.Schema:
    """Add the binding's vector column if absent; otherwise check its dimension."""
    index = schema.get_field_index(binding.vector_column)
    if index < 0:
        field = pa.field(binding.vector_column, vector_type(binding.ndims), nullable=True)
        return schema.append(field)
    field = schema.field(index)
    if not is_vector(field) or field.type.list_size != binding.ndims:
        raise InvalidSchema(
            f"vector column {binding.vector_column!r} is {field.type}, but {binding.provider} "
            f"returns {binding.ndims}-dimensional vectors: declare it as Vector({binding.ndims})"
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
    columns = []
    for name in names:  # column by column, so that an error names its column
        field = schema.field(name)
        try:
            columns.append(pa.array([row.get(name) for row in rows], type=field.type))
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            raise InvalidSchema(
                f"JSON column {name!r} does not fit its type {field.type}: {exc}"
            ) from exc
    return pa.Table.from_arrays(columns, schema=pa.schema([schema.field(n) for n in names]))


def _is_text(arrow_type: pa.DataType) -> bool:
    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)


def _is_binary(arrow_type: pa.DataType) -> bool:
    return pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type)


def _check_targets(bindings: list[Binding]) -> None:
    """Each vector column is written by one binding, and is not its own source."""
    written: set[str] = set()
    for binding in bindings:
        if binding.vector_column == binding.source_column:
            raise InvalidSchema(
                f"binding of {binding.source_column!r} writes its vectors into its own source "
                "column: name another vector column"
            )
        if binding.vector_column in written:
            raise InvalidSchema(
                f"two bindings write vector column {binding.vector_column!r}: one function "
                "per vector column"
            )
        written.add(binding.vector_column)
