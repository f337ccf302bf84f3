"""Plain typed values the gateway's core takes and returns; no protobuf, no gRPC."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from embedsearch.contract.values import IndexInfo, IndexParams, ReadParams, TakeParams
from embedsearch.contract.wire import ipc_to_table
from gateway.mapping import Binding

Rows = pa.Table | list[dict[str, Any]]
ERROR, DROP, FILL, NULL = "error", "drop", "fill", "null"
VECTOR, FTS, HYBRID = "vector", "fts", "hybrid"
TEXT_INDEX = "INVERTED"  # IndexInfo.index_type of a full-text index


@dataclass
class BadVectors:
    """What to do with rows whose source value is null or empty (LanceDB's on_bad_vectors)."""

    policy: str = ERROR
    fill_value: float = 0.0


@dataclass
class StoreTable:
    """A table as the store describes it, at one version."""

    name: str
    schema: pa.Schema
    version: int
    num_rows: int
    indexes: list[IndexInfo]
    fingerprint: str = ""
    uri: str = ""


@dataclass
class TableInfo:
    """A table as the public API describes it: the store's description plus its bindings."""

    table: StoreTable
    bindings: list[Binding]


@dataclass(frozen=True)
class Descriptor:
    """What the gateway caches of a table to embed rows and queries: its schema, bindings and
    full-text indexes, and the store's fingerprint of them (sent back with every request that
    depends on them, so the store can say when they changed)."""

    name: str
    schema: pa.Schema
    bindings: list[Binding]
    text_indexed: bool
    fingerprint: str


@dataclass
class WriteResult:
    """What a write committed."""

    version: int = 0
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_deleted: int = 0


@dataclass
class TableVersion:
    """One version of a table."""

    version: int
    timestamp: float
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class CreateTable:
    """A table to create, with its bindings and optional first rows."""

    name: str
    schema: pa.Schema
    bindings: list[Binding]
    mode: str = "create"
    rows: Rows | None = None
    bad: BadVectors = field(default_factory=BadVectors)


@dataclass
class Chunk:
    """Rows to add: an Add, or one message of an AddStream."""

    table: str
    rows: Rows | None  # None: an AddStream's final message, marked last, without rows
    bad: BadVectors = field(default_factory=BadVectors)
    commit_per_chunk: bool = False
    overwrite: bool = False
    ends_with_last: bool = False
    last: bool = False


@dataclass
class MergeInsert:
    """An upsert on key columns."""

    table: str
    on: list[str]
    rows: Rows
    when_matched_update_all: bool = False
    when_matched_update_condition: str = ""
    when_not_matched_insert_all: bool = False
    when_not_matched_by_source_delete: bool = False
    when_not_matched_by_source_condition: str = ""
    bad: BadVectors = field(default_factory=BadVectors)


@dataclass
class CreateIndex:
    """An index build to start."""

    table: str
    column: str
    index_type: str
    params: IndexParams = field(default_factory=IndexParams)
    wait: bool = False
    index_name: str = ""


@dataclass
class Search:
    """A public search: the query is text, a vector or a blob (image, audio)."""

    table: str
    query: str | np.ndarray | bytes
    vector_column: str = ""
    k: int = 0
    metric: str | None = None
    filter: str = ""
    postfilter: bool = False
    columns: list[str] = field(default_factory=list)
    nprobes: int = 0
    refine_factor: int = 0
    ef: int = 0
    offset: int = 0
    with_row_id: bool = False
    json_rows: bool = False
    version: int = 0
    query_type: str = ""  # "", VECTOR, FTS or HYBRID; "" picks one
    fts_columns: list[str] = field(default_factory=list)
    projections: dict[str, str] = field(default_factory=dict)
    bypass_vector_index: bool = False
    distance_lower_bound: float | None = None
    distance_upper_bound: float | None = None
    reranker: RerankSpec | None = None  # None: hybrid results fused by RRF, others as found
    target_recall: float | None = None  # None: nprobes, refine_factor and ef as given


@dataclass
class Scan:
    """Rows matching a filter, in storage order."""

    table: str
    filter: str = ""
    columns: list[str] = field(default_factory=list)


@dataclass
class Read:
    """A table's rows without a query, streamed."""

    table: str
    params: ReadParams


@dataclass
class Take:
    """Rows by offset or row id, streamed."""

    table: str
    params: TakeParams


@dataclass
class Explain:
    """A query plan to describe: of a search, or (``search`` None) of ``read``."""

    search: Search | None
    read: Read | None
    verbose: bool = False


@dataclass
class ResultRows:
    """Result rows: the store's Arrow IPC bytes as they came (passed through undecoded), or a
    table the gateway built (fused results)."""

    ipc: bytes = b""
    table: pa.Table | None = None

    def to_table(self) -> pa.Table:
        return self.table if self.table is not None else ipc_to_table(self.ipc, "search results")


@dataclass
class Provider:
    """An embedding provider the embedder serves."""

    name: str
    default_model: str
    modalities: list[str]
    arguments: list[str]
    kind: str
    multi_vector: bool = False  # several vectors per input (colbert)
    defaults: dict[str, Any] = field(default_factory=dict)  # of create()'s arguments


@dataclass
class Resolved:
    """A function spec resolved by the embedder: canonical arguments, ndims, modalities."""

    provider: str
    args: dict[str, Any]
    ndims: int
    modalities: list[str]
    multi_vector: bool = False  # several ndims-long vectors per input (colbert)


@dataclass
class EmbedCall:
    """Inputs to embed in one request: texts, or blobs as (bytes, mime type)."""

    provider: str
    args: dict[str, Any]
    mode: str = "source"
    texts: list[str] = field(default_factory=list)
    blobs: list[tuple[bytes, str]] = field(default_factory=list)
    request_id: str = ""


@dataclass
class Embedded:
    """Vectors of an :class:`EmbedCall`, one row per input."""

    vectors: np.ndarray
    ndims: int
    request_id: str = ""
    # A multi-vector function's: how many consecutive rows of vectors each input has.
    vectors_per_input: list[int] = field(default_factory=list)


@dataclass
class RerankSpec:
    """A search's reranker (gateway/rerank.py): its kind and LanceDB constructor arguments, the
    text column a model scores, the score columns kept ("relevance" or "all"), a hybrid
    search's normalisation ("score" or "rank"), and the text scored against ("" for the
    search's text query)."""

    kind: str
    args: dict[str, Any] = field(default_factory=dict)
    column: str = ""
    return_score: str = "relevance"
    normalize: str = "score"
    query: str = ""


@dataclass
class RerankCall:
    """Documents to score against a query with a model-backed reranker, in the embedder."""

    kind: str
    args: dict[str, Any]
    query: str
    documents: list[str]
