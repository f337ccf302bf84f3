"""Tables and queries of the SDK, with LanceDB's method names."""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from embedsearch.contract.convert import METRIC_TO_PB, args_from_pb, projections_to_pb
from embedsearch.contract.errors import EmbedsearchError, FailedPrecondition, InvalidArgument
from embedsearch.contract.schema import VectorFill, embeddable
from embedsearch.contract.sql import sql_literal
from embedsearch.contract.wire import ipc_to_schema, ipc_to_table, table_to_ipc
from embedsearch.embeddings import (
    EmbeddingFunction,
    EmbeddingFunctionConfig,
    functions_of_bindings,
    get_registry,
)
from embedsearch.rerankers import (
    Reranker,
    RRFReranker,
    rerank_here,
    reranker_to_pb,
    runs_on_server,
)
from embedsearch.results import AddResult, DeleteResult, MergeResult, UpdateResult
from embedsearch.table_indexes import IndexMethods
from embedsearch.table_schema import SchemaMaintenance
from embedsearch.v1 import common_pb2, gateway_pb2

if TYPE_CHECKING:
    import pandas as pd

    from embedsearch.db import Connection

BAD_VECTORS = {
    "error": gateway_pb2.ON_BAD_VECTORS_ERROR,
    "drop": gateway_pb2.ON_BAD_VECTORS_DROP,
    "fill": gateway_pb2.ON_BAD_VECTORS_FILL,
    "null": gateway_pb2.ON_BAD_VECTORS_NULL,
}
# The most rows a search returns in one reply; more are streamed (SearchStream).
MAX_RANKED_K = 10_000
QUERY_TYPES = {
    "auto": gateway_pb2.QUERY_TYPE_UNSPECIFIED,
    "vector": gateway_pb2.QUERY_TYPE_VECTOR,
    "fts": gateway_pb2.QUERY_TYPE_FTS,
    "hybrid": gateway_pb2.QUERY_TYPE_HYBRID,
}


def bad_vectors_to_pb(policy: str) -> int:
    if policy not in BAD_VECTORS:
        raise InvalidArgument(
            f"on_bad_vectors must be one of {sorted(BAD_VECTORS)}, got {policy!r}"
        )
    return BAD_VECTORS[policy]


def to_arrow(data: Any) -> pa.Table:
    """Rows as an Arrow table: from dicts or models, pandas, Arrow, or an iterable of batches."""
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if type(data).__name__ == "DataFrame":
        return pa.Table.from_pandas(data, preserve_index=False)
    if isinstance(data, dict):
        data = [data]
    rows = [row.model_dump() if hasattr(row, "model_dump") else row for row in data]
    if rows and isinstance(rows[0], pa.RecordBatch | pa.Table):
        return pa.concat_tables(to_arrow(part) for part in rows)
    if not all(isinstance(row, dict) for row in rows):
        raise InvalidArgument("rows must be dicts, pydantic models, a DataFrame or Arrow data")
    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InvalidArgument(f"rows cannot be converted to Arrow: {exc}") from exc


CHUNK_ROWS = 2048


def _batches(data: Any) -> tuple[Iterator[pa.Table], pa.Table | None]:
    """Chunks of at most CHUNK_ROWS rows, and all the rows when they are known up front (not
    for an iterator), converted to Arrow once."""
    if isinstance(data, Iterator):
        chunks = (piece for part in data for piece in _slices(to_arrow(part)))
        return chunks, None
    rows = to_arrow(data)
    return _slices(rows), rows


def add_request(
    head: gateway_pb2.AddRequest | None, rows: common_pb2.RowData
) -> gateway_pb2.AddRequest:
    """A message of an add: a chunk's rows, with the options (``head``) on the first."""
    request = gateway_pb2.AddRequest(rows=rows)
    if head is not None:
        request.MergeFrom(head)
    return request


def streamed_head(head: gateway_pb2.AddRequest) -> gateway_pb2.AddRequest:
    """An AddStream's first message: the add's options, and the promise that a message marked
    ``last`` ends the stream, so that a stream broken off mid-way (a crash, a kill) commits
    nothing; the stream's final message is ``AddRequest(last=True)``."""
    request = gateway_pb2.AddRequest(ends_with_last=True)
    request.MergeFrom(head)
    return request


