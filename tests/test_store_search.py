"""Store search over a real channel: exact answers equal Lance's flat search as versions move."""

from __future__ import annotations

import urllib.request

import lance
import numpy as np
import pyarrow as pa
import pytest
from conftest import QUIET

from embedsearch.contract.channels import wait_until_serving
from embedsearch.contract.wire import ipc_to_table, pack_vectors, schema_to_ipc, table_to_ipc
from embedsearch.v1 import common_pb2, store_pb2, store_pb2_grpc
from service_kit.launch import free_port
from store_service.server import create_server
from store_service.settings import StoreSettings

DIMS = 16
SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("category", pa.string()),
        pa.field("text", pa.string()),
        pa.field("vector", pa.list_(pa.float32(), DIMS)),
    ]
)
METRICS = {
    "l2": common_pb2.METRIC_L2,
    "cosine": common_pb2.METRIC_COSINE,
    "dot": common_pb2.METRIC_DOT,
}
WORDS = ["apple", "banana", "cherry", "delta", "echo", "falcon", "granite", "harbor"]


class Store:
    """One store server of these tests, with its root and /metrics, through a real channel."""

    def __init__(self, servers, root, **overrides) -> None:
        import grpc

        self.root = root
        self.metrics_port = free_port()
        # Maintenance only where a test asks for it (see the stack fixture in conftest.py).
        chosen = {**QUIET, "maintenance_interval_s": 0, "metrics_port": self.metrics_port}
        settings = StoreSettings(data_root=str(root), **{**chosen, **overrides})
        self.address = servers.start(create_server, settings)
        wait_until_serving(self.address, 30)
        self.stub = store_pb2_grpc.StoreStub(grpc.insecure_channel(self.address))

    def lance(self, name: str) -> lance.LanceDataset:
        return lance.dataset(str(self.root / f"{name}.lance"))

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics") as reply:
            return reply.read().decode()

    def search(self, name: str, vector: np.ndarray, **options) -> pa.Table:
        request = store_pb2.StoreSearchRequest(
            name=name, vector_column="vector", vector=pack_vectors(vector), **options
        )
        return ipc_to_table(self.stub.Search(request).arrow_ipc)

    def add(self, name: str, ids: range, seed: int) -> np.ndarray:
        vectors = make_rows_vectors(len(ids), seed)
        rows = pa.table(
            {
                "id": list(ids),
                "category": [f"c{i % 5}" for i in ids],
                "text": [f"{WORDS[i % 8]} {WORDS[(i // 8) % 8]} number {i}" for i in ids],
                "vector": list(vectors),
            },
            schema=SCHEMA,
        )
        self.stub.Add(store_pb2.StoreAddRequest(name=name, arrow_ipc=table_to_ipc(rows)))
        return vectors

    def create(self, name: str) -> None:
        self.stub.CreateTable(
            store_pb2.StoreCreateTableRequest(name=name, arrow_schema=schema_to_ipc(SCHEMA))
        )


def make_rows_vectors(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, DIMS)).astype("f4")


@pytest.fixture(scope="module")
def store(servers, tmp_path_factory) -> Store:
    return Store(servers, tmp_path_factory.mktemp("search"))


@pytest.fixture
def table(store, table_name) -> str:
    store.create(table_name)
    for part in range(3):  # three fragments
        store.add(table_name, range(part * 400, (part + 1) * 400), seed=part)
    return table_name


def lance_flat(store: Store, name: str, vector: np.ndarray, **options) -> pa.Table:
    """Lance's own exhaustive search, in this process, on the same files."""
    k, offset = options.pop("k", 10), options.pop("offset", 0)
    nearest = {"column": "vector", "q": vector, "k": k + offset, "use_index": False}
    nearest["metric"] = options.pop("metric", "l2")
    if "distance_range" in options:
        nearest["distance_range"] = options.pop("distance_range")
    columns = options.pop("columns", None)
    options.setdefault("prefilter", True)  # ours prefilters unless asked not to, as LanceDB
    result = store.lance(name).to_table(
        columns=[*columns, "_distance"] if columns else None, nearest=nearest, **options
    )
    return result.slice(offset)


