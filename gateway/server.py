"""gRPC adapter of the gateway: thin servicer methods over :class:`GatewayCore`; the
conversions live in gateway/convert.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from embedsearch.contract.convert import index_stats_to_pb
from embedsearch.contract.text import brief
from embedsearch.v1 import common_pb2, embedder_pb2, gateway_pb2, gateway_pb2_grpc
from gateway.clients import connect_peers
from gateway.convert import (
    chunk_from_pb,
    count_rows_from_pb,
    count_rows_to_pb,
    create_index_from_pb,
    create_table_from_pb,
    delete_from_pb,
    describe_from_pb,
    drop_table_from_pb,
    embed_call_from_pb,
    embedded_to_pb,
    explain_from_pb,
    explain_to_pb,
    index_name_of,
    index_to_pb,
    indexes_to_pb,
    list_tables_from_pb,
    list_tables_to_pb,
    merge_insert_from_pb,
    providers_to_pb,
    read_from_pb,
    read_to_pb,
    rename_table_from_pb,
    resolve_from_pb,
    resolved_to_pb,
    restore_from_pb,
    rows_from_pb,
    search_from_pb,
    search_to_pb,
    table_info_to_pb,
    table_of,
    take_from_pb,
    update_from_pb,
    versions_to_pb,
    write_to_pb,
)
from gateway.convert_rerank import rerank_call_from_pb, scores_to_pb
from gateway.core import GatewayCore
from gateway.server_schema import SchemaMaintenanceServicer
from gateway.settings import GatewaySettings
from gateway.values import Chunk
from service_kit.server import RpcMetrics, new_server
from service_kit.settings import TracingSettings
from service_kit.tracing import start as start_tracing

SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name
__all__ = ["GatewayServicer", "create_server", "rows_from_pb"]


class GatewayServicer(SchemaMaintenanceServicer, gateway_pb2_grpc.GatewayServicer):
    """The public API. Each method converts the request, calls the core, converts the reply."""

    def __init__(self, core: GatewayCore) -> None:
        self.core = core

    async def CreateTable(
        self, request: gateway_pb2.CreateTableRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.TableInfo:
        return table_info_to_pb(await self.core.create_table(create_table_from_pb(request)))

    async def DescribeTable(
        self, request: gateway_pb2.DescribeTableRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.TableInfo:
        return table_info_to_pb(await self.core.describe(*describe_from_pb(request)))

    async def ListTables(
        self, request: gateway_pb2.ListTablesRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListTablesResponse:
        return list_tables_to_pb(await self.core.list_tables(*list_tables_from_pb(request)))

    async def DropTable(
        self, request: gateway_pb2.DropTableRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.DropTableResponse:
        await self.core.drop_table(*drop_table_from_pb(request))
        return gateway_pb2.DropTableResponse()

    async def Add(
        self, request: gateway_pb2.AddRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.WriteResult:
        return write_to_pb(await self.core.add(chunk_from_pb(request)))

    async def AddStream(
        self,
        request_iterator: AsyncIterator[gateway_pb2.AddRequest],
        context: grpc.aio.ServicerContext,
    ) -> common_pb2.WriteResult:
        async def chunks() -> AsyncIterator[Chunk]:
            async for request in request_iterator:
                yield chunk_from_pb(request)

        return write_to_pb(await self.core.add_stream(chunks()))

    async def MergeInsert(
        self, request: gateway_pb2.MergeInsertRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.WriteResult:
        return write_to_pb(await self.core.merge_insert(merge_insert_from_pb(request)))

    async def Delete(
        self, request: gateway_pb2.DeleteRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.WriteResult:
        return write_to_pb(await self.core.delete(*delete_from_pb(request)))

    async def Update(
        self, request: gateway_pb2.UpdateRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.WriteResult:
        return write_to_pb(await self.core.update(*update_from_pb(request)))

    async def CountRows(
        self, request: gateway_pb2.CountRowsRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.CountRowsResponse:
        return count_rows_to_pb(await self.core.count_rows(*count_rows_from_pb(request)))

    async def Search(
        self, request: gateway_pb2.SearchRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.SearchResponse:
        search = search_from_pb(request)
        return search_to_pb(await self.core.search(search), search.json_rows)

    async def CreateIndex(
        self, request: gateway_pb2.CreateIndexRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.IndexInfo:
        return index_to_pb(await self.core.create_index(create_index_from_pb(request)))

    async def Restore(
        self, request: gateway_pb2.RestoreRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.WriteResult:
        return write_to_pb(await self.core.restore(*restore_from_pb(request)))

    async def ListIndexes(
        self, request: gateway_pb2.ListIndexesRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListIndexesResponse:
        return indexes_to_pb(await self.core.list_indexes(table_of(request)))

    async def DropIndex(
        self, request: gateway_pb2.DropIndexRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.DropIndexResponse:
        await self.core.drop_index(*index_name_of(request))
        return gateway_pb2.DropIndexResponse()

    async def IndexStats(
        self, request: gateway_pb2.IndexStatsRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.IndexStatistics:
        return index_stats_to_pb(await self.core.index_stats(*index_name_of(request)))

    async def ListVersions(
        self, request: gateway_pb2.ListVersionsRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListVersionsResponse:
        return versions_to_pb(await self.core.list_versions(table_of(request)))

    async def ListProviders(
        self, request: embedder_pb2.ListProvidersRequest, context: grpc.aio.ServicerContext
    ) -> embedder_pb2.ListProvidersResponse:
        return providers_to_pb(await self.core.list_providers())

    async def ResolveFunction(
        self, request: embedder_pb2.ResolveFunctionRequest, context: grpc.aio.ServicerContext
    ) -> embedder_pb2.ResolveFunctionResponse:
        return resolved_to_pb(await self.core.resolve_function(*resolve_from_pb(request)))

    async def Read(
        self, request: gateway_pb2.ReadRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.ReadResponse]:
        async for batch in self.core.read(read_from_pb(request)):
            yield read_to_pb(batch)

    async def Take(
        self, request: gateway_pb2.TakeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.ReadResponse]:
        async for batch in self.core.take(take_from_pb(request)):
            yield read_to_pb(batch)

    async def SearchStream(
        self, request: gateway_pb2.SearchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.ReadResponse]:
        async for batch in self.core.search_stream(search_from_pb(request)):
            yield read_to_pb(batch)

    async def ExplainPlan(
        self, request: gateway_pb2.ExplainPlanRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ExplainPlanResponse:
        return explain_to_pb(await self.core.explain(explain_from_pb(request)))

    async def RenameTable(
        self, request: gateway_pb2.RenameTableRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.TableInfo:
        return table_info_to_pb(await self.core.rename_table(*rename_table_from_pb(request)))

    async def GenerateEmbeddings(
        self, request: embedder_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> embedder_pb2.EmbedResponse:
        return embedded_to_pb(await self.core.generate_embeddings(embed_call_from_pb(request)))

    async def Rerank(
        self, request: embedder_pb2.RerankRequest, context: grpc.aio.ServicerContext
    ) -> embedder_pb2.RerankResponse:
        return scores_to_pb(await self.core.rerank(rerank_call_from_pb(request)))


def table_named(request: Any) -> str:
    """What an error is about, for messages: the request's table, if it names one."""
    name = getattr(request, "table", "") or getattr(request, "name", "")
    return f"table {brief(name)}" if isinstance(name, str) and name else ""


async def create_server(settings: GatewaySettings) -> tuple[grpc.aio.Server, int]:
    """Build the gateway, bound but not started; SERVING once both peers answer SERVING."""
    metrics = RpcMetrics("gateway", CollectorRegistry())
    tracing = start_tracing(settings.group(TracingSettings), settings.service_name)
    embedder, store = connect_peers(settings, tracing)
    servicer = GatewayServicer(GatewayCore(embedder, store, settings))
    server, port, readiness = await new_server(
        settings,
        [SERVICE],
        lambda s: gateway_pb2_grpc.add_GatewayServicer_to_server(servicer, s),
        metrics,
        subject=table_named,
        tracing=tracing,
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
