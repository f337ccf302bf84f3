"""Edge of the gateway's schema evolution and maintenance: public requests to values (from_pb),
values to public replies (to_pb), and the store's requests and replies (store_*)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from embedsearch.contract.convert import (
    compaction_from_pb,
    compaction_options_from_pb,
    params_from_pb,
    projections_to_pb,
    statistics_from_pb,
    value_to_pb,
)
from embedsearch.contract.values import (
    CompactionResult,
    OptimizeResult,
    TableStatistics,
    TagInfo,
)
from embedsearch.v1 import common_pb2, gateway_pb2, store_pb2
from gateway.convert import store_request_to_pb, value_from_pb, write_from_pb
from gateway.schema import (
    Cleanup,
    CleanupResult,
    ColumnChange,
    Compaction,
    MetadataChange,
    NewColumns,
    Optimize,
)
from gateway.values import WriteResult

# -- public requests in ------------------------------------------------------------------------


def add_columns_from_pb(request: gateway_pb2.AddColumnsRequest) -> NewColumns:
    return NewColumns(
        table=request.table,
        expressions=[(p.name, p.expression) for p in request.expressions],
        arrow_schema=request.arrow_schema,
    )


def column_change_from_pb(alteration: common_pb2.ColumnAlteration) -> ColumnChange:
    return value_from_pb(alteration, ColumnChange)


def alter_columns_from_pb(
    request: gateway_pb2.AlterColumnsRequest,
) -> tuple[str, list[ColumnChange]]:
    return request.table, [column_change_from_pb(a) for a in request.alterations]


def drop_columns_from_pb(request: gateway_pb2.DropColumnsRequest) -> tuple[str, list[str]]:
    return request.table, list(request.columns)


def optimize_from_pb(request: gateway_pb2.OptimizeRequest) -> Optimize:
    return value_from_pb(request, Optimize)


def compact_files_from_pb(request: gateway_pb2.CompactFilesRequest) -> Compaction:
    return Compaction(table=request.table, options=compaction_options_from_pb(request.options))


def cleanup_from_pb(request: gateway_pb2.CleanupOldVersionsRequest) -> Cleanup:
    return value_from_pb(request, Cleanup)


def tag_request_from_pb(
    request: gateway_pb2.CreateTagRequest | gateway_pb2.UpdateTagRequest,
) -> tuple[str, str, int]:
    return request.table, request.tag, request.version


def delete_tag_from_pb(request: gateway_pb2.DeleteTagRequest) -> tuple[str, str]:
    return request.table, request.tag


def table_from_pb(request: gateway_pb2.ListTagsRequest | gateway_pb2.TableStatsRequest) -> str:
    return request.table


# -- public replies out ------------------------------------------------------------------------


def optimize_to_pb(result: OptimizeResult) -> gateway_pb2.OptimizeResponse:
    return value_to_pb(result, gateway_pb2.OptimizeResponse)


def cleanup_to_pb(result: CleanupResult) -> common_pb2.CleanupStats:
    return value_to_pb(result, common_pb2.CleanupStats)


def tag_to_pb(tag: TagInfo) -> gateway_pb2.TagInfo:
    return value_to_pb(tag, gateway_pb2.TagInfo)


def tags_to_pb(tags: list[TagInfo]) -> gateway_pb2.ListTagsResponse:
    return gateway_pb2.ListTagsResponse(tags=[tag_to_pb(t) for t in tags])


# -- the store's requests and replies ----------------------------------------------------------


def metadata_to_pb(change: MetadataChange) -> store_pb2.SchemaMetadataUpdate:
    return store_pb2.SchemaMetadataUpdate(set=change.set, remove=change.remove)


def column_change_to_pb(change: ColumnChange) -> common_pb2.ColumnAlteration:
    alteration = common_pb2.ColumnAlteration(path=change.path, data_type=change.data_type)
    if change.rename is not None:
        alteration.rename = change.rename
    if change.nullable is not None:
        alteration.nullable = change.nullable
    return alteration


def store_add_columns_to_pb(new: NewColumns, fingerprint: str) -> store_pb2.StoreAddColumnsRequest:
    return store_pb2.StoreAddColumnsRequest(
        name=new.table,
        expressions=projections_to_pb(new.expressions),
        arrow_schema=new.arrow_schema,
        schema_fingerprint=fingerprint,
    )


def store_alter_columns_to_pb(
    name: str, changes: list[ColumnChange], metadata: MetadataChange, fingerprint: str
) -> store_pb2.StoreAlterColumnsRequest:
    return store_pb2.StoreAlterColumnsRequest(
        name=name,
        alterations=[column_change_to_pb(c) for c in changes],
        metadata=metadata_to_pb(metadata),
        schema_fingerprint=fingerprint,
    )


def store_drop_columns_to_pb(
    name: str, columns: list[str], metadata: MetadataChange, fingerprint: str
) -> store_pb2.StoreDropColumnsRequest:
    return store_pb2.StoreDropColumnsRequest(
        name=name,
        columns=columns,
        metadata=metadata_to_pb(metadata),
        schema_fingerprint=fingerprint,
    )


def store_optimize_to_pb(optimize: Optimize) -> store_pb2.StoreOptimizeRequest:
    """Public optimizes refuse to pass tagged versions by, as LanceDB's do."""
    return store_request_to_pb(
        optimize, store_pb2.StoreOptimizeRequest, error_if_tagged_old_versions=True
    )