def assert_same(ours: pa.Table, theirs: pa.Table) -> None:
    assert ours.column_names == theirs.column_names
    assert ours.column("id").to_pylist() == theirs.column("id").to_pylist()
    np.testing.assert_allclose(
        ours.column("_distance").to_numpy(),
        theirs.column("_distance").to_numpy(),
        rtol=1e-4,
        atol=1e-5,
    )
    for name in ours.column_names:
        if name != "_distance":
            assert ours.column(name).to_pylist() == theirs.column(name).to_pylist(), name


def test_exact_equals_lance_flat(store, table):
    cases = [
        (metric, where, postfilter, offset)
        for metric in sorted(METRICS)
        for where, postfilter in [
            ("", False),
            ("category = 'c1'", False),
            ("category = 'c1'", True),
        ]
        for offset in (0, 3)
    ]
    for seed, (metric, where, postfilter, offset) in enumerate(cases):
        query = make_rows_vectors(1, 100 + seed)[0]
        ours = store.search(
            table,
            query,
            k=10,
            metric=METRICS[metric],
            filter=where,
            postfilter=postfilter,
            offset=offset,
        )
        theirs = lance_flat(
            store,
            table,
            query,
            k=10,
            metric=metric,
            filter=where or None,
            prefilter=not postfilter,
            offset=offset,
        )
        assert_same(ours, theirs)
    assert f'store_exact_cache_bytes{{column="vector",table="{table}"}}' in store.metrics()


def test_exact_columns_row_ids_and_distance_range(store, table):
    query = make_rows_vectors(1, 7)[0]
    ours = store.search(table, query, k=20, columns=["id", "category"], with_row_id=True)
    theirs = lance_flat(store, table, query, k=20, columns=["id", "category"], with_row_id=True)
    assert ours.column_names == ["id", "category", "_distance", "_rowid"]
    assert_same(ours, theirs)

    lower, upper = sorted(ours.column("_distance").to_pylist())[5], 40.0
    ours = store.search(table, query, k=8, distance_lower_bound=lower, distance_upper_bound=upper)
    theirs = lance_flat(store, table, query, k=8, distance_range=(lower, upper))
    assert_same(ours, theirs)
    assert min(ours.column("_distance").to_pylist()) >= lower


def test_exact_follows_every_kind_of_write(store, table):
    stub, query = store.stub, make_rows_vectors(1, 11)[0]

    def check() -> None:
        for where in ("", "category != 'c2'"):
            assert_same(
                store.search(table, query, k=15, filter=where),
                lance_flat(store, table, query, k=15, filter=where or None),
            )

    check()
    store.add(table, range(5000, 5050), seed=21)  # append: only the new fragment is read
    check()
    nearest_id = store.search(table, query, k=1).column("id")[0].as_py()
    stub.Delete(store_pb2.StoreDeleteRequest(name=table, filter=f"id = {nearest_id} OR id < 100"))
    check()
    assert nearest_id not in store.search(table, query, k=50).column("id").to_pylist()
    stub.Update(
        store_pb2.StoreUpdateRequest(name=table, filter="id < 300", updates={"category": "'c2'"})
    )
    check()
    merged = make_rows_vectors(3, 31)
    stub.MergeInsert(
        store_pb2.StoreMergeInsertRequest(
            name=table,
            on=["id"],
            arrow_ipc=table_to_ipc(
                pa.table(
                    {"id": [400, 401, 9000], "vector": list(merged)},
                    schema=pa.schema([SCHEMA.field("id"), SCHEMA.field("vector")]),
                )
            ),
            when_matched_update_all=True,
            when_not_matched_insert_all=True,
        )
    )
    check()
    assert store.search(table, merged[2], k=1).column("id").to_pylist() == [9000]
    stub.Optimize(store_pb2.StoreOptimizeRequest(name=table))  # compaction rewrites fragments
    check()
    stub.Restore(store_pb2.StoreRestoreRequest(name=table, version=2))
    check()


