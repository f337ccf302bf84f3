"""Keeping tables healthy: compaction, index deltas, version cleanup, and per-table metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import lance
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from embedsearch.contract.errors import EmbedsearchError, InvalidArgument
from embedsearch.contract.values import CompactionResult, OptimizeResult
from store_service.catalog import TableCatalog, lance_message
from store_service.settings import StoreSettings

log = logging.getLogger("store_service.maintenance")

# Commits made by maintenance itself, which must not wake it again.
OWN_COMMITS = frozenset({"compact", "optimize_indices"})
# Passes woken by writes may take at most this share of the time: a table whose compaction
# takes 2 s is compacted at most every 20 s, however fast writes arrive.
MAX_DUTY = 0.1
# Age of the versions cleanup_old_versions removes when not told (Lance's default: 14 days).
LANCE_CLEANUP_AGE_S = 14 * 24 * 3600.0


@dataclass
class IndexStats:
    """How far an index lags its table."""

    unindexed_rows: int
    deltas: int


@dataclass
class TableStats:
    """What maintenance looks at, and what /metrics exports, for one table."""

    version: int
    rows: int
    fragments: int
    small_fragments: int
    deleted_rows: int
    versions: int
    indexes: dict[str, IndexStats] = field(default_factory=dict)


def table_stats(dataset: lance.LanceDataset, small_rows: int) -> TableStats:
    """Counts read from the manifest and index metadata (no data is scanned)."""
    data = dataset.stats.dataset_stats(max_rows_per_group=small_rows)
    indexes = {}
    for desc in dataset.describe_indices():
        try:
            stats = dataset.stats.index_stats(desc.name)
        except (ValueError, OSError, RuntimeError):
            continue
        indexes[desc.name] = IndexStats(
            unindexed_rows=int(stats.get("num_unindexed_rows", 0) or 0),
            deltas=int(stats.get("num_indices", len(desc.segments)) or 0),
        )
    return TableStats(
        version=dataset.version,
        rows=dataset.count_rows(),
        fragments=int(data["num_fragments"]),
        small_fragments=int(data["num_small_files"]),
        deleted_rows=int(data["num_deleted_rows"]),
        versions=len(dataset.version_refs()),
        indexes=indexes,
    )


class Maintenance:
    """Optimizes tables on request, and in the background every ``maintenance_interval_s``.

    A background pass only does what a table needs: compaction once it has
    ``compact_min_fragments`` small fragments or enough deleted rows, ``optimize_indices``
    once rows are unindexed, a recall calibration of vector indexes whose table has grown by
    ``calibration_growth``, and cleanup of versions older than ``retention_s``.
    """

    def __init__(self, catalog: TableCatalog, settings: StoreSettings) -> None:
        self.catalog = catalog
        self.settings = settings
        self.stats: dict[str, TableStats] = {}
        self.runs: dict[str, int] = {}
        self._stop = threading.Event()
        # Commits per table since its last pass; a table with compact_min_fragments of them
        # is due, and wakes the background loop before its interval ends.
        self._commits: dict[str, int] = {}
        self._lock = threading.Lock()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        catalog.on_commit = self.committed

    def committed(self, name: str, what: str) -> None:
        """Count a commit to ``name`` (any thread); wake the loop once the table is due."""
        if what in OWN_COMMITS:
            return
        with self._lock:
            self._commits[name] = self._commits.get(name, 0) + 1
            if self._commits[name] != self.settings.compact_min_fragments:
                return  # not due yet, or due already: the loop has been woken
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: the server stopped
                loop.call_soon_threadsafe(wake.set)

    # -- one table ---------------------------------------------------------------------------

    def measure(self, name: str) -> TableStats:
        stats = table_stats(self.catalog.dataset(name), self._small_rows)
        self.stats[name] = stats
        return stats

    @property
    def _small_rows(self) -> int:
        # A fragment is small below a sixteenth of what compaction aims for.
        return max(1, self.settings.compact_target_rows // 16)

    def optimize(
        self,
        name: str,
        cleanup_older_than_s: float | None = None,
        *,
        only_if_needed: bool = False,
        delete_unverified: bool = False,
        error_if_tagged: bool = False,
    ) -> OptimizeResult:
        """Compact, add unindexed rows to indexes, calibrate vector indexes whose table grew
        past ``calibration_growth`` (or that have no calibration), and remove old versions,
        for one table.

        ``error_if_tagged`` refuses before anything is done when a tagged version would be old
        enough to go (LanceDB's optimize); ``delete_unverified`` as in
        :meth:`TableCatalog.cleanup`.
        """
        older_than = (
            self.settings.retention_s if cleanup_older_than_s is None else cleanup_older_than_s
        )
        if error_if_tagged:
            self.catalog.check_cleanup(name, older_than)
        stats = self.measure(name)
        result = OptimizeResult(version=stats.version)
        if not only_if_needed or self._needs_compaction(stats):
            metrics, _ = self.catalog.commit(name, "compact", self._compact)
            result.fragments_removed = metrics.fragments_removed
            result.fragments_added = metrics.fragments_added
            self._count("compact")
        if stats.indexes and (
            not only_if_needed
            or any(
                i.unindexed_rows >= self.settings.index_min_unindexed_rows
                for i in stats.indexes.values()
            )
        ):
            self.catalog.commit(name, "optimize_indices", lambda ds: ds.optimize.optimize_indices())
            self._count("optimize_indices")
        for index_name in self.catalog.calibrations_due(name):
            self.catalog.calibrate(name, index_name)
            self._count("calibrate")
        result.versions_removed, result.bytes_removed = self.catalog.cleanup(
            name, older_than, delete_unverified=delete_unverified
        )
        if result.versions_removed:
            self._count("cleanup")
        result.version = self.measure(name).version
        return result

    def compact_files(self, name: str, options: dict[str, Any]) -> CompactionResult:
        """Compact ``name`` now with Lance's ``compact_files`` options (unset: its defaults)."""
        metrics, after = self.catalog.commit(
            name, "compact", lambda ds: ds.optimize.compact_files(**options)
        )
        self._count("compact")
        self.measure(name)
        return CompactionResult(
            fragments_removed=metrics.fragments_removed,
            fragments_added=metrics.fragments_added,
            files_removed=metrics.files_removed,
            files_added=metrics.files_added,
            version=after.version,
        )

    def cleanup_old_versions(
        self,
        name: str,
        older_than_s: float | None = None,
        *,
        delete_unverified: bool = False,
        error_if_tagged: bool = False,
    ) -> tuple[int, int]:
        """Remove old versions of ``name`` now (default: older than Lance's 14 days); returns
        (versions, bytes) removed."""
        older_than = LANCE_CLEANUP_AGE_S if older_than_s is None else older_than_s
        if older_than < 0:
            raise InvalidArgument(f"older_than must not be negative, got {older_than} s")
        removed = self.catalog.cleanup(
            name, older_than, delete_unverified=delete_unverified, error_if_tagged=error_if_tagged
        )
        if removed[0]:
            self._count("cleanup")
        self.measure(name)
        return removed

    def _needs_compaction(self, stats: TableStats) -> bool:
        deleted = stats.deleted_rows / max(stats.rows + stats.deleted_rows, 1)
        return stats.small_fragments >= self.settings.compact_min_fragments or (
            stats.deleted_rows > 0 and deleted >= self.settings.compact_deleted_fraction
        )

    def _compact(self, dataset: lance.LanceDataset) -> lance.optimize.CompactionMetrics:
        return dataset.optimize.compact_files(
            target_rows_per_fragment=self.settings.compact_target_rows,
            materialize_deletions=True,
            materialize_deletions_threshold=self.settings.compact_deleted_fraction,
        )

    def _count(self, action: str) -> None:
        self.runs[action] = self.runs.get(action, 0) + 1

    # -- every table, in the background --------------------------------------------------------

    def run_once(self, only: list[str] | None = None) -> None:
        """One pass over every table (or those in ``only``); a table that fails is logged and
        left for the next pass."""
        names = self.catalog.list_tables()
        for gone in set(self.stats) - set(names):
            self.stats.pop(gone, None)
        for name in names if only is None else [n for n in only if n in names]:
            if self._stop.is_set():
                return
            with self._lock:
                self._commits[name] = 0
            try:
                before = self.stats.get(name)
                result = self.optimize(name, only_if_needed=True)
                if before is None or result.version != before.version:
                    self.catalog.warm(name)  # rebuild exact matrices off the request path
            except (EmbedsearchError, OSError, ValueError, RuntimeError) as exc:
                log.warning("maintenance of %s failed: %s", name, lance_message(exc))

    def measure_all(self) -> None:
        """Fill the per-table metrics (start-up); failures are logged."""
        for name in self.catalog.list_tables():
            try:
                self.measure(name)
            except (EmbedsearchError, OSError, ValueError, RuntimeError) as exc:
                log.warning("could not measure %s: %s", name, lance_message(exc))

    async def run_forever(self) -> None:
        """Pass over every table each ``maintenance_interval_s``, and over a table as soon as
        it took ``compact_min_fragments`` commits (at most MAX_DUTY of the time), until
        cancelled. Many small adds so never pile up thousands of fragments between passes,
        which would slow scans and grow the store's memory with every version's manifest.

        The passes run on the event loop's executor, whose threads the interpreter joins at
        exit. A daemon thread would still be inside Lance when the interpreter finalizes, and
        a thread torn down there through Lance's Rust frames aborts the whole process.
        """
        interval = self.settings.maintenance_interval_s
        if not interval:
            return
        loop = self._loop = asyncio.get_running_loop()
        wake = self._wake = asyncio.Event()
        full_pass_at = loop.time() + interval
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), max(0.0, full_pass_at - loop.time()))
                wake.clear()
                started = loop.time()
                if started >= full_pass_at:
                    await asyncio.to_thread(self.run_once)
                    full_pass_at = loop.time() + interval
                    continue
                with self._lock:
                    due = sorted(
                        name
                        for name, commits in self._commits.items()
                        if commits >= self.settings.compact_min_fragments
                    )
                await asyncio.to_thread(self.run_once, due)
                await asyncio.sleep((loop.time() - started) * (1 / MAX_DUTY - 1))
        finally:
            self._loop = self._wake = None
            self._stop.set()  # a pass still running stops at its next table


