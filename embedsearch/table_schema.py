"""Schema evolution, maintenance, tags and statistics of a table, with LanceDB's names."""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from embedsearch.contract.errors import InvalidArgument, NotFound
from embedsearch.contract.wire import schema_to_ipc
from embedsearch.v1 import common_pb2, gateway_pb2

if TYPE_CHECKING:
    from embedsearch.db import Connection

# Keys of an alter_columns dict (LanceDB's).
ALTERATION_KEYS = frozenset({"path", "rename", "nullable", "data_type"})
# Keyword arguments of compact_files (Lance's, those the service takes).
COMPACTION_OPTIONS = tuple(f.name for f in common_pb2.CompactionOptions.DESCRIPTOR.fields)


@dataclass(frozen=True)
class AddColumnsResult:
    """``table.add_columns``: the version it committed."""

    version: int


@dataclass(frozen=True)
class AlterColumnsResult:
    """``table.alter_columns``: the version it committed."""

    version: int


@dataclass(frozen=True)
class DropColumnsResult:
    """``table.drop_columns``: the version it committed."""

    version: int


@dataclass(frozen=True)
class CompactionMetrics:
    """``table.compact_files``: what compaction did (Lance's CompactionMetrics)."""

    fragments_removed: int
    fragments_added: int
    files_removed: int
    files_added: int


@dataclass(frozen=True)
class CleanupStats:
    """``table.cleanup_old_versions``: what was removed (Lance's CleanupStats)."""

    bytes_removed: int
    old_versions: int


def _seconds(age: datetime.timedelta | None, what: str) -> float | None:
    if age is None:
        return None
    if not isinstance(age, datetime.timedelta):
        raise InvalidArgument(f"{what} must be a datetime.timedelta, got {type(age).__name__}")
    if age < datetime.timedelta(0):
        raise InvalidArgument(f"{what} must not be negative, got {age}")
    return age.total_seconds()


def _alteration_to_pb(alteration: Any) -> common_pb2.ColumnAlteration:
    if not isinstance(alteration, dict) or "path" not in alteration:
        raise InvalidArgument(
            f"each alteration is a dict with 'path' and any of 'rename', 'nullable', "
            f"'data_type'; got {alteration!r}"
        )
    unknown = sorted(set(alteration) - ALTERATION_KEYS)
    if unknown:
        raise InvalidArgument(f"unknown alteration key(s) {unknown}: use {sorted(ALTERATION_KEYS)}")
    change = common_pb2.ColumnAlteration(path=str(alteration["path"]))
    if alteration.get("rename") is not None:
        change.rename = str(alteration["rename"])
    if alteration.get("nullable") is not None:
        change.nullable = bool(alteration["nullable"])
    data_type = alteration.get("data_type")
    if data_type is not None:
        if not isinstance(data_type, pa.DataType):
            raise InvalidArgument(f"data_type must be a pyarrow.DataType, got {data_type!r}")
        change.data_type = schema_to_ipc(pa.schema([pa.field("type", data_type)]))
    return change


def _new_columns(table: str, transforms: Any) -> gateway_pb2.AddColumnsRequest:
    request = gateway_pb2.AddColumnsRequest(table=table)
    if isinstance(transforms, dict):
        for name, expression in transforms.items():
            if not isinstance(expression, str):
                raise InvalidArgument(
                    f"new column {name!r}: give an SQL expression string, not "
                    f"{type(expression).__name__}"
                )
            request.expressions.add(name=str(name), expression=expression)
        return request
    if isinstance(transforms, pa.Field):
        transforms = [transforms]
    if isinstance(transforms, list) and all(isinstance(f, pa.Field) for f in transforms):
        transforms = pa.schema(transforms)
    if not isinstance(transforms, pa.Schema):
        raise InvalidArgument(
            "add_columns takes a dict of column name -> SQL expression, or a pyarrow Field, "
            f"list of Fields or Schema of new all-null columns; got {type(transforms).__name__}"
        )
    request.arrow_schema = schema_to_ipc(transforms)
    return request