def test_time_travel_search(store, table):
    query = make_rows_vectors(1, 5)[0]
    at_two = store.search(table, query, k=5, version=2)
    assert set(at_two.column("id").to_pylist()) <= set(range(400))
    store.stub.CreateTag(store_pb2.StoreCreateTagRequest(name=table, tag="two", version=2))
    assert store.search(table, query, k=5, tag="two") == at_two
    latest = store.search(table, query, k=5)
    assert_same(latest, lance_flat(store, table, query, k=5))


def wait_ready(stub, table: str, index: str) -> common_pb2.IndexInfo:
    import time

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        infos = stub.ListIndexes(store_pb2.StoreListIndexesRequest(name=table)).indexes
        info = next((i for i in infos if i.name == index), None)
        if info is not None and info.status != "building":
            return info
        time.sleep(0.2)
    raise AssertionError(f"index {index} still building")


@pytest.mark.slow
@pytest.mark.parametrize(
    "index_type,params,search",
    [
        (
            common_pb2.INDEX_TYPE_IVF_PQ,
            {"num_partitions": 4, "num_sub_vectors": 4},
            {"nprobes": 4, "refine_factor": 5},
        ),
        (
            common_pb2.INDEX_TYPE_IVF_HNSW_SQ,
            {"num_partitions": 2, "m": 8, "ef_construction": 64},
            {"nprobes": 2, "ef": 64},
        ),
        (
            common_pb2.INDEX_TYPE_IVF_FLAT,
            {"num_partitions": 4, "metric": common_pb2.METRIC_COSINE},
            {"nprobes": 4},
        ),
    ],
)
def test_vector_indexes(store, table, index_type, params, search):
    stub = store.stub
    started = stub.CreateIndex(
        store_pb2.StoreCreateIndexRequest(
            name=table,
            column="vector",
            index_type=index_type,
            params=common_pb2.IndexParams(**params),
        )
    )
    assert started.status == "building" and started.name == "vector_idx"
    info = wait_ready(stub, table, "vector_idx")
    assert info.status == "ready" and info.index_type == index_type
    assert info.num_indexed_rows == 1200 and info.num_unindexed_rows == 0

    metric = params.get("metric", common_pb2.METRIC_L2)
    query = make_rows_vectors(1, 3)[0]
    indexed = store.search(table, query, k=10, metric=metric, **search)
    exact = store.search(table, query, k=10, metric=metric, bypass_vector_index=True)
    overlap = set(indexed.column("id").to_pylist()) & set(exact.column("id").to_pylist())
    assert len(overlap) >= 7, (indexed.column("id"), exact.column("id"))

    # Rows appended after the build are not in the index, and are still found.
    appended = store.add(table, range(7000, 7005), seed=77)
    assert (
        store.search(table, appended[0], k=1, metric=metric, **search).column("id")[0].as_py()
        == 7000
    )
    info = wait_ready(stub, table, "vector_idx")
    assert info.num_unindexed_rows == 5
    stub.Optimize(store_pb2.StoreOptimizeRequest(name=table))
    info = wait_ready(stub, table, "vector_idx")
    assert info.num_unindexed_rows == 0 and info.num_deltas >= 1


