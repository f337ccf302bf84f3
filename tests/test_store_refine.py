"""The refine step of indexed search from the store's in-memory matrix: over a real channel it
gives the rows and distances Lance's own refine gives on the same files, after every kind of
write; Lance refines where the matrix cannot (a filter after the fact, a distance range, an
older version, no room); and the matrices of all columns together stay within their bound."""

from __future__ import annotations

import shutil
from typing import Any

import lance
import numpy as np
import pyarrow as pa
import pytest
from helpers import refined_by_lance
from test_store_search import DIMS, METRICS, Store, assert_same, make_rows_vectors, wait_ready

from embedsearch.contract.wire import pack_vectors
from embedsearch.v1 import common_pb2, store_pb2
from store_service import calibration
from store_service.exact import ExactCache

REFINE_STEP = "in-memory matrix (refine step)"


@pytest.fixture(scope="module")
def store(servers: Any, tmp_path_factory: pytest.TempPathFactory) -> Store:
    return Store(servers, tmp_path_factory.mktemp("refine"))


def indexed_table(store: Store, name: str, metric: str) -> str:
    """Three fragments of 400 rows and an IVF_PQ index built for ``metric``."""
    store.create(name)
    for part in range(3):
        store.add(name, range(part * 400, (part + 1) * 400), seed=part)
    store.stub.CreateIndex(
        store_pb2.StoreCreateIndexRequest(
            name=name,
            column="vector",
            index_type=common_pb2.INDEX_TYPE_IVF_PQ,
            params=common_pb2.IndexParams(
                num_partitions=4, num_sub_vectors=4, metric=METRICS[metric]
            ),
            wait=True,
        )
    )
    assert wait_ready(store.stub, name, "vector_idx").status == "ready"
    return name


def lance_refined(store: Store, name: str, vector: np.ndarray, **options: Any) -> pa.Table:
    """Lance's own indexed search with its refine step, in this process, on the same files."""
    k, offset = options.pop("k", 10), options.pop("offset", 0)
    nearest = {
        "column": "vector",
        "q": vector,
        "k": k + offset,
        "nprobes": options.pop("nprobes"),
        "refine_factor": options.pop("refine_factor"),
    }
    if "distance_range" in options:
        nearest["distance_range"] = options.pop("distance_range")
    columns = options.pop("columns", None)
    dataset = store.lance(name)
    if "version" in options:
        dataset = dataset.checkout_version(options.pop("version"))
    options["prefilter"] = not options.pop("postfilter", False)
    result = dataset.to_table(
        columns=[*columns, "_distance"] if columns else None, nearest=nearest, **options
    )
    return result.slice(offset)


def plan(store: Store, name: str, vector: np.ndarray, **options: Any) -> str:
    search = store_pb2.StoreSearchRequest(
        name=name, vector_column="vector", vector=pack_vectors(vector), **options
    )
    request = store_pb2.StoreExplainPlanRequest(search=search)
    return store.stub.ExplainPlan(request).plan


def same_as_lance(store: Store, name: str, vector: np.ndarray, **options: Any) -> None:
    ours = store.search(name, vector, **options)
    theirs = lance_refined(store, name, vector, **{**options, "with_row_id": False})
    if options.get("with_row_id"):
        assert ours.column_names[-1] == "_rowid"
        ours = ours.drop_columns(["_rowid"])
    assert_same(ours, theirs)


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_refine_from_memory_gives_lances_rows_and_distances(store: Store, metric: str) -> None:
    name = indexed_table(store, f"refine_{metric}", metric)
    queries = make_rows_vectors(6, seed=9)
    cases: list[dict[str, Any]] = [
        {"k": 10, "nprobes": 1, "refine_factor": 1},
        {"k": 10, "nprobes": 2, "refine_factor": 5},
        {"k": 7, "nprobes": 4, "refine_factor": 10, "offset": 3},
        {"k": 10, "nprobes": 2, "refine_factor": 5, "filter": "category = 'c2'"},
        {"k": 5, "nprobes": 4, "refine_factor": 3, "columns": ["id", "text"]},
        {"k": 5, "nprobes": 4, "refine_factor": 3, "with_row_id": True},
    ]
    for case in cases:
        options = {**case, "metric": METRICS[metric]}
        assert REFINE_STEP in plan(store, name, queries[0], **options)
        for query in queries:
            same_as_lance(store, name, query, **case)


