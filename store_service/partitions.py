"""Indexed search by partitions scanned from memory.

Lance's IVF indexes probe ``nprobes`` partitions and score their rows by quantized codes (PQ,
RaBitQ) or walk an HNSW graph in each; a refine step then re-ranks candidates by their full
vectors, read from the data files. The store keeps every vector column it can in memory
(:mod:`store_service.exact`), so it can do better for ``target_recall``: when it calibrates
an index it trains its own finer partitions of the column with Lance's k-means
(``IndicesBuilder.train_ivf``), about :data:`ROWS_PER_PARTITION` rows each, and keeps the
rows grouped by them, so that each probe is one small contiguous matrix-vector product on
full vectors: no quantization error to refine away, and no reads.

Measured on bench/store_search's data (AMD EPYC, 2 cores, in-process, one thread): recall@10
0.95 on served queries took 24-32 of 250 partitions and 0.5-0.9 ms on prose (50,000 rows), and
24-32 of 1,000 partitions and 1.2-1.6 ms on copies (200,000 rows); Lance's IVF_PQ with the
refine step from memory took 1.6 ms on prose.

Calibration measures the scan beside Lance's settings and picks it where it is the cheapest
way to a level (:mod:`store_service.calibration`); a search given ``nprobes`` by hand keeps
Lance's semantics. The centroids are kept beside the calibration, so that a restarted store
groups the rows as they were measured.

Rows written since a grouping was made are scanned whole, until there are enough of them to
group again (:data:`REGROUP_SHARE`); deleted rows are skipped by the snapshot's liveness mask.
Grouping again runs in a background thread (0.1-0.6 s of work on 50,000-200,000 rows), while
searches go on with the old grouping and scan the new rows whole; it never holds up a search.
"""

from __future__ import annotations

import io
import logging
import threading
from dataclasses import dataclass
from functools import cached_property

import lance
import numpy as np
from lance.indices import IndicesBuilder

from store_service.exact import ColumnCache, ExactCache, Snapshot, from_dots, ranked

log = logging.getLogger("store_service.partitions")

# Rows per trained partition: a probe is then one matrix-vector product over ~300 KB of
# 384-dim float32 rows. Fewer, larger partitions (800 rows) took twice the time to 0.95 on
# bench/store_search's prose; smaller ones (100) took longer again (more probes, each a call).
ROWS_PER_PARTITION = 200
# Fewer partitions than this: the scan is not worth having (exact search is as cheap).
MIN_PARTITIONS = 4
# The k-means sample (rows per partition) and iterations: 2.3 s for 1,000 partitions of
# 200,000 rows of 384 dims on 2 cores.
TRAIN_SAMPLE_RATE, TRAIN_ITERATIONS = 64, 50

# Rows written since the last grouping are scanned whole on every search; once they are more
# than this share of the grouped rows (or REGROUP_MIN_ROWS) the rows are grouped again.
REGROUP_SHARE, REGROUP_MIN_ROWS = 1 / 32, 2048
# Rows assigned to centroids per matrix product: bounds the (rows x partitions) scores.
ASSIGN_ROWS = 8192


@dataclass(frozen=True, eq=False)
class Centroids:
    """Partition centroids, and how a vector's nearest one is found under a metric. Sets are
    told apart by identity: the catalog holds one per calibration."""

    vectors: np.ndarray  # partitions x dims, float32
    metric: str

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, self.vectors, allow_pickle=False)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, metric: str) -> Centroids:
        vectors = np.load(io.BytesIO(data), allow_pickle=False)
        if vectors.ndim != 2 or not np.isfinite(vectors).all():
            raise ValueError(f"centroids must be a finite 2-D array, not shape {vectors.shape}")
        return cls(np.ascontiguousarray(vectors, np.float32), metric)

    @cached_property
    def _offsets(self) -> tuple[np.ndarray, np.ndarray]:
        """(added, scale) with scores = added - (vectors @ centroids.T) * scale."""
        if self.metric == "l2":
            return (self.vectors * self.vectors).sum(1), np.float32(2)
        if self.metric == "cosine":
            norms = np.linalg.norm(self.vectors, axis=1)
            return np.zeros(len(norms), np.float32), 1 / np.where(norms > 0, norms, 1)
        return np.zeros(len(self.vectors), np.float32), np.float32(1)

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """(rows x partitions), lower is nearer: squared l2 less the row's own norm, minus the
        cosine times the row's norm, or minus the dot product."""
        added, scale = self._offsets
        return added - (vectors @ self.vectors.T) * scale

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """The partition of each row of ``vectors``."""
        parts = [
            np.argmin(self.scores(vectors[start : start + ASSIGN_ROWS]), axis=1)
            for start in range(0, len(vectors), ASSIGN_ROWS)
        ]
        return np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)

    def probed(self, query: np.ndarray, nprobes: int) -> np.ndarray:
        """The ``nprobes`` partitions nearest ``query``, in partition order."""
        scores = self.scores(query[None])[0]
        if nprobes >= len(scores):
            return np.arange(len(scores))
        return np.sort(np.argpartition(scores, nprobes - 1)[:nprobes])


