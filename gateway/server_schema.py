"""gRPC adapter of schema evolution and maintenance: thin servicer methods (mixed into
:class:`gateway.server.GatewayServicer`) over the core; conversions in convert_schema.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from embedsearch.contract.convert import compaction_to_pb, statistics_to_pb
from embedsearch.v1 import common_pb2, gateway_pb2
from gateway.convert import write_to_pb
from gateway.convert_schema import (
    add_columns_from_pb,
    alter_columns_from_pb,
    cleanup_from_pb,
    cleanup_to_pb,
    compact_files_from_pb,
    delete_tag_from_pb,
    drop_columns_from_pb,
    optimize_from_pb,
    optimize_to_pb,
    table_from_pb,
    tag_request_from_pb,
    tag_to_pb,
    tags_to_pb,
)

if TYPE_CHECKING:
    from gateway.core import GatewayCore

Context = grpc.aio.ServicerContext


class SchemaMaintenanceServicer:
    """The public RPCs of schema evolution, maintenance, tags and statistics."""

    core: GatewayCore

    async def AddColumns(
        self, request: gateway_pb2.AddColumnsRequest, context: Context
    ) -> common_pb2.WriteResult:
        return write_to_pb(await self.core.add_columns(add_columns_from_pb(request)))

    async def AlterColumns(
        self, request: gateway_pb2.AlterColumnsRequest, context: Context
    ) -> common_pb2.WriteResult:
        return write_to_pb(await self.core.alter_columns(*alter_columns_from_pb(request)))

    async def DropColumns(
        self, request: gateway_pb2.DropColumnsRequest, context: Context
    ) -> common_pb2.WriteResult:
        return write_to_pb(await self.core.drop_columns(*drop_columns_from_pb(request)))

    async def Optimize(
        self, request: gateway_pb2.OptimizeRequest, context: Context
    ) -> gateway_pb2.OptimizeResponse:
        return optimize_to_pb(await self.core.optimize(optimize_from_pb(request)))

    async def CompactFiles(
        self, request: gateway_pb2.CompactFilesRequest, context: Context
    ) -> common_pb2.CompactionMetrics:
        return compaction_to_pb(await self.core.compact_files(compact_files_from_pb(request)))

    async def CleanupOldVersions(
        self, request: gateway_pb2.CleanupOldVersionsRequest, context: Context
    ) -> common_pb2.CleanupStats:
        return cleanup_to_pb(await self.core.cleanup_old_versions(cleanup_from_pb(request)))

    async def CreateTag(
        self, request: gateway_pb2.CreateTagRequest, context: Context
    ) -> gateway_pb2.TagInfo:
        return tag_to_pb(await self.core.create_tag(*tag_request_from_pb(request)))

    async def UpdateTag(
        self, request: gateway_pb2.UpdateTagRequest, context: Context
    ) -> gateway_pb2.TagInfo:
        return tag_to_pb(await self.core.update_tag(*tag_request_from_pb(request)))

    async def DeleteTag(
        self, request: gateway_pb2.DeleteTagRequest, context: Context
    ) -> gateway_pb2.DeleteTagResponse:
        await self.core.delete_tag(*delete_tag_from_pb(request))
        return gateway_pb2.DeleteTagResponse()

    async def ListTags(
        self, request: gateway_pb2.ListTagsRequest, context: Context
    ) -> gateway_pb2.ListTagsResponse:
        return tags_to_pb(await self.core.list_tags(table_from_pb(request)))

    async def TableStats(
        self, request: gateway_pb2.TableStatsRequest, context: Context
    ) -> common_pb2.TableStatistics:
        return statistics_to_pb(await self.core.table_stats(table_from_pb(request)))
