"""The async SDK on grpc.aio: ``await connect_async(uri)``, with LanceDB's async API shape."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import os
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import grpc
import pyarrow as pa

from embedsearch.contract.channels import channel_options, typed_errors
from embedsearch.contract.errors import EmbedsearchError, InvalidArgument
from embedsearch.contract.wire import ipc_to_table
from embedsearch.db import (
    Connection,
    ListTablesResponse,
    _root_namespace,
    gateway_of,
    list_tables_request,
)
from embedsearch.index import IndexConfig
from embedsearch.rerankers import rerank_here, runs_on_server
from embedsearch.results import AddResult, DeleteResult, MergeResult, UpdateResult
from embedsearch.table import (
    CHUNK_ROWS,
    MergeInsertBuilder,
    Query,
    Table,
    TakeQuery,
    _batches,
    _set_query,
    add_request,
    merge_result,
    streamed_head,
    update_request,
    versions_from_pb,
)
from embedsearch.table_schema import Tags
from embedsearch.v1 import gateway_pb2, gateway_pb2_grpc

if TYPE_CHECKING:
    import pandas as pd

    from embedsearch.embeddings import EmbeddingFunctionConfig

P = ParamSpec("P")
R = TypeVar("R")
# Replies up to this size decode on the event loop (microseconds); larger ones in a thread.
DECODE_INLINE_BYTES = 256 * 1024
# The connection's own timeout, as the sync Connection.call takes it.
_DEFAULT = -1.0


def _in_thread(
    method: Callable[Concatenate[Any, P], R],
) -> Callable[Concatenate[Any, P], Awaitable[R]]:
    """An async method that runs the sync SDK's ``method`` on ``self._sync`` in a worker
    thread: the methods off the common path (schema evolution, maintenance, index builds,
    tags) reuse the sync code as it is, through the connection's synchronous twin."""

    @functools.wraps(method)
    async def run(self: Any, *args: P.args, **kwargs: P.kwargs) -> R:
        return await asyncio.to_thread(method, self._sync, *args, **kwargs)

    return run


async def _decoded(data: bytes, what: str) -> pa.Table:
    """Arrow IPC bytes as a table, decoded off the event loop when they are large."""
    if len(data) <= DECODE_INLINE_BYTES:
        return ipc_to_table(data, what)
    return await asyncio.to_thread(ipc_to_table, data, what)


def _seconds(timeout: datetime.timedelta | float | None) -> float:
    """LanceDB's query timeout (a timedelta) in seconds; None means the connection's."""
    if timeout is None:
        return _DEFAULT
    return timeout.total_seconds() if isinstance(timeout, datetime.timedelta) else timeout


def _pylist(table: pa.Table) -> list[dict[str, Any]]:
    """Rows as dicts, a batch at a time so that the loop's thread gets the GIL in between."""
    return [row for batch in table.to_batches(CHUNK_ROWS) for row in batch.to_pylist()]


def _chunked(data: Any) -> Any:
    """A long list of rows (or a DataFrame) as an iterator of CHUNK_ROWS slices, converted to
    Arrow one slice per worker-thread call: pyarrow holds the GIL for a whole conversion, and
    one over 100k rows would stall the loop even from a thread. Other data as it is."""
    if isinstance(data, list | tuple) and len(data) > CHUNK_ROWS:
        return (list(data[i : i + CHUNK_ROWS]) for i in range(0, len(data), CHUNK_ROWS))
    if type(data).__name__ == "DataFrame" and len(data) > CHUNK_ROWS:
        return (data.iloc[i : i + CHUNK_ROWS] for i in range(0, len(data), CHUNK_ROWS))
    return data


