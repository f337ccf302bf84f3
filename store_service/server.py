"""gRPC adapter of the store: thin servicer methods over :class:`TableCatalog`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from prometheus_client import CollectorRegistry

from embedsearch.errors import InvalidArgument
from embedsearch.rpc.convert import metric_from_pb
from embedsearch.rpc.server import RpcMetrics, new_server
from embedsearch.v1 import common_pb2, store_pb2, store_pb2_grpc
from embedsearch.wire import ipc_to_schema, ipc_to_table, schema_to_ipc, table_to_ipc, unpack_vector
from store_service.catalog import IndexInfo, SearchParams, TableCatalog, TableInfo, WriteResult
from store_service.settings import StoreSettings

SERVICE = store_pb2.DESCRIPTOR.services_by_name["Store"].full_name
T = TypeVar("T")

CREATE_MODES = {
    common_pb2.CREATE_MODE_UNSPECIFIED: "create",
    common_pb2.CREATE_MODE_CREATE: "create",
    common_pb2.CREATE_MODE_OVERWRITE: "overwrite",
    common_pb2.CREATE_MODE_EXIST_OK: "exist_ok",
}
_INDEX_TYPES = {
    name.removeprefix("INDEX_TYPE_").replace("_", ""): value
    for name, value in common_pb2.IndexType.items()
}


def index_to_pb(index: IndexInfo) -> common_pb2.IndexInfo:
    kind = index.index_type.upper().replace("_", "")
    return common_pb2.IndexInfo(
        name=index.name,
        columns=index.columns,
        index_type=_INDEX_TYPES.get(kind, common_pb2.INDEX_TYPE_UNSPECIFIED),
        status=index.status,
        num_indexed_rows=index.num_indexed_rows,
        num_unindexed_rows=index.num_unindexed_rows,
    )


def table_to_pb(info: TableInfo) -> store_pb2.StoreTableInfo:
    return store_pb2.StoreTableInfo(
        name=info.name,
        arrow_schema=schema_to_ipc(info.schema),
        version=info.version,
        num_rows=info.num_rows,
        indexes=[index_to_pb(i) for i in info.indexes],
    )


def write_to_pb(result: WriteResult) -> common_pb2.WriteResult:
    return common_pb2.WriteResult(
        version=result.version,
        rows_inserted=result.rows_inserted,
        rows_updated=result.rows_updated,
        rows_deleted=result.rows_deleted,
    )


def search_from_pb(request: store_pb2.StoreSearchRequest) -> SearchParams:
    return SearchParams(
        vector_column=request.vector_column,
        vector=unpack_vector(request.vector),
        k=request.k or 10,
        metric=metric_from_pb(request.metric),
        filter=request.filter,
        postfilter=request.postfilter,
        columns=list(request.columns),
        nprobes=request.nprobes,
        refine_factor=request.refine_factor,
        ef=request.ef,
        distance_lower_bound=(
            request.distance_lower_bound if request.HasField("distance_lower_bound") else None
        ),
        distance_upper_bound=(
            request.distance_upper_bound if request.HasField("distance_upper_bound") else None
        ),
        offset=request.offset,
        with_row_id=request.with_row_id,
        version=request.version,
        bypass_vector_index=request.bypass_vector_index,
    )


def version_to_pb(version: dict[str, Any]) -> common_pb2.TableVersion:
    return common_pb2.TableVersion(
        version=version["version"],
        timestamp=version["timestamp"].timestamp(),
        metadata={k: str(v) for k, v in (version.get("metadata") or {}).items()},
    )


class StoreServicer(store_pb2_grpc.StoreServicer):
    """Unpacks requests, runs the catalog in a worker thread, packs replies."""

    def __init__(self, catalog: TableCatalog) -> None:
        self.catalog = catalog

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def CreateTable(
        self, request: store_pb2.StoreCreateTableRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.StoreTableInfo:
        schema = ipc_to_schema(request.arrow_schema)
        rows = ipc_to_table(request.arrow_ipc) if request.arrow_ipc else None
        if request.mode not in CREATE_MODES:
            raise InvalidArgument(f"unknown create mode {request.mode}")
        info = await self._run(
            self.catalog.create_table, request.name, schema, CREATE_MODES[request.mode], rows
        )
        return table_to_pb(info)

    async def DescribeTable(
        self, request: store_pb2.StoreDescribeTableRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.StoreTableInfo:
        return table_to_pb(await self._run(self.catalog.describe, request.name, request.version))

    async def ListTables(
        self, request: store_pb2.StoreListTablesRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.StoreListTablesResponse:
        names = await self._run(self.catalog.list_tables, request.start_after, request.limit)
        return store_pb2.StoreListTablesResponse(names=names)

    async def DropTable(
        self, request: store_pb2.StoreDropTableRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.StoreDropTableResponse:
        await self._run(self.catalog.drop_table, request.name, request.ignore_missing)
        return store_pb2.StoreDropTableResponse()

    async def Add(
        self, request: store_pb2.StoreAddRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.WriteResult:
        rows = ipc_to_table(request.arrow_ipc)
        return write_to_pb(await self._run(self.catalog.add, request.name, rows))

    async def MergeInsert(
        self, request: store_pb2.StoreMergeInsertRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.WriteResult:
        rows = ipc_to_table(request.arrow_ipc)
        result = await self._run(
            self.catalog.merge_insert,
            request.name,
            list(request.on),
            rows,
            when_matched_update_all=request.when_matched_update_all,
            when_matched_update_condition=request.when_matched_update_condition,
            when_not_matched_insert_all=request.when_not_matched_insert_all,
            when_not_matched_by_source_delete=request.when_not_matched_by_source_delete,
            when_not_matched_by_source_condition=request.when_not_matched_by_source_condition,
        )
        return write_to_pb(result)

    async def Delete(
        self, request: store_pb2.StoreDeleteRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.WriteResult:
        return write_to_pb(await self._run(self.catalog.delete, request.name, request.filter))

    async def Update(
        self, request: store_pb2.StoreUpdateRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.WriteResult:
        result = await self._run(
            self.catalog.update, request.name, request.filter, dict(request.updates)
        )
        return write_to_pb(result)

    async def CountRows(
        self, request: store_pb2.StoreCountRowsRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.StoreCountRowsResponse:
        count = await self._run(
            self.catalog.count_rows, request.name, request.filter, request.version
        )
        return store_pb2.StoreCountRowsResponse(count=count)

    async def Search(
        self, request: store_pb2.StoreSearchRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.StoreSearchResponse:
        result = await self._run(self.catalog.search, request.name, search_from_pb(request))
        return store_pb2.StoreSearchResponse(arrow_ipc=table_to_ipc(result))

    async def ListIndexes(
        self, request: store_pb2.StoreListIndexesRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.StoreListIndexesResponse:
        indexes = await self._run(self.catalog.list_indexes, request.name)
        return store_pb2.StoreListIndexesResponse(indexes=[index_to_pb(i) for i in indexes])

    async def ListVersions(
        self, request: store_pb2.StoreListVersionsRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.StoreListVersionsResponse:
        versions = await self._run(self.catalog.list_versions, request.name)
        return store_pb2.StoreListVersionsResponse(versions=[version_to_pb(v) for v in versions])


async def create_server(settings: StoreSettings) -> tuple[grpc.aio.Server, int]:
    """Build the store server, bound but not started; SERVING once the data root is open."""
    metrics = RpcMetrics("store", CollectorRegistry())
    catalog = await asyncio.to_thread(TableCatalog, settings.data_root)
    servicer = StoreServicer(catalog)
    server, port, readiness = await new_server(
        settings,
        [SERVICE],
        lambda s: store_pb2_grpc.add_StoreServicer_to_server(servicer, s),
        metrics,
    )
    await readiness.set(True)
    return server, port
