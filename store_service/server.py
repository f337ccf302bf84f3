"""gRPC adapter of the store: thin servicer methods over :class:`TableCatalog`."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import grpc
import pyarrow as pa
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry

from embedsearch.contract.convert import (
    CREATE_MODES,
    INDEX_TYPES,
    index_params_from_pb,
    index_stats_to_pb,
    index_to_pb,
    index_type_from_pb,
    metric_from_pb,
    params_from_pb,
    projections_from_pb,
    value_to_pb,
)
from embedsearch.contract.errors import Cancelled, InvalidArgument
from embedsearch.contract.multivector import query_vectors
from embedsearch.contract.text import brief
from embedsearch.contract.values import OptimizeResult, ReadParams, TakeParams
from embedsearch.contract.wire import (
    ipc_to_schema,
    ipc_to_table,
    schema_to_ipc,
    table_to_ipc,
    unpack_vector,
)
from embedsearch.v1 import common_pb2, store_pb2, store_pb2_grpc
from service_kit.server import RpcMetrics, new_server
from service_kit.tracing import span
from store_service import tags
from store_service.catalog import (
    SearchParams,
    StagedAppend,
    TableCatalog,
    TableInfo,
    TextSearchParams,
)
from store_service.indexes import IndexSpec
from store_service.maintenance import Maintenance, register_metrics
from store_service.server_schema import SchemaMaintenanceServicer, tag_to_pb, write_to_pb
from store_service.settings import StoreSettings
from store_service.storage import storage_options_from_env

SERVICE = store_pb2.DESCRIPTOR.services_by_name["Store"].full_name
T = TypeVar("T")


def index_spec_from_pb(request: store_pb2.StoreCreateIndexRequest) -> IndexSpec:
    if request.index_type == common_pb2.INDEX_TYPE_UNSPECIFIED or (
        request.index_type not in common_pb2.IndexType.values()
    ):
        raise InvalidArgument(f"index_type is required; use one of {sorted(INDEX_TYPES)}")
    params = index_params_from_pb(request.params)
    return IndexSpec(
        table=request.name,
        column=request.column,
        index_type=index_type_from_pb(request.index_type),
        name=request.index_name,
        params=dataclasses.replace(params, metric=params.metric or "l2"),
    )


def table_to_pb(info: TableInfo) -> store_pb2.StoreTableInfo:
    return store_pb2.StoreTableInfo(
        name=info.name,
        arrow_schema=schema_to_ipc(info.schema),
        version=info.version,
        num_rows=info.num_rows,
        indexes=[index_to_pb(i) for i in info.indexes],
        schema_fingerprint=info.fingerprint,
        uri=info.uri,
    )


def search_from_pb(request: store_pb2.StoreSearchRequest) -> SearchParams:
    return params_from_pb(
        request,
        SearchParams,
        vector=query_vectors(unpack_vector(request.vector), request.query_vectors),
        k=request.k or 10,
        metric=metric_from_pb(request.metric),
        projections=projections_from_pb(request.projections),
    )


def text_search_from_pb(request: store_pb2.StoreTextSearchRequest) -> TextSearchParams:
    return params_from_pb(
        request,
        TextSearchParams,
        k=request.k or 10,
        projections=projections_from_pb(request.projections),
    )


def version_to_pb(version: dict[str, Any]) -> common_pb2.TableVersion:
    return common_pb2.TableVersion(
        version=version["version"],
        timestamp=version["timestamp"].timestamp(),
        tags=version.get("tags", []),
        metadata={k: str(v) for k, v in (version.get("metadata") or {}).items()},
    )


def optimize_to_pb(result: OptimizeResult) -> store_pb2.StoreOptimizeResponse:
    return value_to_pb(result, store_pb2.StoreOptimizeResponse)


def scan_from_pb(request: store_pb2.StoreScanRequest) -> ReadParams:
    return params_from_pb(request, ReadParams, projections=projections_from_pb(request.projections))


def take_from_pb(request: store_pb2.StoreTakeRequest) -> TakeParams:
    return params_from_pb(request, TakeParams, projections=projections_from_pb(request.projections))


def explain_from_pb(
    request: store_pb2.StoreExplainPlanRequest,
) -> SearchParams | TextSearchParams | ReadParams:
    kind = request.WhichOneof("query")
    if kind == "search":
        return search_from_pb(request.search)
    if kind == "text_search":
        return text_search_from_pb(request.text_search)
    if kind == "scan":
        return scan_from_pb(request.scan)
    raise InvalidArgument("ExplainPlan needs a query: search, text_search or scan")


class StoreServicer(SchemaMaintenanceServicer, store_pb2_grpc.StoreServicer):
    """Unpacks requests, runs the catalog in a worker thread, packs replies."""

    def __init__(self, catalog: TableCatalog, maintenance: Maintenance) -> None:
        self.catalog = catalog
        self.maintenance = maintenance
        self.background: asyncio.Task[None] | None = None  # maintenance, held while it runs

    async def _run(self, request: Message, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a worker thread, holding the versions of the request's
        table it may read (its ``version``, or the latest from now on) against cleanup."""
        name = getattr(request, "name", "")
        version = getattr(request, "version", 0)
        call = functools.partial(fn, *args, **kwargs)
        return await asyncio.to_thread(self.catalog.held, name, version, call)

    async def CreateTable(
        self, request: store_pb2.StoreCreateTableRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.StoreTableInfo:
        schema = ipc_to_schema(request.arrow_schema)
        rows = ipc_to_table(request.arrow_ipc) if request.arrow_ipc else None
        if request.mode not in CREATE_MODES:
            raise InvalidArgument(f"unknown create mode {request.mode}")
        info = await self._run(
            request,
            self.catalog.create_table,
            request.name,
            schema,
            CREATE_MODES[request.mode],
            rows,
        )
        return table_to_pb(info)

    async def DescribeTable(
        self, request: store_pb2.StoreDescribeTableRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.StoreTableInfo:
        info = await self._run(
            request, self.catalog.describe, request.name, request.version, request.tag
        )
        return table_to_pb(info)

    async def ListTables(
        self, request: store_pb2.StoreListTablesRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.StoreListTablesResponse:
        names = await self._run(
            request, self.catalog.list_tables, request.start_after, request.limit
        )
        return store_pb2.StoreListTablesResponse(names=names)

    async def DropTable(
        self, request: store_pb2.StoreDropTableRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.StoreDropTableResponse:
        await self._run(request, self.catalog.drop_table, request.name, request.ignore_missing)
        return store_pb2.StoreDropTableResponse()

    async def Add(
        self, request: store_pb2.StoreAddRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.WriteResult:
        rows = ipc_to_table(request.arrow_ipc)
        result = await self._run(
            request,
            self.catalog.add,
            request.name,
            rows,
            request.schema_fingerprint,
            request.overwrite,
        )
        return write_to_pb(result)

    async def AddStream(
        self,
        request_iterator: AsyncIterator[store_pb2.StoreAddRequest],
        context: grpc.aio.ServicerContext,
    ) -> common_pb2.WriteResult:
        staged: StagedAppend | None = None
        finished = False
        async for request in request_iterator:
            if finished:
                raise InvalidArgument("AddStream: a message came after the one marked last")
            if staged is None:
                staged = await self._run(
                    request,
                    self.catalog.begin_append,
                    request.name,
                    request.schema_fingerprint,
                    request.overwrite,
                )
            elif request.name not in ("", staged.name):
                raise InvalidArgument(
                    f"an AddStream writes one table: message names {brief(request.name)} "
                    f"after {staged.name!r}; nothing was written"
                )
            if request.arrow_ipc:
                await self._run(request, staged.add, ipc_to_table(request.arrow_ipc))
            finished = request.last
        if staged is None:
            raise InvalidArgument("AddStream needs at least one message naming the table")
        if not finished:
            raise Cancelled(
                "AddStream ended before a message marked last: the client cancelled or broke "
                "off the stream, and nothing was written"
            )
        return write_to_pb(await asyncio.to_thread(staged.commit))

    async def MergeInsert(
        self, request: store_pb2.StoreMergeInsertRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.WriteResult:
        rows = ipc_to_table(request.arrow_ipc)
        result = await self._run(
            request,
            self.catalog.merge_insert,
            request.name,
            list(request.on),
            rows,
            when_matched_update_all=request.when_matched_update_all,
            when_matched_update_condition=request.when_matched_update_condition,
            when_not_matched_insert_all=request.when_not_matched_insert_all,
            when_not_matched_by_source_delete=request.when_not_matched_by_source_delete,
            when_not_matched_by_source_condition=request.when_not_matched_by_source_condition,
            fingerprint=request.schema_fingerprint,
        )
        return write_to_pb(result)

    async def Delete(
        self, request: store_pb2.StoreDeleteRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.WriteResult:
        return write_to_pb(
            await self._run(request, self.catalog.delete, request.name, request.filter)
        )

    async def Update(
        self, request: store_pb2.StoreUpdateRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.WriteResult:
        result = await self._run(
            request, self.catalog.update, request.name, request.filter, dict(request.updates)
        )
        return write_to_pb(result)

    async def CountRows(
        self, request: store_pb2.StoreCountRowsRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.StoreCountRowsResponse:
        count = await self._run(
            request,
            self.catalog.count_rows,
            request.name,
            request.filter,
            request.version,
            request.tag,
        )
        return store_pb2.StoreCountRowsResponse(count=count)

    async def Search(
        self, request: store_pb2.StoreSearchRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.StoreSearchResponse:
        with span("store.search", table=request.name):
            result = await self._run(
                request, self.catalog.search, request.name, search_from_pb(request)
            )
        with span("store.encode_ipc"):
            return store_pb2.StoreSearchResponse(arrow_ipc=table_to_ipc(result))

    async def ListIndexes(
        self, request: store_pb2.StoreListIndexesRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.StoreListIndexesResponse:
        indexes = await self._run(request, self.catalog.list_indexes, request.name)
        return store_pb2.StoreListIndexesResponse(indexes=[index_to_pb(i) for i in indexes])

    async def ListVersions(
        self, request: store_pb2.StoreListVersionsRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.StoreListVersionsResponse:
        versions = await self._run(request, self.catalog.list_versions, request.name)
        return store_pb2.StoreListVersionsResponse(versions=[version_to_pb(v) for v in versions])

    async def Restore(
        self, request: store_pb2.StoreRestoreRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.WriteResult:
        result = await self._run(
            request, self.catalog.restore, request.name, request.version, request.tag
        )
        return write_to_pb(result)

    async def CreateTag(
        self, request: store_pb2.StoreCreateTagRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.StoreTag:
        version = await self._run(
            request, self.catalog.create_tag, request.name, request.tag, request.version
        )
        return store_pb2.StoreTag(tag=request.tag, version=version)

    async def DeleteTag(
        self, request: store_pb2.StoreDeleteTagRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.StoreDeleteTagResponse:
        await self._run(
            request,
            tags.delete_tag,
            self.catalog,
            request.name,
            request.tag,
            request.error_if_missing,
        )
        return store_pb2.StoreDeleteTagResponse()

    async def ListTags(
        self, request: store_pb2.StoreListTagsRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.StoreListTagsResponse:
        refs = await self._run(request, tags.tag_refs, self.catalog, request.name)
        return store_pb2.StoreListTagsResponse(tags=[tag_to_pb(ref) for ref in refs])

    async def Optimize(
        self, request: store_pb2.StoreOptimizeRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.StoreOptimizeResponse:
        older_than = (
            request.cleanup_older_than_s if request.HasField("cleanup_older_than_s") else None
        )
        result = await asyncio.to_thread(
            functools.partial(
                self.maintenance.optimize,
                request.name,
                older_than,
                delete_unverified=request.delete_unverified,
                error_if_tagged=request.error_if_tagged_old_versions,
            )
        )
        return optimize_to_pb(result)

    async def CreateIndex(
        self, request: store_pb2.StoreCreateIndexRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.IndexInfo:
        spec = index_spec_from_pb(request)
        return index_to_pb(await self._run(request, self.catalog.create_index, spec, request.wait))

    async def IndexStats(
        self, request: store_pb2.StoreIndexStatsRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.IndexStatistics:
        stats = await self._run(request, self.catalog.index_stats, request.name, request.index_name)
        return index_stats_to_pb(stats)

    async def DropIndex(
        self, request: store_pb2.StoreDropIndexRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.StoreDropIndexResponse:
        await self._run(
            request,
            self.catalog.drop_index,
            request.name,
            request.index_name,
            request.ignore_missing,
        )
        return store_pb2.StoreDropIndexResponse()

    async def Scan(
        self, request: store_pb2.StoreScanRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.StoreSearchResponse:
        result = await self._run(request, self.catalog.scan, request.name, scan_from_pb(request))
        return store_pb2.StoreSearchResponse(arrow_ipc=table_to_ipc(result))

    async def Read(
        self, request: store_pb2.StoreScanRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[store_pb2.StoreReadResponse]:
        batches = functools.partial(self.catalog.read, request.name, scan_from_pb(request))
        async for reply in self._stream(request, batches):
            yield reply

    async def Take(
        self, request: store_pb2.StoreTakeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[store_pb2.StoreReadResponse]:
        batches = functools.partial(self.catalog.take, request.name, take_from_pb(request))
        async for reply in self._stream(request, batches):
            yield reply

    async def SearchStream(
        self, request: store_pb2.StoreSearchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[store_pb2.StoreReadResponse]:
        search = search_from_pb(request)
        batches = functools.partial(self.catalog.search_stream, request.name, search)
        async for reply in self._stream(request, batches):
            yield reply

    async def _stream(
        self, request: Message, batches: Callable[[], Iterator[pa.RecordBatch]]
    ) -> AsyncIterator[store_pb2.StoreReadResponse]:
        """Batches come one at a time from a worker thread, each sent before the next is read:
        memory stays one batch deep whatever the result's size. The version read is held
        against cleanup until the stream ends."""
        with self.catalog.holding(request.name, getattr(request, "version", 0)):
            found = await asyncio.to_thread(batches)
            while (batch := await asyncio.to_thread(next, found, None)) is not None:
                yield store_pb2.StoreReadResponse(arrow_ipc=table_to_ipc(batch))

    async def ExplainPlan(
        self, request: store_pb2.StoreExplainPlanRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.StoreExplainPlanResponse:
        query = explain_from_pb(request)
        name = getattr(request, str(request.WhichOneof("query"))).name
        plan = await asyncio.to_thread(self.catalog.explain, name, query, request.verbose)
        return store_pb2.StoreExplainPlanResponse(plan=plan)

    async def RenameTable(
        self, request: store_pb2.StoreRenameTableRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.StoreTableInfo:
        info = await asyncio.to_thread(self.catalog.rename_table, request.name, request.new_name)
        return table_to_pb(info)

    async def TextSearch(
        self, request: store_pb2.StoreTextSearchRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.StoreSearchResponse:
        result = await self._run(
            request, self.catalog.text_search, request.name, text_search_from_pb(request)
        )
        return store_pb2.StoreSearchResponse(arrow_ipc=table_to_ipc(result))


async def create_server(settings: StoreSettings) -> tuple[grpc.aio.Server, int]:
    """Build the store server, bound but not started; SERVING once the data root is open and,
    with ``warm_on_start``, every table's indexes and exact-search matrices are loaded."""
    metrics = RpcMetrics("store", CollectorRegistry())
    options = storage_options_from_env(os.environ, settings.storage_options)
    catalog = await asyncio.to_thread(TableCatalog, settings.data_root, options, settings)
    maintenance = Maintenance(catalog, settings)
    register_metrics(maintenance, metrics.registry)
    servicer = StoreServicer(catalog, maintenance)
    server, port, readiness = await new_server(
        settings,
        [SERVICE],
        lambda s: store_pb2_grpc.add_StoreServicer_to_server(servicer, s),
        metrics,
    )

    async def maintain() -> None:
        """Background maintenance for as long as the server runs."""
        worker = asyncio.create_task(maintenance.run_forever())
        try:
            await server.wait_for_termination()
        finally:
            catalog.stopping.set()  # a calibration in the background gives up
            worker.cancel()

    async def warm_up() -> None:
        if settings.warm_on_start:
            await asyncio.to_thread(catalog.warm_all)
        await asyncio.to_thread(maintenance.measure_all)
        servicer.background = asyncio.create_task(maintain())

    readiness.warm_up(warm_up(), f"store on {settings.data_root}")
    return server, port