class AsyncConnection:
    """LanceDB's ``AsyncConnection`` over grpc.aio: every call awaits, none blocks the loop.

    >>> db = await embedsearch.connect_async("grpc://127.0.0.1:50050")  # doctest: +SKIP
    >>> table = await db.open_table("docs")  # doctest: +SKIP
    """

    def __init__(
        self, sync: Connection, target: str, credentials: grpc.ChannelCredentials | None = None
    ) -> None:
        options = channel_options()
        self._channel = (
            grpc.aio.secure_channel(target, credentials, options)
            if credentials
            else grpc.aio.insecure_channel(target, options)
        )
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)
        # The synchronous twin, on the same gateway (its channel connects on first use): it
        # holds the URI, timeout and credentials; embedding functions, synchronous in
        # LanceDB's API, bind to it; and the methods off the common path run the sync SDK's
        # code on it in a worker thread.
        self._sync = sync
        self._open = True
        self._closing: asyncio.Task[None] | None = None

    @property
    def uri(self) -> str:
        return self._sync.uri

    async def call(self, method: str, request: Any, timeout: float | None = _DEFAULT) -> Any:
        """Await a Gateway RPC; failures raise the typed errors of :mod:`embedsearch.errors`.
        ``timeout`` defaults to the connection's; ``None`` waits as long as the call runs."""
        with typed_errors(self._sync._peer):
            return await getattr(self._stub, method)(
                request,
                timeout=self._sync.timeout if timeout == _DEFAULT else timeout,
                metadata=self._sync._metadata,
            )

    async def stream(self, method: str, request: Any) -> AsyncIterator[Any]:
        """The replies of a server-streaming Gateway RPC as they arrive (no deadline)."""
        with typed_errors(self._sync._peer):
            async for reply in getattr(self._stub, method)(request, metadata=self._sync._metadata):
                yield reply

    async def table_names(
        self,
        *,
        namespace_path: list[str] | None = None,
        start_after: str | None = None,
        limit: int | None = None,
    ) -> list[str]:
        """Table names after ``start_after``, sorted, at most ``limit`` (None: all);
        deprecated in LanceDB for :meth:`list_tables`, and warned about likewise."""
        warnings.warn(
            "table_names() is deprecated, use list_tables() instead",
            DeprecationWarning,
            stacklevel=2,
        )
        return await self._names(namespace_path, start_after, limit)

    async def _names(
        self, namespace_path: list[str] | None, start_after: str | None, limit: int | None
    ) -> list[str]:
        _root_namespace(namespace_path)
        reply = await self.call("ListTables", list_tables_request(start_after, limit))
        return list(reply.names)

    async def list_tables(
        self,
        namespace_path: list[str] | None = None,
        page_token: str | None = None,
        limit: int | None = None,
    ) -> ListTablesResponse:
        """A page of table names, with the token of the next page when there may be one."""
        names = await self._names(namespace_path, page_token, limit)
        return ListTablesResponse(names, names[-1] if limit and len(names) == limit else None)

    async def create_table(
        self,
        name: str,
        data: Any = None,
        schema: Any = None,
        mode: str | None = None,
        exist_ok: bool | None = None,
        on_bad_vectors: str | None = None,
        fill_value: float | None = None,
        storage_options: dict[str, str] | None = None,
        *,
        namespace_path: list[str] | None = None,
        embedding_functions: list[EmbeddingFunctionConfig] | None = None,
    ) -> AsyncTable:
        """Create a table from a schema (a ``LanceModel`` or an Arrow schema) and/or data, as
        :meth:`embedsearch.db.Connection.create_table` does. The rows are converted, and
        embedded by client-side functions, in a worker thread."""
        request = await asyncio.to_thread(
            self._sync._create_request,
            name,
            data,
            schema,
            mode or "create",
            bool(exist_ok),
            on_bad_vectors or "error",
            fill_value or 0.0,
            embedding_functions or [],
            namespace_path,
            storage_options,
        )
        return await AsyncTable.of(self, await self.call("CreateTable", request))

    async def open_table(
        self,
        name: str,
        *,
        version: int | None = None,
        namespace_path: list[str] | None = None,
        storage_options: dict[str, str] | None = None,
        index_cache_size: int | None = None,
        location: str | None = None,
        namespace_client: Any = None,
        managed_versioning: bool | None = None,
        branch: str | None = None,
    ) -> AsyncTable:
        """Open an existing table: its latest version, or ``version`` (read-only). Storage
        options and cache sizes are the store's settings; locations, namespace clients and
        branches are LanceDB's own and refused."""
        _root_namespace(namespace_path)
        if location or namespace_client is not None or branch:
            raise InvalidArgument("location, namespace_client and branch are not supported")
        request = gateway_pb2.DescribeTableRequest(name=name, version=version or 0)
        return await AsyncTable.of(self, await self.call("DescribeTable", request), version or 0)

    async def drop_table(
        self, name: str, *, namespace_path: list[str] | None = None, ignore_missing: bool = False
    ) -> None:
        """Delete a table and all its versions."""
        _root_namespace(namespace_path)
        request = gateway_pb2.DropTableRequest(name=name, ignore_missing=ignore_missing)
        await self.call("DropTable", request)

    async def drop_all_tables(self, namespace_path: list[str] | None = None) -> None:
        """Drop every table."""
        for name in await self._names(namespace_path, None, None):
            await self.drop_table(name, ignore_missing=True)

    # The same signature as the sync method's and LanceDB's; rare enough for a thread.
    rename_table = _in_thread(Connection.rename_table)

    def is_open(self) -> bool:
        return self._open

    def close(self) -> None:
        """Close the connection (LanceDB's is synchronous too); safe to call twice. The aio
        channel closes on the running loop, when there is one."""
        if not self._open:
            return
        self._open = False
        self._sync.close()
        with contextlib.suppress(RuntimeError):  # no running loop: the channel goes with it
            self._closing = asyncio.get_running_loop().create_task(self._channel.close())

    def __enter__(self) -> AsyncConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AsyncConnection({self.uri!r})"


