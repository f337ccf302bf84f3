"""Healthy tables: background maintenance, per-table metrics, warm start-up of an existing root."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_store_search import Store

from embedsearch.v1 import common_pb2, store_pb2


def metric(text: str, name: str, **labels: str) -> float | None:
    """A sample's value from a Prometheus exposition, or None."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = rf"^{re.escape(name)}(?:\{{{re.escape(wanted)}\}})? (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else None


def eventually(check, timeout: float = 30.0, show=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in time: {show()}")
        time.sleep(0.2)


@pytest.fixture
def busy_store(servers, tmp_path) -> Store:
    """A store whose maintenance runs every half second and compacts from 3 small fragments."""
    return Store(
        servers,
        tmp_path,
        maintenance_interval_s=0.5,
        compact_min_fragments=3,
        compact_target_rows=4096,
        retention_s=0.0,
        cleanup_min_age_s=0.0,
    )


@pytest.mark.slow
def test_background_maintenance_and_metrics(busy_store, table_name):
    store, stub = busy_store, busy_store.stub
    store.create(table_name)
    for part in range(4):
        store.add(table_name, range(part * 300, (part + 1) * 300), seed=part)
    stub.CreateIndex(
        store_pb2.StoreCreateIndexRequest(
            name=table_name, column="id", index_type=common_pb2.INDEX_TYPE_BTREE, wait=True
        )
    )
    store.add(table_name, range(5000, 5010), seed=9)
    stub.Delete(store_pb2.StoreDeleteRequest(name=table_name, filter="id < 200"))

    def healthy() -> bool:
        text = store.metrics()
        fragments = metric(text, "store_table_fragments", table=table_name)
        return (
            fragments is not None
            and fragments <= 2  # from 6: 4 + 1 small ones compacted, the rest below the threshold
            and metric(text, "store_table_deleted_rows", table=table_name) == 0
            and metric(text, "store_index_unindexed_rows", index="id_idx", table=table_name) == 0
            and metric(text, "store_table_versions", table=table_name) == 1
        )

    eventually(healthy, show=lambda: [x for x in store.metrics().splitlines() if table_name in x])
    text = store.metrics()
    assert metric(text, "store_table_rows", table=table_name) == 1010
    assert metric(text, "store_maintenance_actions_total", action="compact") >= 1
    assert metric(text, "store_maintenance_actions_total", action="cleanup") >= 1
    assert "# TYPE store_commit_conflicts_total counter" in text
    assert "store_index_deltas" in text
    assert stub.CountRows(store_pb2.StoreCountRowsRequest(name=table_name)).count == 1010


def test_many_small_adds_wake_maintenance_before_its_interval(servers, tmp_path, table_name):
    """Compaction follows the writes: a table that took compact_min_fragments commits is
    compacted within seconds, not at the next hourly pass, and commits made by maintenance
    itself do not wake it again."""
    store = Store(servers, tmp_path, maintenance_interval_s=3600, compact_min_fragments=4)
    store.create(table_name)
    for part in range(3):
        store.add(table_name, range(part * 10, (part + 1) * 10), seed=part)
    time.sleep(1.0)
    text = store.metrics()
    assert metric(text, "store_maintenance_actions_total", action="compact") in (None, 0.0)

    store.add(table_name, range(30, 40), seed=3)  # the fourth commit

    def compacted() -> bool:
        return (metric(store.metrics(), "store_table_fragments", table=table_name) or 0) == 1

    eventually(compacted, timeout=20, show=lambda: store.metrics())
    time.sleep(1.0)
    assert metric(store.metrics(), "store_maintenance_actions_total", action="compact") == 1
    assert store.stub.CountRows(store_pb2.StoreCountRowsRequest(name=table_name)).count == 40


@pytest.mark.slow
def test_restart_warms_indexes_and_matrices(servers, tmp_path, table_name):
    first = Store(servers, tmp_path)
    first.create(table_name)
    vectors = first.add(table_name, range(500), seed=1)
    first.stub.CreateIndex(
        store_pb2.StoreCreateIndexRequest(
            name=table_name, column="text", index_type=common_pb2.INDEX_TYPE_INVERTED, wait=True
        )
    )

    second = Store(servers, tmp_path)  # a new process would do the same on this root
    text = second.metrics()
    cached = metric(text, "store_exact_cache_bytes", column="vector", table=table_name)
    # Loaded before SERVING, not on the first query; a matrix has room for 1,024 rows at least.
    assert cached == 1024 * 16 * 4
    assert metric(text, "store_table_rows", table=table_name) == 500
    found = second.search(table_name, vectors[42], k=1)
    assert found.column("id").to_pylist() == [42]


def test_concurrent_updates_all_land(busy_store, table_name):
    store, stub = busy_store, busy_store.stub
    store.create(table_name)
    store.add(table_name, range(200), seed=3)

    def update(i: int) -> None:
        stub.Update(
            store_pb2.StoreUpdateRequest(
                name=table_name, filter=f"id % 4 = {i}", updates={"category": f"'u{i}'"}
            )
        )

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(update, range(4)))
    for i in range(4):
        count = stub.CountRows(
            store_pb2.StoreCountRowsRequest(name=table_name, filter=f"category = 'u{i}'")
        )
        assert count.count == 50
    assert stub.CountRows(store_pb2.StoreCountRowsRequest(name=table_name)).count == 200


def test_maintenance_ends_with_its_server(servers, busy_store, table_name):
    """Stopping the server stops its background maintenance: small fragments written after
    that stay as they are (no pass runs, and none is left inside Lance at interpreter exit)."""
    import lance

    busy_store.create(table_name)
    busy_store.add(table_name, range(0, 10), seed=1)
    servers.stop(len(servers.started) - 1)
    dataset = busy_store.lance(table_name)
    rows = dataset.to_table()
    for _ in range(4):
        lance.write_dataset(rows, dataset.uri, mode="append")
    fragments = len(busy_store.lance(table_name).get_fragments())
    time.sleep(4 * 0.5 + 1)  # four maintenance intervals, had it still been running
    assert len(busy_store.lance(table_name).get_fragments()) == fragments >= 5