def _slices(rows: pa.Table) -> Iterator[pa.Table]:
    for start in range(0, max(rows.num_rows, 1), CHUNK_ROWS):
        yield rows.slice(start, CHUNK_ROWS)


def progress_bar(total: int | None, what: str) -> Any:
    """A tqdm bar on a terminal; silent elsewhere (CI logs, notebooks' redirected stderr)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=what, unit="rows", disable=not sys.stderr.isatty())


def local_functions(
    bindings: Iterable[common_pb2.EmbeddingBinding], connection: Connection | None = None
) -> dict[str, tuple[common_pb2.EmbeddingBinding, EmbeddingFunction | None]]:
    """The bindings this SDK embeds for, by vector column: client-side ones, each with its
    function if this process registered it (``None`` otherwise: using the table then fails
    with a clear message), and server-hosted ones whose ``$var:`` references name variables
    set in this process (see ``embedsearch.embeddings.remote``)."""
    registry = get_registry()
    found: dict[str, tuple[common_pb2.EmbeddingBinding, EmbeddingFunction | None]] = {}
    for binding in bindings:
        if not binding.client_side:
            remote = client_variable_function(binding, connection)
            if remote is not None:
                found[binding.vector_column] = (binding, remote)
            continue
        name = binding.function.provider
        func = (
            registry.get(name).create(**args_from_pb(binding.function.args))
            if (name in registry)
            else client_variable_function(binding, connection)
        )
        found[binding.vector_column] = (binding, func)
    return found


def _require(
    binding: common_pb2.EmbeddingBinding, func: EmbeddingFunction | None
) -> EmbeddingFunction:
    if func is None:
        variables = sorted(
            str(v).split(":")[1]
            for v in args_from_pb(binding.function.args).values()
            if str(v).startswith("$var:")
        )
        remedy = (
            f"set the variables {variables} it refers to with get_registry().set_var() first"
            if variables
            else "import the module that defines it "
            f"(@register({binding.function.provider!r})) first"
        )
        raise FailedPrecondition(
            f"vector column {binding.vector_column!r} is computed in the client by the function "
            f"{binding.function.provider!r}, which this process cannot run: {remedy}"
        )
    return func


def embed_locally(rows: pa.Table, schema: pa.Schema, functions: dict[str, Any]) -> pa.Table:
    """Fill the vector columns of client-side functions for rows that lack them."""
    for vector_column, (binding, func) in functions.items():
        fill = VectorFill.start(rows, schema.field(vector_column))
        todo = fill.missing()
        if not todo.size or binding.source_column not in rows.column_names:
            continue  # the server reports rows it cannot complete, naming the row
        source = rows.column(binding.source_column).take(pa.array(todo)).to_pylist()
        good = [i for i, value in zip(todo, source, strict=True) if embeddable(value)]
        if good:
            values = [source[list(todo).index(i)] for i in good]
            vectors = _require(binding, func).compute_source_embeddings_with_retry(values)
            # A None (or a vector of another length) stays null, and NaN stays NaN: the
            # gateway applies on_bad_vectors to both, as LanceDB does.
            ndims = fill.field.type.list_size
            given = [(i, v) for i, v in zip(good, vectors, strict=True) if _whole(v, ndims)]
            if given:
                matrix = np.asarray([v for _, v in given], dtype=np.float32)
                fill.set(np.asarray([i for i, _ in given]), matrix)
            rows = fill.apply(rows)
    return rows


def _whole(vector: Any, ndims: int) -> bool:
    return vector is not None and len(vector) == ndims


def client_variable_function(
    binding: common_pb2.EmbeddingBinding, connection: Connection | None
) -> EmbeddingFunction | None:
    """The server-hosted function of ``binding`` when its arguments refer to variables set
    in this process (``set_var``): the SDK then embeds through it, sending the values."""
    args = args_from_pb(binding.function.args)
    if connection is None or not any(str(v).startswith("$var:") for v in args.values()):
        return None
    from embedsearch.embeddings import RemoteProvider, providers_of

    info = providers_of(connection).get(binding.function.provider)
    try:
        func = RemoteProvider(binding.function.provider, info).create(**args)
    except InvalidArgument:  # a variable this process has not set: not ours to embed
        return None
    func.bind(connection)
    return func if func.uses_client_variables() else None


class Table(IndexMethods, SchemaMaintenance):
    """A table behind a gateway. Writes embed missing vectors; searches embed the query.

    The handle keeps the table's descriptor (schema, bindings, version) from when it was
    opened, and follows the versions its own writes commit, as a LanceDB table does: writes
    through other handles show after :meth:`checkout_latest`. Reading ``schema``, ``version``
    or ``embedding_functions`` costs no call.
    """

    def __init__(
        self, connection: Connection, info: gateway_pb2.TableInfo, version: int = 0
    ) -> None:
        self._conn = connection
        self._checked_out = version
        self.name = info.name
        self._describe(info)

    def _describe(self, info: gateway_pb2.TableInfo) -> None:
        """Take a new descriptor: the schema and client-side functions are built once each."""
        self._info = info
        self._schema = ipc_to_schema(info.arrow_schema)
        self._functions = local_functions(info.bindings, self._conn)

    def _refresh(self) -> None:
        request = gateway_pb2.DescribeTableRequest(name=self.name, version=self._checked_out)
        self._describe(self._conn.call("DescribeTable", request))

    def _write(self, method: str, request: Any, timeout: float | None = -1.0) -> Any:
        """Run a write RPC and follow the version it committed. A write that failed may still
        have committed part of its work (a stream with ``commit_per_chunk``): the handle then
        reads its descriptor again."""
        try:
            result = self._conn.call(method, request, timeout)
        except EmbedsearchError:
            with contextlib.suppress(EmbedsearchError):
                self._refresh()
            raise
        self._info.version = max(self._info.version, result.version)
        return result

    @property
    def schema(self) -> pa.Schema:
        """The Arrow schema, with the ``embedding_functions`` metadata."""
        return self._schema

    @property
    def version(self) -> int:
        """The version this handle reads: the checked-out one, or the latest it knows of."""
        return self._info.version

    @property
    def embedding_functions(self) -> dict[str, EmbeddingFunctionConfig]:
        """The functions, by vector column, as LanceDB's ``Table.embedding_functions`` gives
        them; a client-side one must be registered in this process (else ``KeyError``)."""
        bindings = [
            (
                b.function.provider,
                args_from_pb(b.function.args),
                b.source_column,
                b.vector_column,
                b.client_side,
            )
            for b in self._info.bindings
        ]
        return functions_of_bindings(bindings, self._conn)

    def checkout(self, version: int | str) -> None:
        """Read ``version`` (a number, or a tag's name) from now on (time travel); writes need
        :meth:`checkout_latest`."""
        self._checked_out = self.tags.get_version(version) if isinstance(version, str) else version
        self._refresh()

    def checkout_latest(self) -> None:
        """Follow the latest version again."""
        self._checked_out = 0
        self._refresh()

    def _writable(self) -> None:
        if self._checked_out:
            raise FailedPrecondition(
                f"table {self.name!r} is checked out at version {self._checked_out}, which is "
                "read-only; call checkout_latest() to write"
            )

    def count_rows(self, filter: str | None = None) -> int:
        """Rows in the table, or matching an SQL filter."""
        request = gateway_pb2.CountRowsRequest(
            table=self.name, filter=filter or "", version=self._checked_out
        )
        return self._conn.call("CountRows", request).count

    def __len__(self) -> int:
        return self.count_rows()

    def to_batches(self, batch_size: int | None = None) -> Iterator[pa.RecordBatch]:
        """Every row, streamed batch by batch: memory stays about one batch deep."""
        return self.search().to_batches(batch_size)

    def to_arrow(self) -> pa.Table:
        """Every row (of the checked-out version), in storage order."""
        return self.search().to_arrow()

    def to_pandas(self) -> pd.DataFrame:
        return self.to_arrow().to_pandas()

    def to_polars(self) -> Any:
        """Every row as a polars DataFrame (needs polars installed)."""
        return self.search().to_polars()

    def head(self, n: int = 5) -> pa.Table:
        """The first ``n`` rows in storage order."""
        return self.search().limit(n).to_arrow()

    def _rows(self, data: Any) -> common_pb2.RowData:
        rows = to_arrow(data)
        if self._functions:
            rows = embed_locally(rows, self._schema, self._functions)
        return common_pb2.RowData(arrow_ipc=table_to_ipc(rows))

    def add(
        self,
        data: Any,
        mode: str = "append",
        on_bad_vectors: str = "error",
        fill_value: float = 0.0,
        commit_per_chunk: bool = False,
    ) -> AddResult:
        """Append rows; vector columns bound to a function are embedded from their source.

        ``data`` is a list of dicts or models, a DataFrame, Arrow data, or an iterator of any of
        those (batches). More than CHUNK_ROWS rows, or an iterator, are streamed in chunks: the
        server embeds one chunk while it writes the previous, and commits them all as one
        version at the end (each chunk as its own version with ``commit_per_chunk``). A
        progress bar shows on a terminal.
        """
        head = self._add_head(mode, on_bad_vectors, fill_value, commit_per_chunk)
        batches, rows = _batches(data)
        total = None if rows is None else rows.num_rows
        if rows is not None and rows.num_rows <= CHUNK_ROWS:
            return AddResult(self._write("Add", add_request(head, self._rows(rows))).version)

        failed: list[BaseException] = []
        first = streamed_head(head)

        def requests() -> Iterator[gateway_pb2.AddRequest]:
            try:
                with progress_bar(total, f"add {self.name}") as bar:
                    for index, batch in enumerate(batches):
                        yield add_request(first if index == 0 else None, self._rows(batch))
                        bar.update(batch.num_rows)
                yield gateway_pb2.AddRequest(last=True)
            except BaseException as exc:  # gRPC would report it as a bare "iterating requests"
                failed.append(exc)
                raise

        try:
            return AddResult(self._write("AddStream", requests(), timeout=None).version)
        except EmbedsearchError:
            if failed:
                raise failed[0] from None
            raise

    def _add_head(
        self, mode: str, on_bad_vectors: str, fill_value: float, commit_per_chunk: bool = False
    ) -> gateway_pb2.AddRequest:
        """The options of an add, checked, as its first (or only) request carries them."""
        self._writable()
        if mode not in ("append", "overwrite"):
            raise InvalidArgument(f"add mode must be 'append' or 'overwrite', got {mode!r}")
        return gateway_pb2.AddRequest(
            table=self.name,
            on_bad_vectors=bad_vectors_to_pb(on_bad_vectors),
            fill_value=fill_value,
            overwrite=mode == "overwrite",
            commit_per_chunk=commit_per_chunk,
        )

    def take_offsets(self, offsets: Iterable[int]) -> TakeQuery:
        """The rows at these positions (0 is the first row in storage order), in ascending
        order; positions past the end are skipped."""
        return TakeQuery(self._conn, self._take_request(offsets=offsets))

    def take_row_ids(self, row_ids: Iterable[int]) -> TakeQuery:
        """The rows with these ``_rowid`` values, in ascending order."""
        return TakeQuery(self._conn, self._take_request(row_ids=row_ids))

    def _take_request(self, **ids: Iterable[int]) -> gateway_pb2.TakeRequest:
        try:
            wanted = {key: [int(i) for i in values] for key, values in ids.items()}
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"take needs integer offsets or row ids: {exc}") from None
        if any(i < 0 for values in wanted.values() for i in values):
            raise InvalidArgument("offsets and row ids are never negative")
        return gateway_pb2.TakeRequest(table=self.name, version=self._checked_out, **wanted)

    def merge_insert(self, on: str | list[str]) -> MergeInsertBuilder:
        """Upsert on key columns: ``.when_matched_update_all().when_not_matched_insert_all()
        .execute(rows)``."""
        self._writable()
        return MergeInsertBuilder(self, [on] if isinstance(on, str) else list(on))

    def delete(self, where: str) -> DeleteResult:
        """Delete the rows matching an SQL filter."""
        self._writable()
        result = self._write("Delete", gateway_pb2.DeleteRequest(table=self.name, filter=where))
        return DeleteResult(result.rows_deleted, result.version)

    def update(
        self,
        where: str | None = None,
        values: dict[str, Any] | None = None,
        values_sql: dict[str, str] | None = None,
    ) -> UpdateResult:
        """Set columns on the rows matching ``where``: literal ``values`` or SQL expressions."""
        self._writable()
        result = self._write("Update", update_request(self.name, where, values, values_sql))
        return UpdateResult(result.rows_updated, result.version)

    def list_versions(self) -> list[dict[str, Any]]:
        """Versions, oldest first: number, timestamp and metadata."""
        reply = self._conn.call("ListVersions", gateway_pb2.ListVersionsRequest(table=self.name))
        return versions_from_pb(reply)

    def restore(self, version: int | None = None) -> None:
        """Make ``version`` (default: the checked-out one) the latest, as a new version."""
        version = version or self._checked_out
        if not version:
            raise InvalidArgument("restore() needs a version, or a checkout() first")
        self._conn.call("Restore", gateway_pb2.RestoreRequest(table=self.name, version=version))
        self.checkout_latest()

    def search(
        self, query: Any = None, vector_column_name: str | None = None, query_type: str = "auto"
    ) -> Query:
        """Start a search by text, image (bytes or a PIL image) or vector.

        Text is embedded by the vector column's function: on the server, or here for a
        client-side function. ``query_type`` is "auto" (a vector search, as in LanceDB),
        "vector", "fts" or "hybrid".
        """
        if query_type not in QUERY_TYPES:
            raise InvalidArgument(f"query_type must be one of {sorted(QUERY_TYPES)}")
        query_pb = gateway_pb2.SearchRequest(
            table=self.name,
            vector_column=vector_column_name or "",
            query_type=QUERY_TYPES[query_type],
            version=self._checked_out,
        )
        if query is None:  # no query: rows in storage order, all of them unless limited
            return Query(self._conn, query_pb, limit=None)
        query_arg = query  # the text, kept for rerank() after a client-side embedding
        functions = self._functions
        if isinstance(query, str) and functions and query_type != "fts":
            column = vector_column_name or next(iter(functions))
            if column in functions:
                binding, func = functions[column]
                query = _require(binding, func).compute_query_embeddings(query)[0]
                query_pb.vector_column = column
        _set_query(query_pb, query)
        found = Query(self._conn, query_pb)
        found._str_query = query_arg if isinstance(query_arg, str) else None
        return found

    def __repr__(self) -> str:
        return f"Table({self.name!r}, version={self._info.version})"


def update_request(
    table: str, where: str | None, values: dict[str, Any] | None, values_sql: dict[str, str] | None
) -> gateway_pb2.UpdateRequest:
    """An update of ``table``: literal ``values`` become SQL, ``values_sql`` are kept as is."""
    try:
        literals = {k: sql_literal(v) for k, v in (values or {}).items()}
    except TypeError as exc:
        raise InvalidArgument(f"{exc}; pass an SQL expression in values_sql") from None
    updates = literals | (values_sql or {})
    return gateway_pb2.UpdateRequest(table=table, filter=where or "", updates=updates)


def versions_from_pb(reply: gateway_pb2.ListVersionsResponse) -> list[dict[str, Any]]:
    """``list_versions()`` as LanceDB gives it: number, timestamp and metadata, oldest first."""
    return [
        {
            "version": v.version,
            "timestamp": datetime.datetime.fromtimestamp(v.timestamp),
            "metadata": dict(v.metadata),
        }
        for v in reply.versions
    ]


def _set_query(request: gateway_pb2.SearchRequest, query: Any) -> None:
    if isinstance(query, str):
        request.text = query
    elif isinstance(query, bytes):
        request.blob.data = query
    elif hasattr(query, "save") and hasattr(query, "size"):  # a PIL image
        buffer = io.BytesIO()
        query.save(buffer, format="PNG")
        request.blob.data = buffer.getvalue()
        request.blob.mime_type = "image/png"
    elif isinstance(query, np.ndarray | list | tuple):
        vector = np.asarray(query, dtype="<f4")
        if vector.ndim not in (1, 2) or not vector.size:
            raise InvalidArgument(
                f"a query vector must be 1-D (or 2-D for a MultiVector column), got shape "
                f"{vector.shape}"
            )
        request.vector = vector.tobytes()
        request.query_vectors = len(vector) if vector.ndim == 2 else 1
    else:
        raise InvalidArgument("search() needs a text, image or vector query")


def _metric_pb(metric: str) -> int:
    if metric not in METRIC_TO_PB:
        raise InvalidArgument(f"metric must be one of {sorted(METRIC_TO_PB)}, got {metric!r}")
    return METRIC_TO_PB[metric]


def streamed_tables(connection: Connection, method: str, request: Any) -> Iterator[pa.Table]:
    """A server-streaming call's record batches, one table each (an empty one keeps its
    schema, which an empty list of batches would lose)."""
    for reply in connection.stream(method, request):
        yield ipc_to_table(reply.arrow_ipc, "rows")


class MergeInsertBuilder:
    """LanceDB's merge_insert builder: choose what happens to matched and unmatched rows."""

    def __init__(self, table: Table, on: list[str]) -> None:
        self._table = table
        self._request = gateway_pb2.MergeInsertRequest(table=table.name, on=on)

    def when_matched_update_all(self, where: str | None = None) -> MergeInsertBuilder:
        """Replace matched rows (optionally only where ``where`` holds)."""
        self._request.when_matched_update_all = True
        self._request.when_matched_update_condition = where or ""
        return self

    def when_not_matched_insert_all(self) -> MergeInsertBuilder:
        """Insert source rows that match nothing."""
        self._request.when_not_matched_insert_all = True
        return self

    def when_not_matched_by_source_delete(self, condition: str | None = None) -> MergeInsertBuilder:
        """Delete target rows no source row matches (optionally only where ``condition``)."""
        self._request.when_not_matched_by_source_delete = True
        self._request.when_not_matched_by_source_condition = condition or ""
        return self

    def execute(
        self, data: Any, on_bad_vectors: str = "error", fill_value: float = 0.0
    ) -> MergeResult:
        """Run the upsert as one commit; only rows that will be written are embedded."""
        num_rows = self._prepare(data, on_bad_vectors, fill_value)
        return merge_result(self._table._write("MergeInsert", self._request), num_rows)

    def _prepare(self, data: Any, on_bad_vectors: str, fill_value: float) -> int:
        """Put the source rows (embedded where this process embeds) and options in the
        request; returns the number of source rows."""
        rows = to_arrow(data)
        self._request.rows.CopyFrom(self._table._rows(rows))
        self._request.on_bad_vectors = bad_vectors_to_pb(on_bad_vectors)
        self._request.fill_value = fill_value
        return rows.num_rows


