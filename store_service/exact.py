"""Exact nearest-neighbour search from an in-memory float32 matrix per vector column."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import lance
import numpy as np
import pyarrow as pa

# A Lance row address is (fragment id << 32) | offset in the fragment.
_OFFSET_MASK = np.uint64(0xFFFFFFFF)
# Extra candidates re-ranked with exactly computed distances, so that the fast (expanded) form
# of the distance cannot push a true neighbour past the cut by rounding.
_SPARE = 16
# The metrics whose distances this module computes as Lance does.
METRICS = ("l2", "cosine", "dot")
# Tokens of matrix layouts: a snapshot keeps its base's layout unless its rows were moved.
_layouts = itertools.count(1)


@dataclass(frozen=True)
class _Slot:
    """Where one fragment's rows sit in the matrix, and what identifies its contents."""

    start: int
    rows: int
    files: tuple[str, ...]
    deletions: tuple[Any, ...]


@dataclass
class _Buffers:
    """Row storage that grows by doubling; snapshots see only the prefix that was filled."""

    matrix: np.ndarray
    row_ids: np.ndarray
    sq_norms: np.ndarray
    valid: np.ndarray
    # The matrix row is the stored vector, value for value (no NaN or infinity replaced).
    verbatim: np.ndarray

    @classmethod
    def empty(cls, capacity: int, dims: int) -> _Buffers:
        return cls(
            np.zeros((capacity, dims), np.float32),
            np.zeros(capacity, np.uint64),
            np.zeros(capacity, np.float32),
            np.zeros(capacity, bool),
            np.zeros(capacity, bool),
        )

    @property
    def capacity(self) -> int:
        return len(self.row_ids)

    def grown(self, used: int, needed: int, limit: int) -> _Buffers:
        """These buffers if ``needed`` rows fit, else larger copies holding the first ``used``:
        an eighth larger (or ``needed``), but at most ``limit`` rows unless ``needed`` is more.
        An eighth, not double: a table of 200,000 rows taking small writes holds 25,000 rows of
        room, not 200,000, and while the copy is made both buffers live. Growing by a fixed
        share still copies the column about 9 times over in all as it grows."""
        if needed <= self.capacity:
            return self
        capacity = max(needed, min(self.capacity + self.capacity // 8, limit))
        bigger = _Buffers.empty(capacity, self.matrix.shape[1])
        for name in _BUFFERS:
            getattr(bigger, name)[:used] = getattr(self, name)[:used]
        return bigger


_BUFFERS = ("matrix", "row_ids", "sq_norms", "valid", "verbatim")


@dataclass(frozen=True)
class Snapshot:
    """A vector column at one table version, as a matrix; immutable once published."""

    dataset: lance.LanceDataset
    column: str
    buffers: _Buffers
    used: int
    alive: np.ndarray
    slots: Mapping[int, _Slot]
    # Same layout, same rows at the positions both snapshots hold (appends add positions past
    # ``used``); a repack moves rows and starts a new layout.
    layout: int
    _frag_ids: np.ndarray = field(repr=False)
    _frag_starts: np.ndarray = field(repr=False)

    @property
    def version(self) -> int:
        return self.dataset.version

    @property
    def matrix(self) -> np.ndarray:
        return self.buffers.matrix[: self.used]

    @property
    def dims(self) -> int:
        return self.buffers.matrix.shape[1]

    @property
    def held_bytes(self) -> int:
        """Memory of the matrix, grown ahead of the rows it holds."""
        return self.buffers.matrix.nbytes

    def positions(self, row_addresses: np.ndarray) -> np.ndarray:
        """Matrix rows of Lance row addresses (``_rowaddr``) of this version."""
        fragments, offsets = split_addresses(row_addresses)
        slot = np.searchsorted(self._frag_ids, fragments.astype(np.uint64))
        return self._frag_starts[slot] + offsets

    def addresses(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(fragment ids, offsets in their fragments) of matrix rows."""
        by_start = np.argsort(self._frag_starts)
        starts = self._frag_starts[by_start]
        slot = np.searchsorted(starts, positions, side="right") - 1
        return self._frag_ids[by_start][slot], positions - starts[slot]

    def rows_matching(self, where: str) -> np.ndarray:
        """A mask over the matrix of the rows matching a SQL filter (Lance evaluates it)."""
        found = self.dataset.to_table(columns=[], filter=where, with_row_address=True)
        mask = np.zeros(self.used, bool)
        mask[self.positions(found.column("_rowaddr").to_numpy())] = True
        return mask

    def distances(self, query: np.ndarray, metric: str, rows: np.ndarray | None = None) -> Any:
        """Lance's distances from ``query`` to every row, or exactly to ``rows``.

        Over every row the fast, expanded forms run as one matrix-vector product; over a few
        candidate rows they are computed directly, the way Lance does, to match its values.
        l2 is squared Euclidean, cosine is 1 - cos, dot is 1 - x.q (all as Lance reports them).
        """
        q = query.astype(np.float32)
        if rows is None:
            return fast_distances(self.matrix, self.buffers.sq_norms[: self.used], q, metric)
        x = self.buffers.matrix[rows]
        if metric == "l2":
            diff = x - q
            return np.einsum("ij,ij->i", diff, diff)
        dots = x @ q
        if metric == "dot":
            return np.float32(1) - dots
        norms = np.sqrt(np.einsum("ij,ij->i", x, x)) * np.sqrt(q @ q)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.float32(1) - dots / norms


def split_addresses(row_addresses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fragment ids, offsets in their fragments) of Lance row addresses, as int64."""
    addresses = row_addresses.astype(np.uint64)
    fragments = (addresses >> np.uint64(32)).astype(np.int64)
    return fragments, (addresses & _OFFSET_MASK).astype(np.int64)


def fast_distances(matrix: np.ndarray, sq_norms: np.ndarray, q: np.ndarray, metric: str) -> Any:
    """Distances from ``q`` to the rows of ``matrix`` (whose squared norms are ``sq_norms``)
    in the expanded forms, one matrix-vector product: off from Lance's by rounding."""
    return from_dots(matrix @ q, sq_norms, q, metric)


def from_dots(dots: np.ndarray, sq_norms: np.ndarray, q: np.ndarray, metric: str) -> Any:
    """:func:`fast_distances` from the rows' dot products with ``q``."""
    if metric == "l2":
        return sq_norms - 2 * dots + (q @ q)
    if metric == "dot":
        return np.float32(1) - dots
    norms = np.sqrt(sq_norms) * np.sqrt(q @ q)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.float32(1) - dots / norms


def nearest(
    snapshot: Snapshot,
    query: np.ndarray,
    want: int,
    metric: str,
    allowed: np.ndarray | None,
    lower: float | None = None,
    upper: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``want`` nearest allowed rows: (matrix positions, distances), nearest first.

    ``lower <= distance < upper`` when given, as Lance's distance_range.
    """
    fast = snapshot.distances(query, metric)
    keep = snapshot.alive if allowed is None else snapshot.alive & allowed
    pool = np.flatnonzero(keep)
    return ranked(snapshot, query, pool, fast[pool], want, metric, lower, upper)


def ranked(
    snapshot: Snapshot,
    query: np.ndarray,
    pool: np.ndarray,
    fast: np.ndarray,
    want: int,
    metric: str,
    lower: float | None = None,
    upper: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``want`` nearest of the candidate rows ``pool`` (matrix positions), whose distances
    in the fast forms are ``fast``: (positions, exact distances), nearest first, ties by
    position. The few best by the fast forms, and a spare, are ranked by exact distances."""
    keep = np.isfinite(fast)
    if lower is not None or upper is not None:
        # The fast forms are off by rounding: the range is widened here, applied exactly below.
        slack = 1e-3 * (1.0 + np.abs(fast))
        if lower is not None:
            keep &= fast >= lower - slack
        if upper is not None:
            keep &= fast < upper + slack
    pool, fast = pool[keep], fast[keep]
    take = min(len(pool), 2 * want + _SPARE)
    if take < len(pool):
        pool = pool[np.argpartition(fast, take - 1)[:take]]
    exact = snapshot.distances(query, metric, pool).astype(np.float32)
    ok = np.ones(len(pool), bool)
    if lower is not None:
        ok &= exact >= lower
    if upper is not None:
        ok &= exact < upper
    pool, exact = pool[ok], exact[ok]
    order = np.lexsort((pool, exact))[:want]
    return pool[order], exact[order]


def vectors_of(column: pa.ChunkedArray | pa.Array, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows x dims float32 matrix, non-null mask) of a fixed_size_list column; NaN and
    infinity read as numbers (:func:`raw_vectors_of` leaves them)."""
    matrix, valid = raw_vectors_of(column, dims)
    return np.nan_to_num(matrix), valid


def raw_vectors_of(column: pa.ChunkedArray | pa.Array, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows x dims float32 matrix, non-null mask) of a fixed_size_list column, as stored."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    array = column
    valid = (
        np.ones(len(array), bool)
        if array.null_count == 0
        else array.is_valid().to_numpy(zero_copy_only=False)
    )
    start = array.offset * dims
    values = array.values.slice(start, len(array) * dims).to_numpy(zero_copy_only=False)
    return values.astype(np.float32, copy=False).reshape(len(array), dims), valid


class _Sized(Protocol):
    @property
    def held_bytes(self) -> int: ...


E = TypeVar("E", bound=_Sized)


class ColumnCache(Generic[E]):
    """What a cache keeps per (table, column), made one at a time under its lock (so that
    admission sees every other entry's final size), and forgotten with its table."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], E] = {}
        self._lock = threading.Lock()

    def forget(self, table: str) -> None:
        # Under the lock: an entry of the table being made is dropped too.
        with self._lock:
            for key in [k for k in self._entries if k[0] == table]:
                del self._entries[key]

    def held_bytes(self) -> int:
        """Memory of every entry."""
        return sum(entry.held_bytes for entry in list(self._entries.values()))

    def _others(self, key: tuple[str, str]) -> int:
        """Memory of every entry but ``key``'s."""
        return sum(e.held_bytes for k, e in list(self._entries.items()) if k != key)


class ExactCache(ColumnCache[Snapshot]):
    """Snapshots of vector columns, refreshed incrementally as table versions advance.

    Appends read only the new fragments; deletions re-read only the row addresses of the
    fragments they touched; compaction reads the rewritten fragments. A snapshot is never
    modified after it is published, so readers need no lock.

    ``max_bytes`` bounds the matrices of all columns together. Columns are admitted first
    come, first served, and are kept until their table is dropped or outgrows what is left:
    a column that does not fit is searched by Lance instead. Nothing is evicted to make room,
    so two large columns cannot take turns reading themselves in. ``also_held`` counts memory
    others keep within the same bound (:class:`store_service.partitions.GroupedCache`).
    """

    def __init__(self, max_bytes: int) -> None:
        super().__init__()
        self.max_bytes = max_bytes
        self.also_held: Callable[[], int] = lambda: 0

    def snapshot(self, table: str, dataset: lance.LanceDataset, column: str) -> Snapshot | None:
        """The column at ``dataset``'s version, or None if it does not fit the bound."""
        key = (table, column)
        current = self._entries.get(key)
        if current is not None and current.version == dataset.version:
            return current
        with self._lock:
            current = self._entries.get(key)
            if current is not None and current.version == dataset.version:
                return current
            if current is not None and current.version > dataset.version:
                if dataset.latest_version >= current.version:
                    # A reader of an older version than the matrix (it took its handle before a
                    # write another reader has seen): Lance serves it, and the matrix stays.
                    return None
                current = None  # the table was dropped and made anew (by another store)
            dims = dataset.schema.field(column).type.list_size
            rows = sum(f.metadata.physical_rows for f in dataset.get_fragments())
            others = self._others(key) + self.also_held()
            room = (self.max_bytes - others) // (dims * 4)
            if rows == 0 or rows > room:
                self._entries.pop(key, None)
                return None
            fresh = _refresh(current, dataset, column, room)
            self._entries[key] = fresh
            return fresh

    def stats(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(rows, bytes) held per (table, column)."""
        held = list(self._entries.items())  # one step: refreshes may change the dict
        return {k: (int(s.alive.sum()), s.held_bytes) for k, s in held}


def _slot_key(fragment: lance.LanceFragment) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    meta = fragment.metadata
    # Plain strings: DataFile.path makes a str subclass (a new class per call) that would keep
    # one class object alive per file for as long as the slot lives.
    files = tuple(str(f.path) for f in meta.files)
    deletion = meta.deletion_file
    deletions = (
        () if deletion is None else (deletion.id, deletion.read_version, deletion.num_deleted_rows)
    )
    return files, deletions


def _refresh(
    base: Snapshot | None, dataset: lance.LanceDataset, column: str, limit: int
) -> Snapshot:
    """``base`` brought to ``dataset``'s version, reading as little as possible, in buffers
    of at most ``limit`` rows (unless the version has more)."""
    dims = dataset.schema.field(column).type.list_size
    if base is not None and (base.dims != dims or base.column != column):
        base = None
    old_slots = dict(base.slots) if base else {}
    fragments = dataset.get_fragments()
    slots: dict[int, _Slot] = {}
    to_read: list[lance.LanceFragment] = []
    to_recheck: list[lance.LanceFragment] = []
    for fragment in fragments:
        files, deletions = _slot_key(fragment)
        old = old_slots.get(fragment.fragment_id)
        if old is not None and old.files == files and old.rows == fragment.physical_rows:
            slots[fragment.fragment_id] = _Slot(old.start, old.rows, files, deletions)
            if old.deletions != deletions:
                to_recheck.append(fragment)
        else:
            to_read.append(fragment)

    kept_rows = sum(s.rows for s in slots.values())
    new_rows = sum(f.physical_rows for f in to_read)
    used = base.used if base else 0
    if base is None or (used - kept_rows) > max(used // 3, 4096):
        # Start over from the fragments still live (no IO: their rows are copied).
        buffers, alive, slots, used = _repack(base, slots, new_rows, dims, limit)
        layout = next(_layouts)
    else:
        layout = base.layout
        buffers = base.buffers.grown(used, used + new_rows, limit)
        alive = np.zeros(used + new_rows, bool)
        for slot in slots.values():
            alive[slot.start : slot.start + slot.rows] = base.alive[
                slot.start : slot.start + slot.rows
            ]

    for fragment in to_read:
        files, deletions = _slot_key(fragment)
        slots[fragment.fragment_id] = _Slot(used, fragment.physical_rows, files, deletions)
        used += fragment.physical_rows
    snapshot = _publish(dataset, column, buffers, used, alive, slots, layout)

    if to_read:
        table = dataset.scanner(
            columns=[column], with_row_id=True, with_row_address=True, fragments=to_read
        ).to_table()
        where = snapshot.positions(table.column("_rowaddr").to_numpy())
        raw, valid = raw_vectors_of(table.column(column), dims)
        buffers.verbatim[where] = np.isfinite(raw).all(axis=1)
        matrix = np.nan_to_num(raw)
        buffers.matrix[where] = matrix
        buffers.row_ids[where] = table.column("_rowid").to_numpy()
        buffers.sq_norms[where] = np.einsum("ij,ij->i", matrix, matrix)
        buffers.valid[where] = valid
        for fragment in to_read:
            slot = slots[fragment.fragment_id]
            alive[slot.start : slot.start + slot.rows] = False
        alive[where] = valid
    if to_recheck:
        present = dataset.scanner(
            columns=[], with_row_address=True, fragments=to_recheck
        ).to_table()
        where = snapshot.positions(present.column("_rowaddr").to_numpy())
        for fragment in to_recheck:
            slot = slots[fragment.fragment_id]
            alive[slot.start : slot.start + slot.rows] = False
        alive[where] = buffers.valid[where]
    return snapshot


def _repack(
    base: Snapshot | None, slots: dict[int, _Slot], new_rows: int, dims: int, limit: int
) -> tuple[_Buffers, np.ndarray, dict[int, _Slot], int]:
    kept = sum(s.rows for s in slots.values())
    buffers = _Buffers.empty(max(kept + new_rows, min(1024, limit)), dims)
    alive = np.zeros(kept + new_rows, bool)
    moved: dict[int, _Slot] = {}
    cursor = 0
    for fragment_id, slot in sorted(slots.items()):
        assert base is not None  # slots are only kept from a base snapshot
        src = slice(slot.start, slot.start + slot.rows)
        dst = slice(cursor, cursor + slot.rows)
        for name in _BUFFERS:
            getattr(buffers, name)[dst] = getattr(base.buffers, name)[src]
        alive[dst] = base.alive[src]
        moved[fragment_id] = _Slot(cursor, slot.rows, slot.files, slot.deletions)
        cursor += slot.rows
    return buffers, alive, moved, cursor


def _publish(
    dataset: lance.LanceDataset,
    column: str,
    buffers: _Buffers,
    used: int,
    alive: np.ndarray,
    slots: dict[int, _Slot],
    layout: int,
) -> Snapshot:
    ids = np.array(sorted(slots), dtype=np.uint64)
    starts = np.array([slots[int(i)].start for i in ids], dtype=np.int64)
    return Snapshot(dataset, column, buffers, used, alive, slots, layout, ids, starts)