def test_refine_from_memory_follows_every_kind_of_write(store: Store) -> None:
    name = indexed_table(store, "refine_writes", "l2")
    stub, queries = store.stub, make_rows_vectors(4, seed=11)
    options = {"k": 10, "nprobes": 2, "refine_factor": 5}

    def check() -> None:
        assert REFINE_STEP in plan(store, name, queries[0], **options)
        for query in queries:
            same_as_lance(store, name, query, **options)

    appended = store.add(name, range(5000, 5050), seed=12)  # rows the index has not seen
    check()
    found = store.search(name, appended[3], **options).column("id").to_pylist()
    assert found[0] == 5003
    stub.Delete(store_pb2.StoreDeleteRequest(name=name, filter="id % 3 = 0"))
    check()
    assert all(i % 3 for i in store.search(name, queries[0], **options).column("id").to_pylist())
    stub.Update(
        store_pb2.StoreUpdateRequest(
            name=name, filter="id = 5003", updates={"vector": f"[{', '.join(['0.5'] * DIMS)}]"}
        )
    )
    check()
    stub.Optimize(store_pb2.StoreOptimizeRequest(name=name))  # compaction moves every row
    check()


def test_lance_refines_where_the_matrix_does_not_apply(store: Store) -> None:
    name = indexed_table(store, "refine_fallbacks", "l2")
    before = store.lance(name).version
    store.add(name, range(6000, 6100), seed=13)
    query = make_rows_vectors(1, seed=14)[0]
    base = {"k": 10, "nprobes": 2, "refine_factor": 5}
    nearest = store.search(name, query, **base).column("_distance").to_numpy()
    cases: list[dict[str, Any]] = [
        {"filter": "category = 'c1'", "postfilter": True},
        {"distance_range": (float(nearest[2]), float(nearest[-1]) + 1.0)},
        {"version": before},
    ]
    for case in cases:
        options = dict(case)
        request: dict[str, Any] = {**base, **options}
        if "distance_range" in options:
            lower, upper = request.pop("distance_range")
            request.update(distance_lower_bound=lower, distance_upper_bound=upper)
        assert REFINE_STEP not in plan(store, name, query, **request)
        ours = store.search(name, query, **request)
        assert_same(ours, lance_refined(store, name, query, **{**base, **options}))


def test_a_store_without_room_for_the_matrix_lets_lance_refine(servers: Any, tmp_path: Any) -> None:
    store = Store(servers, tmp_path, exact_cache_max_bytes=1000)  # less than one column
    name = indexed_table(store, "refine_no_room", "l2")
    query = make_rows_vectors(1, seed=15)[0]
    options = {"k": 10, "nprobes": 2, "refine_factor": 5}
    assert REFINE_STEP not in plan(store, name, query, **options)
    same_as_lance(store, name, query, **options)


def vectors_table(rows: int, seed: int) -> pa.Table:
    vectors = np.random.default_rng(seed).normal(size=(rows, DIMS)).astype(np.float32)
    return pa.table(
        {
            "id": pa.array(np.arange(rows), pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIMS),
        }
    )


def test_the_matrices_of_all_columns_share_one_bound(tmp_path: Any) -> None:
    row_bytes = DIMS * 4
    cache = ExactCache(max_bytes=3000 * row_bytes)
    first = lance.write_dataset(vectors_table(2000, 1), tmp_path / "first.lance")
    second = lance.write_dataset(vectors_table(2000, 2), tmp_path / "second.lance")

    held = cache.snapshot("first", first, "vector")
    assert held is not None and held.held_bytes <= cache.max_bytes
    # The first column took 2,000 rows of the room for 3,000: the second does not fit, and
    # asking again does not evict the first (two columns would take turns reading themselves).
    assert cache.snapshot("second", second, "vector") is None
    assert cache.snapshot("first", first, "vector") is held

    # Growth stays within what is left: the buffers grow only up to the bound.
    grown = lance.write_dataset(vectors_table(900, 3), first.uri, mode="append")
    after = cache.snapshot("first", grown, "vector")
    assert after is not None and after.used == 2900
    assert after.held_bytes <= cache.max_bytes
    # Past the bound, the column is dropped, and its room goes to the next one.
    more = lance.write_dataset(vectors_table(200, 4), first.uri, mode="append")
    assert cache.snapshot("first", more, "vector") is None
    assert cache.snapshot("second", second, "vector") is not None
    assert sum(nbytes for _, nbytes in cache.stats().values()) <= cache.max_bytes