class Tags:
    """A table's tags, as LanceDB's ``table.tags``: names for versions, kept by cleanup."""

    def __init__(self, connection: Connection, table: str) -> None:
        self._conn = connection
        self._table = table

    def list(self) -> dict[str, dict[str, int]]:
        """Tags by name, each ``{"version": …, "manifest_size": …}``."""
        reply = self._conn.call("ListTags", gateway_pb2.ListTagsRequest(table=self._table))
        return {t.tag: {"version": t.version, "manifest_size": t.manifest_size} for t in reply.tags}

    def get_version(self, tag: str) -> int:
        """The version ``tag`` names; NotFound if there is no such tag."""
        found = self.list().get(tag)
        if found is None:
            raise NotFound(f"table {self._table!r} has no tag {tag!r}")
        return found["version"]

    def create(self, tag: str, version: int) -> None:
        """Name ``version`` ``tag`` (unique per table)."""
        request = gateway_pb2.CreateTagRequest(table=self._table, tag=tag, version=version)
        self._conn.call("CreateTag", request)

    def update(self, tag: str, version: int) -> None:
        """Point the existing ``tag`` at ``version``."""
        request = gateway_pb2.UpdateTagRequest(table=self._table, tag=tag, version=version)
        self._conn.call("UpdateTag", request)

    def delete(self, tag: str) -> None:
        """Remove ``tag`` (its version stays until a cleanup removes it)."""
        self._conn.call("DeleteTag", gateway_pb2.DeleteTagRequest(table=self._table, tag=tag))