def store_optimize_from_pb(reply: store_pb2.StoreOptimizeResponse) -> OptimizeResult:
    return params_from_pb(reply, OptimizeResult)


def store_compact_to_pb(compaction: Compaction) -> store_pb2.StoreCompactFilesRequest:
    return store_pb2.StoreCompactFilesRequest(
        name=compaction.table, options=common_pb2.CompactionOptions(**compaction.options)
    )


def store_cleanup_to_pb(cleanup: Cleanup) -> store_pb2.StoreCleanupRequest:
    """Public cleanups refuse to pass tagged versions by, as LanceDB's do."""
    return store_request_to_pb(
        cleanup, store_pb2.StoreCleanupRequest, error_if_tagged_old_versions=True
    )


def cleanup_stats_from_pb(reply: common_pb2.CleanupStats) -> CleanupResult:
    return params_from_pb(reply, CleanupResult)


def store_create_tag_to_pb(name: str, tag: str, version: int) -> store_pb2.StoreCreateTagRequest:
    return store_pb2.StoreCreateTagRequest(name=name, tag=tag, version=version)


def store_update_tag_to_pb(name: str, tag: str, version: int) -> store_pb2.StoreUpdateTagRequest:
    return store_pb2.StoreUpdateTagRequest(name=name, tag=tag, version=version)


def store_delete_tag_to_pb(name: str, tag: str) -> store_pb2.StoreDeleteTagRequest:
    """Public deletes of a missing tag are NOT_FOUND, as in LanceDB."""
    return store_pb2.StoreDeleteTagRequest(name=name, tag=tag, error_if_missing=True)


def store_list_tags_to_pb(name: str) -> store_pb2.StoreListTagsRequest:
    return store_pb2.StoreListTagsRequest(name=name)


def store_tag_from_pb(reply: store_pb2.StoreTag) -> TagInfo:
    return params_from_pb(reply, TagInfo)


def store_stats_to_pb(name: str) -> store_pb2.StoreTableStatsRequest:
    return store_pb2.StoreTableStatsRequest(name=name)


class SchemaMaintenanceStore:
    """StoreClient's calls for schema evolution and maintenance (mixed into it)."""

    if TYPE_CHECKING:

        async def call(self, method: str, request: Any) -> Any: ...  # Peer's

    async def add_columns(self, new: NewColumns, fingerprint: str) -> WriteResult:
        reply = await self.call("AddColumns", store_add_columns_to_pb(new, fingerprint))
        return write_from_pb(reply)

    async def alter_columns(
        self, name: str, changes: list[ColumnChange], metadata: MetadataChange, fingerprint: str
    ) -> WriteResult:
        request = store_alter_columns_to_pb(name, changes, metadata, fingerprint)
        return write_from_pb(await self.call("AlterColumns", request))

    async def drop_columns(
        self, name: str, columns: list[str], metadata: MetadataChange, fingerprint: str
    ) -> WriteResult:
        request = store_drop_columns_to_pb(name, columns, metadata, fingerprint)
        return write_from_pb(await self.call("DropColumns", request))

    async def optimize(self, optimize: Optimize) -> OptimizeResult:
        return store_optimize_from_pb(await self.call("Optimize", store_optimize_to_pb(optimize)))

    async def compact_files(self, compaction: Compaction) -> CompactionResult:
        reply = await self.call("CompactFiles", store_compact_to_pb(compaction))
        return compaction_from_pb(reply)

    async def cleanup_old_versions(self, cleanup: Cleanup) -> CleanupResult:
        reply = await self.call("CleanupOldVersions", store_cleanup_to_pb(cleanup))
        return cleanup_stats_from_pb(reply)

    async def create_tag(self, name: str, tag: str, version: int) -> TagInfo:
        reply = await self.call("CreateTag", store_create_tag_to_pb(name, tag, version))
        return store_tag_from_pb(reply)

    async def update_tag(self, name: str, tag: str, version: int) -> TagInfo:
        reply = await self.call("UpdateTag", store_update_tag_to_pb(name, tag, version))
        return store_tag_from_pb(reply)

    async def delete_tag(self, name: str, tag: str) -> None:
        await self.call("DeleteTag", store_delete_tag_to_pb(name, tag))

    async def list_tags(self, name: str) -> list[TagInfo]:
        reply = await self.call("ListTags", store_list_tags_to_pb(name))
        return [store_tag_from_pb(t) for t in reply.tags]

    async def table_stats(self, name: str) -> TableStatistics:
        return statistics_from_pb(await self.call("TableStats", store_stats_to_pb(name)))