def merge_result(result: gateway_pb2.WriteResult, num_rows: int) -> MergeResult:
    """A MergeInsert reply as LanceDB's MergeResult."""
    return MergeResult(
        version=result.version,
        num_updated_rows=result.rows_updated,
        num_inserted_rows=result.rows_inserted,
        num_deleted_rows=result.rows_deleted,
        num_attempts=1,
        num_rows=num_rows,
    )


class Query:
    """A search being built: ``.where().select().limit().metric()`` then ``.to_pandas()``.

    Without a query (``table.search()``), it reads rows in storage order: a filter alone, a
    window of rows, or the whole table, streamed (LanceDB's filter-only query).
    """

    def __init__(
        self, connection: Connection, request: gateway_pb2.SearchRequest, limit: int | None = 10
    ) -> None:
        self._conn = connection
        self._request = request
        self._limit = limit
        self._reranker: Reranker | None = None
        self._normalize = "score"
        self._str_query: str | None = request.text if request.HasField("text") else None

    def rerank(
        self,
        reranker: Reranker | None = None,
        query_string: str | None = None,
        normalize: str = "score",
    ) -> Query:
        """Rerank the results (LanceDB's ``rerank``): a hybrid search combines its two lists
        with ``reranker`` (default ``RRFReranker()``), normalising their scores by "score" or
        "rank" first; a vector or full-text search reorders its results with it.
        ``query_string`` is the text to score against when the query is a vector.
        See :mod:`embedsearch.rerankers`."""
        reranker = RRFReranker() if reranker is None else reranker
        if normalize not in ("rank", "score"):
            raise InvalidArgument("normalize must be 'rank' or 'score'.")
        if not isinstance(reranker, Reranker):
            raise InvalidArgument("reranker must be an instance of Reranker class.")
        hybrid = self._request.query_type == gateway_pb2.QUERY_TYPE_HYBRID
        if query_string is not None and not isinstance(query_string, str):
            raise InvalidArgument("Reranking currently only supports string queries")
        if not hybrid and self._str_query is None and query_string is None:
            raise InvalidArgument(
                "The query used for vector search is not a string. In this case, the "
                "reranker query needs to be specified explicitly."
            )
        self._str_query = query_string if query_string is not None else self._str_query
        self._reranker, self._normalize = reranker, normalize
        return self

    def _reads(self) -> bool:
        return self._request.WhichOneof("query") is None

    def limit(self, k: int | None) -> Query:
        """Return at most ``k`` rows (default 10 for a search; every row without a query).
        ``None`` means every row, for a query-less read."""
        if k is not None and k <= 0:
            raise InvalidArgument(f"limit must be positive or None, got {k}")
        if k is None and not self._reads():
            raise InvalidArgument(
                "limit(None) reads every row: use it on table.search() without a query; a "
                "vector or text search needs a limit"
            )
        self._limit = k
        return self

    def offset(self, n: int) -> Query:
        """Skip the first ``n`` results."""
        self._request.offset = n
        return self

    def where(self, filter: str, prefilter: bool = True) -> Query:
        """Keep rows matching an SQL filter, applied before (default) or after the search."""
        self._request.filter = filter
        self._request.postfilter = not prefilter
        return self

    def select(self, columns: Iterable[str] | dict[str, str]) -> Query:
        """Return only these columns (plus ``_distance``), or computed ones: a dict of output
        name to SQL expression, e.g. ``{"double": "price * 2"}``."""
        del self._request.columns[:]
        del self._request.projections[:]
        if isinstance(columns, dict):
            self._request.projections.extend(projections_to_pb(columns))
        elif isinstance(columns, str):
            raise InvalidArgument("select() takes a list of column names or a dict, not a str")
        else:
            self._request.columns.extend(columns)
        return self

    def bypass_vector_index(self) -> Query:
        """Search every row exactly, ignoring vector indexes (recall 1.0)."""
        self._request.bypass_vector_index = True
        return self

    def distance_range(
        self, lower_bound: float | None = None, upper_bound: float | None = None
    ) -> Query:
        """Keep results with ``lower_bound <= _distance < upper_bound``."""
        self._request.ClearField("distance_lower_bound")
        self._request.ClearField("distance_upper_bound")
        if lower_bound is not None:
            self._request.distance_lower_bound = lower_bound
        if upper_bound is not None:
            self._request.distance_upper_bound = upper_bound
        return self

    def explain_plan(self, verbose: bool = False) -> str:
        """How the store would run this query (its physical plan), without running it."""
        return self._conn.call("ExplainPlan", self._explain_request(verbose)).plan

    def _explain_request(self, verbose: bool) -> gateway_pb2.ExplainPlanRequest:
        query = gateway_pb2.SearchRequest()
        query.CopyFrom(self._request)
        query.k = self._limit or 0
        return gateway_pb2.ExplainPlanRequest(query=query, verbose=verbose)

    def metric(self, metric: str) -> Query:
        """Distance metric: "l2" (default), "cosine" or "dot"."""
        self._request.metric = _metric_pb(metric)
        return self

    distance_type = metric

    def nprobes(self, nprobes: int) -> Query:
        """IVF partitions to probe when an index is used."""
        self._request.nprobes = nprobes
        return self

    def refine_factor(self, factor: int) -> Query:
        """Re-rank ``factor * k`` candidates with full vectors."""
        self._request.refine_factor = factor
        return self

    def ef(self, ef: int) -> Query:
        """HNSW search list size."""
        self._request.ef = ef
        return self

    def target_recall(self, recall: float) -> Query:
        """Ask for a recall@k in (0, 1] instead of ``nprobes``, ``refine_factor`` and ``ef``
        (which must then be left unset): the store uses the cheapest parameters its calibration
        of the vector index measured to reach it, and searches exactly when none did (or the
        index is not calibrated yet). ``index_stats(name).calibration`` shows the levels.

        >>> table.search(vector).target_recall(0.95).limit(10).to_list()  # doctest: +SKIP
        """
        self._request.target_recall = recall
        return self

    def with_row_id(self, enabled: bool = True) -> Query:
        """Also return ``_rowid``."""
        self._request.with_row_id = enabled
        return self

    def to_batches(self, batch_size: int | None = None) -> Iterator[pa.RecordBatch]:
        """The results batch by batch; a query-less read, and a search for more than
        MAX_RANKED_K rows, stream from the store, one batch in memory at a time
        (``batch_size`` re-slices them)."""
        if not self._streams():
            yield from self.to_arrow().to_batches(batch_size)
            return
        for table in self._streamed():
            yield from table.to_batches(batch_size)

    def _streams(self) -> bool:
        if self._reranker is not None:
            return False  # reranked results are ranked whole
        return self._reads() or (self._limit or 0) > MAX_RANKED_K

    def _streamed(self) -> Iterator[pa.Table]:
        """The streamed results, one table per message; the store sends at least one, empty
        when nothing matched, so its columns are known."""
        return streamed_tables(self._conn, *self._stream_request())

    def _stream_request(self) -> tuple[str, Any]:
        """The server-streaming RPC that runs this query, and its request."""
        if self._reads():
            request: Any = gateway_pb2.ReadRequest(
                table=self._request.table,
                filter=self._request.filter,
                columns=self._request.columns,
                limit=self._limit or 0,
                offset=self._request.offset,
                version=self._request.version,
                with_row_id=self._request.with_row_id,
                projections=self._request.projections,
            )
            return "Read", request
        return "SearchStream", self._search_request()

    def _search_request(self) -> gateway_pb2.SearchRequest:
        self._request.k = self._limit or 0
        self._request.ClearField("reranker")
        if self._reranker is not None and runs_on_server(self._reranker):
            self._request.reranker.CopyFrom(
                reranker_to_pb(self._reranker, self._request, self._str_query, self._normalize)
            )
        return self._request

    def to_arrow(self) -> pa.Table:
        """Run the query; rows best first, with ``_distance`` (and scores for text search), or
        in storage order without a query."""
        if self._streams():
            return pa.concat_tables(self._streamed())
        if self._reranker is not None and not runs_on_server(self._reranker):
            return rerank_here(self, self._reranker)
        reply = self._conn.call("Search", self._search_request())
        return ipc_to_table(reply.rows.arrow_ipc, "search results")

    def to_polars(self) -> Any:
        """The results as a polars DataFrame (needs polars installed)."""
        import polars

        return polars.from_arrow(self.to_arrow())

    def to_pandas(self) -> pd.DataFrame:
        return self.to_arrow().to_pandas()

    def to_list(self) -> list[dict[str, Any]]:
        return self.to_arrow().to_pylist()

    def to_pydantic(self, model: type) -> list[Any]:
        """Rows as instances of a pydantic model (extra columns such as _distance dropped)."""
        fields = set(model.model_fields)
        return [model(**{k: v for k, v in row.items() if k in fields}) for row in self.to_list()]

    def __repr__(self) -> str:
        return f"Query({json.dumps(self._request.table)})"


