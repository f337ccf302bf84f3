"""Public edge of the gateway: Gateway messages to the core's values (from_pb) and back (to_pb).

Every field of a Gateway request is read here, or listed with its reason in the exclusions of
tests/test_gateway_core.py; the same test holds the store-facing builders in gateway/clients.py
to every field of the store's requests.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
from typing import Any, TypeVar

import pyarrow as pa
from google.protobuf.message import Message

from embedsearch.contract.convert import (
    CREATE_MODES,
    MODALITY_FROM_PB,
    MODALITY_TO_PB,
    MODE_TO_PB,
    MODES,
    args_from_pb,
    args_to_pb,
    index_params_from_pb,
    index_to_pb,
    index_type_from_pb,
    metric_from_pb,
    params_from_pb,
    projections_from_pb,
    spec_from_pb,
    spec_to_pb,
    value_to_pb,
)
from embedsearch.contract.errors import InvalidArgument
from embedsearch.contract.multivector import query_vectors
from embedsearch.contract.schema import parse_type, type_name
from embedsearch.contract.values import IndexInfo, ReadParams, TakeParams
from embedsearch.contract.wire import (
    ipc_to_schema,
    ipc_to_table,
    pack_vectors,
    schema_to_ipc,
    table_to_ipc,
    unpack_vector,
    unpack_vectors,
)
from embedsearch.v1 import common_pb2, embedder_pb2, gateway_pb2
from gateway.convert_rerank import reranker_from_pb
from gateway.mapping import Binding
from gateway.values import (
    FTS,
    HYBRID,
    VECTOR,
    BadVectors,
    Chunk,
    CreateIndex,
    CreateTable,
    EmbedCall,
    Embedded,
    Explain,
    MergeInsert,
    Provider,
    Read,
    Resolved,
    ResultRows,
    Rows,
    Search,
    TableInfo,
    TableVersion,
    Take,
    WriteResult,
)

BAD_VECTORS = {
    gateway_pb2.ON_BAD_VECTORS_UNSPECIFIED: "error",
    gateway_pb2.ON_BAD_VECTORS_ERROR: "error",
    gateway_pb2.ON_BAD_VECTORS_DROP: "drop",
    gateway_pb2.ON_BAD_VECTORS_FILL: "fill",
    gateway_pb2.ON_BAD_VECTORS_NULL: "null",
}
QUERY_TYPES = {
    gateway_pb2.QUERY_TYPE_UNSPECIFIED: "",
    gateway_pb2.QUERY_TYPE_VECTOR: VECTOR,
    gateway_pb2.QUERY_TYPE_FTS: FTS,
    gateway_pb2.QUERY_TYPE_HYBRID: HYBRID,
}
V = TypeVar("V")
M = TypeVar("M", bound=Message)
WithBadVectors = (
    gateway_pb2.AddRequest | gateway_pb2.MergeInsertRequest | gateway_pb2.CreateTableRequest
)


def value_from_pb(message: Message, cls: type[V], **computed: Any) -> V:
    """:func:`params_from_pb`, strictly: a dataclass field the message lacks is a KeyError here;
    a message field no dataclass reads fails tests/test_gateway_core.py."""
    fields = message.DESCRIPTOR.fields_by_name
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if field.name not in computed and field.name not in fields:
            raise KeyError(f"{message.DESCRIPTOR.full_name} has no field {field.name!r}")
    return params_from_pb(message, cls, **computed)


def store_request_to_pb(value: Any, cls: type[M], omit: tuple[str, ...] = (), **computed: Any) -> M:
    """:func:`value_to_pb` of a store request: the value's ``table`` is the request's ``name``."""
    return value_to_pb(value, cls, omit=("table", *omit), name=value.table, **computed)


def _known(table: dict[int, Any], value: int, what: str) -> Any:
    """``table[value]``; an enum value the contract does not define is the caller's error."""
    if value not in table:
        raise InvalidArgument(f"unknown {what} {value}")
    return table[value]


def index_name_of(
    request: gateway_pb2.DropIndexRequest | gateway_pb2.IndexStatsRequest,
) -> tuple[str, str]:
    """The table and index a DropIndex or IndexStats request names."""
    return request.table, request.index_name


def write_from_pb(result: common_pb2.WriteResult) -> WriteResult:
    return value_from_pb(result, WriteResult)