class StoreCollector(Collector):
    """Per-table gauges from the last measurement (a scrape does no IO) and conflict counts."""

    def __init__(self, maintenance: Maintenance) -> None:
        self.maintenance = maintenance

    def collect(self) -> Iterator[Metric]:
        table_gauges = {
            "rows": "Rows in the latest version.",
            "fragments": "Fragments (data files) in the latest version.",
            "small_fragments": "Fragments small enough to be compacted.",
            "deleted_rows": "Rows deleted but not yet removed by compaction.",
            "versions": "Versions kept (removed by cleanup after the retention period).",
            "version": "Latest version number.",
        }
        stats = dict(self.maintenance.stats)
        for attribute, doc in table_gauges.items():
            gauge = GaugeMetricFamily(f"store_table_{attribute}", doc, labels=["table"])
            for name, table in stats.items():
                gauge.add_metric([name], getattr(table, attribute))
            yield gauge
        unindexed = GaugeMetricFamily(
            "store_index_unindexed_rows",
            "Rows not yet covered by an index (searched by brute force).",
            labels=["table", "index"],
        )
        deltas = GaugeMetricFamily(
            "store_index_deltas",
            "Index segments (deltas) not yet merged.",
            labels=["table", "index"],
        )
        for name, table in stats.items():
            for index, index_stats in table.indexes.items():
                unindexed.add_metric([name, index], index_stats.unindexed_rows)
                deltas.add_metric([name, index], index_stats.deltas)
        yield unindexed
        yield deltas
        conflicts = CounterMetricFamily(
            "store_commit_conflicts",
            "Commits that lost a race with a concurrent writer and were retried.",
            labels=["operation"],
        )
        for operation, count in dict(self.maintenance.catalog.conflicts).items():
            conflicts.add_metric([operation], count)
        yield conflicts
        runs = CounterMetricFamily(
            "store_maintenance_actions", "Maintenance actions taken.", labels=["action"]
        )
        for action, count in dict(self.maintenance.runs).items():
            runs.add_metric([action], count)
        yield runs
        cached = GaugeMetricFamily(
            "store_exact_cache_bytes",
            "Bytes of in-memory vector matrices (exact search, and the refine step of indexed "
            "search), with the room grown ahead of their rows.",
            labels=["table", "column"],
        )
        for (name, column), (_, nbytes) in self.maintenance.catalog.exact.stats().items():
            cached.add_metric([name, column], nbytes)
        yield cached
        grouped = GaugeMetricFamily(
            "store_partition_scan_bytes",
            "Bytes of vector rows kept grouped by partition for scans from memory (a second "
            "copy of the column, within --exact-cache-max-bytes).",
            labels=["table", "column"],
        )
        for (name, column), nbytes in self.maintenance.catalog.grouped.stats().items():
            grouped.add_metric([name, column], nbytes)
        yield grouped
        rows = GaugeMetricFamily(
            "store_row_cache_bytes",
            "Bytes of table rows (every column but vectors) kept in memory for the results of "
            "searches answered from the matrices, within --row-cache-max-bytes.",
            labels=["table"],
        )
        for name, nbytes in self.maintenance.catalog.rows.stats().items():
            rows.add_metric([name], nbytes)
        yield rows


def register_metrics(maintenance: Maintenance, registry: CollectorRegistry) -> None:
    registry.register(StoreCollector(maintenance))
