"""The store's core: a catalog of Lance datasets under one root URI. Knows nothing of gRPC."""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import lance
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from embedsearch.errors import (
    InvalidArgument,
    InvalidSchema,
    TableAlreadyExists,
    TableNotFound,
)
from embedsearch.schema import conform, is_vector

log = logging.getLogger("store_service")

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
SUFFIX = ".lance"  # LanceDB's layout: <root>/<name>.lance, so either can open the other's tables


def check_name(name: str) -> str:
    """Validate a table name: letters, digits, '_', '-', '.', at most 128, no '..'."""
    if not _NAME.fullmatch(name or "") or ".." in name:
        raise InvalidArgument(
            f"invalid table name {name!r}: use 1-128 letters, digits, '_', '-' or '.', "
            "starting with a letter, digit or '_', and no '..'"
        )
    return name


@dataclass
class IndexInfo:
    """An index and how much of the table it covers."""

    name: str
    columns: list[str]
    index_type: str
    status: str = "ready"
    num_indexed_rows: int = 0
    num_unindexed_rows: int = 0


@dataclass
class TableInfo:
    """A table's shape at one version."""

    name: str
    schema: pa.Schema
    version: int
    num_rows: int
    indexes: list[IndexInfo] = field(default_factory=list)


@dataclass
class WriteResult:
    """What a write committed."""

    version: int
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_deleted: int = 0


@dataclass
class SearchParams:
    """A nearest-neighbour query. Zero values mean "the default"."""

    vector_column: str
    vector: np.ndarray
    k: int = 10
    metric: str | None = None
    filter: str = ""
    postfilter: bool = False
    columns: list[str] = field(default_factory=list)
    nprobes: int = 0
    refine_factor: int = 0
    ef: int = 0
    distance_lower_bound: float | None = None
    distance_upper_bound: float | None = None
    offset: int = 0
    with_row_id: bool = False
    version: int = 0
    bypass_vector_index: bool = False


_RUST_LOCATION = re.compile(r",?\s*/\S+\.rs:\d+:\d+")


def _user_error(what: str, exc: Exception) -> InvalidArgument:
    """A Lance error caused by the request, without the Rust source location it carries."""
    return InvalidArgument(f"{what}: {_RUST_LOCATION.sub('', str(exc))}")