class TakeQuery:
    """Rows by position or row id (LanceDB's take_offsets / take_row_ids): ``.select()``,
    ``.with_row_id()``, then ``.to_arrow()`` and friends."""

    def __init__(self, connection: Connection, request: gateway_pb2.TakeRequest) -> None:
        self._conn = connection
        self._request = request

    def select(self, columns: Iterable[str] | dict[str, str]) -> TakeQuery:
        """Return only these columns, or computed ones (a dict of name to SQL expression)."""
        del self._request.columns[:]
        del self._request.projections[:]
        if isinstance(columns, dict):
            self._request.projections.extend(projections_to_pb(columns))
        else:
            self._request.columns.extend(columns)
        return self

    def with_row_id(self, enabled: bool = True) -> TakeQuery:
        """Also return ``_rowid``."""
        self._request.with_row_id = enabled
        return self

    def to_batches(self, batch_size: int | None = None) -> Iterator[pa.RecordBatch]:
        for table in streamed_tables(self._conn, "Take", self._request):
            yield from table.to_batches(batch_size)

    def to_arrow(self) -> pa.Table:
        return pa.concat_tables(streamed_tables(self._conn, "Take", self._request))

    def to_pandas(self) -> pd.DataFrame:
        return self.to_arrow().to_pandas()

    def to_polars(self) -> Any:
        import polars

        return polars.from_arrow(self.to_arrow())

    def to_list(self) -> list[dict[str, Any]]:
        return self.to_arrow().to_pylist()
