"""Partitions scanned from memory (store_service.partitions): the scan ranks exactly what it
probes, sees every write since its grouping, honours filters and the memory bound; the store's
calibration picks it where it is cheapest, and a restarted store scans the partitions the
calibration measured. On real Lance datasets, and over a real channel to real stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lance
import numpy as np
import pyarrow as pa
import pytest
from conftest import QUIET, Servers
from test_calibration import DIMS, points, rows

from embedsearch.contract.channels import wait_until_serving
from embedsearch.contract.convert import calibration_from_pb
from embedsearch.contract.values import IndexCalibration, RecallLevel
from embedsearch.contract.wire import ipc_to_table, pack_vectors
from embedsearch.v1 import common_pb2, store_pb2, store_pb2_grpc
from store_service import calibration, exact, partitions
from store_service.server import create_server as create_store
from store_service.settings import StoreSettings

ROWS, K = 4000, 10


def dataset(path: Path, vectors: np.ndarray) -> lance.LanceDataset:
    return lance.write_dataset(rows(vectors), str(path))


def grouped_column(
    ds: lance.LanceDataset, metric: str = "l2", cache: partitions.GroupedCache | None = None
) -> tuple[exact.Snapshot, partitions.Grouped, partitions.GroupedCache]:
    cache = cache or partitions.GroupedCache(exact.ExactCache(1 << 30))
    snapshot = cache.matrices.snapshot("t", ds, "vector")
    assert snapshot is not None
    centroids = partitions.train(ds, "vector", metric)
    assert centroids is not None and len(centroids.vectors) == ROWS // 200
    found = cache.grouped("t", snapshot, centroids)
    assert found is not None
    return snapshot, found, cache


def regrouped(
    cache: partitions.GroupedCache, ds: lance.LanceDataset, before: partitions.Grouped
) -> tuple[exact.Snapshot, partitions.Grouped]:
    snapshot = cache.matrices.snapshot("t", ds, "vector")
    assert snapshot is not None
    found = cache.grouped("t", snapshot, before.centroids)
    assert found is not None
    return snapshot, found


def ids_of(snapshot: exact.Snapshot, positions: np.ndarray) -> list[int]:
    found = snapshot.dataset._take_rows(snapshot.buffers.row_ids[positions].tolist(), ["id"])
    return found.column("id").to_pylist()


@pytest.mark.parametrize("metric", ["l2", "cosine", "dot"])
def test_probing_every_partition_gives_the_exact_rows_and_distances(
    tmp_path: Path, metric: str
) -> None:
    snapshot, found, _ = grouped_column(dataset(tmp_path / "t", points(ROWS, 1)), metric)
    for query in points(20, 2):
        scanned = partitions.nearest(found, snapshot, query, len(found.bounds), K, metric)
        expected = exact.nearest(snapshot, query, K, metric, None)
        np.testing.assert_array_equal(scanned[0], expected[0])
        np.testing.assert_array_equal(scanned[1], expected[1])


def test_a_search_scores_only_the_partitions_it_probes(tmp_path: Path) -> None:
    snapshot, found, _ = grouped_column(dataset(tmp_path / "t", points(ROWS, 1)))
    for query in points(10, 2):
        probed = found.centroids.probed(query, 2)
        positions, _ = partitions.nearest(found, snapshot, query, 2, K, "l2")
        assert set(found.assigned[positions].tolist()) <= set(probed.tolist())


def test_rows_written_after_the_grouping_are_found_and_deleted_ones_are_not(
    tmp_path: Path,
) -> None:
    ds = dataset(tmp_path / "t", points(ROWS, 1))
    snapshot, found, cache = grouped_column(ds)
    query = points(1, 5)[0]
    ds = lance.write_dataset(rows(query[None], start=ROWS), ds.uri, mode="append")
    snapshot, same = regrouped(cache, ds, found)
    assert same is found and snapshot.used == found.covered + 1  # scanned whole, not grouped
    positions, distances = partitions.nearest(same, snapshot, query, 1, K, "l2")
    assert ids_of(snapshot, positions[:1]) == [ROWS] and distances[0] == 0

    ds.delete(f"id = {ROWS}")
    ds = lance.dataset(ds.uri)
    snapshot, _ = regrouped(cache, ds, found)
    positions, _ = partitions.nearest(found, snapshot, query, 1, K, "l2")
    assert ROWS not in ids_of(snapshot, positions)

    # Past the regroup threshold the new rows are grouped in the background; meanwhile the
    # old grouping serves, scanning them whole. Then they are grouped, and still found.
    more = points(partitions.REGROUP_MIN_ROWS + 1, 6)
    ds = lance.write_dataset(rows(more, start=ROWS + 1), ds.uri, mode="append")
    snapshot, meanwhile = regrouped(cache, ds, found)
    assert meanwhile is found
    positions, distances = partitions.nearest(meanwhile, snapshot, more[0], 1, 1, "l2")
    assert ids_of(snapshot, positions) == [ROWS + 1] and distances[0] == 0
    cache.settle()
    snapshot, fresh = regrouped(cache, ds, found)
    assert fresh is not found and fresh.covered == snapshot.used
    for query in more[:10]:  # each in its nearest partition, which is among the two probed
        positions, distances = partitions.nearest(fresh, snapshot, query, 2, 1, "l2")
        assert distances[0] == 0
    everything = len(fresh.bounds)
    for query in points(10, 7):
        scanned = partitions.nearest(fresh, snapshot, query, everything, K, "l2")
        np.testing.assert_array_equal(scanned[0], exact.nearest(snapshot, query, K, "l2", None)[0])


def test_a_filter_keeps_only_allowed_rows(tmp_path: Path) -> None:
    snapshot, found, _ = grouped_column(dataset(tmp_path / "t", points(ROWS, 1)))
    allowed = snapshot.rows_matching("id % 3 = 0")
    for query in points(10, 2):
        positions, _ = partitions.nearest(found, snapshot, query, 8, K, "l2", allowed)
        assert len(positions) == K
        assert all(i % 3 == 0 for i in ids_of(snapshot, positions))


def test_a_grouping_that_does_not_fit_the_memory_bound_is_not_made(tmp_path: Path) -> None:
    ds = dataset(tmp_path / "t", points(ROWS, 1))
    matrix_bytes = ROWS * DIMS * 4
    cache = partitions.GroupedCache(exact.ExactCache(matrix_bytes + matrix_bytes // 2))
    snapshot = cache.matrices.snapshot("t", ds, "vector")
    centroids = partitions.train(ds, "vector", "l2")
    assert snapshot is not None and centroids is not None
    assert cache.grouped("t", snapshot, centroids) is None
    roomy = partitions.GroupedCache(exact.ExactCache(4 * matrix_bytes))
    snapshot = roomy.matrices.snapshot("t", ds, "vector")
    assert snapshot is not None and roomy.grouped("t", snapshot, centroids) is not None
    assert roomy.held_bytes() >= matrix_bytes


def test_a_grouping_made_aside_replaces_the_columns_only_once_adopted(tmp_path: Path) -> None:
    """A calibration groups the rows by new partitions while searches go on with the old:
    neither regroups the column under the other."""
    ds = dataset(tmp_path / "t", points(ROWS, 1))
    snapshot, found, cache = grouped_column(ds)
    fresh = partitions.train(ds, "vector", "l2")
    assert fresh is not None
    aside = cache.grouped("t", snapshot, fresh, keep=False)
    assert aside is not None and aside is not found
    assert cache.grouped("t", snapshot, found.centroids) is found
    assert cache.stats() == {("t", "vector"): found.held_bytes}
    cache.adopt("t", "vector", aside)
    assert cache.grouped("t", snapshot, fresh) is aside


def test_partitions_that_cannot_be_trained_leave_no_scan(tmp_path: Path) -> None:
    """All-zero rows have no cosine direction to cluster: training fails, and the calibration
    goes on without the scan (None), rather than failing."""
    zeros = lance.write_dataset(rows(np.zeros((ROWS, DIMS), np.float32)), str(tmp_path / "z"))
    assert partitions.train(zeros, "vector", "cosine") is None
    small = dataset(tmp_path / "s", points(partitions.ROWS_PER_PARTITION * 3, 1))
    assert partitions.train(small, "vector", "l2") is None  # too few partitions to be worth it


def test_a_scan_wins_a_tie_with_lances_setting_but_not_a_clear_loss() -> None:
    def measured(cost_ms: float, scan: bool, recall: float = 0.97) -> calibration.Measured:
        setting = calibration.Setting(8, 0 if scan else 5, 0, scan)
        return calibration.Measured(setting, recall, recall - 0.01, recall + 0.01, cost_ms)

    lance_pick = measured(1.0, False, recall=0.96)
    assert calibration.cheapest([lance_pick, measured(1.1, True)], 0.95).setting.memory_scan
    slower = calibration.cheapest([lance_pick, measured(1.3, True)], 0.95)
    assert not slower.setting.memory_scan


def test_centroids_round_trip_and_a_damaged_file_is_refused() -> None:
    centroids = partitions.Centroids(points(20, 1), "l2")
    again = partitions.Centroids.from_bytes(centroids.to_bytes(), "l2")
    np.testing.assert_array_equal(again.vectors, centroids.vectors)
    flat = partitions.Centroids(points(20, 1).ravel(), "l2").to_bytes()
    for damaged in (flat, centroids.to_bytes()[:-7], b"not a numpy file"):
        with pytest.raises(ValueError):
            partitions.Centroids.from_bytes(damaged, "l2")


def test_a_target_that_travelled_as_a_float32_is_still_reached_by_its_level() -> None:
    levels = [RecallLevel(0.8, nprobes=2, latency_ms=1.0), RecallLevel(0.99, 8, latency_ms=3)]
    found = IndexCalibration(10, 100, 1000, 1, 0.0, levels)
    for target, nprobes in ((0.8, 2), (0.99, 8)):
        level = found.level_for(float(np.float32(target)))  # 0.8000000119, 0.9900000095
        assert level is not None and level.nprobes == nprobes


# -- the store ---------------------------------------------------------------------------------


class StoreAt:
    """A store server on ``root``, and a channel to it."""

    def __init__(self, servers: Servers, root: Path) -> None:
        import grpc

        settings = StoreSettings(
            data_root=str(root), maintenance_interval_s=0, calibration_queries=200, **QUIET
        )
        self.address = servers.start(create_store, settings)
        wait_until_serving(self.address, timeout=60)
        self.stub = store_pb2_grpc.StoreStub(grpc.insecure_channel(self.address))

    def search(self, query: np.ndarray, **options: Any) -> pa.Table:
        request = store_pb2.StoreSearchRequest(
            name="clusters", vector_column="vector", vector=pack_vectors(query), k=K,
            columns=["id"], **options,
        )  # fmt: skip
        return ipc_to_table(self.stub.Search(request).arrow_ipc)

    def calibration(self) -> Any:
        request = store_pb2.StoreIndexStatsRequest(name="clusters", index_name="vector_idx")
        stats = self.stub.IndexStats(request)
        return calibration_from_pb(stats.calibration) if stats.HasField("calibration") else None


@pytest.fixture(scope="module")
def scanned(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, StoreAt]:
    """A store whose IVF_PQ index is calibrated, with levels that scan from memory."""
    import time

    from embedsearch.contract.wire import schema_to_ipc, table_to_ipc

    root = tmp_path_factory.mktemp("scan")
    store = StoreAt(servers, root)
    data = rows(points(ROWS, 1))
    store.stub.CreateTable(
        store_pb2.StoreCreateTableRequest(name="clusters", arrow_schema=schema_to_ipc(data.schema))
    )
    store.stub.Add(store_pb2.StoreAddRequest(name="clusters", arrow_ipc=table_to_ipc(data)))
    store.stub.CreateIndex(
        store_pb2.StoreCreateIndexRequest(
            name="clusters", column="vector", index_type=common_pb2.INDEX_TYPE_IVF_PQ,
            params=common_pb2.IndexParams(num_partitions=16, num_sub_vectors=8), wait=True,
        )
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while store.calibration() is None:
        assert time.monotonic() < deadline, "the index was not calibrated"
        time.sleep(0.2)
    return root, store


def scan_level(store: StoreAt) -> RecallLevel:
    """The level a search gets for the recall of the lowest level that scans: the cheapest
    that reaches it, which need not be that level itself (a level of more probes can time
    cheaper when the machine is busy)."""
    found = store.calibration()
    levels = [level for level in found.levels if level.memory_scan]
    assert levels and found.scan_partitions == ROWS // 200
    picked = found.level_for(levels[0].recall)
    # 32-dim rows in partitions of 200: a probe costs microseconds, Lance's search a
    # millisecond, so the scan is the cheapest way to the lowest level at least.
    assert picked is not None and picked.memory_scan
    return picked


def test_calibration_picks_the_scan_and_explain_shows_it(scanned: tuple[Path, StoreAt]) -> None:
    _, store = scanned
    level = scan_level(store)
    search = store_pb2.StoreSearchRequest(
        name="clusters", vector_column="vector", vector=pack_vectors(points(1, 3)[0]), k=K,
        target_recall=level.recall,
    )  # fmt: skip
    plan = store.stub.ExplainPlan(store_pb2.StoreExplainPlanRequest(search=search)).plan
    assert f"PartitionScan: nprobes={level.nprobes} of {ROWS // 200}" in plan


def test_searches_the_scan_cannot_serve_are_exact(scanned: tuple[Path, StoreAt]) -> None:
    _, store = scanned
    target = scan_level(store).recall
    for query in points(10, 4):
        where = {"filter": "id > 100", "postfilter": True}
        ids = store.search(query, bypass_vector_index=True, **where).column("id").to_pylist()
        late = store.search(query, target_recall=target, **where)
        assert late.column("id").to_pylist() == ids
        bounded = store.search(query, target_recall=target, distance_upper_bound=1e9)
        unfiltered = store.search(query, bypass_vector_index=True)
        assert bounded.column("id").to_pylist() == unfiltered.column("id").to_pylist()


def test_a_restarted_store_scans_the_partitions_its_calibration_measured(
    servers: Servers, scanned: tuple[Path, StoreAt]
) -> None:
    root, store = scanned
    level = scan_level(store)
    queries = points(30, 8)
    before = [store.search(q, target_recall=level.recall).column("id").to_pylist() for q in queries]
    again = StoreAt(servers, root)  # a second store process on the same files
    assert again.calibration() == store.calibration()
    after = [again.search(q, target_recall=level.recall).column("id").to_pylist() for q in queries]
    assert after == before
    search = store_pb2.StoreSearchRequest(
        name="clusters", vector_column="vector", vector=pack_vectors(queries[0]), k=K,
        target_recall=level.recall,
    )  # fmt: skip
    plan = again.stub.ExplainPlan(store_pb2.StoreExplainPlanRequest(search=search)).plan
    assert f"PartitionScan: nprobes={level.nprobes} of {ROWS // 200}" in plan
