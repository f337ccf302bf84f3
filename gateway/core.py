"""The gateway's core: table descriptors, and embedding bindings applied on create, add and
search. Plain values in and out (gateway/values.py); no protobuf, no gRPC."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pyarrow as pa

from embedsearch.contract.errors import (
    BadVectors as BadVectorsError,
)
from embedsearch.contract.errors import (
    Cancelled,
    EmbedsearchError,
    FailedPrecondition,
    InvalidArgument,
    InvalidSchema,
    SchemaChanged,
)
from embedsearch.contract.multivector import MultiVectors
from embedsearch.contract.schema import (
    VectorFill,
    embeddable,
    is_list_type,
    is_multivector,
    is_vector,
    multivector_type,
    vector_dims,
    vector_type,
)
from embedsearch.contract.sql import keys_filter
from embedsearch.contract.values import IndexInfo, IndexStats
from embedsearch.contract.vectors import resolve_bad_vectors
from embedsearch.contract.wire import ipc_to_table
from gateway.mapping import (
    Binding,
    bindings_from_schema,
    client_side_error,
    pick_binding,
    schema_with_bindings,
)
from gateway.media import MediaReader, is_reference
from gateway.rerank import reranked_search
from gateway.schema import SchemaMaintenanceCore
from gateway.values import (
    DROP,
    ERROR,
    FILL,
    FTS,
    HYBRID,
    TEXT_INDEX,
    VECTOR,
    BadVectors,
    Chunk,
    CreateIndex,
    CreateTable,
    Descriptor,
    EmbedCall,
    Embedded,
    Explain,
    MergeInsert,
    Provider,
    Read,
    RerankCall,
    Resolved,
    ResultRows,
    Rows,
    Scan,
    Search,
    StoreTable,
    TableInfo,
    TableVersion,
    Take,
    WriteResult,
)
from service_kit.lru import LRU

if TYPE_CHECKING:
    from gateway.clients import EmbedderClient, StoreClient
    from gateway.settings import GatewaySettings

log = logging.getLogger("gateway")
T = TypeVar("T")
# Source keys looked up per Scan when working out which merge_insert rows are written.
KEY_LOOKUP_BATCH = 500
# Operators in one lookup filter: within the store's default --max-expression-operators.
KEY_LOOKUP_OPERATORS = 256
# Table descriptors kept, by (table, version), least recently used dropped first.
DESCRIPTORS = 1024


class DescriptorCache:
    """Table descriptors by (table, version), version 0 being the latest.

    An entry stays true across data-only writes (their schema and bindings do not change).
    Schema changes through this gateway forget the table's entries; changes made elsewhere are
    found out when the store refuses a request carrying the entry's fingerprint.
    """

    def __init__(self, size: int = DESCRIPTORS) -> None:
        self._items: LRU[tuple[str, int], Descriptor] = LRU(size)

    def get(self, name: str, version: int) -> Descriptor | None:
        return self._items.get((name, version))

    def put(self, version: int, descriptor: Descriptor) -> None:
        self._items.put((descriptor.name, version), descriptor)

    def forget(self, name: str) -> None:
        self._items.drop(lambda key: key[0] == name)


class GatewayCore(SchemaMaintenanceCore):
    """Creates tables with bindings, embeds rows on add and queries on search; one store call
    per request where the table's descriptor is cached."""

    def __init__(
        self, embedder: EmbedderClient, store: StoreClient, settings: GatewaySettings
    ) -> None:
        self.embedder = embedder
        self.store = store
        self.settings = settings
        self.descriptors = DescriptorCache()
        self.media = settings.media_reader()
        self._modalities: dict[str, list[str]] = {}

    def _conform(
        self, rows: Rows, schema: pa.Schema, bindings: list[Binding], bad: BadVectors
    ) -> pa.Table:
        """The rows of one request message, typed by the table's schema, within the row limit,
        with the vectors they bring checked by ``bad`` (LanceDB's on_bad_vectors): a NaN, or
        a length other than the column's. A missing vector is bad too, unless a function
        fills it."""
        limit = self.settings.max_rows_per_request
        if len(rows) > limit:
            raise InvalidArgument(
                f"{len(rows)} rows in one message is over the limit of {limit} "
                "(--max-rows-per-request): split them, or stream them with AddStream"
            )
        table = to_table(rows, schema)
        bound = {b.vector_column for b in bindings}
        for field in schema:
            given = (
                table.schema.field(field.name).type if field.name in table.column_names else None
            )
            # A column that holds no lists at all is the store's to refuse, naming its type.
            if is_vector(field) and given is not None and is_list_type(given):
                table = resolve_bad_vectors(
                    table,
                    field.name,
                    bad.policy,
                    bad.fill_value,
                    dims=field.type.list_size,
                    missing_is_bad=field.name not in bound,
                )
        return table

    # -- descriptors -------------------------------------------------------------------------

    def _remember(self, table: StoreTable, version: int) -> Descriptor:
        descriptor = Descriptor(
            name=table.name,
            schema=table.schema,
            bindings=bindings_from_schema(table.schema),
            text_indexed=any(i.index_type == TEXT_INDEX for i in table.indexes),
            fingerprint=table.fingerprint,
        )
        self.descriptors.put(version, descriptor)
        return descriptor

    async def descriptor(self, name: str, version: int = 0) -> Descriptor:
        """The table's descriptor at ``version`` (0: the latest), from the cache when there."""
        cached = self.descriptors.get(name, version)
        if cached is not None:
            return cached
        return self._remember(await self.store.describe(name, version), version)

    async def _described(
        self, name: str, version: int, attempt: Callable[[Descriptor], Awaitable[T]]
    ) -> T:
        """``attempt(descriptor)``, once more on a fresh descriptor when the cached one turns out
        stale: the store says the schema changed since (another gateway, or a client of the
        store, changed it), or the request failed the gateway's own checks against a cached
        descriptor that the store's latest no longer matches."""
        cached = self.descriptors.get(name, version)
        descriptor = cached or self._remember(await self.store.describe(name, version), version)
        try:
            return await attempt(descriptor)
        except SchemaChanged:
            fresh = None
        except (InvalidArgument, FailedPrecondition):
            if cached is None:
                raise
            fresh = await self.store.describe(name, version)
            if fresh.fingerprint == cached.fingerprint:
                raise  # the request's own fault, not the descriptor's
        log.info("table %r changed schema elsewhere: describing it again", name)
        self.descriptors.forget(name)
        again = self._remember(fresh, version) if fresh else await self.descriptor(name, version)
        return await attempt(again)

    # -- tables ------------------------------------------------------------------------------

    async def describe(self, name: str, version: int = 0) -> TableInfo:
        table = await self.store.describe(name, version)
        return TableInfo(table, self._remember(table, version).bindings)

    async def list_tables(self, start_after: str, limit: int) -> list[str]:
        return await self.store.list_tables(start_after, limit)

    async def rename_table(self, name: str, new_name: str) -> TableInfo:
        try:
            table = await self.store.rename_table(name, new_name)
        finally:
            self.descriptors.forget(name)
            self.descriptors.forget(new_name)
        return TableInfo(table, self._remember(table, 0).bindings)

    async def drop_table(self, name: str, ignore_missing: bool) -> None:
        try:
            await self.store.drop_table(name, ignore_missing)
        finally:
            self.descriptors.forget(name)

    async def create_table(self, create: CreateTable) -> TableInfo:
        """Create a table whose schema carries the (canonical) bindings in its metadata."""
        schema = create.schema
        bindings = create.bindings or bindings_from_schema(schema)
        _check_targets(bindings)
        canonical = list(await asyncio.gather(*(self._bind(schema, b) for b in bindings)))
        for binding in canonical:
            schema = _with_vector_column(schema, binding)
        if canonical:
            schema = schema_with_bindings(schema, canonical)
        data = None
        if create.rows is not None:
            rows = self._conform(create.rows, schema, canonical, create.bad)
            data = await self.embed_rows(rows, schema, canonical, create.bad)
        self.descriptors.forget(create.name)
        table = await self.store.create_table(create.name, schema, create.mode, data)
        return TableInfo(table, self._remember(table, 0).bindings)

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
        if (text and "text" not in resolved.modalities) or (
            binary and resolved.modalities == ["text"]
        ):
            raise InvalidSchema(
                f"{binding.provider!r} cannot embed source column {binding.source_column!r} "
                f"of type {source}: it takes {', '.join(resolved.modalities)}"
            )
        return Binding(
            provider=resolved.provider,
            args=resolved.args,
            source_column=binding.source_column,
            vector_column=binding.vector_column,
            ndims=resolved.ndims,
            multi_vector=resolved.multi_vector,
        )

    async def restore(self, name: str, version: int) -> WriteResult:
        """Make an old version the latest; its schema may differ, so the descriptor goes."""
        try:
            return await self.store.restore(name, version)
        finally:
            self.descriptors.forget(name)

    # -- writes ------------------------------------------------------------------------------

    async def add(self, chunk: Chunk) -> WriteResult:
        """Embed the rows' missing vectors, then append them as one commit."""
        if chunk.last or chunk.ends_with_last or chunk.rows is None:
            raise InvalidArgument(
                "last and ends_with_last mark the end of an AddStream; an Add is one message "
                "and needs rows"
            )

        async def attempt(table: Descriptor) -> WriteResult:
            rows = self._conform(chunk.rows, table.schema, table.bindings, chunk.bad)
            data = await self.embed_rows(rows, table.schema, table.bindings, chunk.bad)
            return await self.store.add(chunk.table, data, table.fingerprint, chunk.overwrite)

        return await self._described(chunk.table, 0, attempt)

    async def add_stream(self, chunks: AsyncIterator[Chunk]) -> WriteResult:
        """Embed and write a stream of chunks, embedding chunk n+1 while chunk n is written.

        The store commits the whole stream as one version when it ends; with commit_per_chunk
        every chunk is its own version. An error stops both stages and commits nothing more.
        A stream whose first message set ends_with_last ends only with a message marked last:
        without one, its client broke off, and it commits nothing (CANCELLED).
        A stream cannot be replayed, so it starts from a fresh descriptor (one store call more).
        """
        first = await anext(chunks, None)
        if first is None or not first.table:
            raise InvalidArgument("AddStream's first message must name the table")
        table = self._remember(await self.store.describe(first.table), 0)
        # Embedded chunks, then None at the end, or the error that stopped embedding: the
        # writer raises it after writing what came before (kept with commit_per_chunk).
        embedded: asyncio.Queue[pa.Table | Exception | None] = asyncio.Queue(maxsize=2)

        def broken_off() -> Cancelled:
            kept = (
                "earlier chunks stay committed" if first.commit_per_chunk else "nothing was written"
            )
            return Cancelled(
                "AddStream ended without its message marked last (its first message set "
                f"ends_with_last): the client crashed or broke off the stream; {kept}"
            )

        async def embed_all() -> None:
            chunk: Chunk | None = first
            index, ended = 0, False
            try:
                while chunk is not None:
                    if ended:
                        raise InvalidArgument("a message came after the one marked last")
                    if chunk.table not in ("", first.table):
                        raise InvalidArgument(
                            f"an AddStream writes one table: message {index} names "
                            f"{chunk.table[:80]!r} after {first.table!r}"
                        )
                    if chunk.rows is not None:
                        rows = self._conform(chunk.rows, table.schema, table.bindings, first.bad)
                        await embedded.put(
                            await self.embed_rows(rows, table.schema, table.bindings, first.bad)
                        )
                    ended = chunk.last
                    chunk, index = await anext(chunks, None), index + 1
            except EmbedsearchError as exc:
                await embedded.put(exc.reworded(f"chunk {index}: {exc}"))
            except Exception as exc:
                await embedded.put(exc)
            else:
                await embedded.put(None if ended or not first.ends_with_last else broken_off())

        async def tables() -> AsyncIterator[pa.Table]:
            while (rows := await embedded.get()) is not None:
                if isinstance(rows, Exception):
                    raise rows
                yield rows

        async def write_all() -> WriteResult:
            if not first.commit_per_chunk:
                return await self.store.add_stream(
                    first.table, tables(), table.fingerprint, first.overwrite
                )
            total = WriteResult()
            async for rows in tables():
                # With overwrite, the first chunk replaces the rows and the others append.
                overwrite = first.overwrite and not total.version
                result = await self.store.add(first.table, rows, table.fingerprint, overwrite)
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

    async def merge_insert(self, merge: MergeInsert) -> WriteResult:
        """Upsert on the key columns, embedding only the rows the upsert will write (LanceDB
        embeds every source row, lancedb#2523): matched rows when only updating, unmatched
        rows when only inserting, none when only deleting."""

        async def attempt(table: Descriptor) -> WriteResult:
            data = self._conform(merge.rows, table.schema, table.bindings, merge.bad)
            written = await self._rows_written(merge, data)
            data = await self.embed_rows(data, table.schema, table.bindings, merge.bad, written)
            return await self.store.merge_insert(merge, data, table.fingerprint)

        return await self._described(merge.table, 0, attempt)

    async def _rows_written(self, merge: MergeInsert, rows: pa.Table) -> np.ndarray | None:
        """Which source rows the upsert writes (None: all of them)."""
        update, insert = merge.when_matched_update_all, merge.when_not_matched_insert_all
        if update and insert:
            return None
        if not (update or insert) or rows.num_rows == 0:
            return np.zeros(rows.num_rows, dtype=bool)
        on = merge.on
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
            reply = await self.store.scan(Scan(merge.table, where, on))
            found.update(
                tuple(row.values()) for row in ipc_to_table(reply, "key lookup").to_pylist()
            )
        matched = np.array([key in found for key in keys], dtype=bool)
        return matched if update else ~matched

    async def delete(self, name: str, where: str) -> WriteResult:
        return await self.store.delete(name, where)

    async def update(self, name: str, where: str, updates: dict[str, str]) -> WriteResult:
        return await self.store.update(name, where, updates)

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
            why = f"source column {binding.source_column!r} is null or empty"
            _bad_rows(todo[~ok], why, field, bad, drop, fill)
        good = todo[ok]
        if not good.size:
            return fill
        if binding.client_side:  # the client's function gave no vector (or the client sent none)
            if bad.policy == ERROR:
                raise client_side_error(binding, f"{good.size} row(s) have no vector")
            why = f"the client-side function {binding.provider!r} gave no vector"
            _bad_rows(good, why, field, bad, drop, fill)
            return fill
        inputs = [source[i] for i in np.flatnonzero(ok)]
        media = await self._media_for(binding, inputs)
        embedded = await self.embedder.embed(
            binding.provider, binding.args, "source", inputs, media
        )
        vectors = _for_column(embedded, field, binding)
        if isinstance(vectors, MultiVectors):
            groups = vectors.groups()
            nan = np.array([np.isnan(group).any() for group in groups], dtype=bool)
            if nan.any():
                _bad_rows(good[nan], f"{binding.provider} returned NaN", field, bad, drop, fill)
            fill.set(good[~nan], [groups[i] for i in np.flatnonzero(~nan)])
            return fill
        nan = np.isnan(vectors).any(axis=1)
        if nan.any():
            _bad_rows(good[nan], f"{binding.provider} returned NaN", field, bad, drop, fill)
        fill.set(good[~nan], vectors[~nan])
        return fill

    # -- reads -------------------------------------------------------------------------------

    async def count_rows(self, name: str, where: str, version: int) -> int:
        return await self.store.count_rows(name, where, version)

    def read(self, read: Read) -> AsyncIterator[bytes]:
        """A table's rows as the store streams them, batch by batch, passed through: the
        gateway holds one batch at a time, and needs no descriptor."""
        return self.store.read(read)

    def take(self, take: Take) -> AsyncIterator[bytes]:
        """Rows by offset or row id, as the store streams them, passed through."""
        return self.store.take(take)

    async def search_stream(self, search: Search) -> AsyncIterator[bytes]:
        """A vector search of any k up to the table's size, streamed from the store batch by
        batch. Full-text and hybrid searches are ranked whole, so they are not streamed."""
        if search.reranker is not None:
            raise InvalidArgument(
                "a reranked search is ranked whole, so it is not streamed: lower k"
            )
        table = await self.descriptor(search.table, search.version)
        if (search.query_type or _default_query_type(table, search)) != VECTOR:
            raise InvalidArgument(
                "only vector searches stream: a full-text or hybrid search returns at most "
                "10,000 rows; lower k"
            )
        column, vector = await self._vector_query(table, search)
        async for batch in self.store.search_stream(search, column, vector, table.fingerprint):
            yield batch

    async def explain(self, explain: Explain) -> str:
        """The store's plan for a search or a read; a text or image query is embedded first,
        as the search would. A hybrid search has two plans, the vector one first."""
        search, verbose = explain.search, explain.verbose
        if search is None:
            assert explain.read is not None
            return await self.store.explain_read(explain.read, verbose)

        async def attempt(table: Descriptor) -> str:
            query_type = search.query_type or _default_query_type(table, search)
            plans = []
            if query_type in (VECTOR, HYBRID):
                column, vector = await self._vector_query(table, search)
                plans.append(
                    self.store.explain_search(search, column, vector, table.fingerprint, verbose)
                )
            if query_type in (FTS, HYBRID):
                plans.append(self.store.explain_text_search(search, table.fingerprint, verbose))
            found = await asyncio.gather(*plans)
            if len(found) == 1:
                return found[0]
            return f"Vector Search Plan:\n{found[0]}FTS Search Plan:\n{found[1]}"

        return await self._described(search.table, search.version, attempt)

    async def search(self, search: Search) -> ResultRows:
        """Vector, full-text or hybrid search; text and images are embedded in query mode.

        The store's rows pass through as its Arrow IPC bytes, unless fused (hybrid)."""
        if search.query_type == FTS and search.reranker is None:  # needs no descriptor
            return ResultRows(ipc=await self._text_search(search, "", search.with_row_id))

        async def attempt(table: Descriptor) -> ResultRows:
            query_type = search.query_type or _default_query_type(table, search)
            if query_type == HYBRID or search.reranker is not None:
                return ResultRows(table=await self._reranked(table, search, query_type))
            if query_type == FTS:
                text = await self._text_search(search, table.fingerprint, search.with_row_id)
                return ResultRows(ipc=text)
            return ResultRows(ipc=await self._vector_search(table, search, search.with_row_id))

        return await self._described(search.table, search.version, attempt)

    async def _reranked(self, table: Descriptor, search: Search, query_type: str) -> pa.Table:
        """A hybrid search, or a reranked one (gateway/rerank.py)."""

        async def vectors(window: Search, with_row_id: bool) -> pa.Table:
            found = await self._vector_search(table, window, with_row_id)
            return ipc_to_table(found, "search results")

        async def texts(window: Search, with_row_id: bool) -> pa.Table:
            found = await self._text_search(window, table.fingerprint, with_row_id)
            return ipc_to_table(found, "search results")

        return await reranked_search(search, query_type, vectors, texts, self.rerank)

    async def rerank(self, call: RerankCall) -> np.ndarray:
        """Scores of documents against a query by a model-backed reranker, in the embedder."""
        return await self.embedder.rerank(call)

    async def _vector_search(self, table: Descriptor, search: Search, with_row_id: bool) -> bytes:
        column, vector = await self._vector_query(table, search)
        return await self.store.search(search, column, vector, with_row_id, table.fingerprint)

    async def _vector_query(self, table: Descriptor, search: Search) -> tuple[str, np.ndarray]:
        """The vector column searched and the query vector, embedding a text or blob query."""
        binding = pick_binding(table.bindings, search.vector_column, search.table)
        column = search.vector_column or (binding.vector_column if binding else "")
        if not column:
            vectors = [f.name for f in table.schema if is_vector(f) or is_multivector(f)]
            if len(vectors) != 1:
                raise InvalidArgument(
                    f"table {search.table!r} has vector columns {vectors}; "
                    "name one in vector_column"
                )
            column = vectors[0]
        query = search.query
        if isinstance(query, np.ndarray):
            return column, query
        vector = await self._query_vector(search, binding, column)
        if isinstance(vector, MultiVectors) and binding is not None:
            field = table.schema.field(column) if column in table.schema.names else None
            if field is not None:
                vector = _for_column(vector, field, binding)
            # A multi-vector query: its token vectors; a plain column: their mean (pooled).
            return column, vector.groups()[0] if isinstance(vector, MultiVectors) else vector[0]
        return column, vector

    async def _query_vector(
        self, search: Search, binding: Binding | None, column: str
    ) -> np.ndarray | MultiVectors:
        """The query's vector; a multi-vector function's vectors (all of the one query)."""
        if binding is None:
            raise InvalidArgument(
                f"column {column!r} of table {search.table!r} has no embedding function; "
                "search it with a vector"
            )
        if binding.client_side:
            raise client_side_error(binding, "cannot embed the query on the server")
        if not embeddable(search.query):
            raise InvalidArgument("the query is empty")
        query: Any = search.query
        media = await self._media_for(binding, [query])
        vectors = await self.embedder.embed(binding.provider, binding.args, "query", [query], media)
        return vectors if isinstance(vectors, MultiVectors) else vectors[0]

    async def _media_for(self, binding: Binding, inputs: list[Any]) -> MediaReader | None:
        """The media reader where some input names a file or URL and the function embeds more
        than text (gateway/media.py); None otherwise. Plain text asks the embedder nothing."""
        if not any(is_reference(value) for value in inputs):
            return None
        if binding.provider not in self._modalities:
            providers = await self.embedder.list_providers()
            self._modalities.update((p.name, p.modalities) for p in providers)
        modalities = self._modalities.get(binding.provider, ["text"])
        return self.media if set(modalities) - {"text"} else None

    async def _text_search(self, search: Search, fingerprint: str, with_row_id: bool) -> bytes:
        if not isinstance(search.query, str) or not search.query.strip():
            raise InvalidArgument("full-text search needs a non-empty text query")
        return await self.store.text_search(search, with_row_id, fingerprint)

    # -- indexes and versions ----------------------------------------------------------------

    async def create_index(self, index: CreateIndex) -> IndexInfo:
        """Start an index build; a full-text index changes how text queries are searched, so
        the table's descriptor goes."""
        try:
            return await self.store.create_index(index)
        finally:
            self.descriptors.forget(index.table)

    async def list_indexes(self, name: str) -> list[IndexInfo]:
        return await self.store.list_indexes(name)

    async def drop_index(self, name: str, index_name: str) -> None:
        """Remove an index; dropping a full-text one changes how text queries are searched, so
        the table's descriptor goes."""
        try:
            await self.store.drop_index(name, index_name)
        finally:
            self.descriptors.forget(name)

    async def index_stats(self, name: str, index_name: str) -> IndexStats:
        return await self.store.index_stats(name, index_name)

    async def list_versions(self, name: str) -> list[TableVersion]:
        return await self.store.list_versions(name)

    # -- the embedder, for clients -----------------------------------------------------------

    async def list_providers(self) -> list[Provider]:
        return await self.embedder.list_providers()

    async def resolve_function(self, provider: str, args: dict[str, Any]) -> Resolved:
        return await self.embedder.resolve(provider, args)

    async def generate_embeddings(self, call: EmbedCall) -> Embedded:
        return await self.embedder.embed_once(call)