def write_to_pb(result: WriteResult) -> common_pb2.WriteResult:
    return value_to_pb(result, common_pb2.WriteResult)


def version_from_pb(version: common_pb2.TableVersion) -> TableVersion:
    return value_from_pb(version, TableVersion)


def version_to_pb(version: TableVersion) -> common_pb2.TableVersion:
    return value_to_pb(version, common_pb2.TableVersion)


# -- from_pb ---------------------------------------------------------------------------------


def rows_from_pb(rows: common_pb2.RowData) -> Rows:
    """Arrow IPC rows as a table, JSON rows as a list of objects (typed later by the schema)."""
    kind = rows.WhichOneof("format")
    if kind == "arrow_ipc":
        return ipc_to_table(rows.arrow_ipc)
    if kind == "json":
        try:
            decoded = json.loads(rows.json)
        except ValueError as exc:
            raise InvalidArgument(f"rows.json is not valid JSON: {exc}") from exc
        except RecursionError as exc:  # Python's parser recurses per level of nesting
            raise InvalidArgument(
                "rows.json nests arrays or objects too deeply: rows are flat objects"
            ) from exc
        if not isinstance(decoded, list):
            raise InvalidArgument("rows.json must be a JSON array of objects")
        return decoded
    raise InvalidArgument("rows are required: set rows.arrow_ipc or rows.json")


def schema_from_pb(request: gateway_pb2.CreateTableRequest) -> pa.Schema:
    if request.arrow_schema:
        return ipc_to_schema(request.arrow_schema)
    if not request.columns:
        raise InvalidArgument("give the schema as arrow_schema or as columns")
    return pa.schema(
        [pa.field(c.name, parse_type(c.type), nullable=c.nullable) for c in request.columns]
    )


def binding_from_pb(binding: common_pb2.EmbeddingBinding) -> Binding:
    provider, args = spec_from_pb(binding.function)
    if not binding.source_column or not binding.vector_column:
        raise InvalidArgument("a binding needs source_column and vector_column")
    return Binding(
        provider,
        args,
        binding.source_column,
        binding.vector_column,
        client_side=binding.client_side,
        ndims=binding.ndims,
    )


def bad_vectors_from_pb(request: WithBadVectors) -> BadVectors:
    policy = _known(BAD_VECTORS, request.on_bad_vectors, "on_bad_vectors")
    return BadVectors(policy, request.fill_value)


def describe_from_pb(request: gateway_pb2.DescribeTableRequest) -> tuple[str, int]:
    return request.name, request.version


def list_tables_from_pb(request: gateway_pb2.ListTablesRequest) -> tuple[str, int]:
    return request.start_after, request.limit


def drop_table_from_pb(request: gateway_pb2.DropTableRequest) -> tuple[str, bool]:
    return request.name, request.ignore_missing


def delete_from_pb(request: gateway_pb2.DeleteRequest) -> tuple[str, str]:
    return request.table, request.filter


def update_from_pb(request: gateway_pb2.UpdateRequest) -> tuple[str, str, dict[str, str]]:
    return request.table, request.filter, dict(request.updates)


def count_rows_from_pb(request: gateway_pb2.CountRowsRequest) -> tuple[str, str, int]:
    return request.table, request.filter, request.version


def read_from_pb(request: gateway_pb2.ReadRequest) -> Read:
    params = value_from_pb(
        request, ReadParams, projections=projections_from_pb(request.projections)
    )
    return value_from_pb(request, Read, params=params)


def take_from_pb(request: gateway_pb2.TakeRequest) -> Take:
    params = value_from_pb(
        request, TakeParams, projections=projections_from_pb(request.projections)
    )
    return value_from_pb(request, Take, params=params)


def rename_table_from_pb(request: gateway_pb2.RenameTableRequest) -> tuple[str, str]:
    return request.name, request.new_name


def explain_from_pb(request: gateway_pb2.ExplainPlanRequest) -> Explain:
    """The plan of a search, or of a read when the query sets no text, vector or blob (its
    k is then the read's limit, 0 for every row)."""
    query = request.query
    if query.WhichOneof("query") is not None:
        return Explain(search=search_from_pb(query), read=None, verbose=request.verbose)
    params = ReadParams(
        filter=query.filter,
        columns=list(query.columns),
        limit=query.k,
        offset=query.offset,
        version=query.version,
        with_row_id=query.with_row_id,
        projections=projections_from_pb(query.projections),
    )
    return Explain(search=None, read=Read(query.table, params), verbose=request.verbose)


