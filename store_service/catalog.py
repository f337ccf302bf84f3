"""The store's core: a catalog of Lance datasets under one root URI. Knows nothing of gRPC."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, NoReturn, TypeVar

import lance
import lance.fragment
import numpy as np
import pyarrow as pa

from embedsearch.contract.errors import (
    AlreadyExists,
    CommitConflict,
    EmbedsearchError,
    FailedPrecondition,
    InvalidArgument,
    InvalidSchema,
    NotFound,
    SchemaChanged,
    TableAlreadyExists,
    TableNotFound,
)
from embedsearch.contract.schema import conform, is_multivector, is_vector, vector_dims
from embedsearch.contract.text import brief
from embedsearch.contract.values import IndexCalibration, ReadParams, TakeParams
from store_service import calibration, exact, indexes, partitions
from store_service.guards import TableGate, VersionHolds
from store_service.indexes import IndexBuilder, IndexInfo, IndexSpec, IndexStats
from store_service.rows import RowCache
from store_service.settings import StoreSettings
from store_service.storage import Root

log = logging.getLogger("store_service")

T = TypeVar("T")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
_MAX_K = 10_000
_MAX_COLUMN_NAME = 256
# Fingerprints remembered per (table, version) before the memo starts over.
_FINGERPRINTS = 4096
# The most bytes of rows in one message of a Read stream (under the 64 MiB message limit).
READ_BATCH_BYTES = 4 * 1024 * 1024
TAKE_CHUNK = 8192  # rows a take or a streamed exact search reads per Lance call
# Vector types the matrices hold value for value (float64 is rounded to float32 there).
_MATRIX_TYPES = (pa.float16(), pa.float32())

__all__ = [
    "IndexInfo",
    "SearchParams",
    "TableCatalog",
    "TableInfo",
    "TextSearchParams",
]


def check_name(name: str, what: str = "table") -> str:
    """Validate a table (or tag) name: letters, digits, '_', '-', '.', at most 128, no '..'."""
    if not _NAME.fullmatch(name or "") or ".." in name:
        raise InvalidArgument(
            f"invalid {what} name {brief(name)}: use 1-128 letters, digits, '_', '-' or '.', "
            "starting with a letter, digit or '_', and no '..'"
        )
    return name


@dataclass
class TableInfo:
    """A table's shape at one version."""

    name: str
    schema: pa.Schema
    version: int
    num_rows: int
    indexes: list[IndexInfo] = field(default_factory=list)
    fingerprint: str = ""
    uri: str = ""


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
    tag: str = ""
    schema_fingerprint: str = ""
    projections: dict[str, str] = field(default_factory=dict)
    target_recall: float | None = None
    # Set by target_recall's calibrated level, never by a caller: the nprobes partitions are
    # scanned from memory (store_service.partitions).
    memory_scan: bool = False


class VectorIndex(NamedTuple):
    """A vector column's index: its name, and the metric it was built for."""

    name: str
    metric: str


@dataclass
class TextSearchParams:
    """A full-text query over columns with an INVERTED index."""

    query: str
    search_columns: list[str] = field(default_factory=list)
    k: int = 10
    filter: str = ""
    columns: list[str] = field(default_factory=list)
    offset: int = 0
    with_row_id: bool = False
    version: int = 0
    tag: str = ""
    schema_fingerprint: str = ""
    projections: dict[str, str] = field(default_factory=dict)


def schema_fingerprint(schema: pa.Schema, text_indexed: set[str]) -> str:
    """A stable hash of what a caller's description of a table holds: each field's name, type,
    nullability and metadata, the schema's metadata (embedding bindings live there), and the
    columns with a full-text index. Data-only writes leave it as it is."""

    def metadata(items: dict[bytes, bytes] | None) -> list[tuple[str, str]]:
        return sorted((key.hex(), value.hex()) for key, value in (items or {}).items())

    fields = [[f.name, str(f.type), f.nullable, metadata(f.metadata)] for f in schema]
    canonical = json.dumps([fields, metadata(schema.metadata), sorted(text_indexed)])
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


def text_indexed_columns(dataset: lance.LanceDataset) -> set[str]:
    """Columns with a full-text (INVERTED) index at the dataset's version."""
    return {
        column
        for desc in dataset.describe_indices()
        if str(desc.index_type).upper() in ("INVERTED", "FTS")
        for column in desc.field_names
    }


_RUST_LOCATION = re.compile(r",?\s*/\S+\.rs:\d+:\d+")
_CONFLICT = re.compile(r"commit conflict|too many concurrent writers", re.IGNORECASE)
# Lance's error kinds that blame the request (a schema Lance cannot store, a filter that does
# not type-check or fails on the data), not the store.
_REQUEST_FAULT = re.compile(
    r"^(LanceError\((Schema|InvalidInput|NotSupported)\)|Invalid user input|Schema error)"
)
# A query that failed while running: the filter's fault (a cast the data refuses) unless a file
# was missing, which is told apart first.
_EXECUTION_FAULT = re.compile(r"^Query Execution error")
# How Lance and the OS say a file or directory is missing.
_NOT_FOUND = re.compile(r"Not found: |was not found|No such file or directory|\(os error 2\)")
_MESSAGE_CHARS = 300
_VERSION_LISTINGS = 3


def lance_message(exc: Exception) -> str:
    """A Lance error's message without the Rust source locations it carries."""
    return _RUST_LOCATION.sub("", str(exc))


def is_conflict(exc: Exception) -> bool:
    """Whether a Lance error is a lost commit race, worth retrying on the new version."""
    return isinstance(exc, OSError) and bool(_CONFLICT.search(str(exc)))


