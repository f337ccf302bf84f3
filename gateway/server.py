"""gRPC adapter of the gateway: the public servicer over :class:`GatewayCore`."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pyarrow as pa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from embedsearch.contract.channels import channel_credentials
from embedsearch.contract.convert import copy_shared_fields, spec_from_pb, spec_to_pb
from embedsearch.contract.errors import InvalidArgument
from embedsearch.contract.schema import parse_type, type_name
from embedsearch.contract.text import brief
from embedsearch.contract.wire import ipc_to_schema, ipc_to_table, table_to_ipc, unpack_vector
from embedsearch.v1 import (
    common_pb2,
    embedder_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    store_pb2,
)
from gateway.clients import EmbedderClient, StoreClient
from gateway.core import BadVectors, Chunk, GatewayCore, Rows, Table
from gateway.mapping import Binding
from gateway.settings import GatewaySettings
from service_kit.auth import PeerToken
from service_kit.server import RpcMetrics, new_server

log = logging.getLogger("gateway")

SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name

BAD_VECTORS = {
    gateway_pb2.ON_BAD_VECTORS_UNSPECIFIED: "error",
    gateway_pb2.ON_BAD_VECTORS_ERROR: "error",
    gateway_pb2.ON_BAD_VECTORS_DROP: "drop",
    gateway_pb2.ON_BAD_VECTORS_FILL: "fill",
    gateway_pb2.ON_BAD_VECTORS_NULL: "null",
}


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


def binding_to_pb(binding: Binding) -> common_pb2.EmbeddingBinding:
    return common_pb2.EmbeddingBinding(
        function=spec_to_pb(binding.provider, binding.args),
        source_column=binding.source_column,
        vector_column=binding.vector_column,
        client_side=binding.client_side,
        ndims=binding.ndims,
    )


def bad_vectors_from_pb(request: Any) -> BadVectors:
    if request.on_bad_vectors not in BAD_VECTORS:
        raise InvalidArgument(f"unknown on_bad_vectors {request.on_bad_vectors}")
    return BadVectors(BAD_VECTORS[request.on_bad_vectors], request.fill_value)


# -- to_pb -----------------------------------------------------------------------------------


def table_to_pb(table: Table) -> gateway_pb2.TableInfo:
    return gateway_pb2.TableInfo(
        name=table.info.name,
        arrow_schema=table.info.arrow_schema,
        version=table.info.version,
        num_rows=table.info.num_rows,
        bindings=[binding_to_pb(b) for b in table.bindings],
        indexes=table.info.indexes,
        columns=[
            gateway_pb2.ColumnSpec(name=f.name, type=type_name(f.type), nullable=f.nullable)
            for f in table.schema
        ],
    )


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, datetime.date | datetime.datetime):
        return value.isoformat()
    return str(value)


def rows_to_pb(table: pa.Table, fmt: int) -> common_pb2.RowData:
    if fmt == common_pb2.ROW_FORMAT_JSON:
        return common_pb2.RowData(json=json.dumps(table.to_pylist(), default=_json_value))
    return common_pb2.RowData(arrow_ipc=table_to_ipc(table))


# -- servicer --------------------------------------------------------------------------------


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    """The public API. Each method unpacks, calls the core or forwards, and packs."""

    def __init__(self, core: GatewayCore) -> None:
        self.core = core

    async def CreateTable(
        self, request: gateway_pb2.CreateTableRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.TableInfo:
        table = await self.core.create_table(
            request.name,
            schema_from_pb(request),
            [binding_from_pb(b) for b in request.bindings],
            request.mode,
            rows_from_pb(request.rows) if request.HasField("rows") else None,
            bad_vectors_from_pb(request),
        )
        return table_to_pb(table)

    async def DescribeTable(
        self, request: gateway_pb2.DescribeTableRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.TableInfo:
        return table_to_pb(await self.core.table(request.name, request.version))

    async def ListTables(
        self, request: gateway_pb2.ListTablesRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListTablesResponse:
        reply = await self.core.store.call(
            "ListTables",
            store_pb2.StoreListTablesRequest(start_after=request.start_after, limit=request.limit),
        )
        return gateway_pb2.ListTablesResponse(names=reply.names)

    async def DropTable(
        self, request: gateway_pb2.DropTableRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.DropTableResponse:
        await self.core.store.call(
            "DropTable",
            store_pb2.StoreDropTableRequest(
                name=request.name, ignore_missing=request.ignore_missing
            ),
        )
        return gateway_pb2.DropTableResponse()

    async def Add(
        self, request: gateway_pb2.AddRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.WriteResult:
        return await self.core.add(
            request.table, rows_from_pb(request.rows), bad_vectors_from_pb(request)
        )

    async def AddStream(
        self,
        request_iterator: AsyncIterator[gateway_pb2.AddRequest],
        context: grpc.aio.ServicerContext,
    ) -> common_pb2.WriteResult:
        async def chunks() -> AsyncIterator[Chunk]:
            async for request in request_iterator:
                yield Chunk(
                    request.table,
                    rows_from_pb(request.rows),
                    bad_vectors_from_pb(request),
                    request.commit_per_chunk,
                )

        return await self.core.add_stream(chunks())

    async def MergeInsert(
        self, request: gateway_pb2.MergeInsertRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.WriteResult:
        store_request = copy_shared_fields(request, store_pb2.StoreMergeInsertRequest())
        store_request.name = request.table
        return await self.core.merge_insert(
            store_request, rows_from_pb(request.rows), bad_vectors_from_pb(request)
        )

    async def Delete(
        self, request: gateway_pb2.DeleteRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.WriteResult:
        return await self.core.store.call(
            "Delete", store_pb2.StoreDeleteRequest(name=request.table, filter=request.filter)
        )

    async def Update(
        self, request: gateway_pb2.UpdateRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.WriteResult:
        return await self.core.store.call(
            "Update",
            store_pb2.StoreUpdateRequest(
                name=request.table, filter=request.filter, updates=request.updates
            ),
        )

    async def CountRows(
        self, request: gateway_pb2.CountRowsRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.CountRowsResponse:
        reply = await self.core.store.call(
            "CountRows",
            store_pb2.StoreCountRowsRequest(
                name=request.table, filter=request.filter, version=request.version
            ),
        )
        return gateway_pb2.CountRowsResponse(count=reply.count)

    async def Search(
        self, request: gateway_pb2.SearchRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.SearchResponse:
        kind = request.WhichOneof("query")
        if kind is None:
            raise InvalidArgument("a search needs a query: text, vector or blob")
        vector = unpack_vector(request.vector) if kind == "vector" else None
        result = await self.core.search(request, vector)
        return gateway_pb2.SearchResponse(rows=rows_to_pb(result, request.result_format))

    async def CreateIndex(
        self, request: gateway_pb2.CreateIndexRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.IndexInfo:
        store_request = copy_shared_fields(request, store_pb2.StoreCreateIndexRequest())
        store_request.name = request.table
        return await self.core.store.call("CreateIndex", store_request)

    async def Restore(
        self, request: gateway_pb2.RestoreRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.WriteResult:
        return await self.core.store.call(
            "Restore", store_pb2.StoreRestoreRequest(name=request.table, version=request.version)
        )

    async def ListIndexes(
        self, request: gateway_pb2.ListIndexesRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListIndexesResponse:
        reply = await self.core.store.call(
            "ListIndexes", store_pb2.StoreListIndexesRequest(name=request.table)
        )
        return gateway_pb2.ListIndexesResponse(indexes=reply.indexes)

    async def ListVersions(
        self, request: gateway_pb2.ListVersionsRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListVersionsResponse:
        reply = await self.core.store.call(
            "ListVersions", store_pb2.StoreListVersionsRequest(name=request.table)
        )
        return gateway_pb2.ListVersionsResponse(versions=reply.versions)

    async def ListProviders(
        self, request: embedder_pb2.ListProvidersRequest, context: grpc.aio.ServicerContext
    ) -> embedder_pb2.ListProvidersResponse:
        return await self.core.embedder.call("ListProviders", request)

    async def ResolveFunction(
        self, request: embedder_pb2.ResolveFunctionRequest, context: grpc.aio.ServicerContext
    ) -> embedder_pb2.ResolveFunctionResponse:
        return await self.core.embedder.call("ResolveFunction", request)

    async def GenerateEmbeddings(
        self, request: embedder_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> embedder_pb2.EmbedResponse:
        return await self.core.embedder.call("Embed", request)


def table_named(request: Any) -> str:
    """What an error is about, for messages: the request's table, if it names one."""
    name = getattr(request, "table", "") or getattr(request, "name", "")
    return f"table {brief(name)}" if isinstance(name, str) and name else ""


