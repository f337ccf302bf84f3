"""Tables and queries of the SDK, with LanceDB's method names."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from embedsearch.errors import InvalidArgument
from embedsearch.rpc.convert import METRIC_TO_PB
from embedsearch.v1 import common_pb2, gateway_pb2
from embedsearch.wire import ipc_to_schema, ipc_to_table, table_to_ipc

if TYPE_CHECKING:
    import pandas as pd

    from embedsearch.db import Connection

BAD_VECTORS = {
    "error": gateway_pb2.ON_BAD_VECTORS_ERROR,
    "drop": gateway_pb2.ON_BAD_VECTORS_DROP,
    "fill": gateway_pb2.ON_BAD_VECTORS_FILL,
    "null": gateway_pb2.ON_BAD_VECTORS_NULL,
}


def bad_vectors_to_pb(policy: str) -> int:
    if policy not in BAD_VECTORS:
        raise InvalidArgument(
            f"on_bad_vectors must be one of {sorted(BAD_VECTORS)}, got {policy!r}"
        )
    return BAD_VECTORS[policy]


def to_arrow(data: Any) -> pa.Table:
    """Rows as an Arrow table: from a list of dicts or models, pandas, Arrow, or record batches."""
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if type(data).__name__ == "DataFrame":
        return pa.Table.from_pandas(data, preserve_index=False)
    if isinstance(data, dict):
        data = [data]
    rows = [row.model_dump() if hasattr(row, "model_dump") else row for row in data]
    if rows and isinstance(rows[0], pa.RecordBatch):
        return pa.Table.from_batches(rows)
    if not all(isinstance(row, dict) for row in rows):
        raise InvalidArgument("rows must be dicts, pydantic models, a DataFrame or Arrow data")
    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InvalidArgument(f"rows cannot be converted to Arrow: {exc}") from exc


def rows_to_pb(data: Any) -> common_pb2.RowData:
    """Rows for the wire, as Arrow IPC; the server casts them to the table's schema."""
    return common_pb2.RowData(arrow_ipc=table_to_ipc(to_arrow(data)))


class Table:
    """A table behind a gateway. Writes embed missing vectors on the server."""

    def __init__(self, connection: Connection, info: gateway_pb2.TableInfo) -> None:
        self._conn = connection
        self._info = info
        self.name = info.name

    def _refresh(self) -> gateway_pb2.TableInfo:
        self._info = self._conn.call(
            "DescribeTable", gateway_pb2.DescribeTableRequest(name=self.name)
        )
        return self._info

    @property
    def schema(self) -> pa.Schema:
        """The Arrow schema, with the ``embedding_functions`` metadata."""
        return ipc_to_schema(self._refresh().arrow_schema)

    @property
    def version(self) -> int:
        """The latest version number."""
        return self._refresh().version

    def count_rows(self, filter: str | None = None) -> int:
        """Rows in the table, or matching an SQL filter."""
        request = gateway_pb2.CountRowsRequest(table=self.name, filter=filter or "")
        return self._conn.call("CountRows", request).count

    def add(
        self,
        data: Any,
        mode: str = "append",
        on_bad_vectors: str = "error",
        fill_value: float = 0.0,
    ) -> common_pb2.WriteResult:
        """Append rows; vector columns bound to a function are embedded from their source."""
        if mode != "append":
            raise InvalidArgument("add supports mode='append'; use create_table(mode='overwrite')")
        request = gateway_pb2.AddRequest(
            table=self.name,
            rows=rows_to_pb(data),
            on_bad_vectors=bad_vectors_to_pb(on_bad_vectors),
            fill_value=fill_value,
        )
        return self._conn.call("Add", request)

    def delete(self, where: str) -> common_pb2.WriteResult:
        """Delete the rows matching an SQL filter."""
        return self._conn.call("Delete", gateway_pb2.DeleteRequest(table=self.name, filter=where))

    def update(
        self,
        where: str | None = None,
        values: dict[str, Any] | None = None,
        values_sql: dict[str, str] | None = None,
    ) -> common_pb2.WriteResult:
        """Set columns on the rows matching ``where``: literal ``values`` or SQL expressions."""
        updates = {k: _sql_literal(v) for k, v in (values or {}).items()} | (values_sql or {})
        request = gateway_pb2.UpdateRequest(table=self.name, filter=where or "", updates=updates)
        return self._conn.call("Update", request)

    def list_versions(self) -> list[dict[str, Any]]:
        """Versions, oldest first: number, timestamp and metadata."""
        reply = self._conn.call("ListVersions", gateway_pb2.ListVersionsRequest(table=self.name))
        return [
            {"version": v.version, "timestamp": v.timestamp, "metadata": dict(v.metadata)}
            for v in reply.versions
        ]

    def search(self, query: Any = None, vector_column_name: str | None = None) -> Query:
        """Start a nearest-neighbour query by text (embedded on the server) or by vector."""
        return Query(self._conn, self.name, query, vector_column_name)

    def __repr__(self) -> str:
        return f"Table({self.name!r}, version={self._info.version})"


def _sql_literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise InvalidArgument(f"cannot write {type(value).__name__} as an SQL literal; use values_sql")


class Query:
    """A search being built: ``.where().select().limit().metric()`` then ``.to_pandas()``."""

    def __init__(
        self, connection: Connection, table: str, query: Any, vector_column: str | None
    ) -> None:
        self._conn = connection
        self._request = gateway_pb2.SearchRequest(table=table, vector_column=vector_column or "")
        if isinstance(query, str):
            self._request.text = query
        elif isinstance(query, np.ndarray | list | tuple):
            vector = np.asarray(query, dtype="<f4")
            if vector.ndim != 1:
                raise InvalidArgument(f"a query vector must be 1-D, got shape {vector.shape}")
            self._request.vector = vector.tobytes()
        else:
            raise InvalidArgument("search() needs a text query or a vector")

    def limit(self, k: int) -> Query:
        """Return at most ``k`` rows (default 10)."""
        if k <= 0:
            raise InvalidArgument(f"limit must be positive, got {k}")
        self._request.k = k
        return self

    def where(self, filter: str, prefilter: bool = True) -> Query:
        """Keep rows matching an SQL filter, applied before (default) or after the search."""
        self._request.filter = filter
        self._request.postfilter = not prefilter
        return self

    def select(self, columns: Iterable[str]) -> Query:
        """Return only these columns (plus ``_distance``)."""
        del self._request.columns[:]
        self._request.columns.extend(columns)
        return self

    def metric(self, metric: str) -> Query:
        """Distance metric: "l2" (default), "cosine" or "dot"."""
        if metric not in METRIC_TO_PB:
            raise InvalidArgument(f"metric must be one of {sorted(METRIC_TO_PB)}, got {metric!r}")
        self._request.metric = METRIC_TO_PB[metric]
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

    def with_row_id(self, enabled: bool = True) -> Query:
        """Also return ``_rowid``."""
        self._request.with_row_id = enabled
        return self

    def to_arrow(self) -> pa.Table:
        """Run the query; rows nearest first, with ``_distance``."""
        reply = self._conn.call("Search", self._request)
        return ipc_to_table(reply.rows.arrow_ipc, "search results")

    def to_pandas(self) -> pd.DataFrame:
        return self.to_arrow().to_pandas()

    def to_list(self) -> list[dict[str, Any]]:
        return self.to_arrow().to_pylist()

    def __repr__(self) -> str:
        return f"Query({json.dumps(self._request.table)})"