def explain_to_pb(plan: str) -> gateway_pb2.ExplainPlanResponse:
    return gateway_pb2.ExplainPlanResponse(plan=plan)


def read_to_pb(batch: bytes) -> gateway_pb2.ReadResponse:
    return gateway_pb2.ReadResponse(arrow_ipc=batch)


def restore_from_pb(request: gateway_pb2.RestoreRequest) -> tuple[str, int]:
    return request.table, request.version


def table_of(request: gateway_pb2.ListIndexesRequest | gateway_pb2.ListVersionsRequest) -> str:
    return request.table


def resolve_from_pb(request: embedder_pb2.ResolveFunctionRequest) -> tuple[str, dict[str, Any]]:
    return spec_from_pb(request.function)


def create_table_from_pb(request: gateway_pb2.CreateTableRequest) -> CreateTable:
    return CreateTable(
        name=request.name,
        schema=schema_from_pb(request),
        bindings=[binding_from_pb(b) for b in request.bindings],
        mode=_known(CREATE_MODES, request.mode, "create mode"),
        rows=rows_from_pb(request.rows) if request.HasField("rows") else None,
        bad=bad_vectors_from_pb(request),
    )


def chunk_from_pb(request: gateway_pb2.AddRequest) -> Chunk:
    ending = request.last and not request.HasField("rows")  # a final message without rows
    rows = None if ending else rows_from_pb(request.rows)
    return value_from_pb(request, Chunk, rows=rows, bad=bad_vectors_from_pb(request))


def merge_insert_from_pb(request: gateway_pb2.MergeInsertRequest) -> MergeInsert:
    rows, bad = rows_from_pb(request.rows), bad_vectors_from_pb(request)
    return value_from_pb(request, MergeInsert, rows=rows, bad=bad)


def search_from_pb(request: gateway_pb2.SearchRequest) -> Search:
    kind = request.WhichOneof("query")
    if kind is None:
        raise InvalidArgument("a search needs a query: text, vector or blob")
    queries = {
        "text": lambda: request.text,
        "vector": lambda: query_vectors(unpack_vector(request.vector), request.query_vectors),
        "blob": lambda: request.blob.data,
    }
    return value_from_pb(
        request,
        Search,
        query=queries[kind](),
        metric=metric_from_pb(request.metric),
        json_rows=request.result_format == common_pb2.ROW_FORMAT_JSON,
        query_type=_known(QUERY_TYPES, request.query_type, "query_type"),
        projections=projections_from_pb(request.projections),
        reranker=reranker_from_pb(request),
    )


def create_index_from_pb(request: gateway_pb2.CreateIndexRequest) -> CreateIndex:
    index_type = index_type_from_pb(request.index_type)
    params = index_params_from_pb(request.params)
    return value_from_pb(request, CreateIndex, index_type=index_type, params=params)


def embed_call_from_pb(request: embedder_pb2.EmbedRequest) -> EmbedCall:
    provider, args = spec_from_pb(request.function)
    return EmbedCall(
        provider=provider,
        args=args,
        mode=_known(MODES, request.mode, "mode"),
        texts=list(request.texts),
        blobs=[(blob.data, blob.mime_type) for blob in request.blobs],
        request_id=request.request_id,
    )


def embed_call_to_pb(call: EmbedCall) -> embedder_pb2.EmbedRequest:
    return embedder_pb2.EmbedRequest(
        function=spec_to_pb(call.provider, call.args),
        mode=MODE_TO_PB[call.mode],
        texts=call.texts,
        blobs=[embedder_pb2.Blob(data=data, mime_type=mime) for data, mime in call.blobs],
        request_id=call.request_id,
    )


def embedded_from_pb(reply: embedder_pb2.EmbedResponse) -> Embedded:
    vectors = unpack_vectors(reply.vectors, reply.ndims).reshape(reply.count, reply.ndims)
    return Embedded(
        vectors=vectors,
        ndims=reply.ndims,
        request_id=reply.request_id,
        vectors_per_input=list(reply.vectors_per_input),
    )


def embedded_to_pb(embedded: Embedded) -> embedder_pb2.EmbedResponse:
    return embedder_pb2.EmbedResponse(
        ndims=embedded.ndims,
        count=len(embedded.vectors),
        vectors=pack_vectors(embedded.vectors),
        request_id=embedded.request_id,
        vectors_per_input=embedded.vectors_per_input,
    )


