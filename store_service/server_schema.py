"""gRPC adapter of schema evolution, compaction, cleanup, tags and statistics: thin servicer
methods (mixed into :class:`store_service.server.StoreServicer`) and their conversions."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf.message import Message

from embedsearch.contract.convert import (
    compaction_options_from_pb,
    compaction_to_pb,
    optional,
    params_from_pb,
    statistics_to_pb,
    value_to_pb,
)
from embedsearch.contract.errors import InvalidArgument
from embedsearch.contract.values import TagInfo
from embedsearch.contract.wire import ipc_to_schema
from embedsearch.v1 import common_pb2, store_pb2
from store_service import schema, tags
from store_service.catalog import WriteResult
from store_service.schema import Alteration, MetadataUpdate

if TYPE_CHECKING:
    from store_service.catalog import TableCatalog
    from store_service.maintenance import Maintenance

T = TypeVar("T")
SchemaRequest = (
    store_pb2.StoreAddColumnsRequest
    | store_pb2.StoreAlterColumnsRequest
    | store_pb2.StoreDropColumnsRequest
)


def data_type_from_pb(data: bytes, path: str) -> Any:
    """The Arrow type an alteration casts to (an IPC schema of one field), or None."""
    if not data:
        return None
    found = ipc_to_schema(data)
    if len(found) != 1:
        raise InvalidArgument(
            f"data_type of {path!r} must be an Arrow schema of exactly one field, not {len(found)}"
        )
    return found.field(0).type


def alteration_from_pb(alteration: common_pb2.ColumnAlteration) -> Alteration:
    return params_from_pb(
        alteration,
        Alteration,
        data_type=data_type_from_pb(alteration.data_type, alteration.path),
    )


def metadata_from_pb(update: store_pb2.SchemaMetadataUpdate) -> MetadataUpdate:
    return params_from_pb(update, MetadataUpdate)


def tag_to_pb(ref: TagInfo) -> store_pb2.StoreTag:
    return value_to_pb(ref, store_pb2.StoreTag)


def write_to_pb(result: WriteResult) -> common_pb2.WriteResult:
    return value_to_pb(result, common_pb2.WriteResult)


class SchemaMaintenanceServicer:
    """Store RPCs of schema evolution and maintenance; each runs its core in a worker thread."""

    catalog: TableCatalog
    maintenance: Maintenance

    if TYPE_CHECKING:

        async def _run(
            self, request: Message, fn: Callable[..., T], *args: Any, **kwargs: Any
        ) -> T: ...  # StoreServicer's

    async def _unheld(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Maintenance that removes versions holds none itself (it would hold back its own
        cleanup), as the Optimize RPC does."""
        return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))

    async def _schema_change(
        self, request: SchemaRequest, change: Callable[..., WriteResult], *args: Any
    ) -> common_pb2.WriteResult:
        """``change(catalog, name, *args, fingerprint)``: one of store_service.schema's."""
        result = await self._run(
            request, change, self.catalog, request.name, *args, request.schema_fingerprint
        )
        return write_to_pb(result)

    async def AddColumns(
        self, request: store_pb2.StoreAddColumnsRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.WriteResult:
        expressions = [(p.name, p.expression) for p in request.expressions]
        new_schema = ipc_to_schema(request.arrow_schema) if request.arrow_schema else None
        return await self._schema_change(request, schema.add_columns, expressions, new_schema)

    async def AlterColumns(
        self, request: store_pb2.StoreAlterColumnsRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.WriteResult:
        alterations = [alteration_from_pb(a) for a in request.alterations]
        metadata = metadata_from_pb(request.metadata)
        return await self._schema_change(request, schema.alter_columns, alterations, metadata)

    async def DropColumns(
        self, request: store_pb2.StoreDropColumnsRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.WriteResult:
        columns, metadata = list(request.columns), metadata_from_pb(request.metadata)
        return await self._schema_change(request, schema.drop_columns, columns, metadata)

    async def CompactFiles(
        self, request: store_pb2.StoreCompactFilesRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.CompactionMetrics:
        options = schema.check_compaction_options(compaction_options_from_pb(request.options))
        result = await self._run(request, self.maintenance.compact_files, request.name, options)
        return compaction_to_pb(result)

    async def CleanupOldVersions(
        self, request: store_pb2.StoreCleanupRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.CleanupStats:
        versions, removed = await self._unheld(
            self.maintenance.cleanup_old_versions,
            request.name,
            optional(request, "older_than_s"),
            delete_unverified=request.delete_unverified,
            error_if_tagged=request.error_if_tagged_old_versions,
        )
        return common_pb2.CleanupStats(old_versions=versions, bytes_removed=removed)

    async def UpdateTag(
        self, request: store_pb2.StoreUpdateTagRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.StoreTag:
        ref = await self._run(
            request, tags.update_tag, self.catalog, request.name, request.tag, request.version
        )
        return tag_to_pb(ref)

    async def TableStats(
        self, request: store_pb2.StoreTableStatsRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.TableStatistics:
        return statistics_to_pb(await self._run(request, schema.stats, self.catalog, request.name))
