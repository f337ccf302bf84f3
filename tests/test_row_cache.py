"""The row cache (store_service/rows.py): searches answered from the in-memory matrices give,
row for row and type for type, what Lance's take of the same rows gives, after every kind of
change to the table, this store's or another writer's; where the rows cannot come from memory,
Lance still answers; and the cache stays within its bound."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lance
import numpy as np
import pyarrow as pa
import pytest

from store_service.catalog import SearchParams, TableCatalog
from store_service.settings import StoreSettings

DIMS = 8
FLOAT32 = pa.float32()


def schema(vector_type: pa.DataType = FLOAT32) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("text", pa.string(), metadata={b"note": b"kept"}),
            pa.field("title", pa.string()),
            pa.field("meta", pa.struct([("a", pa.int64()), ("b", pa.string())])),
            pa.field("tags", pa.list_(pa.string())),
            pa.field("when", pa.timestamp("us", tz="UTC")),
            pa.field("vector", pa.list_(vector_type, DIMS)),
        ],
        metadata={b"embedding_functions": b"[]"},
    )


def rows(start: int, stop: int, vector_type: pa.DataType = FLOAT32) -> pa.Table:
    ids = np.arange(start, stop)
    vectors = np.random.default_rng(start).standard_normal((len(ids), DIMS)).astype(np.float32)
    return pa.table(
        {
            "id": ids,
            "text": [None if i % 7 == 0 else f"row {i}" for i in ids],
            "title": [f"title {i}" for i in ids],
            "meta": [{"a": int(i), "b": str(i)} if i % 5 else None for i in ids],
            "tags": [[str(i)] * int(i % 3) for i in ids],
            "when": pa.array(ids * 1_000_000, pa.timestamp("us", tz="UTC")),
            "vector": pa.FixedSizeListArray.from_arrays(
                pa.array(vectors.ravel()).cast(vector_type), DIMS
            ),
        },
        schema=schema(vector_type),
    )


def catalogs(root: Path, row_cache_max_bytes: int = 64 << 20) -> tuple[TableCatalog, TableCatalog]:
    """A catalog with the row cache, and one without (every result taken from Lance)."""
    cached = TableCatalog(str(root), settings=StoreSettings(data_root=str(root)))
    cached.rows.max_bytes = row_cache_max_bytes
    plain = TableCatalog(str(root), settings=StoreSettings(data_root=str(root)))
    plain.rows.max_bytes = 0
    return cached, plain


def search(catalog: TableCatalog, query: np.ndarray, **options: Any) -> pa.Table:
    params = SearchParams(vector_column="vector", vector=query, **{"k": 25, **options})
    return catalog.search("docs", params)


def assert_same_results(cached: TableCatalog, plain: TableCatalog, **options: Any) -> None:
    for seed in range(5):
        query = np.random.default_rng(100 + seed).standard_normal(DIMS).astype(np.float32)
        ours, lances = search(cached, query, **options), search(plain, query, **options)
        assert ours.schema.equals(lances.schema, check_metadata=True), (ours.schema, lances.schema)
        assert ours.equals(lances), (ours.to_pydict(), lances.to_pydict())


def other_writer(root: Path) -> lance.LanceDataset:
    """The table as another store sharing the root writes it."""
    return lance.dataset(str(root / "docs.lance"))


CHANGES: list[tuple[str, Callable[[TableCatalog, Path], Any]]] = [
    ("appends", lambda c, r: c.add("docs", rows(300, 400))),
    ("deletes", lambda c, r: c.delete("docs", "id % 4 = 1")),
    ("updates", lambda c, r: c.update("docs", "id < 50", {"text": "'changed'"})),
    ("another writer adds a column", lambda c, r: other_writer(r).add_columns({"twice": "id * 2"})),
    (
        "another writer swaps two columns' names (no new data files)",
        lambda c, r: [
            other_writer(r).alter_columns({"path": a, "name": b})
            for a, b in (("title", "swap"), ("text", "title"), ("swap", "text"))
        ],
    ),
    (
        "another writer renames a column",
        lambda c, r: other_writer(r).alter_columns({"path": "text", "name": "body"}),
    ),
    ("another writer drops a column", lambda c, r: other_writer(r).drop_columns(["tags"])),
    ("compaction", lambda c, r: other_writer(r).optimize.compact_files()),
]


def test_results_from_memory_equal_lance_take_after_every_change(tmp_path: Path) -> None:
    cached, plain = catalogs(tmp_path)
    cached.create_table("docs", schema(), rows=rows(0, 100))
    for start in (100, 200):
        cached.add("docs", rows(start, start + 100))
    assert_same_results(cached, plain)
    assert cached.rows.stats()["docs"] > 0  # the results above came from memory
    for what, change in CHANGES:
        change(cached, tmp_path)
        assert_same_results(cached, plain)
        assert_same_results(cached, plain, columns=["id", "vector"], with_row_id=True)
        assert_same_results(cached, plain, filter="id % 3 = 0", offset=2)
        assert_same_results(cached, plain, columns=["vector", "id", "vector"])
        version = cached.dataset("docs").version
        assert cached.rows.rows("docs", cached.dataset("docs")).version == version, what


@pytest.mark.parametrize("vector_type", [pa.float16(), pa.float64()])
def test_vector_types_other_than_float32(tmp_path: Path, vector_type: pa.DataType) -> None:
    """float16 vectors come from the matrix (exact in float32); float64 ones from Lance."""
    cached, plain = catalogs(tmp_path)
    cached.create_table("docs", schema(vector_type), rows=rows(0, 200, vector_type))
    assert_same_results(cached, plain)
    assert_same_results(cached, plain, columns=["vector", "text"])


def test_vectors_with_nan_are_returned_as_stored(tmp_path: Path) -> None:
    """The matrix holds numbers in place of NaN and infinity: such a row's vector comes from
    Lance, as stored. (The store refuses such vectors; another writer of the table may not.)"""
    cached, plain = catalogs(tmp_path)
    cached.create_table("docs", schema())
    data = rows(0, 50)
    vectors = np.zeros((50, DIMS), np.float32)
    vectors[:, 0] = np.arange(50)
    vectors[3, 1], vectors[4, 2] = np.nan, np.inf
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIMS)
    nan_rows = data.set_column(6, "vector", column)
    lance.write_dataset(nan_rows, tmp_path / "docs.lance", mode="append")
    query = np.zeros(DIMS, np.float32)
    query[0] = 3.5
    found, lances = search(cached, query, k=5), search(plain, query, k=5)
    assert found.schema.equals(lances.schema)
    assert repr(found.to_pylist()) == repr(lances.to_pylist())  # NaN equals no NaN
    assert 3 in found.column("id").to_pylist()
    assert np.isnan(found.column("vector").to_pylist()[found.column("id").to_pylist().index(3)][1])


def test_a_table_past_the_bound_is_read_from_lance(tmp_path: Path) -> None:
    cached, plain = catalogs(tmp_path, row_cache_max_bytes=4096)
    cached.create_table("docs", schema(), rows=rows(0, 300))
    assert_same_results(cached, plain)
    assert "docs" not in cached.rows.stats()
    assert cached.rows.held_bytes() <= 4096


def test_the_bound_counts_every_table(tmp_path: Path) -> None:
    cached, plain = catalogs(tmp_path)
    cached.create_table("docs", schema(), rows=rows(0, 300))
    assert_same_results(cached, plain)
    first = cached.rows.stats()["docs"]
    cached.rows.max_bytes = 2 * first - 1  # room for this table, not for another one like it
    cached.create_table("more", schema(), rows=rows(0, 300))
    params = SearchParams(vector_column="vector", vector=np.ones(DIMS, np.float32), k=5)
    assert cached.search("more", params).equals(plain.search("more", params))
    assert set(cached.rows.stats()) == {"docs"}
    cached.drop_table("docs")
    assert "docs" not in cached.rows.stats()
    cached.search("more", params)
    assert set(cached.rows.stats()) == {"more"}  # the room the dropped table left