class AsyncTable:
    """LanceDB's ``AsyncTable``: a table behind the gateway, every call awaited.

    It keeps a sync :class:`embedsearch.table.Table` as its descriptor (schema, bindings,
    version), which builds the requests; this class only does the calls, on grpc.aio.
    """

    def __init__(self, connection: AsyncConnection, table: Table) -> None:
        self._conn = connection
        self._sync = table

    @classmethod
    async def of(
        cls, connection: AsyncConnection, info: gateway_pb2.TableInfo, version: int = 0
    ) -> AsyncTable:
        """The table a descriptor names. Taking it creates the table's client-side functions
        (user code that may load a model), so that happens in a worker thread."""
        return cls(connection, await asyncio.to_thread(Table, connection._sync, info, version))

    @property
    def name(self) -> str:
        return self._sync.name

    @property
    def tags(self) -> AsyncTags:
        """Tag management: ``await table.tags.create("v1", 3)``, ``list``, ``get_version``."""
        return AsyncTags(self._sync.tags)

    def is_open(self) -> bool:
        return self._conn.is_open()

    def close(self) -> None:
        """Nothing to release: a table is a handle on the connection's channel."""

    async def _refresh(self) -> None:
        request = gateway_pb2.DescribeTableRequest(name=self.name, version=self._sync._checked_out)
        info = await self._conn.call("DescribeTable", request)
        await asyncio.to_thread(self._sync._describe, info)

    async def _write(self, method: str, request: Any, timeout: float | None = _DEFAULT) -> Any:
        """A write RPC, as :meth:`Table._write`: the handle follows the version it committed,
        and reads its descriptor again when the write failed (it may have committed part)."""
        try:
            result = await self._conn.call(method, request, timeout)
        except EmbedsearchError:
            with contextlib.suppress(EmbedsearchError):
                await self._refresh()
            raise
        self._sync._info.version = max(self._sync._info.version, result.version)
        return result

    # -- descriptor ---------------------------------------------------------------------------

    async def schema(self) -> pa.Schema:
        """The Arrow schema, with the ``embedding_functions`` metadata."""
        return self._sync.schema

    async def version(self) -> int:
        """The version this handle reads: the checked-out one, or the latest it knows of."""
        return self._sync.version

    async def uri(self) -> str:
        return self._sync.uri

    async def embedding_functions(self) -> dict[str, EmbeddingFunctionConfig]:
        """The functions, by vector column (creating them may call the gateway)."""
        return await asyncio.to_thread(lambda: self._sync.embedding_functions)

    # -- reads --------------------------------------------------------------------------------

    async def count_rows(self, filter: str | None = None) -> int:
        """Rows in the table, or matching an SQL filter."""
        request = gateway_pb2.CountRowsRequest(
            table=self.name, filter=filter or "", version=self._sync._checked_out
        )
        return int((await self._conn.call("CountRows", request)).count)

    def query(self) -> AsyncQuery:
        """A query without a vector: ``where``, ``select``, ``limit``, ``offset``, then
        ``await .to_arrow()``; ``nearest_to(vector)`` makes it a vector search."""
        return AsyncQuery.of(self._conn, self._sync.search())

    def vector_search(self, query_vector: Any) -> AsyncVectorQuery:
        """A nearest-neighbour search for ``query_vector`` (a list or an array)."""
        return AsyncVectorQuery.of(self._conn, self._sync.search(_vector_of(query_vector)))

    async def search(
        self,
        query: Any = None,
        vector_column_name: str | None = None,
        query_type: str = "auto",
        ordering_field_name: str | None = None,
        fts_columns: str | list[str] | None = None,
    ) -> AsyncVectorQuery:
        """A search by vector, text or image; text a client-side function embeds is embedded
        in a worker thread (the gateway embeds the rest)."""
        if ordering_field_name is not None or fts_columns is not None:
            raise InvalidArgument("ordering_field_name and fts_columns are not supported yet")
        found = await asyncio.to_thread(self._sync.search, query, vector_column_name, query_type)
        return AsyncVectorQuery.of(self._conn, found)

    async def head(self, n: int = 5) -> pa.Table:
        """The first ``n`` rows in storage order."""
        return await self.query().limit(n).to_arrow()

    async def to_arrow(self) -> pa.Table:
        """Every row (of the checked-out version), in storage order."""
        return await self.query().to_arrow()

    async def to_pandas(self) -> pd.DataFrame:
        return await self.query().to_pandas()

    def take_offsets(self, offsets: Iterable[int]) -> AsyncTakeQuery:
        """The rows at these positions, in ascending order."""
        return AsyncTakeQuery(self._conn, self._sync._take_request(offsets=offsets))

    def take_row_ids(self, row_ids: Iterable[int]) -> AsyncTakeQuery:
        """The rows with these ``_rowid`` values, in ascending order."""
        return AsyncTakeQuery(self._conn, self._sync._take_request(row_ids=row_ids))

    # -- writes -------------------------------------------------------------------------------

    async def add(
        self,
        data: Any,
        *,
        mode: str | None = "append",
        on_bad_vectors: str | None = None,
        fill_value: float | None = None,
        progress: Any = None,
        write_parallelism: int | None = None,
    ) -> AddResult:
        """Append rows; vector columns bound to a function are embedded from their source.

        More than CHUNK_ROWS rows, or an iterator of batches, stream in chunks with
        ``AddStream`` and commit as one version. Every chunk is converted to Arrow, embedded
        by client-side functions and serialized in a worker thread: the loop never blocks.
        ``progress`` and ``write_parallelism`` are accepted for LanceDB's sake; the gateway
        pipelines the chunks itself and no progress is drawn.
        """
        head = self._sync._add_head(mode or "append", on_bad_vectors or "error", fill_value or 0.0)
        batches, rows = await asyncio.to_thread(_batches, _chunked(data))
        if rows is not None and rows.num_rows <= CHUNK_ROWS:
            request = await asyncio.to_thread(self._next_request, batches, head)
            return AddResult((await self._write("Add", request)).version)
        failed: list[BaseException] = []

        async def requests() -> AsyncIterator[gateway_pb2.AddRequest]:
            first: gateway_pb2.AddRequest | None = streamed_head(head)
            try:
                while (
                    request := await asyncio.to_thread(self._next_request, batches, first)
                ) is not None:
                    first = None
                    yield request
                yield gateway_pb2.AddRequest(last=True)
            except BaseException as exc:  # gRPC would report it as a cancelled call
                failed.append(exc)
                raise

        try:
            return AddResult((await self._write("AddStream", requests(), timeout=None)).version)
        except (EmbedsearchError, asyncio.CancelledError):
            if failed:
                raise failed[0] from None
            raise

    def _next_request(
        self, batches: Iterator[pa.Table], head: gateway_pb2.AddRequest | None
    ) -> gateway_pb2.AddRequest | None:
        """The next chunk's message of an add, None after the last (runs in a thread)."""
        batch = next(batches, None)
        return None if batch is None else add_request(head, self._sync._rows(batch))

    async def delete(self, where: str) -> DeleteResult:
        """Delete the rows matching an SQL filter."""
        self._sync._writable()
        request = gateway_pb2.DeleteRequest(table=self.name, filter=where)
        result = await self._write("Delete", request)
        return DeleteResult(result.rows_deleted, result.version)

    async def update(
        self,
        updates: dict[str, Any] | None = None,
        *,
        where: str | None = None,
        updates_sql: dict[str, str] | None = None,
    ) -> UpdateResult:
        """Set columns on the rows matching ``where``: literal ``updates`` or SQL ones."""
        self._sync._writable()
        result = await self._write("Update", update_request(self.name, where, updates, updates_sql))
        return UpdateResult(result.rows_updated, result.version)

    def merge_insert(self, on: str | Iterable[str]) -> AsyncMergeInsertBuilder:
        """Upsert on key columns: ``.when_matched_update_all().when_not_matched_insert_all()``
        then ``await .execute(rows)``."""
        self._sync._writable()
        return AsyncMergeInsertBuilder(self, [on] if isinstance(on, str) else list(on))

    # -- versions -----------------------------------------------------------------------------

    async def list_versions(self) -> list[dict[str, Any]]:
        """Versions, oldest first: number, timestamp and metadata."""
        request = gateway_pb2.ListVersionsRequest(table=self.name)
        return versions_from_pb(await self._conn.call("ListVersions", request))

    async def checkout(self, version: int | str) -> None:
        """Read ``version`` (a number, or a tag's name) from now on; writes need
        :meth:`checkout_latest`."""
        if isinstance(version, str):
            version = await self.tags.get_version(version)
        self._sync._checked_out = version
        await self._refresh()

    async def checkout_latest(self) -> None:
        """Follow the latest version again."""
        self._sync._checked_out = 0
        await self._refresh()

    async def restore(self, version: int | str | None = None) -> None:
        """Make ``version`` (default: the checked-out one) the latest, as a new version."""
        if isinstance(version, str):
            version = await self.tags.get_version(version)
        version = version or self._sync._checked_out
        if not version:
            raise InvalidArgument("restore() needs a version, or a checkout() first")
        await self._conn.call(
            "Restore", gateway_pb2.RestoreRequest(table=self.name, version=version)
        )
        await self.checkout_latest()

    # -- indexes, schema evolution, maintenance: the sync SDK's code in a worker thread ----

    async def create_index(
        self,
        column: str,
        *,
        replace: bool | None = None,
        config: Any = None,
        wait_timeout: datetime.timedelta | None = None,
        name: str | None = None,
        train: bool = True,
    ) -> None:
        """Build an index on ``column`` (a config from :mod:`embedsearch.index` or lancedb's);
        returns when it is built, as LanceDB's does."""
        await asyncio.to_thread(
            self._sync.create_index,
            column,
            replace=True if replace is None else replace,
            config=config,
            wait_timeout=wait_timeout,
            name=name,
            train=train,
        )

    async def list_indices(self) -> list[IndexConfig]:
        """The table's indexes: ``name``, ``index_type``, ``columns``, build ``status``."""
        request = gateway_pb2.ListIndexesRequest(table=self.name)
        reply = await self._conn.call("ListIndexes", request)
        return [IndexConfig.from_pb(i) for i in reply.indexes]

    index_stats = _in_thread(Table.index_stats)
    drop_index = _in_thread(Table.drop_index)
    wait_for_index = _in_thread(Table.wait_for_index)
    add_columns = _in_thread(Table.add_columns)
    alter_columns = _in_thread(Table.alter_columns)
    drop_columns = _in_thread(Table.drop_columns)
    optimize = _in_thread(Table.optimize)
    stats = _in_thread(Table.stats)

    def __repr__(self) -> str:
        return f"AsyncTable({self.name!r}, version={self._sync.version})"