def resolved_from_pb(reply: embedder_pb2.ResolveFunctionResponse) -> Resolved:
    return Resolved(
        provider=reply.canonical.provider,
        args=args_from_pb(reply.canonical.args),
        ndims=reply.ndims,
        modalities=[MODALITY_FROM_PB[m] for m in reply.modalities if m in MODALITY_FROM_PB],
        multi_vector=reply.multi_vector,
    )


def resolved_to_pb(resolved: Resolved) -> embedder_pb2.ResolveFunctionResponse:
    return embedder_pb2.ResolveFunctionResponse(
        canonical=spec_to_pb(resolved.provider, resolved.args),
        ndims=resolved.ndims,
        modalities=[MODALITY_TO_PB[m] for m in resolved.modalities],
        multi_vector=resolved.multi_vector,
    )


def provider_from_pb(info: embedder_pb2.ProviderInfo) -> Provider:
    modalities = [MODALITY_FROM_PB[m] for m in info.modalities if m in MODALITY_FROM_PB]
    return value_from_pb(
        info, Provider, modalities=modalities, defaults=args_from_pb(info.defaults)
    )


def provider_to_pb(provider: Provider) -> embedder_pb2.ProviderInfo:
    modalities = [MODALITY_TO_PB[m] for m in provider.modalities]
    return value_to_pb(
        provider,
        embedder_pb2.ProviderInfo,
        modalities=modalities,
        defaults=args_to_pb(provider.defaults),
    )


# -- to_pb -----------------------------------------------------------------------------------


def binding_to_pb(binding: Binding) -> common_pb2.EmbeddingBinding:
    return common_pb2.EmbeddingBinding(
        function=spec_to_pb(binding.provider, binding.args),
        source_column=binding.source_column,
        vector_column=binding.vector_column,
        client_side=binding.client_side,
        ndims=binding.ndims,
    )


def table_info_to_pb(info: TableInfo) -> gateway_pb2.TableInfo:
    table = info.table
    return gateway_pb2.TableInfo(
        name=table.name,
        arrow_schema=schema_to_ipc(table.schema),
        version=table.version,
        num_rows=table.num_rows,
        bindings=[binding_to_pb(b) for b in info.bindings],
        indexes=[index_to_pb(i) for i in table.indexes],
        columns=[
            gateway_pb2.ColumnSpec(name=f.name, type=type_name(f.type), nullable=f.nullable)
            for f in table.schema
        ],
        uri=table.uri,
    )


def list_tables_to_pb(names: list[str]) -> gateway_pb2.ListTablesResponse:
    return gateway_pb2.ListTablesResponse(names=names)


def count_rows_to_pb(count: int) -> gateway_pb2.CountRowsResponse:
    return gateway_pb2.CountRowsResponse(count=count)


def indexes_to_pb(indexes: list[IndexInfo]) -> gateway_pb2.ListIndexesResponse:
    return gateway_pb2.ListIndexesResponse(indexes=[index_to_pb(i) for i in indexes])


def versions_to_pb(versions: list[TableVersion]) -> gateway_pb2.ListVersionsResponse:
    return gateway_pb2.ListVersionsResponse(versions=[version_to_pb(v) for v in versions])


def providers_to_pb(providers: list[Provider]) -> embedder_pb2.ListProvidersResponse:
    return embedder_pb2.ListProvidersResponse(providers=[provider_to_pb(p) for p in providers])


def search_to_pb(rows: ResultRows, json_rows: bool) -> gateway_pb2.SearchResponse:
    return gateway_pb2.SearchResponse(rows=rows_to_pb(rows, json_rows))


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, datetime.date | datetime.datetime):
        return value.isoformat()
    return str(value)


def rows_to_pb(rows: ResultRows, json_rows: bool) -> common_pb2.RowData:
    """JSON rows, or Arrow IPC: the store's bytes as they came when the gateway kept them."""
    if json_rows:
        return common_pb2.RowData(json=json.dumps(rows.to_table().to_pylist(), default=_json_value))
    if rows.table is None:
        return common_pb2.RowData(arrow_ipc=rows.ipc)
    return common_pb2.RowData(arrow_ipc=table_to_ipc(rows.table))