def _default_query_type(table: Descriptor, search: Search) -> str:
    """Vector search, as in LanceDB 0.40, even when a full-text index exists (hybrid and
    full-text are asked for by name); full-text only for a text query that no function can
    embed, on a table with a full-text index."""
    if not isinstance(search.query, str) or not table.text_indexed:
        return VECTOR
    binding = pick_binding(table.bindings, search.vector_column, search.table)
    return FTS if binding is None else VECTOR


def _bad_rows(
    rows: np.ndarray,
    where: str,
    field: pa.Field,
    bad: BadVectors,
    drop: np.ndarray,
    fill: VectorFill,
) -> None:
    """Apply on_bad_vectors to rows a function cannot give a vector (``where`` says why)."""
    if bad.policy == ERROR:
        raise BadVectorsError(
            f"row {int(rows[0])}: {where}; fix the row, or set on_bad_vectors to drop, fill or null"
        )
    if bad.policy == DROP:
        drop[rows] = True
    elif bad.policy == FILL:
        fill.set(rows, bad.fill_value)
    elif not field.nullable:
        raise InvalidArgument(f"row {int(rows[0])}: {where}, and {field.name!r} is not nullable")


def _for_column(
    vectors: np.ndarray | MultiVectors, field: pa.Field, binding: Binding
) -> np.ndarray | MultiVectors:
    """Embedded vectors as ``field`` holds them: a MultiVector column takes a multi-vector
    function's vectors; a plain vector column takes one vector per input, so a multi-vector
    function's are averaged there, which is what LanceDB's ``colbert`` stores."""
    multi = is_multivector(field)
    if multi and not isinstance(vectors, MultiVectors):
        raise FailedPrecondition(
            f"{binding.provider} returns one vector per input, but column "
            f"{binding.vector_column!r} is a MultiVector: declare it as Vector(ndims)"
        )
    if not multi and isinstance(vectors, MultiVectors):
        vectors = vectors.pooled()
    got = vectors.ndims if isinstance(vectors, MultiVectors) else vectors.shape[1]
    if got != vector_dims(field):
        raise FailedPrecondition(
            f"{binding.provider} returns {got}-dimensional vectors but "
            f"column {binding.vector_column!r} holds {vector_dims(field)}"
        )
    return vectors


def _with_vector_column(schema: pa.Schema, binding: Binding) -> pa.Schema:
    """Add the binding's vector column if absent (a MultiVector one for a multi-vector
    function); otherwise check its dimension."""
    index = schema.get_field_index(binding.vector_column)
    if index < 0:
        make = multivector_type if binding.multi_vector else vector_type
        field = pa.field(binding.vector_column, make(binding.ndims), nullable=True)
        return schema.append(field)
    field = schema.field(index)
    if binding.multi_vector and is_multivector(field) and vector_dims(field) == binding.ndims:
        return schema
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