class AsyncTags:
    """LanceDB's ``AsyncTags``: the sync :class:`embedsearch.table_schema.Tags`, awaited."""

    def __init__(self, tags: Tags) -> None:
        self._sync = tags

    list = _in_thread(Tags.list)
    get_version = _in_thread(Tags.get_version)
    create = _in_thread(Tags.create)
    update = _in_thread(Tags.update)
    delete = _in_thread(Tags.delete)


def _vector_of(vector: Any) -> Any:
    """A query vector as ``search`` takes it (a tuple or pyarrow array becomes a list)."""
    if isinstance(vector, pa.Array | pa.ChunkedArray):
        return vector.to_pylist()
    return list(vector) if isinstance(vector, tuple) else vector


class _AsyncResults:
    """The awaited terminals every async query shares, on top of its ``to_arrow``."""

    async def to_arrow(self, timeout: datetime.timedelta | None = None) -> pa.Table:
        raise NotImplementedError

    async def to_pandas(
        self, flatten: int | bool | None = None, timeout: datetime.timedelta | None = None
    ) -> pd.DataFrame:
        return await asyncio.to_thread((await self.to_arrow(timeout)).to_pandas)

    async def to_list(self, timeout: datetime.timedelta | None = None) -> list[dict[str, Any]]:
        return await asyncio.to_thread(_pylist, await self.to_arrow(timeout))

    async def to_polars(self, timeout: datetime.timedelta | None = None) -> Any:
        import polars

        return await asyncio.to_thread(polars.from_arrow, await self.to_arrow(timeout))

    async def to_pydantic(
        self, model: type, *, timeout: datetime.timedelta | None = None
    ) -> list[Any]:
        """Rows as instances of a pydantic model (extra columns such as _distance dropped)."""
        fields = set(model.model_fields)  # type: ignore[attr-defined]
        rows = await self.to_list(timeout)
        return [model(**{k: v for k, v in row.items() if k in fields}) for row in rows]