async def create_server(settings: GatewaySettings) -> tuple[grpc.aio.Server, int]:
    """Build the gateway, bound but not started; SERVING once both peers answer SERVING."""
    metrics = RpcMetrics("gateway", CollectorRegistry())
    credentials = channel_credentials(
        settings.peer_tls_ca_file, settings.peer_tls_cert_file, settings.peer_tls_key_file
    )
    token = PeerToken.configure(settings.peer_token, settings.peer_token_file)
    embedder = EmbedderClient(
        settings.embedder_addr, settings.max_message_bytes, credentials, token
    )
    store = StoreClient(settings.store_addr, settings.max_message_bytes, credentials, token)
    servicer = GatewayServicer(GatewayCore(embedder, store, settings.max_rows_per_request))
    server, port, readiness = await new_server(
        settings,
        [SERVICE],
        lambda s: gateway_pb2_grpc.add_GatewayServicer_to_server(servicer, s),
        metrics,
        subject=table_named,
    )
    readiness.warm_up(
        wait_serving([embedder, store]),
        f"gateway -> {settings.embedder_addr}, {settings.store_addr}",
    )
    servicer.readiness = readiness  # held by the server, keeps the warm-up task alive
    return server, port


async def wait_serving(peers: list[Any]) -> None:
    """Wait until every peer's health service answers SERVING."""
    for peer in peers:
        stub = health_pb2_grpc.HealthStub(peer.channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            await asyncio.sleep(0.2)