def test_scalar_and_text_indexes(store, table):
    stub = store.stub
    for column, kind in [
        ("id", common_pb2.INDEX_TYPE_BTREE),
        ("category", common_pb2.INDEX_TYPE_BITMAP),
        ("text", common_pb2.INDEX_TYPE_INVERTED),
    ]:
        info = stub.CreateIndex(
            store_pb2.StoreCreateIndexRequest(name=table, column=column, index_type=kind, wait=True)
        )
        assert (info.status, info.index_type, info.name) == ("ready", kind, f"{column}_idx")
    listed = stub.ListIndexes(store_pb2.StoreListIndexesRequest(name=table)).indexes
    assert sorted(i.name for i in listed) == ["category_idx", "id_idx", "text_idx"]
    count = stub.CountRows(
        store_pb2.StoreCountRowsRequest(name=table, filter="category = 'c3' AND id < 500")
    )
    assert count.count == 100

    query = make_rows_vectors(1, 9)[0]
    assert_same(
        store.search(table, query, k=10, filter="id >= 100 AND category = 'c3'"),
        lance_flat(store, table, query, k=10, filter="id >= 100 AND category = 'c3'"),
    )

    found = ipc_to_table(
        stub.TextSearch(
            store_pb2.StoreTextSearchRequest(
                name=table, query="granite", k=5, columns=["id", "text"], with_row_id=True
            )
        ).arrow_ipc
    )
    assert found.num_rows == 5 and found.column_names == ["id", "text", "_score", "_rowid"]
    assert all("granite" in t for t in found.column("text").to_pylist())
    filtered = ipc_to_table(
        stub.TextSearch(
            store_pb2.StoreTextSearchRequest(
                name=table, query="granite harbor", filter="id < 400", k=400
            )
        ).arrow_ipc
    )
    assert filtered.num_rows and max(filtered.column("id").to_pylist()) < 400
    scores = filtered.column("_score").to_pylist()
    assert scores == sorted(scores, reverse=True)

    stub.DropIndex(store_pb2.StoreDropIndexRequest(name=table, index_name="text_idx"))
    names = [
        i.name for i in stub.ListIndexes(store_pb2.StoreListIndexesRequest(name=table)).indexes
    ]
    assert names == ["category_idx", "id_idx"]


def test_bad_index_requests(store, table):
    import grpc
    from helpers import expect_code

    stub = store.stub
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    for column, kind, fragment in [
        ("nope", common_pb2.INDEX_TYPE_BTREE, "nope"),
        ("id", common_pb2.INDEX_TYPE_IVF_PQ, "needs a vector column"),
        ("vector", common_pb2.INDEX_TYPE_BTREE, "cannot index the vector column"),
        ("id", common_pb2.INDEX_TYPE_INVERTED, "needs a text column"),
        ("id", common_pb2.INDEX_TYPE_UNSPECIFIED, "index_type is required"),
    ]:
        request = store_pb2.StoreCreateIndexRequest(name=table, column=column, index_type=kind)
        expect_code(invalid, lambda r=request: stub.CreateIndex(r), fragment)
    request = store_pb2.StoreCreateIndexRequest(
        name=table, column="id", index_type=common_pb2.INDEX_TYPE_BTREE, wait=True
    )
    stub.CreateIndex(request)
    expect_code(
        grpc.StatusCode.ALREADY_EXISTS,
        lambda: stub.CreateIndex(request),
        "replace",
        reason="ALREADY_EXISTS",
    )
    request.params.replace = True
    assert stub.CreateIndex(request).status == "ready"

    # A build that fails reports why, and the version does not move.
    before = stub.DescribeTable(store_pb2.StoreDescribeTableRequest(name=table)).version
    failing = store_pb2.StoreCreateIndexRequest(
        name=table,
        column="vector",
        index_type=common_pb2.INDEX_TYPE_IVF_PQ,
        params=common_pb2.IndexParams(num_partitions=2, num_sub_vectors=3),
        wait=True,
    )
    expect_code(invalid, lambda: stub.CreateIndex(failing), "vector_idx")
    info = wait_ready(stub, table, "vector_idx")
    assert info.status.startswith("failed: ")
    assert stub.DescribeTable(store_pb2.StoreDescribeTableRequest(name=table)).version == before
    expect_code(
        invalid,
        lambda: stub.TextSearch(store_pb2.StoreTextSearchRequest(name=table, query="x")),
        "INVERTED",
    )