class AsyncRecordBatchReader:
    """LanceDB's ``AsyncRecordBatchReader``: ``async for batch in reader``, or
    ``await reader.read_all()``; ``schema`` is known before the first batch is read."""

    def __init__(
        self, schema: pa.Schema, tables: AsyncIterator[pa.Table], max_batch_length: int | None
    ) -> None:
        self.schema = schema
        self._tables = tables
        self._max = max_batch_length
        self._pending: list[pa.RecordBatch] = []

    def __aiter__(self) -> AsyncRecordBatchReader:
        return self

    async def __anext__(self) -> pa.RecordBatch:
        while not self._pending:
            table = await anext(self._tables)  # StopAsyncIteration ends the reader
            self._pending = table.to_batches(self._max)
        return self._pending.pop(0)

    async def read_all(self) -> pa.Table:
        return pa.Table.from_batches([batch async for batch in self], self.schema)


async def _tables(
    connection: AsyncConnection, method: str, request: Any
) -> AsyncIterator[pa.Table]:
    """A server-streaming call's record batches, one table per message, decoded off the loop
    when large (the store sends at least one, empty when nothing matched)."""
    async for reply in connection.stream(method, request):
        yield await _decoded(reply.arrow_ipc, "rows")


async def _reader(
    tables: AsyncIterator[pa.Table], max_batch_length: int | None
) -> AsyncRecordBatchReader:
    first = await anext(tables)

    async def all_tables() -> AsyncIterator[pa.Table]:
        yield first
        async for table in tables:
            yield table

    return AsyncRecordBatchReader(first.schema, all_tables(), max_batch_length)