class TableCatalog:
    """Lance tables under ``root``: one shared, immutable handle per table, refreshed when a newer
    version is committed (by this process or another sharing the root).

    Every method blocks; the servicer runs them in worker threads.
    """

    def __init__(self, root: str, storage_options: dict[str, str] | None = None) -> None:
        self.root = root.rstrip("/")
        self.storage_options = storage_options or {}
        self._fs, self._fs_root = pafs.FileSystem.from_uri(self._absolute(self.root))
        self._fs.create_dir(self._fs_root, recursive=True)
        self._handles: dict[str, lance.LanceDataset] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _absolute(root: str) -> str:
        if "://" in root:
            return root
        import os

        return os.path.abspath(root)

    def uri(self, name: str) -> str:
        return f"{self._absolute(self.root)}/{check_name(name)}{SUFFIX}"

    def _exists(self, name: str) -> bool:
        info = self._fs.get_file_info(f"{self._fs_root}/{name}{SUFFIX}")
        return info.type == pafs.FileType.Directory

    def dataset(self, name: str, version: int = 0) -> lance.LanceDataset:
        """A read handle at ``version`` (0: the latest committed version)."""
        uri = self.uri(name)
        handle = self._handles.get(name)
        if handle is None:
            try:
                handle = lance.dataset(uri, storage_options=self.storage_options)
            except (ValueError, OSError) as exc:
                if not self._exists(name):
                    raise TableNotFound(f"table {name!r} does not exist") from None
                raise exc
            self._handles[name] = handle
        elif handle.latest_version != handle.version:
            handle = handle.checkout_version(handle.latest_version)
            self._handles[name] = handle
        if version and version != handle.version:
            try:
                return handle.checkout_version(version)
            except (ValueError, OSError) as exc:
                raise InvalidArgument(f"table {name!r} has no version {version}: {exc}") from exc
        return handle

    def _committed(self, name: str, dataset: lance.LanceDataset) -> int:
        self._handles[name] = dataset
        return dataset.version

    # -- tables ------------------------------------------------------------------------------

    def create_table(
        self, name: str, schema: pa.Schema, mode: str = "create", rows: pa.Table | None = None
    ) -> TableInfo:
        """Create a table; ``mode`` is create, overwrite or exist_ok."""
        check_name(name)
        _check_schema(schema)
        data = conform(rows, schema) if rows is not None else schema.empty_table()
        with self._lock:
            if self._exists(name):
                if mode == "create":
                    raise TableAlreadyExists(f"table {name!r} already exists")
                if mode == "exist_ok":
                    existing = self.dataset(name)
                    if existing.schema.names != schema.names:
                        raise InvalidSchema(
                            f"table {name!r} exists with columns {existing.schema.names}, "
                            f"not {schema.names}"
                        )
                    return self.describe(name)
            dataset = lance.write_dataset(
                data,
                self.uri(name),
                schema=schema,
                mode="overwrite" if mode == "overwrite" else "create",
                storage_options=self.storage_options,
            )
            self._committed(name, dataset)
        return self.describe(name)

    def describe(self, name: str, version: int = 0) -> TableInfo:
        dataset = self.dataset(name, version)
        return TableInfo(
            name=name,
            schema=dataset.schema,
            version=dataset.version,
            num_rows=dataset.count_rows(),
            indexes=self._indexes(dataset),
        )

    def list_tables(self, start_after: str = "", limit: int = 0) -> list[str]:
        selector = pafs.FileSelector(self._fs_root, allow_not_found=True)
        names = sorted(
            info.base_name[: -len(SUFFIX)]
            for info in self._fs.get_file_info(selector)
            if info.type == pafs.FileType.Directory and info.base_name.endswith(SUFFIX)
        )
        names = [n for n in names if n > start_after]
        return names[:limit] if limit else names

    def drop_table(self, name: str, ignore_missing: bool = False) -> None:
        check_name(name)
        with self._lock:
            if not self._exists(name):
                if ignore_missing:
                    return
                raise TableNotFound(f"table {name!r} does not exist")
            self._handles.pop(name, None)
            self._fs.delete_dir(f"{self._fs_root}/{name}{SUFFIX}")

    # -- writes ------------------------------------------------------------------------------

    def add(self, name: str, rows: pa.Table) -> WriteResult:
        """Append rows as one commit, after checking them against the schema."""
        current = self.dataset(name)
        if rows.num_rows == 0:
            return WriteResult(version=current.version)
        data = conform(rows, current.schema)
        dataset = lance.write_dataset(
            data, self.uri(name), mode="append", storage_options=self.storage_options
        )
        return WriteResult(version=self._committed(name, dataset), rows_inserted=data.num_rows)

    def merge_insert(
        self,
        name: str,
        on: list[str],
        rows: pa.Table,
        *,
        when_matched_update_all: bool = False,
        when_matched_update_condition: str = "",
        when_not_matched_insert_all: bool = False,
        when_not_matched_by_source_delete: bool = False,
        when_not_matched_by_source_condition: str = "",
    ) -> WriteResult:
        """Upsert ``rows`` on the key columns ``on``, as one commit."""
        current = self.dataset(name)
        if not on:
            raise InvalidArgument("merge_insert needs at least one key column in 'on'")
        missing = [c for c in on if c not in current.schema.names]
        if missing:
            raise InvalidSchema(f"key column(s) {missing} are not in the table")
        data = conform(rows, current.schema)
        dataset = lance.dataset(self.uri(name), storage_options=self.storage_options)
        builder = dataset.merge_insert(on)
        if when_matched_update_all:
            builder = builder.when_matched_update_all(when_matched_update_condition or None)
        if when_not_matched_insert_all:
            builder = builder.when_not_matched_insert_all()
        if when_not_matched_by_source_delete:
            builder = builder.when_not_matched_by_source_delete(
                when_not_matched_by_source_condition or None
            )
        try:
            stats = builder.execute(data)
        except (ValueError, OSError) as exc:
            raise _user_error("merge_insert failed", exc) from exc
        return WriteResult(
            version=self._committed(
                name, lance.dataset(self.uri(name), storage_options=self.storage_options)
            ),
            rows_inserted=stats.get("num_inserted_rows", 0),
            rows_updated=stats.get("num_updated_rows", 0),
            rows_deleted=stats.get("num_deleted_rows", 0),
        )

    def delete(self, name: str, where: str) -> WriteResult:
        """Delete the rows matching ``where``."""
        if not where.strip():
            raise InvalidArgument("delete needs a filter; use 'true' to delete every row")
        before = self.dataset(name)
        count = self.count_rows(name, where)
        dataset = lance.dataset(self.uri(name), storage_options=self.storage_options)
        try:
            dataset.delete(where)
        except (ValueError, OSError) as exc:
            raise _user_error(f"bad filter {where!r}", exc) from exc
        version = self._committed(name, dataset) if count else before.version
        return WriteResult(version=version, rows_deleted=count)

    def update(self, name: str, where: str, updates: dict[str, str]) -> WriteResult:
        """Set columns to SQL expressions on the rows matching ``where`` (all rows if empty)."""
        if not updates:
            raise InvalidArgument("update needs at least one column = expression")
        dataset = lance.dataset(self.uri(name), storage_options=self.storage_options)
        unknown = [c for c in updates if c not in dataset.schema.names]
        if unknown:
            raise InvalidSchema(
                f"unknown column(s) {unknown}; the table has {dataset.schema.names}"
            )
        try:
            stats = dataset.update(updates, where or None)
        except (ValueError, OSError) as exc:
            raise _user_error("update failed", exc) from exc
        return WriteResult(
            version=self._committed(name, dataset), rows_updated=stats["num_rows_updated"]
        )

    # -- reads -------------------------------------------------------------------------------

    def count_rows(self, name: str, where: str = "", version: int = 0) -> int:
        dataset = self.dataset(name, version)
        try:
            return dataset.count_rows(where or None)
        except (ValueError, OSError) as exc:
            raise _user_error(f"bad filter {where!r}", exc) from exc

    def search(self, name: str, params: SearchParams) -> pa.Table:
        """The k nearest rows to ``params.vector``, nearest first, with ``_distance``."""
        dataset = self.dataset(name, params.version)
        column = (
            dataset.schema.field(params.vector_column)
            if (params.vector_column in dataset.schema.names)
            else None
        )
        if column is None or not is_vector(column):
            vectors = [f.name for f in dataset.schema if is_vector(f)]
            raise InvalidArgument(
                f"{params.vector_column!r} is not a vector column of table {name!r}; "
                f"vector columns: {vectors}"
            )
        if params.vector.shape != (column.type.list_size,):
            raise InvalidArgument(
                f"query vector has {params.vector.size} dimensions, "
                f"column {params.vector_column!r} has {column.type.list_size}"
            )
        if not 1 <= params.k <= 10_000:
            raise InvalidArgument(f"k must be between 1 and 10000, got {params.k}")
        unknown = [c for c in params.columns if c not in dataset.schema.names]
        if unknown:
            raise InvalidArgument(f"unknown column(s) {unknown} in select")
        nearest: dict[str, Any] = {
            "column": params.vector_column,
            "q": params.vector,
            "k": params.k + params.offset,
            "use_index": not params.bypass_vector_index,
        }
        if params.metric:
            nearest["metric"] = params.metric
        if params.nprobes:
            nearest["nprobes"] = params.nprobes
        if params.refine_factor:
            nearest["refine_factor"] = params.refine_factor
        if params.ef:
            nearest["ef"] = params.ef
        if params.distance_lower_bound is not None or params.distance_upper_bound is not None:
            nearest["distance_range"] = (params.distance_lower_bound, params.distance_upper_bound)
        try:
            result = dataset.to_table(
                columns=params.columns or None,
                filter=params.filter or None,
                nearest=nearest,
                prefilter=not params.postfilter,
                with_row_id=params.with_row_id,
            )
        except (ValueError, OSError) as exc:
            what = (
                f"search with filter {params.filter!r} failed" if params.filter else "search failed"
            )
            raise _user_error(what, exc) from exc
        return result.slice(params.offset) if params.offset else result

    def list_versions(self, name: str) -> list[dict[str, Any]]:
        return self.dataset(name).versions()

    # -- indexes -----------------------------------------------------------------------------

    def _indexes(self, dataset: lance.LanceDataset) -> list[IndexInfo]:
        infos = []
        for desc in dataset.describe_indices():
            infos.append(
                IndexInfo(
                    name=desc.name,
                    columns=list(desc.field_names),
                    index_type=str(desc.index_type),
                    num_indexed_rows=int(getattr(desc, "num_rows_indexed", 0) or 0),
                )
            )
        return infos

    def list_indexes(self, name: str) -> list[IndexInfo]:
        return self._indexes(self.dataset(name))


def _check_schema(schema: pa.Schema) -> None:
    if not schema.names:
        raise InvalidSchema("a table needs at least one column")
    if len(set(schema.names)) != len(schema.names):
        raise InvalidSchema(f"duplicate column names in {schema.names}")
