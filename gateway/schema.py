"""The gateway's schema evolution and table maintenance: columns added, altered and dropped with
the embedding bindings kept consistent, and optimize, compaction, cleanup, tags and stats passed
to the store. Plain values in and out; no protobuf, no gRPC."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from embedsearch.contract.errors import FailedPrecondition, InvalidArgument
from embedsearch.contract.values import CompactionResult, OptimizeResult, TableStatistics, TagInfo
from gateway.mapping import METADATA_KEY, Binding, schema_with_bindings

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from gateway.clients import StoreClient
    from gateway.core import DescriptorCache
    from gateway.values import Descriptor, WriteResult

# The schema metadata key holding the bindings, as a str.
BINDINGS_KEY = METADATA_KEY.decode()


@dataclass
class ColumnChange:
    """One alteration (LanceDB's alter_columns dict). ``data_type`` is the Arrow IPC schema of
    one field of the new type, passed to the store as it came; empty keeps the type."""

    path: str
    rename: str | None = None
    nullable: bool | None = None
    data_type: bytes = b""


@dataclass
class NewColumns:
    """Columns to add: (name, SQL expression) pairs, or an Arrow IPC schema of null columns."""

    table: str
    expressions: list[tuple[str, str]] = field(default_factory=list)
    arrow_schema: bytes = b""


@dataclass
class MetadataChange:
    """Schema metadata keys to set and remove in the same store write."""

    set: dict[str, str] = field(default_factory=dict)
    remove: list[str] = field(default_factory=list)


@dataclass
class Optimize:
    """An optimize, as LanceDB's ``optimize(cleanup_older_than, delete_unverified)``."""

    table: str
    cleanup_older_than_s: float | None = None
    delete_unverified: bool = False


@dataclass
class Cleanup:
    """A cleanup of old versions; None means Lance's default age (14 days)."""

    table: str
    older_than_s: float | None = None
    delete_unverified: bool = False


@dataclass
class CleanupResult:
    """What a cleanup removed (Lance's CleanupStats)."""

    bytes_removed: int = 0
    old_versions: int = 0


@dataclass
class Compaction:
    """A compaction with Lance's compact_files options (only those set)."""

    table: str
    options: dict[str, Any] = field(default_factory=dict)


def _bindings_metadata(schema: pa.Schema, bindings: list[Binding]) -> MetadataChange:
    """The metadata change that stores ``bindings`` (removing the key when none are left)."""
    if not bindings:
        return MetadataChange(remove=[BINDINGS_KEY])
    value = (schema_with_bindings(schema, bindings).metadata or {})[METADATA_KEY]
    return MetadataChange(set={BINDINGS_KEY: value.decode()})


def renamed_bindings(
    table: Descriptor, changes: list[ColumnChange]
) -> tuple[list[Binding], MetadataChange]:
    """The bindings after ``changes``, and the metadata change that records them.

    Renaming a bound source or vector column renames it in its binding. Changing the type of
    a bound column is refused (FAILED_PRECONDITION): its function fixes what it holds.
    """
    bound = {b.source_column for b in table.bindings} | {b.vector_column for b in table.bindings}
    retyped = sorted({c.path for c in changes if c.data_type and c.path in bound})
    if retyped:
        raise FailedPrecondition(
            f"column(s) {retyped} of table {table.name!r} are used by an embedding function, "
            "which fixes their type: drop the vector column (and its binding) first, or add a "
            "new column"
        )
    names = {c.path: c.rename for c in changes if c.rename is not None and "." not in c.path}
    if not names or not bound & set(names):
        return table.bindings, MetadataChange()
    bindings = [
        dataclasses.replace(
            b,
            source_column=names.get(b.source_column, b.source_column),
            vector_column=names.get(b.vector_column, b.vector_column),
        )
        for b in table.bindings
    ]
    return bindings, _bindings_metadata(table.schema, bindings)


def remaining_bindings(table: Descriptor, columns: list[str]) -> MetadataChange:
    """The metadata change after dropping ``columns``.

    Dropping a bound vector column drops its binding (the vectors are gone, so is the function
    that made them). Dropping a bound source column while its vector column stays is refused
    (FAILED_PRECONDITION): new rows could no longer be embedded. Drop both together instead.
    """
    dropped = set(columns)
    orphaned = [
        b for b in table.bindings if b.source_column in dropped and b.vector_column not in dropped
    ]
    if orphaned:
        pairs = [f"{b.source_column!r} -> {b.vector_column!r}" for b in orphaned]
        raise FailedPrecondition(
            f"column(s) {sorted(b.source_column for b in orphaned)} of table {table.name!r} "
            f"are the source of embedding binding(s) {', '.join(pairs)}: drop the vector "
            "column in the same call to remove the binding too"
        )
    kept = [b for b in table.bindings if b.vector_column not in dropped]
    if len(kept) == len(table.bindings):
        return MetadataChange()
    return _bindings_metadata(table.schema, kept)


class SchemaMaintenanceCore:
    """GatewayCore's schema evolution and maintenance (mixed into it)."""

    store: StoreClient
    descriptors: DescriptorCache

    if TYPE_CHECKING:

        async def _described(
            self, name: str, version: int, attempt: Callable[[Descriptor], Awaitable[Any]]
        ) -> Any: ...  # GatewayCore's

    async def _schema_change(
        self, name: str, attempt: Callable[[Descriptor], Awaitable[WriteResult]]
    ) -> WriteResult:
        """Run a schema change built from the table's descriptor; the descriptor goes after,
        whatever happened (the store may have committed before failing)."""
        try:
            result: WriteResult = await self._described(name, 0, attempt)
            return result
        finally:
            self.descriptors.forget(name)

    async def add_columns(self, new: NewColumns) -> WriteResult:
        """Add computed or all-null columns (bindings are unaffected)."""
        if bool(new.expressions) == bool(new.arrow_schema):
            raise InvalidArgument(
                "add_columns needs new columns: a dict of name -> SQL expression, or an Arrow "
                "schema of all-null columns, not both"
            )

        async def attempt(table: Descriptor) -> WriteResult:
            return await self.store.add_columns(new, table.fingerprint)

        return await self._schema_change(new.table, attempt)

    async def alter_columns(self, name: str, changes: list[ColumnChange]) -> WriteResult:
        """Alter columns; renamed bound columns are renamed in their bindings in the same write."""
        if not changes:
            raise InvalidArgument("alter_columns needs at least one alteration")

        async def attempt(table: Descriptor) -> WriteResult:
            _, metadata = renamed_bindings(table, changes)
            return await self.store.alter_columns(name, changes, metadata, table.fingerprint)

        return await self._schema_change(name, attempt)

    async def drop_columns(self, name: str, columns: list[str]) -> WriteResult:
        """Drop columns; see :func:`remaining_bindings` for bound ones."""
        if not columns:
            raise InvalidArgument("drop_columns needs at least one column")

        async def attempt(table: Descriptor) -> WriteResult:
            metadata = remaining_bindings(table, columns)
            return await self.store.drop_columns(name, columns, metadata, table.fingerprint)

        return await self._schema_change(name, attempt)

    async def optimize(self, optimize: Optimize) -> OptimizeResult:
        """Compact, update indexes and clean up now; a tagged version old enough to go refuses
        it before anything is done, as in LanceDB."""
        older_than = optimize.cleanup_older_than_s
        if older_than is not None and older_than < 0:
            raise InvalidArgument(f"cleanup_older_than must not be negative, got {older_than}")
        return await self.store.optimize(optimize)

    async def compact_files(self, compaction: Compaction) -> CompactionResult:
        return await self.store.compact_files(compaction)

    async def cleanup_old_versions(self, cleanup: Cleanup) -> CleanupResult:
        """Remove old versions; a tagged one old enough to go refuses it, as in LanceDB."""
        if cleanup.older_than_s is not None and cleanup.older_than_s < 0:
            raise InvalidArgument(f"older_than must not be negative, got {cleanup.older_than_s}")
        return await self.store.cleanup_old_versions(cleanup)

    async def create_tag(self, name: str, tag: str, version: int) -> TagInfo:
        return await self.store.create_tag(name, tag, version)

    async def update_tag(self, name: str, tag: str, version: int) -> TagInfo:
        return await self.store.update_tag(name, tag, version)

    async def delete_tag(self, name: str, tag: str) -> None:
        await self.store.delete_tag(name, tag)

    async def list_tags(self, name: str) -> list[TagInfo]:
        return await self.store.list_tags(name)

    async def table_stats(self, name: str) -> TableStatistics:
        return await self.store.table_stats(name)