def test_calibration_runs_refine_settings_through_the_served_search(tmp_path: Any) -> None:
    """Calibration sends the settings with a refine step to the search it is given (the store
    gives its in-memory refine), and, the rows being the same, reaches the same levels."""
    dataset = lance.write_dataset(vectors_table(3000, 5), tmp_path / "calibrated.lance")
    dataset.create_index("vector", "IVF_PQ", num_partitions=8, num_sub_vectors=4)
    calls: list[calibration.Setting] = []

    def served(query: np.ndarray, k: int, setting: calibration.Setting) -> np.ndarray:
        calls.append(setting)
        return refined_by_lance(dataset, query, k, setting)

    queries = make_rows_vectors(40, seed=6)
    common: dict[str, Any] = {"k": 10, "sample_size": 40, "levels": [0.5, 0.9, 0.99]}
    by_lance = calibration.calibrate(dataset, "vector", "IVF_PQ", 8, "l2", served=queries, **common)
    by_store = calibration.calibrate(
        dataset, "vector", "IVF_PQ", 8, "l2", served=queries, refined=served, **common
    )
    assert calls and all(setting.refine_factor for setting in calls)
    # Which settings are measured on every query depends on their latencies (a slow one is
    # abandoned), and so does the highest recall bound seen; the levels reached do not.
    assert [lv.recall for lv in by_store.levels] == [lv.recall for lv in by_lance.levels]


def test_a_reader_of_an_older_version_leaves_the_matrix_where_it_is(tmp_path: Any) -> None:
    """A search holding a handle older than the matrix (it took it before a write another
    search has seen) is Lance's to serve: rebuilding the matrix at the old version would read
    the whole column, and the next search would move it forward again."""
    cache = ExactCache(max_bytes=1 << 30)
    old = lance.write_dataset(vectors_table(500, 1), tmp_path / "moving.lance")
    new = lance.write_dataset(vectors_table(10, 2), old.uri, mode="append")
    current = cache.snapshot("moving", new, "vector")
    assert current is not None and current.version == new.version
    assert cache.snapshot("moving", old, "vector") is None
    assert cache.snapshot("moving", new, "vector") is current

    # The same name dropped and made anew (by another store on the same root): its versions
    # start over, below the matrix's.
    shutil.rmtree(old.uri)
    remade = lance.write_dataset(vectors_table(20, 3), old.uri)
    assert remade.version < new.version
    fresh = cache.snapshot("moving", remade, "vector")
    assert fresh is not None and fresh.used == 20


def test_searches_refined_while_rows_arrive_stay_consistent(store: Store) -> None:
    """Searches racing appends: each answer is ordered, from rows that exist, with the exact
    distances of those rows; whichever version a search read, and whether the matrix or Lance
    refined it (a search that took its handle before the matrix moved on goes to Lance)."""
    import threading

    name = indexed_table(store, "refine_racing", "l2")
    queries = make_rows_vectors(8, seed=21)
    options = {"k": 10, "nprobes": 2, "refine_factor": 5, "columns": ["id", "vector"]}
    done, problems = threading.Event(), []

    def search_until_done() -> None:
        turn = 0
        while not done.is_set() or turn < 20:
            query = queries[turn % len(queries)]
            found = store.search(name, query, **options)
            vectors = np.stack(found.column("vector").to_numpy(zero_copy_only=False))
            exact = ((vectors - query) ** 2).sum(axis=1)
            distances = found.column("_distance").to_numpy()
            if found.num_rows != 10 or not np.allclose(distances, exact, rtol=1e-4, atol=1e-5):
                problems.append((turn, found.column("id").to_pylist(), distances, exact))
            if np.any(np.diff(distances) < 0):
                problems.append((turn, "out of order", distances))
            turn += 1

    searchers = [threading.Thread(target=search_until_done) for _ in range(3)]
    for searcher in searchers:
        searcher.start()
    try:
        for batch in range(15):
            store.add(name, range(10_000 + batch * 20, 10_000 + (batch + 1) * 20), seed=30 + batch)
    finally:
        done.set()
        for searcher in searchers:
            searcher.join(timeout=120)
    assert not problems, problems[:3]
    for query in queries:
        same_as_lance(store, name, query, **{k: v for k, v in options.items() if k != "columns"})