class AsyncQuery(_AsyncResults, Query):  # type: ignore[misc]
    """LanceDB's ``AsyncQuery``: the sync :class:`Query` builds the request (``where``,
    ``select``, ``limit``, ``offset``, ``with_row_id``, ...); the terminals await grpc.aio."""

    def __init__(
        self, connection: AsyncConnection, request: gateway_pb2.SearchRequest, limit: int | None
    ) -> None:
        super().__init__(connection._sync, request, limit)
        self._aconn = connection

    @classmethod
    def of(cls, connection: AsyncConnection, query: Query) -> Any:
        """The async form of a query the sync table built, with all its state (the request,
        limit, and what ``rerank`` keeps)."""
        found = cls(connection, query._request, query._limit)
        found.__dict__.update(vars(query))
        return found

    def postfilter(self) -> AsyncQuery:
        """Apply the filter after the vector search rather than before."""
        self._request.postfilter = True
        return self

    def nearest_to(self, query_vector: Any) -> AsyncVectorQuery:
        """Make this a nearest-neighbour search for ``query_vector`` (10 rows by default)."""
        _set_query(self._request, _vector_of(query_vector))
        return AsyncVectorQuery(self._aconn, self._request, self._limit or 10)

    def _astreamed(self) -> AsyncIterator[pa.Table]:
        return _tables(self._aconn, *self._stream_request())

    async def to_arrow(self, timeout: datetime.timedelta | None = None) -> pa.Table:  # type: ignore[override]
        """Run the query; rows best first with ``_distance``, or in storage order."""
        if self._streams():
            return pa.concat_tables([table async for table in self._astreamed()])
        if self._reranker is not None and not runs_on_server(self._reranker):
            # A reranker of the user's own runs here, on the sync twin, off the loop.
            return await asyncio.to_thread(rerank_here, self, self._reranker)
        reply = await self._aconn.call("Search", self._search_request(), _seconds(timeout))
        return await _decoded(reply.rows.arrow_ipc, "search results")

    async def to_batches(  # type: ignore[override]
        self, *, max_batch_length: int | None = None, timeout: datetime.timedelta | None = None
    ) -> AsyncRecordBatchReader:
        """The results as an async reader of record batches; a query-less read streams."""
        if self._streams():
            return await _reader(self._astreamed(), max_batch_length)
        table = await self.to_arrow(timeout)

        async def whole() -> AsyncIterator[pa.Table]:
            yield table

        return AsyncRecordBatchReader(table.schema, whole(), max_batch_length)

    async def explain_plan(self, verbose: bool | None = False) -> str:  # type: ignore[override]
        """How the store would run this query (its physical plan), without running it."""
        return (await self._aconn.call("ExplainPlan", self._explain_request(bool(verbose)))).plan


