"""gRPC adapter of schema evolution, compaction, cleanup, tags and statistics: thin servicer
methods (mixed into :class:`store_service.server.StoreServicer`) and their conversions."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf.message import Message

from embedsearch.contract.errors import InvalidArgument
from embedsearch.contract.wire import ipc_to_schema
from embedsearch.v1 import common_pb2, store_pb2
from store_service import schema, tags
from store_service.maintenance import CompactionResult
from store_service.schema import Alteration, MetadataUpdate, TableStatistics

if TYPE_CHECKING:
    from store_service.catalog import TableCatalog
    from store_service.maintenance import Maintenance

T = TypeVar("T")
# CompactionOptions fields, each passed to Lance's compact_files when set.
COMPACTION_OPTIONS = tuple(f.name for f in common_pb2.CompactionOptions.DESCRIPTOR.fields)


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
    return Alteration(
        path=alteration.path,
        rename=alteration.rename if alteration.HasField("rename") else None,
        nullable=alteration.nullable if alteration.HasField("nullable") else None,
        data_type=data_type_from_pb(alteration.data_type, alteration.path),
    )


def metadata_from_pb(update: store_pb2.SchemaMetadataUpdate) -> MetadataUpdate:
    return MetadataUpdate(set=dict(update.set), remove=list(update.remove))


def compaction_options_from_pb(options: common_pb2.CompactionOptions) -> dict[str, Any]:
    return {name: getattr(options, name) for name in COMPACTION_OPTIONS if options.HasField(name)}


def compaction_to_pb(result: CompactionResult) -> common_pb2.CompactionMetrics:
    return common_pb2.CompactionMetrics(
        fragments_removed=result.fragments_removed,
        fragments_added=result.fragments_added,
        files_removed=result.files_removed,
        files_added=result.files_added,
        version=result.version,
    )


def statistics_to_pb(stats: TableStatistics) -> common_pb2.TableStatistics:
    lengths = stats.lengths
    return common_pb2.TableStatistics(
        total_bytes=stats.total_bytes,
        num_rows=stats.num_rows,
        num_indices=stats.num_indices,
        num_fragments=stats.num_fragments,
        num_small_fragments=stats.num_small_fragments,
        lengths=common_pb2.FragmentLengths(
            min=lengths.min,
            max=lengths.max,
            mean=lengths.mean,
            p25=lengths.p25,
            p50=lengths.p50,
            p75=lengths.p75,
            p99=lengths.p99,
        ),
    )


def tag_to_pb(ref: tags.TagRef) -> store_pb2.StoreTag:
    return store_pb2.StoreTag(tag=ref.tag, version=ref.version, manifest_size=ref.manifest_size)


def _write(version: int) -> common_pb2.WriteResult:
    return common_pb2.WriteResult(version=version)


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

    async def AddColumns(
        self, request: store_pb2.StoreAddColumnsRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.WriteResult:
        expressions = [(p.name, p.expression) for p in request.expressions]
        new_schema = ipc_to_schema(request.arrow_schema) if request.arrow_schema else None
        result = await self._run(
            request,
            schema.add_columns,
            self.catalog,
            request.name,
            expressions,
            new_schema,
            request.schema_fingerprint,
        )
        return _write(result.version)

    async def AlterColumns(
        self, request: store_pb2.StoreAlterColumnsRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.WriteResult:
        alterations = [alteration_from_pb(a) for a in request.alterations]
        result = await self._run(
            request,
            schema.alter_columns,
            self.catalog,
            request.name,
            alterations,
            metadata_from_pb(request.metadata),
            request.schema_fingerprint,
        )
        return _write(result.version)

    async def DropColumns(
        self, request: store_pb2.StoreDropColumnsRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.WriteResult:
        result = await self._run(
            request,
            schema.drop_columns,
            self.catalog,
            request.name,
            list(request.columns),
            metadata_from_pb(request.metadata),
            request.schema_fingerprint,
        )
        return _write(result.version)

    async def CompactFiles(
        self, request: store_pb2.StoreCompactFilesRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.CompactionMetrics:
        options = schema.check_compaction_options(compaction_options_from_pb(request.options))
        result = await self._run(request, self.maintenance.compact_files, request.name, options)
        return compaction_to_pb(result)

    async def CleanupOldVersions(
        self, request: store_pb2.StoreCleanupRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.CleanupStats:
        older_than = request.older_than_s if request.HasField("older_than_s") else None
        versions, removed = await self._unheld(
            self.maintenance.cleanup_old_versions,
            request.name,
            older_than,
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
