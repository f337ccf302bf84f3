"""The rows of tables kept in memory, so that searches answered from the in-memory matrices
(exact search, the refine step, scans of partitions) read no data files for their results.

A take of ten rows through Lance costs about half a millisecond whatever the rows (measured
on 2 cores: 0.55-0.75 ms for ten ids of a 50,000-row table, through ``_take_rows``, ``take``
or an open file reader alike), which was a third of the store's time for an exact search of
20,000 rows and a quarter of a scan of partitions. Here the rows come from Arrow arrays.

Every column but the vector columns is kept (those come from the matrices); a table whose rows
do not fit ``--row-cache-max-bytes`` (all tables together, first come, first served) is read
from Lance as before, and so is a request that needs anything kept nowhere in memory.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

import lance
import numpy as np
import pyarrow as pa

from embedsearch.contract.schema import is_multivector, is_vector
from store_service.exact import split_addresses


def kept_columns(schema: pa.Schema) -> list[str]:
    """The columns this cache keeps: all but the vector and multi-vector ones."""
    return [f.name for f in schema if not (is_vector(f) or is_multivector(f))]


@dataclass(frozen=True)
class _Part:
    """One fragment's rows as read: ``table`` holds the rows present then, ``index`` maps a
    row's offset in the fragment to its row in ``table`` (-1: deleted when read)."""

    files: tuple[str, ...]
    table: pa.Table
    index: np.ndarray

    @property
    def held_bytes(self) -> int:
        return self.table.nbytes + self.index.nbytes


@dataclass(frozen=True)
class Rows:
    """A table's kept columns at one version, fragment by fragment; immutable once published.

    ``table`` is the fragments' rows end to end (their arrays, not copies), and ``_index`` maps
    a row's place in the fragments' offsets end to end (``_bases``: where each fragment of
    ``_ids`` starts) to its row in ``table``: a take is a few numpy lookups and one Arrow take.
    """

    version: int
    schema: pa.Schema
    parts: Mapping[int, _Part]
    kept: frozenset[str]
    table: pa.Table
    _ids: np.ndarray
    _bases: np.ndarray
    _index: np.ndarray

    @classmethod
    def of(cls, version: int, schema: pa.Schema, parts: Mapping[int, _Part]) -> Rows:
        ids = np.array(sorted(parts), np.int64)
        ordered = [parts[int(i)] for i in ids]
        kept = pa.schema([schema.field(c) for c in kept_columns(schema)], schema.metadata)
        table = pa.concat_tables([p.table for p in ordered]) if ordered else kept.empty_table()
        sizes = np.array([len(p.index) for p in ordered], np.int64)
        bases = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        starts = np.cumsum([0] + [p.table.num_rows for p in ordered])[:-1]
        index = np.concatenate(
            [
                np.where(p.index < 0, -1, p.index + int(s))
                for p, s in zip(ordered, starts, strict=True)
            ]
            or [np.empty(0, np.int64)]
        )
        return cls(
            version, schema, parts, frozenset(kept.names), table.cast(kept), ids, bases, index
        )

    @property
    def held_bytes(self) -> int:
        return sum(part.held_bytes for part in self.parts.values()) + self._index.nbytes

    def take(self, fragments: np.ndarray, offsets: np.ndarray, columns: list[str]) -> pa.Table:
        """``columns`` (kept ones) of the rows at (fragment id, offset) pairs, in the order
        given, typed as the table's schema has them. KeyError for a fragment this version does
        not have, or a row deleted before it was read."""
        slot = np.searchsorted(self._ids, fragments)
        if len(fragments) and (
            slot.max() >= len(self._ids) or (self._ids[slot] != fragments).any()
        ):
            raise KeyError("a fragment of another version")
        rows = self._index[self._bases[slot] + offsets]
        if (rows < 0).any():
            raise KeyError("a row deleted before it was read")
        return self.table.select(columns).take(pa.array(rows))


def _files(fragment: lance.LanceFragment) -> tuple[str, ...]:
    # Plain strings: DataFile.path is a str subclass made anew per call.
    return tuple(str(f.path) for f in fragment.metadata.files)


