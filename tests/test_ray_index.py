"""`embedsearch index` on Ray: indexes built by lance-ray's distributed builds on the same
parameters as the store's own build find what the store's find, served by the gateway."""

from __future__ import annotations

import grpc
import lance
import numpy as np
import pyarrow as pa
import pytest
from ray_cluster import local_ray

import embedsearch
from embedsearch.contract.errors import InvalidArgument
from embedsearch.contract.schema import vector_type
from embedsearch.contract.values import IndexParams
from embedsearch.contract.wire import schema_to_ipc
from embedsearch.v1 import gateway_pb2, gateway_pb2_grpc
from store_service.indexes import IndexSpec, build

pytestmark = pytest.mark.slow
ROWS, DIMS, QUERIES, K = 4096, 32, 40, 10
WORDS = ["granite", "harbor", "lantern", "meadow", "quartz", "saddle", "thistle", "willow"]
# Each build gets these parameters, the store's and lance-ray's alike.
BUILDS = {
    "IVF_PQ": IndexParams(metric="l2", num_partitions=8, num_sub_vectors=16, sample_rate=16),
    "IVF_HNSW_SQ": IndexParams(metric="l2", num_partitions=4, sample_rate=16),
}
NPROBES = {"IVF_PQ": 8, "IVF_HNSW_SQ": 2}


@pytest.fixture(scope="module")
def ray_address() -> str:
    return local_ray()


@pytest.fixture(scope="module")
def data() -> pa.Table:
    rng = np.random.default_rng(7)
    # Clustered vectors, as embeddings are: an IVF index has partitions to find.
    centres = rng.normal(size=(16, DIMS)).astype(np.float32)
    points = centres[rng.integers(0, 16, ROWS)] + 0.3 * rng.normal(size=(ROWS, DIMS))
    texts = [" ".join(rng.choice(WORDS, 4)) + f" item{i}" for i in range(ROWS)]
    return pa.table(
        {
            "id": pa.array(range(ROWS), pa.int64()),
            "text": texts,
            "vector": pa.FixedSizeListArray.from_arrays(
                pa.array(points.astype(np.float32).ravel()), DIMS
            ),
        }
    )


def twin_tables(stack, data: pa.Table, name: str) -> tuple[str, str]:
    """The same rows in two tables through the gateway, in two adds (two fragments each)."""
    stub = gateway_pb2_grpc.GatewayStub(grpc.insecure_channel(stack.gateway))
    db = embedsearch.connect(f"grpc://{stack.gateway}")
    names = (f"{name}_store", f"{name}_ray")
    for table in names:
        schema = pa.schema(
            [
                pa.field("id", pa.int64()),
                pa.field("text", pa.string()),
                pa.field("vector", vector_type(DIMS)),
            ]
        )
        stub.CreateTable(
            gateway_pb2.CreateTableRequest(name=table, arrow_schema=schema_to_ipc(schema))
        )
        handle = db.open_table(table)
        handle.add(data.slice(0, ROWS // 2))
        handle.add(data.slice(ROWS // 2))
    return names


def build_with_ray(root, table: str, column: str, index_type: str, params: IndexParams) -> object:
    from ray_jobs.cluster import Workers, connect
    from ray_jobs.index import IndexJob, build_index
    from ray_jobs.tables import TableRef

    workers = connect("", Workers(2))
    return build_index(
        IndexJob(TableRef.from_env(str(root), table), column, index_type, "", params), workers
    )


def build_in_store(root, table: str, column: str, index_type: str, params: IndexParams) -> None:
    """The store's own build (store_service/indexes.py), on the store's own table handle."""
    build(
        lance.dataset(f"{root}/{table}.lance"),
        IndexSpec(table, column, index_type, "", params),
        lambda event: None,
    )


def recall(stack, table: str, data: pa.Table, nprobes: int) -> float:
    """Mean share of the exact 10 nearest neighbours a gateway search returns."""
    db = embedsearch.connect(f"grpc://{stack.gateway}")
    handle = db.open_table(table)
    matrix = np.stack(data.column("vector").to_numpy(False))
    rng = np.random.default_rng(11)
    found = []
    for query in matrix[rng.choice(ROWS, QUERIES, replace=False)] + 0.05:
        exact = set(np.argsort(((matrix - query) ** 2).sum(axis=1))[:K].tolist())
        hits = handle.search(query).nprobes(nprobes).limit(K).to_arrow().column("id")
        found.append(len(exact & set(hits.to_pylist())) / K)
    return float(np.mean(found))


@pytest.mark.parametrize("index_type", list(BUILDS))
def test_vector_index_recall_matches_the_stores_build(ray_address, stack, data, index_type):
    store_table, ray_table = twin_tables(stack, data, f"ix_{index_type.lower()}")
    build_in_store(stack.data_root, store_table, "vector", index_type, BUILDS[index_type])

    result = build_with_ray(stack.data_root, ray_table, "vector", index_type, BUILDS[index_type])

    built = lance.dataset(f"{stack.data_root}/{ray_table}.lance")
    assert result.version == built.version
    assert [i.name for i in built.describe_indices()] == ["vector_idx"]
    ours = recall(stack, ray_table, data, NPROBES[index_type])
    theirs = recall(stack, store_table, data, NPROBES[index_type])
    print(f"{index_type} recall@{K}: lance-ray {ours:.3f}, store {theirs:.3f}")
    assert abs(ours - theirs) <= 0.1


def test_full_text_and_scalar_indexes(ray_address, stack, data):
    store_table, ray_table = twin_tables(stack, data, "ix_text")
    build_in_store(stack.data_root, store_table, "text", "INVERTED", IndexParams())

    build_with_ray(stack.data_root, ray_table, "text", "INVERTED", IndexParams())
    build_with_ray(stack.data_root, ray_table, "id", "BTREE", IndexParams())

    db = embedsearch.connect(f"grpc://{stack.gateway}")
    listed = {i.name: i.index_type for i in db.open_table(ray_table).list_indices()}
    assert listed == {"text_idx": "FTS", "id_idx": "BTree"}
    for query, limit in (("item1234", 10), ("quartz lantern", ROWS)):  # one row; most rows
        found = [
            set(
                db.open_table(name)
                .search(query, query_type="fts")
                .limit(limit)
                .to_arrow()
                .column("id")
                .to_pylist()
            )
            for name in (ray_table, store_table)
        ]
        assert found[0] == found[1]
    assert found[0] and len(found[0]) < ROWS
    filtered = db.open_table(ray_table).search().where("id = 1234").to_arrow()
    assert filtered.column("id").to_pylist() == [1234]


def test_lance_rays_refusals_say_what_to_change(ray_address, stack, data):
    _, ray_table = twin_tables(stack, data.slice(0, 512), "ix_small")
    params = IndexParams(metric="l2", num_partitions=4, num_sub_vectors=8)
    with pytest.raises(InvalidArgument, match="rows needed"):
        build_with_ray(stack.data_root, ray_table, "vector", "IVF_PQ", params)