class TableCatalog:
    """Lance tables under one root: one shared handle per table, refreshed when a newer
    version is committed (by this process or another sharing the root).

    Shared handles are never written through: a write opens a private handle on the same
    session (so caches stay warm), commits, and publishes it as the new shared handle. Readers
    holding the old one keep a consistent version. Every method blocks; the servicer runs
    them in worker threads.
    """

    def __init__(
        self,
        root: str,
        storage_options: dict[str, str] | None = None,
        settings: StoreSettings | None = None,
    ) -> None:
        self.settings = settings or StoreSettings(data_root=root)
        self.root = Root(root, storage_options)
        self.root.purge()  # tables dropped while a store was stopping
        self.storage_options = self.root.storage_options
        # One session for every handle of every table: warm caches, one memory bound.
        self.session = lance.Session(
            index_cache_size_bytes=self.settings.index_cache_bytes,
            metadata_cache_size_bytes=self.settings.metadata_cache_bytes,
        )
        self._handles: dict[str, lance.LanceDataset] = {}
        self._gates: dict[str, TableGate] = {}
        self._gates_lock = threading.Lock()
        # Held by cleanup, and by version listings (which read every manifest): neither
        # sees the other's files vanish. Reentrant: cleanup lists versions.
        self._cleaning = threading.RLock()
        self.holds = VersionHolds()
        self.limits = self.settings.expression_limits()
        self._lock = threading.Lock()
        # Per (table, version): its vector columns with an index, and that index.
        self._vector_indexed: dict[tuple[str, int], dict[str, VectorIndex]] = {}
        self._fingerprints: dict[tuple[str, int], str] = {}
        self.conflicts: Counter[str] = Counter()
        self.exact = exact.ExactCache(self.settings.exact_cache_max_bytes)
        self.grouped = partitions.GroupedCache(self.exact)
        self.rows = RowCache(self.settings.row_cache_max_bytes)
        self.builder = IndexBuilder(
            self.settings.index_build_threads, self.commit, on_built=self._built
        )
        # Calibrations read from their files, by (table, index); None: the index has none.
        self._calibrations: dict[tuple[str, str], IndexCalibration | None] = {}
        # And the partitions their memory-scan levels probe; None: they have none.
        self._centroids: dict[tuple[str, str], partitions.Centroids | None] = {}
        self.served = calibration.ServedQueries(self.settings.calibration_served_queries)
        # IVF partitions of each vector index, by (dataset uri, index), with the segments they
        # were read from (a segment never changes; optimize replaces it).
        self._partition_counts: dict[tuple[str, str], tuple[tuple[str, ...], int]] = {}
        # Set when the server stops: work in the background (calibration) gives up early.
        self.stopping = threading.Event()
        # Told (table, what) after every commit, on the committing thread (maintenance counts).
        self.on_commit: Callable[[str, str], None] | None = None

    def uri(self, name: str) -> str:
        """Where table ``name``'s data lives (a path under the data root, or a URI)."""
        return self.root.table_uri(check_name(name))

    @contextmanager
    def writing(self, name: str, what: str) -> Iterator[None]:
        """Around a write to table ``name``: it passes the table's gate (a drop waits for it,
        and a write after the drop finds no table), and the data root refusing it (full,
        read-only) becomes a typed error; other errors pass unchanged."""
        with self._gate(name).passing(), self.root.refusals(what):
            yield

    def _gate(self, name: str) -> TableGate:
        with self._gates_lock:
            gate = self._gates.get(name)
            if gate is None:
                gate = self._gates[name] = TableGate(name)
            return gate

    @contextmanager
    def holding(self, name: str, version: int = 0) -> Iterator[None]:
        """Keep cleanup off the versions a request on ``name`` reads (``version``, or the
        latest from now on) until the block ends."""

        def floor() -> int:
            handle = self._handles.get(name)
            if handle is None:
                return 0  # not open yet: it may open any version, so hold them all
            return min(handle.version, version) if version else handle.version

        with self.holds.holding(name, floor):
            yield

    def held(self, name: str, version: int, call: Callable[[], T]) -> T:
        """``call()`` holding ``name``'s versions from ``version`` (0: the latest) on."""
        if not name:
            return call()
        with self.holding(name, version):
            return call()

    def lance_error(self, name: str, what: str, exc: Exception) -> Exception:
        """The typed error for a Lance failure of a request on table ``name``: the request's
        own fault (INVALID_ARGUMENT), something missing (NOT_FOUND), or the error itself
        (INTERNAL, logged). Messages lose Rust locations and the data root's path."""
        if isinstance(exc, EmbedsearchError):
            return exc
        text = str(exc)
        message = lance_message(exc)
        for path in (self.root.uri, self.root.uri.lstrip("/")):
            message = message.replace(path, "<data root>")
        if len(message) > _MESSAGE_CHARS:
            message = message[:_MESSAGE_CHARS] + "…"
        if _REQUEST_FAULT.match(text):
            return InvalidArgument(f"{what}: {message}")
        if _NOT_FOUND.search(text):
            if not self.root.exists(name):
                return TableNotFound(f"table {name!r} does not exist", table=name)
            return NotFound(
                f"{what}: a version of table {name!r} it read is no longer stored (removed by "
                "cleanup); retry on the latest version"
            )
        if _EXECUTION_FAULT.match(text) or isinstance(exc, ValueError):
            # Lance's and Arrow's ValueErrors blame the input
            return InvalidArgument(f"{what}: {message}")
        return exc

    def fail(self, name: str, what: str, exc: Exception) -> NoReturn:
        """Raise :meth:`lance_error` for ``exc`` (from inside its ``except`` block)."""
        error = self.lance_error(name, what, exc)
        if error is exc:
            raise exc
        raise error from exc

    def _check_window(
        self, k: int, offset: int, refine_factor: int = 0, ef: int = 0, streamed: bool = False
    ) -> None:
        """Bounds on how many rows a search gathers: Lance allocates for all of them up front,
        and `refine_factor=4294967295` asked it for 687 GB, aborting the process. A streamed
        search has its k bounded by the table's size instead of the search window."""
        window, settings = k + offset, self.settings
        if window > settings.max_search_window and not streamed:
            raise InvalidArgument(
                f"k + offset is {window}, over --max-search-window (STORE_MAX_SEARCH_WINDOW) = "
                f"{settings.max_search_window}: page with a filter instead of a deep offset"
            )
        # Lance gathers (k + offset) x refine_factor candidates, or ef for HNSW. A streamed
        # search's window is the table's size at most: only a refine factor multiplies it.
        refined = window * refine_factor if streamed else window * max(refine_factor, 1)
        candidates = max(refined, ef)
        if candidates > settings.max_search_candidates:
            raise InvalidArgument(
                f"(k + offset) x refine_factor and ef may be at most --max-search-candidates "
                f"(STORE_MAX_SEARCH_CANDIDATES) = {settings.max_search_candidates}, not "
                f"{candidates}"
            )

    def _where(self, sql: str, what: str = "filter") -> str | None:
        """A caller's filter for Lance: None when empty, InvalidArgument when it is not one
        whole expression within the expression limits."""
        return self.limits.check(sql, what) if sql.strip() else None

    def _projection(
        self, schema: pa.Schema, columns: list[str], projections: dict[str, str]
    ) -> list[str] | dict[str, str] | None:
        """Lance's ``columns`` argument: computed columns (each expression checked like a
        filter), else the named columns (each must exist), else None for all of them."""
        if projections:
            for name, sql in projections.items():
                if not name.strip() or not sql.strip():
                    raise InvalidArgument(
                        "a computed column needs a name and an SQL expression: "
                        "select({'double': 'price * 2'})"
                    )
                self.limits.check(sql, f"select expression {name!r}")
            return dict(projections)
        unknown = [c for c in columns if c not in schema.names]
        if unknown:
            raise InvalidArgument(
                f"unknown column(s) {unknown} in select; the table has {schema.names}"
            )
        return list(columns) or None

    # -- handles -----------------------------------------------------------------------------

    def dataset(self, name: str, version: int = 0, tag: str = "") -> lance.LanceDataset:
        """A read handle at ``tag`` or ``version`` (neither: the latest committed version)."""
        handle = self._handles.get(name)
        if handle is None:
            handle = self._open(name)
            self._handles[name] = handle
        else:
            try:
                latest = handle.latest_version
                if latest != handle.version:
                    # checkout_version copies the handle (same session, new snapshot): readers
                    # of the old one are undisturbed, unlike checkout_latest(), which mutates it.
                    handle = self._publish(name, handle.checkout_version(latest))
            except (OSError, ValueError) as exc:  # dropped meanwhile, here or by another store
                self.fail(name, f"opening table {name!r}", exc)
        if tag:
            return self._checkout(name, handle, tag)
        if version and version != handle.version:
            return self._checkout(name, handle, version)
        return handle

    def _open(self, name: str) -> lance.LanceDataset:
        uri = self.uri(name)
        try:
            return lance.dataset(uri, storage_options=self.storage_options, session=self.session)
        except (ValueError, OSError) as exc:
            # No directory, or one without a committed version yet (being created or dropped
            # by another request): no table, as far as this request can tell.
            if _NOT_FOUND.search(str(exc)) or not self.root.exists(name):
                raise TableNotFound(f"table {name!r} does not exist", table=name) from None
            raise

    def _checkout(
        self, name: str, handle: lance.LanceDataset, ref: int | str
    ) -> lance.LanceDataset:
        try:
            return handle.checkout_version(ref)
        except (ValueError, OSError) as exc:
            what = f"tag {ref!r}" if isinstance(ref, str) else f"version {ref}"
            raise NotFound(f"table {name!r} has no {what}: {lance_message(exc)}") from exc

    def _publish(self, name: str, dataset: lance.LanceDataset) -> lance.LanceDataset:
        """Make ``dataset`` the shared handle unless a newer one was published meanwhile."""
        with self._lock:
            current = self._handles.get(name)
            if current is None or dataset.version >= current.version:
                self._handles[name] = dataset
                return dataset
            return current

    def commit(
        self, name: str, what: str, action: Callable[[lance.LanceDataset], T]
    ) -> tuple[T, lance.LanceDataset]:
        """Run a write on a private handle at the latest version, retrying lost commit races.

        Lance already rebases compatible commits (appends, deletes of other rows); what it
        cannot rebase comes back as a conflict, which is retried here on the new version.
        Returns the action's result and the handle after the commit, now the shared one.
        """
        self.dataset(name)  # TableNotFound before anything is tried
        with self.holding(name):
            return self._commit(name, what, action)

    def _commit(
        self, name: str, what: str, action: Callable[[lance.LanceDataset], T]
    ) -> tuple[T, lance.LanceDataset]:
        for attempt in range(self.settings.commit_retries + 1):
            try:
                with self.writing(name, f"{what} on table {name!r}"):
                    private = self._open(name)  # on the shared session: caches stay warm
                    result = action(private)
            except (OSError, ValueError) as exc:
                if not is_conflict(exc):
                    self.fail(name, f"{what} failed", exc)
                self.conflicts[what] += 1
                if attempt == self.settings.commit_retries:
                    raise CommitConflict(
                        f"{what} on table {name!r} lost {attempt + 1} commit races with "
                        f"concurrent writers; retry it: {lance_message(exc)}",
                        table=name,
                    ) from exc
                log.info("%s on %s: commit conflict, retrying (%d)", what, name, attempt + 1)
                time.sleep(min(0.02 * 2**attempt, 1.0) * random.uniform(0.5, 1.5))
                continue
            # An action that moves to another handle (restore) returns it.
            after = result if isinstance(result, lance.LanceDataset) else private
            published = self._publish(name, after)
            if self.on_commit is not None:
                self.on_commit(name, what)
            return result, published
        raise AssertionError("unreachable")

    # -- tables ------------------------------------------------------------------------------

    def create_table(
        self, name: str, schema: pa.Schema, mode: str = "create", rows: pa.Table | None = None
    ) -> TableInfo:
        """Create a table; ``mode`` is create, overwrite or exist_ok."""
        check_name(name)
        _check_schema(schema, self.settings.max_columns)
        data = conform(rows, schema) if rows is not None else schema.empty_table()
        with self._lock:
            if self.root.exists(name):
                if mode == "create":
                    raise TableAlreadyExists(f"table {name!r} already exists", table=name)
                if mode == "exist_ok":
                    existing = self._open(name)
                    if existing.schema.names != schema.names:
                        raise InvalidSchema(
                            f"table {name!r} exists with columns {existing.schema.names}, "
                            f"not {schema.names}"
                        )
                    return self.describe(name)
            try:
                with self.writing(name, f"creating table {name!r}"):
                    dataset = lance.write_dataset(
                        data,
                        self.uri(name),
                        schema=schema,
                        mode="overwrite" if mode == "overwrite" else "create",
                        storage_options=self.storage_options,
                        session=self.session,
                    )
            except OSError as exc:
                if "already exists" in str(exc).lower():  # another store created it first
                    raise TableAlreadyExists(f"table {name!r} already exists", table=name) from exc
                if _REQUEST_FAULT.match(str(exc)):
                    raise InvalidSchema(
                        f"table {name!r} cannot be stored: {lance_message(exc)}"
                    ) from exc
                raise
            self._forget(name)
            self._handles[name] = dataset
        return self.describe(name)

    def describe(self, name: str, version: int = 0, tag: str = "") -> TableInfo:
        dataset = self.dataset(name, version, tag)
        return TableInfo(
            name=name,
            schema=dataset.schema,
            version=dataset.version,
            num_rows=dataset.count_rows(),
            indexes=self._indexes(name, dataset),
            fingerprint=self.fingerprint(name, dataset),
            uri=self.uri(name),
        )

    def fingerprint(self, name: str, dataset: lance.LanceDataset) -> str:
        """:func:`schema_fingerprint` of table ``name`` at ``dataset``'s version, memoized."""
        key = (name, dataset.version)
        found = self._fingerprints.get(key)
        if found is None:
            found = schema_fingerprint(dataset.schema, text_indexed_columns(dataset))
            if len(self._fingerprints) >= _FINGERPRINTS:
                self._fingerprints = {}
            self._fingerprints[key] = found
        return found

    def check_fingerprint(self, name: str, dataset: lance.LanceDataset, expected: str) -> None:
        """Refuse a request built from a description of the table that is no longer true
        (``expected`` empty: the caller did not say, nothing is checked)."""
        if expected and expected != self.fingerprint(name, dataset):
            raise SchemaChanged(
                f"table {name!r}: schema changed since the request was built (another writer "
                "changed its columns, embedding functions or full-text indexes); describe the "
                "table again and retry",
                table=name,
            )

    def list_tables(self, start_after: str = "", limit: int = 0) -> list[str]:
        names = [n for n in self.root.names() if n > start_after]
        return names[:limit] if limit else names

    def drop_table(self, name: str, ignore_missing: bool = False) -> None:
        """Drop a table at once for every caller: its writes (maintenance included) finish
        first and later ones find no table, the name is free as soon as this returns, and
        the files are removed after (a directory is renamed away first, atomically)."""
        check_name(name)
        with self._closed(name):
            if not self.root.exists(name):
                if ignore_missing:
                    return
                raise TableNotFound(f"table {name!r} does not exist", table=name)
            self._forget(name)
            with self.root.refusals(f"dropping table {name!r}"):
                discarded = self.root.discard(name)
        if discarded:
            self.root.purge(discarded)

    def rename_table(self, name: str, new_name: str) -> TableInfo:
        """Rename a table at once for every caller, as :meth:`drop_table` drops one: its
        writes finish first, later ones under the old name find no table."""
        check_name(name)
        check_name(new_name)
        with self._closed(name):
            if not self.root.exists(name):
                raise TableNotFound(f"table {name!r} does not exist", table=name)
            if self.root.exists(new_name):
                raise TableAlreadyExists(
                    f"table {new_name!r} already exists; drop it first or pick another name",
                    table=new_name,
                )
            self._forget(name)
            self._forget(new_name)
            with self.root.refusals(f"renaming table {name!r}"):
                self.root.rename(name, new_name)
        return self.describe(new_name)

    @contextmanager
    def _closed(self, name: str) -> Iterator[None]:
        """Run the body under the catalog lock with table ``name`` closed to writers (those
        under way finish first, later ones find it gone); its gate is forgotten after."""
        gate = self._gate(name)
        try:
            if self.root.exists(name):
                gate.close()
            with self._lock:
                yield
        finally:
            with self._gates_lock:
                if self._gates.get(name) is gate:
                    del self._gates[name]

    def _forget(self, name: str) -> None:
        """Drop what this process remembers of a table (a new one may reuse its versions)."""
        self._handles.pop(name, None)
        self._vector_indexed = {k: v for k, v in self._vector_indexed.items() if k[0] != name}
        self._fingerprints = {k: v for k, v in self._fingerprints.items() if k[0] != name}
        self.exact.forget(name)
        self.grouped.forget(name)
        self.rows.forget(name)
        self.builder.forget(name)
        self._calibrations = {k: v for k, v in self._calibrations.items() if k[0] != name}
        self._centroids = {k: v for k, v in self._centroids.items() if k[0] != name}
        self.served.forget(name)

    # -- writes ------------------------------------------------------------------------------

    def add(
        self, name: str, rows: pa.Table, fingerprint: str = "", overwrite: bool = False
    ) -> WriteResult:
        """Append rows as one commit, after checking them against the schema (and the
        caller's :meth:`fingerprint` of it, if given); with ``overwrite``, the rows replace
        the table's (its schema and metadata stay, as LanceDB's ``add(mode="overwrite")``)."""
        current = self.dataset(name)
        self.check_fingerprint(name, current, fingerprint)
        if rows.num_rows == 0 and not overwrite:
            return WriteResult(version=current.version)
        data = conform(rows, current.schema)
        if overwrite:
            _, after = self.commit(
                name,
                "overwrite",
                lambda ds: lance.write_dataset(
                    data,
                    ds,
                    schema=ds.schema,
                    mode="overwrite",
                    storage_options=self.storage_options,
                ),
            )
        else:
            _, after = self.commit(name, "add", lambda ds: ds.insert(data))
        return WriteResult(version=after.version, rows_inserted=data.num_rows)

    def begin_append(
        self, name: str, fingerprint: str = "", overwrite: bool = False
    ) -> StagedAppend:
        """Start an append (or, with ``overwrite``, a replacement of every row) that spans
        many messages and commits once (AddStream)."""
        current = self.dataset(name)
        self.check_fingerprint(name, current, fingerprint)
        return StagedAppend(self, name, current, overwrite)

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
        fingerprint: str = "",
    ) -> WriteResult:
        """Upsert ``rows`` on the key columns ``on``, as one commit."""
        current = self.dataset(name)
        self.check_fingerprint(name, current, fingerprint)
        if not on:
            raise InvalidArgument("merge_insert needs at least one key column in 'on'")
        missing = [c for c in on if c not in current.schema.names]
        if missing:
            raise InvalidSchema(f"key column(s) {missing} are not in the table")
        update_if = self._condition(
            when_matched_update_condition, when_matched_update_all, "when_matched_update_all"
        )
        delete_if = self._condition(
            when_not_matched_by_source_condition,
            when_not_matched_by_source_delete,
            "when_not_matched_by_source_delete",
        )
        data = conform(rows, current.schema)

        def merge(dataset: lance.LanceDataset) -> dict[str, int]:
            builder = dataset.merge_insert(on)
            if when_matched_update_all:
                builder = builder.when_matched_update_all(update_if)
            if when_not_matched_insert_all:
                builder = builder.when_not_matched_insert_all()
            if when_not_matched_by_source_delete:
                builder = builder.when_not_matched_by_source_delete(delete_if)
            return builder.execute(data)

        stats, after = self.commit(name, "merge_insert", merge)
        return WriteResult(
            version=after.version,
            rows_inserted=stats.get("num_inserted_rows", 0),
            rows_updated=stats.get("num_updated_rows", 0),
            rows_deleted=stats.get("num_deleted_rows", 0),
        )

    def _condition(self, sql: str, clause_on: bool, clause: str) -> str | None:
        """A merge_insert clause's condition, checked like every filter; a condition whose
        clause is off would be ignored, so it is refused instead."""
        if sql.strip() and not clause_on:
            raise InvalidArgument(f"a condition for {clause} needs {clause} set")
        return self._where(sql, f"condition of {clause}")

    def delete(self, name: str, where: str) -> WriteResult:
        """Delete the rows matching ``where``."""
        if not where.strip():
            raise InvalidArgument("delete needs a filter; use 'true' to delete every row")
        before = self.dataset(name)
        count = self.count_rows(name, where)
        if not count:
            return WriteResult(version=before.version)
        _, after = self.commit(name, "delete", lambda ds: ds.delete(where))
        return WriteResult(version=after.version, rows_deleted=count)

    def update(self, name: str, where: str, updates: dict[str, str]) -> WriteResult:
        """Set columns to SQL expressions on the rows matching ``where`` (all rows if empty)."""
        if not updates:
            raise InvalidArgument("update needs at least one column = expression")
        current = self.dataset(name)
        unknown = [c for c in updates if c not in current.schema.names]
        if unknown:
            raise InvalidSchema(
                f"unknown column(s) {unknown}; the table has {current.schema.names}"
            )
        for column, expression in updates.items():
            self.limits.check(expression, f"expression for column {column!r}")
        where_sql = self._where(where)
        stats, after = self.commit(name, "update", lambda ds: ds.update(updates, where_sql))
        return WriteResult(version=after.version, rows_updated=stats["num_rows_updated"])

    # -- versions ----------------------------------------------------------------------------

    def list_versions(self, name: str) -> list[dict[str, Any]]:
        """Versions, oldest first, each with the tags naming it."""
        dataset = self.dataset(name)
        tags: dict[int, list[str]] = {}
        for tag, ref in sorted(dataset.tags.list().items()):
            tags.setdefault(ref["version"], []).append(tag)
        versions = self._versions(name, dataset)
        for version in versions:
            version["tags"] = tags.get(version["version"], [])
        return versions

    def _versions(self, name: str, dataset: lance.LanceDataset) -> list[dict[str, Any]]:
        """``dataset.versions()``, away from this store's cleanups, and listed again when
        another store's cleanup removed a version between Lance listing the manifests and
        reading one (that version is gone: not an error)."""
        for attempt in range(_VERSION_LISTINGS):
            try:
                with self._cleaning:
                    return dataset.versions()
            except (OSError, ValueError) as exc:
                if attempt == _VERSION_LISTINGS - 1 or not _NOT_FOUND.search(str(exc)):
                    self.fail(name, "listing versions", exc)
        raise AssertionError("unreachable")

    def restore(self, name: str, version: int = 0, tag: str = "") -> WriteResult:
        """Make ``tag`` or ``version`` the latest version, as a new commit."""
        if not (version or tag):
            raise InvalidArgument("restore needs a version or a tag")
        old = self.dataset(name, version, tag)  # NotFound before anything is written
        target: int | str = tag or old.version

        def restore(dataset: lance.LanceDataset) -> lance.LanceDataset:
            restored = dataset.checkout_version(target)
            restored.restore()
            return restored

        _, after = self.commit(name, "restore", restore)
        return WriteResult(version=after.version)

    def cleanup(
        self,
        name: str,
        older_than_s: float,
        *,
        delete_unverified: bool = False,
        error_if_tagged: bool = False,
    ) -> tuple[int, int]:
        """Remove untagged versions older than ``older_than_s`` and the files only they use;
        returns (versions, bytes) removed.

        ``delete_unverified`` (the caller vouches that no other process works on the table)
        also removes unreferenced recent files and skips the ``cleanup_min_age_s`` floor;
        ``error_if_tagged`` refuses, removing nothing, when a tagged version is old enough to
        go (LanceDB's behaviour; see :func:`tagged_old_versions`).

        A version goes only once nothing may still read it: it is below every version that
        this store's requests and writers hold, and its successor, which took over as the
        latest, is ``cleanup_min_age_s`` old, so a request that another store sharing the
        root began on it has ended too.
        """
        # One cleanup at a time, and none during a listing of versions (see _cleaning).
        with self._cleaning, self.writing(name, f"cleanup of table {name!r}"):
            dataset = self.dataset(name)  # the latest is published before holds are read
            held = self.holds.oldest(name)
            tags = dataset.tags.list()
            tagged = {ref["version"] for ref in tags.values()}
            versions = self._versions(name, dataset)
            if error_if_tagged:
                refuse_tagged_old_versions(name, tags, versions, older_than_s)
            now = time.time()
            floor = 0.0 if delete_unverified else self.settings.cleanup_min_age_s
            doomed = [
                old["version"]
                for old, successor in itertools.pairwise(versions)
                if old["version"] not in tagged
                and (held is None or old["version"] < held)
                and now - old["timestamp"].timestamp() >= older_than_s
                and now - successor["timestamp"].timestamp() >= floor
            ]
            if not doomed:
                return 0, 0
            stats = dataset.cleanup_old_versions(
                versions=doomed,
                error_if_tagged_old_versions=False,
                delete_unverified=delete_unverified,
            )
        return stats.old_versions, stats.bytes_removed

    def check_cleanup(self, name: str, older_than_s: float) -> None:
        """Refuse, as :meth:`cleanup` with ``error_if_tagged`` would, before other work."""
        with self._cleaning:
            dataset = self.dataset(name)
            versions = self._versions(name, dataset)
            refuse_tagged_old_versions(name, dataset.tags.list(), versions, older_than_s)

    def list_tags(self, name: str) -> dict[str, int]:
        return {tag: ref["version"] for tag, ref in self.dataset(name).tags.list().items()}

    def create_tag(self, name: str, tag: str, version: int = 0) -> int:
        check_name(tag, "tag")
        dataset = self.dataset(name)
        if tag in dataset.tags.list():
            raise AlreadyExists(f"tag {tag!r} exists on table {name!r}")
        target = version or dataset.version
        self._checkout(name, dataset, target)  # NotFound for a version that is not there
        with self.writing(name, f"tagging table {name!r}"):
            dataset.tags.create(tag, target)
        return target

    def delete_tag(self, name: str, tag: str) -> None:
        dataset = self.dataset(name)
        if tag in dataset.tags.list():
            with self.writing(name, f"deleting tag {tag!r} of table {name!r}"):
                dataset.tags.delete(tag)

    # -- reads -------------------------------------------------------------------------------

    def count_rows(self, name: str, where: str = "", version: int = 0, tag: str = "") -> int:
        dataset = self.dataset(name, version, tag)
        try:
            return dataset.count_rows(self._where(where))
        except (ValueError, OSError) as exc:
            self.fail(name, f"counting rows with filter {brief(where)}", exc)

    def search(self, name: str, params: SearchParams) -> pa.Table:
        """The k nearest rows to ``params.vector``, nearest first, with ``_distance``.

        Exact queries on the latest version (no vector index on the column, or
        ``bypass_vector_index``) are answered from the in-memory matrix; the rest by Lance.
        """
        dataset, snapshot, params, grouped = self._planned(name, params)
        if snapshot is not None:
            positions, distances = self._exact_hits(name, snapshot, params, grouped)
            return self._exact_rows(name, snapshot, params, positions, distances)
        refine = self._refine_source(name, dataset, params)
        if refine is not None:
            snapshot, metric = refine
            positions, distances = self._refined_hits(name, dataset, params, snapshot, metric)
            return self._exact_rows(name, snapshot, params, positions, distances)
        return self._search_lance(name, dataset, params)

    def search_stream(self, name: str, params: SearchParams) -> Iterator[pa.RecordBatch]:
        """:meth:`search` for any k up to the table's size, batch by batch. An exact search
        keeps only row ids and distances for all k results and reads the rows a batch at a
        time; Lance's search streams what its top-k sort yields. At least one batch comes,
        empty when nothing is found, so that callers learn the columns."""
        available = self.dataset(name, params.version, params.tag).count_rows()
        params = replace(params, k=max(1, min(params.k, available - params.offset)))
        dataset, snapshot, params, _ = self._planned(name, params, streamed=True)
        if snapshot is None:
            try:
                reader = dataset.scanner(**self._nearest_args(dataset, params)).to_reader()
            except (ValueError, OSError) as exc:
                self.fail(name, "search failed", exc)
            batches = self._bounded(name, params.filter, reader)
            return _nonempty(_skip_rows(batches, params.offset), reader.schema)
        positions, distances = self._exact_hits(name, snapshot, params)
        columns = self._exact_rows(name, snapshot, params, positions[:0], distances[:0]).schema
        return _nonempty(
            (
                batch
                for start in range(0, len(positions), TAKE_CHUNK)
                for batch in self._exact_rows(
                    name,
                    snapshot,
                    params,
                    positions[start : start + TAKE_CHUNK],
                    distances[start : start + TAKE_CHUNK],
                ).to_batches()
                for batch in _sized(batch)
            ),
            columns,
        )

    def _planned(
        self, name: str, params: SearchParams, streamed: bool = False
    ) -> tuple[lance.LanceDataset, exact.Snapshot | None, SearchParams, partitions.Grouped | None]:
        """Check a search and choose how it runs: the dataset read, the in-memory matrix
        when the search is exact (no vector index on the column, or ``bypass_vector_index``)
        on the latest version and the matrix fits the cache (None sends it to Lance), the
        parameters, with those a ``target_recall`` stands for filled in, and the matrix's
        grouping by partition when that level scans partitions from memory.

        A level that scans from memory where the scan does not apply (a search filtered after
        the fact, bounded by distance, streamed, of an older version, or a column that does
        not fit the memory bound) is served by exact search, which keeps its promise."""
        dataset = self.dataset(name, params.version, params.tag)
        self.check_fingerprint(name, dataset, params.schema_fingerprint)
        _check_search(name, dataset.schema, params, max_k=None if streamed else _MAX_K)
        self._projection(dataset.schema, params.columns, params.projections)
        if not (params.version or params.tag):  # calibration measures the latest version
            self.served.record(name, params.vector_column, params.vector)
        if params.target_recall is not None:
            params = self._tuned(name, dataset, params)
        self._check_window(params.k, params.offset, params.refine_factor, params.ef, streamed)
        if params.memory_scan:
            scan = None if streamed else self._scan_source(name, dataset, params)
            if scan is not None:
                return dataset, scan[0], params, scan[1]
            params = replace(params, memory_scan=False, nprobes=0, bypass_vector_index=True)
        if not self._exact_applies(name, dataset, params):
            return dataset, None, params, None
        return dataset, self.exact.snapshot(name, dataset, params.vector_column), params, None

    def _scan_source(
        self, name: str, dataset: lance.LanceDataset, params: SearchParams
    ) -> tuple[exact.Snapshot, partitions.Grouped] | None:
        """The matrix, and its grouping by the calibration's partitions, to scan a search's
        probed partitions from, where the scan applies (see :meth:`_planned`)."""
        if params.postfilter or params.version or params.tag:
            return None
        if params.distance_lower_bound is not None or params.distance_upper_bound is not None:
            return None
        return self._grouping(name, dataset, params.vector_column)

    def _grouping(
        self,
        name: str,
        dataset: lance.LanceDataset,
        column: str,
        centroids: partitions.Centroids | None = None,
        keep: bool = True,
    ) -> tuple[exact.Snapshot, partitions.Grouped] | None:
        """The latest matrix of an indexed column, grouped by the partitions of its index's
        calibration (or ``centroids``, kept as the column's grouping only if ``keep``); None
        where there are none, or the grouping does not fit the memory bound."""
        found = self._refine_matrix(name, dataset, column)
        index = self._vector_indexed_columns(name, dataset).get(column)
        if found is None or index is None:
            return None
        if centroids is None:
            centroids = self._scan_centroids(name, index)
        if centroids is None or centroids.vectors.shape[1] != found[0].dims:
            return None
        grouped = self.grouped.grouped(name, found[0], centroids, keep)
        return None if grouped is None else (found[0], grouped)

    def _scan_centroids(self, name: str, index: VectorIndex) -> partitions.Centroids | None:
        """The memory-scan partitions of an index's calibration, read once from their file;
        None when it has none, or the file is not the calibration's (a calibration stopped
        between writing the two)."""
        key = (name, index.name)
        if key not in self._centroids:
            found = self.calibration(name, index.name)
            loaded = None
            if found is not None and found.scan_partitions:
                data = self.root.read_beside(name, calibration.scan_path(index.name))
                try:
                    loaded = partitions.Centroids.from_bytes(data, index.metric) if data else None
                except (ValueError, OSError) as exc:
                    log.warning("unreadable scan partitions of %s/%s: %s", name, index.name, exc)
                if loaded is not None and len(loaded.vectors) != found.scan_partitions:
                    loaded = None
            self._centroids[key] = loaded
        return self._centroids[key]

    def _tuned(self, name: str, dataset: lance.LanceDataset, params: SearchParams) -> SearchParams:
        """``params`` with the cheapest calibrated search parameters that reach its
        target_recall; an exact search when the index has no calibration (yet) or none of its
        levels reaches the target. A column without a vector index is searched exactly anyway."""
        assert params.target_recall is not None
        calibration.check_target(
            params.target_recall, params.nprobes, params.refine_factor, params.ef
        )
        if is_multivector(dataset.schema.field(params.vector_column)):
            return replace(params, bypass_vector_index=True)  # no calibration of MaxSim
        index = self._vector_indexed_columns(name, dataset).get(params.vector_column)
        if params.bypass_vector_index or index is None:
            return params
        found = self.calibration(name, index.name)
        level = found.level_for(params.target_recall) if found else None
        if level is None:
            return replace(params, bypass_vector_index=True)
        if level.memory_scan:
            if params.metric not in (None, "", index.metric):
                return replace(params, bypass_vector_index=True)  # calibrated for its metric
            return replace(params, nprobes=level.nprobes, metric=index.metric, memory_scan=True)
        # Lance's HNSW needs ef at least the candidates it gathers: (k + offset) x refine.
        wanted = (params.k + params.offset) * max(level.refine_factor, 1)
        ef = max(level.ef, wanted) if level.ef else 0
        return replace(params, nprobes=level.nprobes, refine_factor=level.refine_factor, ef=ef)

    def _exact_applies(self, name: str, dataset: lance.LanceDataset, params: SearchParams) -> bool:
        if not self.exact.max_bytes or params.version or params.tag:
            return False
        if is_multivector(dataset.schema.field(params.vector_column)):
            return False  # late interaction (MaxSim) is Lance's: the matrix holds one per row
        return (
            params.bypass_vector_index
            or params.vector_column not in self._vector_indexed_columns(name, dataset)
        )

    def _vector_indexed_columns(
        self, name: str, dataset: lance.LanceDataset
    ) -> dict[str, VectorIndex]:
        """The vector columns with an index at ``dataset``'s version, and the index of each
        (memoized: reading the index list costs more than a small search)."""
        key = (name, dataset.version)
        found = self._vector_indexed.get(key)
        if found is None:
            schema = dataset.schema
            found = {
                column: VectorIndex(
                    desc.name, str((desc.details or {}).get("metric_type", "l2")).lower()
                )
                for desc in dataset.describe_indices()
                for column in desc.field_names
                if column in schema.names and is_vector(schema.field(column))
            }
            self._vector_indexed = {k: v for k, v in self._vector_indexed.items() if k[0] != name}
            self._vector_indexed[key] = found
        return found

    def _exact_hits(
        self,
        name: str,
        snapshot: exact.Snapshot,
        params: SearchParams,
        grouped: partitions.Grouped | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Matrix positions and distances of an exact search's results, best first, offset
        skipped; of a scan of the ``params.nprobes`` nearest partitions of ``grouped`` where
        given."""
        metric = params.metric or "l2"
        want = params.k + params.offset
        try:
            allowed = snapshot.rows_matching(self._where(params.filter)) if params.filter else None
        except (ValueError, OSError) as exc:
            self.fail(name, f"search with filter {brief(params.filter)} failed", exc)
        prefilter = allowed if not params.postfilter else None
        if grouped is not None:
            rows, distances = partitions.nearest(
                grouped, snapshot, params.vector, params.nprobes, want, metric, prefilter
            )
        else:
            rows, distances = exact.nearest(
                snapshot,
                params.vector,
                want,
                metric,
                prefilter,
                params.distance_lower_bound,
                params.distance_upper_bound,
            )
        if params.postfilter and allowed is not None:
            keep = allowed[rows]
            rows, distances = rows[keep], distances[keep]
        return rows[params.offset :], distances[params.offset :]

    def _exact_rows(
        self,
        name: str,
        snapshot: exact.Snapshot,
        params: SearchParams,
        positions: np.ndarray,
        distances: np.ndarray,
    ) -> pa.Table:
        """The selected columns of exact results (matrix positions), with ``_distance`` (and
        ``_rowid``): from memory where they are all kept there, else taken from Lance."""
        dataset = snapshot.dataset
        columns = (
            self._projection(dataset.schema, params.columns, params.projections)
            or dataset.schema.names
        )
        row_ids = snapshot.buffers.row_ids[positions]
        found = self._rows_in_memory(name, snapshot, columns, positions)
        if found is None:
            try:
                found = dataset._take_rows(row_ids.tolist(), columns=columns)
            except (ValueError, OSError) as exc:
                self.fail(name, "search failed", exc)
        found = found.append_column("_distance", pa.array(distances, pa.float32()))
        if params.with_row_id:
            found = found.append_column("_rowid", pa.array(row_ids, pa.uint64()))
        return found

    def _rows_in_memory(
        self,
        name: str,
        snapshot: exact.Snapshot,
        columns: list[str] | dict[str, str],
        positions: np.ndarray,
    ) -> pa.Table | None:
        """``columns`` of the rows at matrix ``positions``, as Lance's take gives them, from the
        row cache and the matrix; None where something asked for is kept in neither: computed
        columns, another vector column, vectors stored as float64 (the matrix rounds them)
        or holding NaN or infinity (the matrix has numbers in their place). A column named
        twice is Lance's to answer too (it keeps one)."""
        if isinstance(columns, dict) or len(set(columns)) != len(columns):
            return None
        found = self.rows.rows(name, snapshot.dataset)
        if found is None:
            return None
        vector = found.schema.field(snapshot.column)
        for column in columns:
            if column in found.kept:
                continue
            if column != snapshot.column or vector.type.value_type not in _MATRIX_TYPES:
                return None
            if not snapshot.buffers.verbatim[positions].all():
                return None
        fragments, offsets = snapshot.addresses(positions)
        try:
            table = found.take(fragments, offsets, [c for c in columns if c in found.kept])
        except KeyError:  # the rows and the matrix disagree (both are of one version): Lance
            return None
        arrays = []
        for column in columns:
            if column in found.kept:
                arrays.append(table.column(column))
                continue
            values = pa.array(snapshot.buffers.matrix[positions].ravel(), vector.type.value_type)
            arrays.append(pa.FixedSizeListArray.from_arrays(values, type=vector.type))
        return pa.table(arrays, schema=pa.schema([found.schema.field(c) for c in columns]))

    def _search_lance(
        self, name: str, dataset: lance.LanceDataset, params: SearchParams
    ) -> pa.Table:
        result = self._lance_search(name, dataset, params, self._nearest_args(dataset, params))
        return result.slice(params.offset) if params.offset else result

    def _lance_search(
        self, name: str, dataset: lance.LanceDataset, params: SearchParams, args: dict[str, Any]
    ) -> pa.Table:
        try:
            return dataset.to_table(**args)
        except (ValueError, OSError) as exc:
            what = (
                f"search with filter {brief(params.filter)} failed"
                if params.filter
                else "search failed"
            )
            self.fail(name, what, exc)

    def _refine_source(
        self, name: str, dataset: lance.LanceDataset, params: SearchParams
    ) -> tuple[exact.Snapshot, str] | None:
        """The in-memory matrix (and the index's metric) to take an indexed search's refine
        step from, where it applies: the step computes exact distances of the index's
        (k + offset) x refine_factor candidates, and Lance reads their vectors from the data
        files for it, which cost it 5 of a search's 7 ms of CPU on a 50,000-row table. Lance
        refines instead for a search it filters after the fact or bounds by distance, one of an
        older version, one with a metric other than the index's, and for a column whose matrix
        does not fit ``--exact-cache-max-bytes``."""
        if not params.refine_factor or params.postfilter or params.version or params.tag:
            return None
        if params.distance_lower_bound is not None or params.distance_upper_bound is not None:
            return None
        if params.bypass_vector_index:
            return None
        found = self._refine_matrix(name, dataset, params.vector_column)
        if found is None or params.metric not in (None, "", found[1]):
            return None
        return found

    def _refine_matrix(
        self, name: str, dataset: lance.LanceDataset, column: str
    ) -> tuple[exact.Snapshot, str] | None:
        """The matrix of an indexed vector column, and its index's metric, where this store
        can refine from it: a metric it computes as Lance does, and room in the bound."""
        index = self._vector_indexed_columns(name, dataset).get(column)
        if index is None or index.metric not in exact.METRICS or not self.exact.max_bytes:
            return None
        snapshot = self.exact.snapshot(name, dataset, column)
        return None if snapshot is None else (snapshot, index.metric)

    def _refine_candidates(
        self, dataset: lance.LanceDataset, params: SearchParams
    ) -> dict[str, Any]:
        """Lance's arguments for the candidates of an indexed search refined in memory: their
        row addresses, (k + offset) x refine_factor of them by the index's distances."""
        arguments = self._nearest_args(dataset, params)
        nearest = dict(arguments["nearest"], k=(params.k + params.offset) * params.refine_factor)
        del nearest["refine_factor"]
        return {
            **arguments,
            "nearest": nearest,
            "columns": ["_distance"],
            "with_row_id": False,
            "with_row_address": True,
        }

    def _refined_hits(
        self,
        name: str,
        dataset: lance.LanceDataset,
        params: SearchParams,
        snapshot: exact.Snapshot,
        metric: str,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Matrix positions and distances of an indexed search whose refine step reads the
        candidates' vectors from memory, best first, offset skipped: the same rows and distances as
        Lance's refine, without reading the data files."""
        candidates = self._lance_search(
            name, dataset, params, self._refine_candidates(dataset, params)
        )
        positions = snapshot.positions(candidates.column("_rowaddr").to_numpy())
        distances = snapshot.distances(params.vector, metric, positions).astype(np.float32)
        kept = np.isfinite(distances)
        positions, distances = positions[kept], distances[kept]
        order = np.lexsort((positions, distances))[: params.k + params.offset][params.offset :]
        return positions[order], distances[order]

    def _nearest_args(self, dataset: lance.LanceDataset, params: SearchParams) -> dict[str, Any]:
        """Lance's scanner arguments for a vector search."""
        multi = is_multivector(dataset.schema.field(params.vector_column))
        nearest: dict[str, Any] = {
            "column": params.vector_column,
            # A 2-D q on a MultiVector column is one query of several vectors (MaxSim).
            "q": np.atleast_2d(params.vector) if multi else params.vector,
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
        columns = self._projection(dataset.schema, params.columns, params.projections)
        return {
            "columns": [*columns, "_distance"] if isinstance(columns, list) else columns,
            "filter": self._where(params.filter),
            "nearest": nearest,
            "prefilter": not params.postfilter,
            "with_row_id": params.with_row_id,
        }

    def text_search(self, name: str, params: TextSearchParams) -> pa.Table:
        """Rows matching ``params.query`` by BM25 over INVERTED indexes, with ``_score``."""
        dataset = self.dataset(name, params.version, params.tag)
        self.check_fingerprint(name, dataset, params.schema_fingerprint)
        if not params.query.strip():
            raise InvalidArgument("a text search needs a query")
        if len(params.query.encode()) > self.limits.max_expression_bytes:
            raise InvalidArgument(
                f"the text query is over --max-expression-bytes (STORE_MAX_EXPRESSION_BYTES) = "
                f"{self.limits.max_expression_bytes} bytes: {brief(params.query)}"
            )
        if not 1 <= params.k <= _MAX_K:
            raise InvalidArgument(f"k must be between 1 and {_MAX_K}, got {params.k}")
        self._check_window(params.k, params.offset)
        schema = dataset.schema
        unknown = [c for c in params.search_columns if c not in schema.names]
        if unknown:
            raise InvalidArgument(f"unknown column(s) {unknown}; the table has {schema.names}")
        columns = self._projection(schema, params.columns, params.projections)
        indexed = text_indexed_columns(dataset)
        searched = params.search_columns or sorted(indexed)
        missing = sorted(set(searched) - indexed) or "a text column"
        if not searched or set(searched) - indexed:
            raise InvalidArgument(
                f"text search needs an INVERTED index on {missing}; "
                f"indexed text columns: {sorted(indexed)}"
            )
        try:
            result = dataset.to_table(
                columns=[*columns, "_score"] if isinstance(columns, list) else columns,
                full_text_query={"columns": searched, "query": params.query},
                filter=self._where(params.filter),
                prefilter=True,
                limit=params.k + params.offset,
                with_row_id=params.with_row_id,
            )
        except (ValueError, OSError) as exc:
            self.fail(name, "text search failed", exc)
        return result.slice(params.offset) if params.offset else result

    def scan(self, name: str, params: ReadParams) -> pa.Table:
        """Rows matching the filter in storage order, in one table."""
        try:
            return self._scanner(name, params).to_table()
        except (ValueError, OSError) as exc:
            self.fail(name, f"scan with filter {brief(params.filter)} failed", exc)

    def read(self, name: str, params: ReadParams) -> Iterator[pa.RecordBatch]:
        """Rows matching the filter in storage order, batch by batch, each at most
        READ_BATCH_BYTES (a wide row alone may be more); one empty batch when none match, so
        that callers learn the columns. Callers hold the version."""
        try:
            reader = self._scanner(name, params).to_reader()
        except (ValueError, OSError) as exc:
            self.fail(name, f"read with filter {brief(params.filter)} failed", exc)
        return _nonempty(self._bounded(name, params.filter, reader), reader.schema)

    def _bounded(
        self, name: str, where: str, reader: pa.RecordBatchReader
    ) -> Iterator[pa.RecordBatch]:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except (ValueError, OSError) as exc:
                self.fail(name, f"read with filter {brief(where)} failed", exc)
            yield from _sized(batch)

    def take(self, name: str, params: TakeParams) -> Iterator[pa.RecordBatch]:
        """The rows at ``params.offsets`` (positions in storage order; those past the end are
        skipped) or ``params.row_ids``, in ascending order as LanceDB returns them, read
        TAKE_CHUNK at a time. Callers hold the version."""
        if params.offsets and params.row_ids:
            raise InvalidArgument("take reads offsets or row ids, not both")
        dataset = self.dataset(name, params.version)
        columns = (
            self._projection(dataset.schema, params.columns, params.projections)
            or dataset.schema.names
        )
        if params.with_row_id:
            columns = (
                {**columns, "_rowid": "_rowid"}
                if isinstance(columns, dict)
                else [*columns, "_rowid"]
            )
        if params.row_ids:
            ids, read = np.unique(np.asarray(params.row_ids, np.uint64)), dataset._take_rows
        else:
            ids, read = np.unique(np.asarray(params.offsets, np.uint64)), dataset.take
            ids = ids[ids < dataset.count_rows()]

        def rows(chunk: np.ndarray) -> pa.Table:
            try:
                return read(chunk.tolist(), columns=columns)
            except (ValueError, OSError) as exc:
                self.fail(name, "take failed", exc)

        batches = (
            batch
            for start in range(0, len(ids), TAKE_CHUNK)
            for whole in rows(ids[start : start + TAKE_CHUNK]).to_batches()
            for batch in _sized(whole)
        )
        return _nonempty(batches, rows(ids[:0]).schema)

    def explain(
        self, name: str, query: SearchParams | TextSearchParams | ReadParams, verbose: bool
    ) -> str:
        """How the query would run, without running it: Lance's physical plan, or this
        store's own plan for an exact search answered from the in-memory matrix."""
        if isinstance(query, SearchParams):
            dataset, snapshot, query, grouped = self._planned(name, query)
            if snapshot is not None:
                if query.filter:  # planned, not run: a filter that does not parse fails here
                    check = {
                        "filter": self._where(query.filter),
                        "columns": [],
                        "with_row_id": True,
                    }
                    self._explained(name, self._scan(name, dataset, "explaining", check), False)
                if grouped is not None:
                    return _scan_plan(query, grouped, snapshot.used)
                return _exact_plan(query, snapshot.used)
            refine = self._refine_source(name, dataset, query)
            if refine is not None:
                candidates = self._refine_candidates(dataset, query)
                scanner = self._scan(name, dataset, "explaining a search", candidates)
                lance_plan = self._explained(name, scanner, verbose)
                return _refined_plan(query, refine[1], lance_plan)
            arguments = self._nearest_args(dataset, query)
            scanner = self._scan(name, dataset, "explaining a search", arguments)
        elif isinstance(query, TextSearchParams):
            dataset = self.dataset(name, query.version, query.tag)
            columns = self._projection(dataset.schema, query.columns, query.projections)
            arguments = {
                "columns": [*columns, "_score"] if isinstance(columns, list) else columns,
                "full_text_query": {
                    "columns": query.search_columns or sorted(text_indexed_columns(dataset)),
                    "query": query.query,
                },
                "filter": self._where(query.filter),
                "limit": query.k + query.offset,
            }
            scanner = self._scan(name, dataset, "explaining a text search", arguments)
        else:
            scanner = self._scanner(name, query)
        return self._explained(name, scanner, verbose)

    def _explained(self, name: str, scanner: lance.LanceScanner, verbose: bool) -> str:
        """Lance's plan for ``scanner``, with the data root's path left out."""
        try:
            plan = scanner.explain_plan(verbose)
        except (ValueError, OSError) as exc:
            self.fail(name, "explaining the query failed", exc)
        return plan.replace(self.root.uri.lstrip("/"), "<data root>")

    def _scan(
        self, name: str, dataset: lance.LanceDataset, what: str, arguments: dict[str, Any]
    ) -> lance.LanceScanner:
        try:
            return dataset.scanner(**arguments)
        except (ValueError, OSError) as exc:
            self.fail(name, f"{what} failed", exc)

    def _scanner(self, name: str, params: ReadParams) -> lance.LanceScanner:
        dataset = self.dataset(name, params.version)
        columns = self._projection(dataset.schema, params.columns, params.projections)
        try:
            return dataset.scanner(
                columns=columns,
                filter=self._where(params.filter),
                limit=params.limit or None,
                offset=params.offset or None,
                with_row_id=params.with_row_id,
            )
        except (ValueError, OSError) as exc:
            self.fail(name, f"scan with filter {brief(params.filter)} failed", exc)

    # -- indexes -----------------------------------------------------------------------------

    def _indexes(self, name: str, dataset: lance.LanceDataset) -> list[IndexInfo]:
        infos = {}
        for desc in dataset.describe_indices():
            stats = _index_stats(dataset, desc.name)
            infos[desc.name] = IndexInfo(
                name=desc.name,
                columns=list(desc.field_names),
                index_type=indexes.index_type_name(desc.index_type),
                num_indexed_rows=int(stats.get("num_indexed_rows", 0) or 0),
                num_unindexed_rows=int(stats.get("num_unindexed_rows", 0) or 0),
                num_deltas=int(stats.get("num_indices", len(desc.segments)) or 0),
            )
        for pending in self.builder.pending(name):
            committed = infos.get(pending.name)
            if committed is not None:  # a rebuild (replace) of a committed index
                committed.status, committed.stage = pending.status, pending.stage
                committed.progress = pending.progress
            else:
                infos[pending.name] = pending
        return sorted(infos.values(), key=lambda i: i.name)

    def list_indexes(self, name: str) -> list[IndexInfo]:
        return self._indexes(name, self.dataset(name))

    def create_index(self, spec: IndexSpec, wait: bool = False) -> IndexInfo:
        """Start building an index in the background; with ``wait``, return once it is built."""
        dataset = self.dataset(spec.table)
        existing = [d.name for d in dataset.describe_indices()]
        indexes.check_spec(spec, dataset.schema, existing)
        check_name(spec.name, "index")
        build = self.builder.submit(spec)
        if not wait:
            return build.info()
        what = f"building index {spec.name!r} on table {spec.table!r} failed"
        try:
            with self.root.refusals(what):
                build.future.result()
        except EmbedsearchError as exc:
            raise exc.reworded(f"{what}: {exc}") from exc
        except Exception as exc:
            self.fail(spec.table, what, exc)
        return next(i for i in self.list_indexes(spec.table) if i.name == spec.name)

    def index_stats(self, name: str, index_name: str) -> IndexStats:
        """Statistics of the committed index ``index_name``; NotFound for one the table lacks
        (or one still being built)."""
        stats = indexes.statistics(self.dataset(name), index_name)
        if stats is None:
            raise NotFound(f"table {name!r} has no index {index_name!r}; see list_indices()")
        if stats.index_type in indexes.VECTOR_TYPES:
            stats.calibration = self.calibration(name, index_name)
        return stats

    # -- recall calibration ------------------------------------------------------------------

    def calibration(self, name: str, index_name: str) -> IndexCalibration | None:
        """The last calibration of a vector index (None: it has none), read once from its file."""
        key = (name, index_name)
        if key not in self._calibrations:
            data = self.root.read_beside(name, calibration.side_path(index_name))
            self._calibrations[key] = calibration.from_json(data) if data else None
        return self._calibrations[key]

    def _calibration_searches(
        self, name: str, dataset: lance.LanceDataset, column: str
    ) -> tuple[calibration.Search | None, partitions.Grouped | None]:
        """How calibration runs a setting with a refine step, or a scan of partitions from
        memory, as searches are served: from the column's in-memory matrix
        (:meth:`_refine_matrix`), where it fits; and the rows grouped by partitions trained
        anew on the column, for the scan (None: no scan, the table is too small or does not
        fit). Searches go on using the last calibration's grouping meanwhile."""
        found = self._refine_matrix(name, dataset, column)
        if found is None:
            return None, None
        snapshot, metric = found
        centroids = partitions.train(dataset, column, metric)
        scan = self._grouping(name, dataset, column, centroids, keep=False) if centroids else None

        def search(query: np.ndarray, k: int, setting: calibration.Setting) -> np.ndarray:
            params = SearchParams(
                vector_column=column,
                vector=query,
                k=k,
                metric=metric,
                nprobes=setting.nprobes,
                refine_factor=setting.refine_factor,
                ef=setting.ef,
            )
            if setting.memory_scan and scan is not None:
                positions = self._exact_hits(name, scan[0], params, scan[1])[0]
                return scan[0].buffers.row_ids[positions]
            positions = self._refined_hits(name, dataset, params, snapshot, metric)[0]
            return snapshot.buffers.row_ids[positions]

        return search, scan[1] if scan is not None else None

    def calibrate(self, name: str, index_name: str) -> IndexCalibration:
        """Measure the recall of the vector index ``index_name`` at the latest version, and
        keep the result (:mod:`store_service.calibration`)."""
        with self.holding(name):
            dataset = self.dataset(name)
            stats = indexes.statistics(dataset, index_name)
            desc = next((d for d in dataset.describe_indices() if d.name == index_name), None)
            if stats is None or desc is None or stats.index_type not in indexes.VECTOR_TYPES:
                raise NotFound(f"table {name!r} has no vector index {index_name!r}")
            column = desc.field_names[0]
            if not is_vector(dataset.schema.field(column)):
                raise FailedPrecondition(f"index {index_name!r} is on a multi-vector column")
            settings = self.settings
            metric = stats.distance_type or "l2"
            refined, grouping = self._calibration_searches(name, dataset, column)
            found = calibration.calibrate(
                dataset,
                column,
                stats.index_type,
                self._partition_count(dataset, desc),
                metric,
                k=settings.calibration_k,
                sample_size=settings.calibration_queries,
                levels=settings.calibration_levels,
                served=self.served.sample(name, column),
                stop=self.stopping,
                refined=refined,
                scan_partitions=len(grouping.centroids.vectors) if grouping is not None else 0,
            )
        scan = grouping.centroids if grouping is not None and found.scan_partitions else None
        with self.writing(name, f"recording the calibration of index {index_name!r}"):
            # The partitions first: a calibration file never names partitions not yet written
            # (a stop between the two leaves the old calibration with new partitions of the
            # same count at worst: trained on the same rows, and re-measured next time).
            if scan is not None:
                self.root.write_beside(name, calibration.scan_path(index_name), scan.to_bytes())
            self.root.write_beside(
                name, calibration.side_path(index_name), calibration.to_json(found, metric)
            )
        if grouping is not None and scan is not None:
            self.grouped.adopt(name, column, grouping)
        self._centroids[(name, index_name)] = scan
        self._calibrations[(name, index_name)] = found
        log.info(
            "calibrated index %s of %s: %s",
            index_name,
            name,
            ", ".join(
                f"{lv.recall}: nprobes={lv.nprobes} "
                + ("scanned from memory" if lv.memory_scan else f"rf={lv.refine_factor} ef={lv.ef}")
                for lv in found.levels
            )
            or "no level reached",
        )
        return found

    def calibrations_due(self, name: str) -> list[str]:
        """Vector indexes of ``name`` with no calibration, one made before the table grew by
        ``calibration_growth`` or before its IVF partitions changed (Lance's optimize_indices
        splits and joins them, which moves recall both ways), or one made from the table's
        rows where enough served queries are now kept to calibrate from (none while they are
        being built)."""
        if not self.settings.calibrate_indexes:
            return []
        dataset = self.dataset(name)
        building = {b.name for b in self.builder.pending(name)}
        rows = dataset.count_rows()
        due = []
        schema = dataset.schema
        for desc in dataset.describe_indices():
            column = desc.field_names[0] if desc.field_names else ""
            if desc.name in building or column not in schema.names:
                continue
            if not is_vector(schema.field(column)):
                continue
            if indexes.index_type_name(desc.index_type) not in indexes.VECTOR_TYPES:
                continue
            last = self.calibration(name, desc.name)
            if (
                last is None
                or rows > last.num_rows * (1 + self.settings.calibration_growth)
                or (not last.served_queries and self.served.full(name, column))
                or self._relaid(dataset, desc, last)
            ):
                due.append(desc.name)
        return due

    def _relaid(self, dataset: lance.LanceDataset, desc: Any, last: IndexCalibration) -> bool:
        """Whether the index has other IVF partitions than when ``last`` was made: rows merged
        into the same partitions leave a calibration good (the growth rule covers them);
        Lance's split or join of partitions does not. Only a segment newer than the
        calibration can have changed them."""
        changed_at = max(
            (seg.created_at.timestamp() for seg in desc.segments if seg.created_at), default=0.0
        )
        return (
            changed_at > last.calibrated_at
            and self._partition_count(dataset, desc) != last.partitions
        )

    def _partition_count(self, dataset: lance.LanceDataset, desc: Any) -> int:
        """IVF partitions of a vector index (its first segment's), read from its statistics
        once per set of segments: maintenance asks on every pass."""
        segments = tuple(sorted(seg.uuid for seg in desc.segments))
        key = (dataset.uri, desc.name)
        known = self._partition_counts.get(key)
        if known is None or known[0] != segments:
            known = self._partition_counts[key] = (segments, _partitions(dataset, desc.name))
        return known[1]

    def _built(self, spec: IndexSpec) -> None:
        """After a build (on its worker thread): calibrate a new vector index."""
        self._calibrations.pop((spec.table, spec.name), None)
        if not self.settings.calibrate_indexes or spec.index_type not in indexes.VECTOR_TYPES:
            return
        try:
            self.calibrate(spec.table, spec.name)
        except (EmbedsearchError, OSError, ValueError, RuntimeError) as exc:
            log.warning("could not calibrate index %s of %s: %s", spec.name, spec.table, exc)

    def drop_index(self, name: str, index_name: str, ignore_missing: bool = False) -> None:
        dataset = self.dataset(name)
        if index_name not in [d.name for d in dataset.describe_indices()]:
            if ignore_missing:
                return
            raise NotFound(f"table {name!r} has no index {index_name!r}")
        self.commit(name, "drop_index", lambda ds: ds.drop_index(index_name))
        self.builder.forget(name, index_name)
        self._calibrations[(name, index_name)] = None
        self._centroids[(name, index_name)] = None
        self.root.delete_beside(name, calibration.side_path(index_name))
        self.root.delete_beside(name, calibration.scan_path(index_name))

    # -- start-up ----------------------------------------------------------------------------

    def warm(self, name: str) -> None:
        """Load a table's indexes, the in-memory matrices of its vector columns (exact
        search, and the refine step of indexed search), and its rows (the results of both)."""
        dataset = self.dataset(name)
        for desc in dataset.describe_indices():
            try:
                dataset.prewarm_index(desc.name)
            except (ValueError, OSError, RuntimeError) as exc:
                log.warning("could not prewarm index %s of %s: %s", desc.name, name, exc)
        matrices = [
            self.exact.snapshot(name, dataset, field_.name)
            for field_ in dataset.schema
            if is_vector(field_) and self.exact.max_bytes
        ]
        if any(matrices):
            self.rows.rows(name, dataset)

    def warm_all(self) -> None:
        for name in self.list_tables():
            try:
                self.warm(name)
            except Exception:
                log.exception("could not warm table %s", name)


def refuse_tagged_old_versions(
    name: str, tags: dict[str, Any], versions: list[dict[str, Any]], older_than_s: float
) -> None:
    """FailedPrecondition naming the tags of versions (the latest excepted) older than
    ``older_than_s``: LanceDB refuses such a cleanup rather than skip them silently."""
    latest = max((v["version"] for v in versions), default=0)
    now = time.time()
    old = {
        v["version"]
        for v in versions
        if v["version"] != latest and now - v["timestamp"].timestamp() >= older_than_s
    }
    blocking = {tag: ref["version"] for tag, ref in sorted(tags.items()) if ref["version"] in old}
    if blocking:
        raise FailedPrecondition(
            f"table {name!r}: tagged version(s) {blocking} are older than the cleanup's age; "
            "delete those tags (tags.delete) or clean up versions newer than them"
        )


class StagedAppend:
    """Rows written as data files as they arrive, committed as one version at the end.

    Until :meth:`commit`, no version references the files: a stream that fails or is cancelled
    leaves the table as it was, and cleanup (optimize, maintenance) removes the orphans.
    """

    def __init__(
        self, catalog: TableCatalog, name: str, base: lance.LanceDataset, overwrite: bool = False
    ) -> None:
        self.catalog, self.name, self.base = catalog, name, base
        self.overwrite = overwrite
        self.fragments: list[Any] = []
        self.rows = 0

    def add(self, rows: pa.Table) -> None:
        """Check ``rows`` against the schema and write them, uncommitted."""
        data = conform(rows, self.base.schema)
        if data.num_rows == 0:
            return
        with self.catalog.writing(self.name, f"add on table {self.name!r}"):
            written = lance.fragment.write_fragments(
                data,
                self.catalog.uri(self.name),
                schema=self.base.schema,
                storage_options=self.catalog.storage_options,
            )
        self.fragments.extend(written)
        self.rows += data.num_rows

    def commit(self) -> WriteResult:
        """Make every staged row visible in one new version."""
        if not self.fragments and not self.overwrite:
            return WriteResult(version=self.catalog.dataset(self.name).version)
        append = (
            lance.LanceOperation.Overwrite(self.base.schema, self.fragments)
            if self.overwrite
            else lance.LanceOperation.Append(self.fragments)
        )
        # Committed through the handle, not its URI: the new version keeps the shared session.
        _, after = self.catalog.commit(
            self.name,
            "add",
            lambda dataset: lance.LanceDataset.commit(
                dataset,
                append,
                read_version=dataset.version,
                storage_options=self.catalog.storage_options,
            ),
        )
        return WriteResult(version=after.version, rows_inserted=self.rows)


def _partitions(dataset: lance.LanceDataset, index_name: str) -> int:
    """IVF partitions of a vector index (its first segment's)."""
    segments = _index_stats(dataset, index_name).get("indices") or [{}]
    return int(segments[0].get("num_partitions", 1) or 1)


def _index_stats(dataset: lance.LanceDataset, index_name: str) -> dict[str, Any]:
    try:
        return dataset.stats.index_stats(index_name)
    except (ValueError, OSError, RuntimeError):
        return {}


def _check_schema(schema: pa.Schema, max_columns: int) -> None:
    if not schema.names:
        raise InvalidSchema("a table needs at least one column")
    if len(schema.names) > max_columns:
        raise InvalidSchema(
            f"a table may have at most --max-columns (STORE_MAX_COLUMNS) = {max_columns} "
            f"columns, not {len(schema.names)}"
        )
    for name in schema.names:
        if not name or len(name) > _MAX_COLUMN_NAME or not name.isprintable():
            raise InvalidSchema(
                f"invalid column name {brief(name)}: use 1-{_MAX_COLUMN_NAME} printable characters"
            )
    if len(set(schema.names)) != len(schema.names):
        raise InvalidSchema(f"duplicate column names in {brief(str(schema.names))}")


def _sized(batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
    """``batch`` in slices of about READ_BATCH_BYTES (a wide row alone may be more)."""
    rows = max(1, batch.num_rows * READ_BATCH_BYTES // max(batch.nbytes, 1))
    for start in range(0, batch.num_rows, rows):
        yield batch.slice(start, rows)


def _nonempty(batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """``batches``, or one empty batch of ``schema`` when there are none."""
    empty = True
    for batch in batches:
        empty = False
        yield batch
    if empty:
        yield pa.RecordBatch.from_pylist([], schema=schema)


def _skip_rows(batches: Iterator[pa.RecordBatch], offset: int) -> Iterator[pa.RecordBatch]:
    """``batches`` without their first ``offset`` rows."""
    for batch in batches:
        if offset >= batch.num_rows:
            offset -= batch.num_rows
            continue
        yield batch.slice(offset)
        offset = 0


def _top_rows_plan(params: SearchParams, metric: str) -> list[str]:
    """The first steps of a search answered from the store's in-memory matrix."""
    columns = list(params.projections.items()) or params.columns or "all"
    return [
        f"TakeRows: columns={columns}, with _distance{', _rowid' if params.with_row_id else ''}",
        f"  Offset: skip={params.offset}",
        f"    TopK: k={params.k + params.offset}, metric={metric}"
        + (
            f", distance_range=[{params.distance_lower_bound}, {params.distance_upper_bound})"
            if params.distance_lower_bound is not None or params.distance_upper_bound is not None
            else ""
        ),
    ]


def _exact_plan(params: SearchParams, rows: int) -> str:
    """The plan of an exact search answered from the store's in-memory matrix."""
    steps = [
        *_top_rows_plan(params, params.metric or "l2"),
        f"      ExactDistance: column={params.vector_column}, rows={rows}, in-memory matrix "
        "(recall 1.0)",
    ]
    if params.filter:
        where = "PostFilter" if params.postfilter else "PreFilter"
        steps.append(f"        {where}: {params.filter}")
    return "\n".join(steps) + "\n"


def _scan_plan(params: SearchParams, grouped: partitions.Grouped, rows: int) -> str:
    """The plan of a search that scans the probed partitions from the in-memory matrix."""
    parts = len(grouped.centroids.vectors)
    unseen = rows - grouped.covered
    steps = [
        *_top_rows_plan(params, params.metric or "l2"),
        f"      ExactDistance: column={params.vector_column}, in-memory matrix grouped by "
        f"partition (target_recall {params.target_recall})",
        f"        PartitionScan: nprobes={params.nprobes} of {parts} partitions (the store's "
        f"own, trained at calibration), rows written since grouping={unseen}",
    ]
    if params.filter:
        steps.append(f"          PreFilter: {params.filter}")
    return "\n".join(steps) + "\n"


def _refined_plan(params: SearchParams, metric: str, candidates: str) -> str:
    """The plan of an indexed search refined from the in-memory matrix: Lance's plan of the
    candidates, under the store's refine step."""
    wanted = (params.k + params.offset) * params.refine_factor
    steps = [
        *_top_rows_plan(params, metric),
        f"      ExactDistance: column={params.vector_column}, candidates={wanted}, "
        "in-memory matrix (refine step)",
        *(f"        {line}" for line in candidates.splitlines()),
    ]
    return "\n".join(steps) + "\n"


def _check_search(
    name: str, schema: pa.Schema, params: SearchParams, max_k: int | None = _MAX_K
) -> None:
    column = schema.field(params.vector_column) if params.vector_column in schema.names else None
    if column is None or not (is_vector(column) or is_multivector(column)):
        vectors = [f.name for f in schema if is_vector(f) or is_multivector(f)]
        raise InvalidArgument(
            f"{params.vector_column!r} is not a vector column of table {name!r}; "
            f"vector columns: {vectors}"
        )
    if is_multivector(column):
        if params.vector.ndim > 2 or params.vector.shape[-1] != vector_dims(column):
            raise InvalidArgument(
                f"query vectors have {params.vector.shape[-1]} dimensions, "
                f"column {params.vector_column!r} holds {vector_dims(column)}-dimensional ones"
            )
    elif params.vector.ndim == 2:
        raise InvalidArgument(
            f"a query of {len(params.vector)} vectors needs a MultiVector column; "
            f"{params.vector_column!r} holds one vector per row: send one query vector"
        )
    elif params.vector.shape != (column.type.list_size,):
        raise InvalidArgument(
            f"query vector has {params.vector.size} dimensions, "
            f"column {params.vector_column!r} has {column.type.list_size}"
        )
    if params.k < 1 or (max_k is not None and params.k > max_k):
        raise InvalidArgument(
            f"k must be between 1 and {max_k}, got {params.k}: stream larger results (SearchStream)"
        )