class RowCache:
    """:class:`Rows` per table, brought to a dataset's version by reading only the fragments
    whose data files changed since (appends, compaction, updates); a deletion changes no data
    file, and a deleted row is never asked for. Refreshes run one at a time, under a lock,
    so that admission sees every other table's final size."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: dict[str, Rows] = {}
        # Per table, the physical rows it had when it did not fit: not read again until it
        # is smaller, or a table is forgotten and leaves room (a search of a large table must
        # not read it whole every time).
        self._too_big: dict[str, int] = {}
        self._lock = threading.Lock()

    def forget(self, table: str) -> None:
        with self._lock:
            if self._entries.pop(table, None) is not None:
                self._too_big.clear()
            self._too_big.pop(table, None)

    def held_bytes(self) -> int:
        return sum(rows.held_bytes for rows in list(self._entries.values()))

    def stats(self) -> dict[str, int]:
        """Bytes held per table."""
        return {name: rows.held_bytes for name, rows in list(self._entries.items())}

    def rows(self, table: str, dataset: lance.LanceDataset) -> Rows | None:
        """The table's kept columns at ``dataset``'s version; None where they do not fit, or
        the cache holds a newer version (an older reader's rows come from Lance)."""
        current = self._entries.get(table)
        if current is not None and current.version == dataset.version:
            return current
        if not self.max_bytes:
            return None
        with self._lock:
            current = self._entries.get(table)
            if current is not None and current.version >= dataset.version:
                return current if current.version == dataset.version else None
            fragments = dataset.get_fragments()
            physical = sum(f.metadata.physical_rows for f in fragments)
            if physical >= self._too_big.get(table, physical + 1):
                return None
            others = sum(r.held_bytes for name, r in self._entries.items() if name != table)
            fresh = _refresh(current, dataset, fragments, self.max_bytes - others)
            if fresh is None:
                self._entries.pop(table, None)
                self._too_big[table] = physical
                return None
            self._too_big.pop(table, None)
            self._entries[table] = fresh
            return fresh


def _refresh(
    base: Rows | None,
    dataset: lance.LanceDataset,
    fragments: list[lance.LanceFragment],
    room: int,
) -> Rows | None:
    """``base`` brought to ``dataset``'s version, or None past ``room`` bytes. A schema
    change (another store's, or one whose columns are renamed without new files) reads every
    fragment again."""
    schema = dataset.schema
    old = dict(base.parts) if base is not None and base.schema.equals(schema) else {}
    parts: dict[int, _Part] = {}
    to_read = []
    for fragment in fragments:
        part = old.get(fragment.fragment_id)
        if part is not None and part.files == _files(fragment):
            parts[fragment.fragment_id] = part
        else:
            to_read.append(fragment)
    held = sum(part.held_bytes for part in parts.values())
    if held > room:
        return None
    if to_read:
        # Batch by batch, so that a table past the bound is given up after reading about
        # ``room`` bytes of it, not all of it.
        reader = dataset.scanner(
            columns=kept_columns(schema), with_row_address=True, fragments=to_read
        ).to_reader()
        batches = []
        for batch in reader:
            held += batch.nbytes
            if held > room:
                return None
            batches.append(batch)
        table = pa.Table.from_batches(batches, reader.schema)
        owners, offsets = split_addresses(table.column("_rowaddr").to_numpy())
        table = table.drop_columns(["_rowaddr"])
        by_owner = np.argsort(owners, kind="stable")
        ordered = owners[by_owner]
        for fragment in to_read:
            lo = np.searchsorted(ordered, fragment.fragment_id, side="left")
            hi = np.searchsorted(ordered, fragment.fragment_id, side="right")
            mine = by_owner[lo:hi]
            index = np.full(fragment.metadata.physical_rows, -1, np.int64)
            index[offsets[mine]] = np.arange(len(mine))
            piece = table.take(pa.array(mine)).combine_chunks()
            parts[fragment.fragment_id] = _Part(_files(fragment), piece, index)
    fresh = Rows.of(dataset.version, schema, parts)
    return fresh if fresh.held_bytes <= room else None