class SchemaMaintenance:
    """Schema evolution and maintenance of :class:`embedsearch.table.Table` (mixed into it).

    Embedding bindings follow their columns: renaming a bound source or vector column renames
    it in the table's ``embedding_functions`` metadata, in the same write. Dropping a bound
    vector column drops its binding; dropping a bound source column while its vector column
    stays is refused with FailedPrecondition (new rows could not be embedded): drop both in one
    call. Changing the type of a bound column is refused likewise. (LanceDB 0.40 leaves the
    metadata as it was, which breaks later adds.)
    """

    name: str
    _conn: Connection
    _info: gateway_pb2.TableInfo

    if TYPE_CHECKING:  # Table's

        def _writable(self) -> None: ...

        def _write(self, method: str, request: Any, timeout: float | None = -1.0) -> Any: ...

        def _refresh(self) -> None: ...

    def _schema_write(self, method: str, request: Any) -> int:
        """Run a schema change and take the new schema and bindings."""
        self._writable()
        try:
            version = self._write(method, request).version
        finally:
            self._refresh()
        return int(version)

    @property
    def uri(self) -> str:
        """Where the table's data lives, as the store knows it (a path in embedded mode)."""
        return self._info.uri

    @property
    def tags(self) -> Tags:
        """Tag management: ``create``, ``list``, ``get_version``, ``update``, ``delete``."""
        return Tags(self._conn, self.name)

    def add_columns(self, transforms: Any) -> AddColumnsResult:
        """Add columns computed for every row by SQL expressions, or all-null columns.

        >>> table.add_columns({"doubled": "price * 2"})  # doctest: +SKIP
        AddColumnsResult(version=2)
        >>> table.add_columns(pa.field("note", pa.string()))  # doctest: +SKIP
        AddColumnsResult(version=3)
        """
        return AddColumnsResult(
            self._schema_write("AddColumns", _new_columns(self.name, transforms))
        )

    def alter_columns(self, *alterations: dict[str, Any]) -> AlterColumnsResult:
        """Rename columns, make them nullable or cast them: dicts with ``path`` and any of
        ``rename``, ``nullable``, ``data_type`` (a pyarrow type), applied in one commit.

        >>> table.alter_columns({"path": "text", "rename": "body"})  # doctest: +SKIP
        AlterColumnsResult(version=4)
        """
        request = gateway_pb2.AlterColumnsRequest(
            table=self.name, alterations=[_alteration_to_pb(a) for a in alterations]
        )
        return AlterColumnsResult(self._schema_write("AlterColumns", request))

    def drop_columns(self, columns: Iterable[str]) -> DropColumnsResult:
        """Remove columns; see the class docstring for columns an embedding function uses."""
        names = [columns] if isinstance(columns, str) else [str(c) for c in columns]
        request = gateway_pb2.DropColumnsRequest(table=self.name, columns=names)
        return DropColumnsResult(self._schema_write("DropColumns", request))

    def optimize(
        self,
        *,
        cleanup_older_than: datetime.timedelta | None = None,
        delete_unverified: bool = False,
        retrain: bool = False,
    ) -> None:
        """Compact small files, add new rows to indexes, and remove versions older than
        ``cleanup_older_than`` (default: the store's retention, 7 days). As in LanceDB, a
        tagged version that old refuses the call (FailedPrecondition) before anything is done.
        ``retrain`` is accepted and ignored, as in LanceDB."""
        self._writable()
        request = gateway_pb2.OptimizeRequest(table=self.name, delete_unverified=delete_unverified)
        seconds = _seconds(cleanup_older_than, "cleanup_older_than")
        if seconds is not None:
            request.cleanup_older_than_s = seconds
        self._write("Optimize", request)

    def compact_files(self, *args: Any, **kwargs: Any) -> CompactionMetrics:
        """Compact small fragments now; keyword arguments are Lance's ``compact_files`` options
        (``target_rows_per_fragment``, ``max_rows_per_group``, ``max_bytes_per_file``,
        ``materialize_deletions``, ``materialize_deletions_threshold``, ``num_threads``,
        ``batch_size``)."""
        self._writable()
        if args:
            raise InvalidArgument("compact_files takes keyword arguments only")
        unknown = sorted(set(kwargs) - set(COMPACTION_OPTIONS))
        if unknown:
            raise InvalidArgument(
                f"unknown compact_files option(s) {unknown}: use {list(COMPACTION_OPTIONS)}"
            )
        options = {k: v for k, v in kwargs.items() if v is not None}
        try:
            pb_options = common_pb2.CompactionOptions(**options)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"compact_files options: {exc}") from None
        request = gateway_pb2.CompactFilesRequest(table=self.name, options=pb_options)
        reply = self._write("CompactFiles", request)
        return CompactionMetrics(
            fragments_removed=reply.fragments_removed,
            fragments_added=reply.fragments_added,
            files_removed=reply.files_removed,
            files_added=reply.files_added,
        )

    def cleanup_old_versions(
        self,
        older_than: datetime.timedelta | None = None,
        *,
        delete_unverified: bool = False,
    ) -> CleanupStats:
        """Remove versions older than ``older_than`` (default 14 days) and the files only they
        use. As in LanceDB, a tagged version that old refuses the call (FailedPrecondition):
        delete its tag first. ``delete_unverified`` vouches that no other process works on the
        table, so recent unreferenced files go too."""
        request = gateway_pb2.CleanupOldVersionsRequest(
            table=self.name, delete_unverified=delete_unverified
        )
        seconds = _seconds(older_than, "older_than")
        if seconds is not None:
            request.older_than_s = seconds
        reply = self._conn.call("CleanupOldVersions", request)
        return CleanupStats(bytes_removed=reply.bytes_removed, old_versions=reply.old_versions)

    def stats(self) -> dict[str, Any]:
        """LanceDB's TableStatistics: total_bytes, num_rows, num_indices and fragment_stats
        (num_fragments, num_small_fragments, lengths min/max/mean/p25/p50/p75/p99)."""
        reply = self._conn.call("TableStats", gateway_pb2.TableStatsRequest(table=self.name))
        lengths = reply.lengths
        return {
            "total_bytes": reply.total_bytes,
            "num_rows": reply.num_rows,
            "num_indices": reply.num_indices,
            "fragment_stats": {
                "num_fragments": reply.num_fragments,
                "num_small_fragments": reply.num_small_fragments,
                "lengths": {
                    name: getattr(lengths, name)
                    for name in ("min", "max", "mean", "p25", "p50", "p75", "p99")
                },
            },
        }