def train(dataset: lance.LanceDataset, column: str, metric: str) -> Centroids | None:
    """Partitions of ``column`` trained by Lance's k-means on a sample of its rows, about
    ROWS_PER_PARTITION rows each; None for a table too small to be worth scanning so."""
    rows = dataset.count_rows()
    count = rows // ROWS_PER_PARTITION
    if count < MIN_PARTITIONS:
        return None
    try:
        model = IndicesBuilder(dataset, column).train_ivf(
            count,
            distance_type=metric,
            sample_rate=min(TRAIN_SAMPLE_RATE, rows // count),
            max_iters=TRAIN_ITERATIONS,
        )
    except (ValueError, OSError, RuntimeError) as exc:
        # The scan is an optimisation: the calibration goes on with Lance's settings alone.
        log.warning("could not train scan partitions of column %s: %s", column, exc)
        return None
    centroids = model.centroids
    dims = centroids.type.list_size
    values = centroids.values.to_numpy(zero_copy_only=False).astype(np.float32)
    return Centroids(np.ascontiguousarray(values.reshape(-1, dims)), metric)


@dataclass(frozen=True, eq=False)
class Grouped:
    """A snapshot's rows ``[0, covered)`` grouped by partition; immutable once published."""

    centroids: Centroids
    layout: int  # the snapshot layout whose positions ``order`` holds
    covered: int
    assigned: np.ndarray  # each position's partition, kept to group again incrementally
    order: np.ndarray  # positions, partition by partition
    bounds: np.ndarray  # partition p holds order[bounds[p] : bounds[p + 1]]
    matrix: np.ndarray  # the rows of ``order``, contiguous
    sq_norms: np.ndarray

    @property
    def held_bytes(self) -> int:
        parts = (self.assigned, self.order, self.matrix, self.sq_norms)
        return sum(part.nbytes for part in parts)

    def extends(self, snapshot: Snapshot, centroids: Centroids) -> bool:
        """Whether it can serve ``snapshot``: its rows, and the ones written since scanned
        whole."""
        return (
            self.layout == snapshot.layout
            and self.centroids is centroids
            and self.covered <= snapshot.used
        )

    def serves(self, snapshot: Snapshot, centroids: Centroids) -> bool:
        """Whether it serves ``snapshot`` with few enough rows left to scan whole."""
        unseen = snapshot.used - self.covered
        limit = max(REGROUP_MIN_ROWS, int(self.covered * REGROUP_SHARE))
        return self.extends(snapshot, centroids) and unseen <= limit


def group(snapshot: Snapshot, centroids: Centroids, base: Grouped | None = None) -> Grouped:
    """``snapshot``'s rows grouped by their nearest centroid; the rows ``base`` assigned keep
    their partitions when it has the same layout and centroids, so only new rows are assigned."""
    known = np.zeros(0, np.int32)
    if base is not None and base.layout == snapshot.layout and base.centroids is centroids:
        known = base.assigned[: snapshot.used]
    fresh = centroids.assign(snapshot.matrix[len(known) :])
    assigned = np.concatenate([known, fresh])
    order = np.argsort(assigned, kind="stable")
    bounds = np.searchsorted(assigned[order], np.arange(len(centroids.vectors) + 1))
    return Grouped(
        centroids,
        snapshot.layout,
        snapshot.used,
        assigned,
        order,
        bounds,
        snapshot.buffers.matrix[order],
        snapshot.buffers.sq_norms[order],
    )


def nearest(
    grouped: Grouped,
    snapshot: Snapshot,
    query: np.ndarray,
    nprobes: int,
    want: int,
    metric: str,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``want`` nearest live (and ``allowed``) rows of the ``nprobes`` partitions nearest
    ``query``, and of the rows written since the grouping: (matrix positions, distances),
    nearest first, distances as Lance reports them for ``metric``."""
    q = query.astype(np.float32)
    spans = [
        (int(grouped.bounds[part]), int(grouped.bounds[part + 1]))
        for part in grouped.centroids.probed(q, nprobes)
    ]
    # One matrix-vector product per partition, into one buffer; the rest runs once on it.
    dots = np.empty(sum(end - start for start, end in spans), np.float32)
    at = 0
    for start, end in spans:
        np.matmul(grouped.matrix[start:end], q, out=dots[at : at + end - start])
        at += end - start
    positions = [grouped.order[start:end] for start, end in spans]
    sq_norms = [grouped.sq_norms[start:end] for start, end in spans]
    if snapshot.used > grouped.covered:  # rows written since the grouping: scanned whole
        unseen = slice(grouped.covered, snapshot.used)
        dots = np.concatenate([dots, snapshot.buffers.matrix[unseen] @ q])
        positions.append(np.arange(unseen.start, unseen.stop))
        sq_norms.append(snapshot.buffers.sq_norms[unseen])
    pool = np.concatenate(positions)
    fast = from_dots(dots, np.concatenate(sq_norms), q, metric)
    keep = snapshot.alive[pool] if allowed is None else snapshot.alive[pool] & allowed[pool]
    return ranked(snapshot, q, pool[keep], fast[keep], want, metric)


class GroupedCache(ColumnCache[Grouped]):
    """The grouping of each indexed vector column whose partitions are scanned from memory,
    kept within the bound of the store's matrices (:class:`~store_service.exact.ExactCache`,
    whose ``max_bytes`` counts both): a grouping holds a second copy of the column's rows."""

    def __init__(self, matrices: ExactCache) -> None:
        super().__init__()
        # The matrices whose rows are grouped, and whose bound counts the groupings too.
        self.matrices = matrices
        matrices.also_held = self.held_bytes
        self._regrouping: dict[tuple[str, str], threading.Thread] = {}

    def grouped(
        self, table: str, snapshot: Snapshot, centroids: Centroids, keep: bool = True
    ) -> Grouped | None:
        """``snapshot``'s column grouped by ``centroids``; None when it does not fit the bound,
        or the snapshot is older than the grouping (a reader that took its handle before a
        write that another reader has seen). Past the regroup threshold the column's grouping
        is returned as it is, its new rows to be scanned whole, while a new one is made in the
        background (:meth:`settle` waits for it).

        ``keep=False`` makes one beside the column's grouping without replacing it (a
        calibration measuring new partitions while searches still use the old ones, which
        would otherwise regroup the column back and forth); :meth:`adopt` keeps it later."""
        key = (table, snapshot.column)
        current = self._entries.get(key)
        if current is not None and current.serves(snapshot, centroids):
            return current
        with self._lock:
            current = self._entries.get(key)
            if current is not None and current.serves(snapshot, centroids):
                return current
            older = (  # a reader older than the grouping: exact search serves it
                current is not None
                and current.layout == snapshot.layout
                and current.covered > snapshot.used
            )
            if older:
                return None
            # The matrix, each row's partition (int32), its position (int64), its norm (float32).
            row_bytes = snapshot.dims * 4 + 4 + 8 + 4
            others = self._others(key) if keep else self.held_bytes()
            room = self.matrices.max_bytes - self.matrices.held_bytes() - others
            if snapshot.used * row_bytes > room:
                if keep:
                    self._entries.pop(key, None)
                return None
            if keep and current is not None and current.extends(snapshot, centroids):
                self._regroup_aside(key, snapshot, centroids, current)
                return current  # until then, the rows written since are scanned whole
            made = group(snapshot, centroids, current)
            if keep:
                self._entries[key] = made
            return made

    def _regroup_aside(
        self, key: tuple[str, str], snapshot: Snapshot, centroids: Centroids, current: Grouped
    ) -> None:
        """Group ``snapshot`` in a background thread, one per column at a time; the result
        replaces ``current`` only if nothing replaced or dropped it meanwhile. Called under
        the lock."""
        if key in self._regrouping:
            return

        def regroup() -> None:
            try:
                made = group(snapshot, centroids, current)
                with self._lock:
                    if self._entries.get(key) is current:
                        self._entries[key] = made
            except Exception:  # a background thread has no caller to answer: log it
                log.exception("regrouping %s/%s failed; its old grouping stays", *key)
            finally:
                with self._lock:
                    del self._regrouping[key]

        thread = threading.Thread(target=regroup, name=f"regroup-{key[0]}", daemon=True)
        self._regrouping[key] = thread
        thread.start()

    def settle(self) -> None:
        """Wait for the groupings being made in the background."""
        for thread in list(self._regrouping.values()):
            thread.join()

    def adopt(self, table: str, column: str, made: Grouped) -> None:
        """Keep ``made`` (from ``grouped(keep=False)``) as the column's grouping."""
        with self._lock:
            self._entries[(table, column)] = made

    def stats(self) -> dict[tuple[str, str], int]:
        """Bytes held per (table, column)."""
        return {key: g.held_bytes for key, g in list(self._entries.items())}