class AsyncVectorQuery(AsyncQuery):
    """LanceDB's ``AsyncVectorQuery``: a nearest-neighbour search, with ``column``,
    ``distance_type``, ``nprobes``, ``refine_factor``, ``ef``, ``target_recall``,
    ``bypass_vector_index`` and ``distance_range`` from the sync :class:`Query`."""

    def column(self, column: str) -> AsyncVectorQuery:
        """The vector column to search."""
        self._request.vector_column = column
        return self


class AsyncTakeQuery(_AsyncResults, TakeQuery):  # type: ignore[misc]
    """LanceDB's ``AsyncTakeQuery``: rows by position or row id, ``select`` and
    ``with_row_id`` from the sync :class:`TakeQuery`."""

    def __init__(self, connection: AsyncConnection, request: gateway_pb2.TakeRequest) -> None:
        super().__init__(connection._sync, request)
        self._aconn = connection

    async def to_arrow(self, timeout: datetime.timedelta | None = None) -> pa.Table:  # type: ignore[override]
        return pa.concat_tables([t async for t in _tables(self._aconn, "Take", self._request)])

    async def to_batches(  # type: ignore[override]
        self, *, max_batch_length: int | None = None, timeout: datetime.timedelta | None = None
    ) -> AsyncRecordBatchReader:
        return await _reader(_tables(self._aconn, "Take", self._request), max_batch_length)


class AsyncMergeInsertBuilder(MergeInsertBuilder):
    """LanceDB's merge_insert builder, whose ``execute`` is awaited on an async table."""

    def __init__(self, table: AsyncTable, on: list[str]) -> None:
        super().__init__(table._sync, on)
        self._async_table = table

    async def execute(  # type: ignore[override]
        self,
        new_data: Any,
        on_bad_vectors: str = "error",
        fill_value: float = 0.0,
        timeout: datetime.timedelta | None = None,
    ) -> MergeResult:
        """Run the upsert as one commit; the rows are converted and embedded in a thread."""
        num_rows = await asyncio.to_thread(self._prepare, new_data, on_bad_vectors, fill_value)
        result = await self._async_table._write("MergeInsert", self._request, _seconds(timeout))
        return merge_result(result, num_rows)


async def connect_async(
    uri: str | os.PathLike[str],
    *,
    api_key: str | None = None,
    timeout: float | None = 300.0,
    tls_ca_file: str | None = None,
) -> AsyncConnection:
    """Connect to embedsearch from asyncio code, as ``lancedb.connect_async``.

    The URIs are :func:`embedsearch.connect`'s: ``grpc://host:port`` (``grpcs://`` with TLS)
    reaches a gateway; a local path or ``memory://`` starts the services in this process (in a
    worker thread: it can take a while) and talks to them over a Unix socket.

    >>> db = await connect_async("./mydb")  # doctest: +SKIP
    """
    uri = os.fspath(uri)
    target, credentials = await asyncio.to_thread(gateway_of, uri, tls_ca_file)
    sync = Connection(target, uri, api_key, timeout, credentials)
    return AsyncConnection(sync, target, credentials)
