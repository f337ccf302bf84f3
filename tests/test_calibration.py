"""Recall as a knob: the store calibrates a vector index after its build, index_stats shows the
calibration, and search(...).target_recall(r) reaches r on held-out queries; through the SDK
over gRPC to a real gateway and store, on real Lance datasets."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import grpc
import lance
import numpy as np
import pyarrow as pa
import pytest
from conftest import QUIET, Servers, Stack
from helpers import refined_by_lance

import embedsearch
from embedsearch.contract.channels import wait_until_serving
from embedsearch.contract.errors import Unavailable, status_code_name
from embedsearch.errors import InvalidArgument
from embedsearch.v1 import gateway_pb2, gateway_pb2_grpc
from gateway.server import create_server as create_gateway
from gateway.settings import GatewaySettings
from store_service import calibration
from store_service.server import create_server as create_store
from store_service.settings import StoreSettings

DIMS, ROWS, CLUSTERS, K = 32, 6000, 60, 10
SPREAD = 0.6  # of the points around their cluster's centre: neighbours are not trivial
TARGETS = (0.8, 0.9, 0.95)
GROWTH = 0.5


def points(count: int, seed: int) -> np.ndarray:
    """Seeded points around CLUSTERS fixed centres (the same centres for every seed)."""
    centres = np.random.default_rng(0).normal(size=(CLUSTERS, DIMS))
    rng = np.random.default_rng(seed)
    picked = centres[rng.integers(0, CLUSTERS, count)]
    return (picked + rng.normal(0, SPREAD, size=(count, DIMS))).astype(np.float32)


def rows(vectors: np.ndarray, start: int = 0) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(np.arange(start, start + len(vectors)), pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIMS),
        }
    )


@pytest.fixture(scope="module")
def db(servers: Servers, stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A gateway and a store of their own (calibration settings of this test), over gRPC."""
    settings = StoreSettings(
        data_root=str(tmp_path_factory.mktemp("calibration")),
        maintenance_interval_s=0,
        calibration_queries=200,
        calibration_growth=GROWTH,
        **QUIET,
    )
    store = servers.start(create_store, settings)
    gateway = servers.start(
        create_gateway, GatewaySettings(embedder_addr=stack.embedder, store_addr=store, **QUIET)
    )
    wait_until_serving(gateway, timeout=120)
    connection = embedsearch.connect(f"grpc://{gateway}")
    connection.gateway = gateway  # for the raw-proto test below
    return connection


def calibrated(table: Any, index: str = "vector_idx", after: float = 0.0) -> Any:
    """The index's calibration once the store has recorded one made after ``after`` (it
    calibrates in the background after a build); fails after a generous deadline."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        stats = table.index_stats(index)
        found = stats.calibration if stats is not None else None
        if found is not None and found.calibrated_at > after:
            return found
        time.sleep(0.2)
    raise AssertionError(f"index {index} was not calibrated")


@pytest.fixture(scope="module")
def table(db: Any) -> Any:
    table = db.create_table("clusters", rows(points(ROWS, seed=1)))
    table.create_index(
        metric="l2", num_partitions=32, num_sub_vectors=8, vector_column_name="vector"
    )
    calibrated(table)
    return table


def recall_at(table: Any, queries: np.ndarray, **options: float) -> float:
    """Mean recall@K against exact search of the queries, searched with ``options``."""
    return float(np.mean(recalls(table, queries, **options)))


def reaches(table: Any, queries: np.ndarray, target: float) -> bool:
    """Whether search(...).target_recall(target) keeps its promise on ``queries``: the
    calibration promises a mean recall (its lower confidence bound reaches the target), so a
    finite held-out sample may fall short of it by its own sampling error, no further."""
    scores = recalls(table, queries, target_recall=target)
    sampling_error = np.std(scores, ddof=1) / math.sqrt(len(scores))
    return float(np.mean(scores)) >= target - 3 * sampling_error


def recalls(table: Any, queries: np.ndarray, **options: float) -> list[float]:
    """Recall@K of each query against exact search, searched with ``options``."""
    scores = []
    for query in queries:
        exact = table.search(query).bypass_vector_index().limit(K).select(["id"]).to_arrow()
        search = table.search(query).limit(K).select(["id"])
        if "target_recall" in options:
            search = search.target_recall(options["target_recall"])
        found = search.to_arrow()
        truth = set(exact.column("id").to_pylist())
        scores.append(len(truth & set(found.column("id").to_pylist())) / K)
    return scores


def test_calibration_is_recorded_after_the_build_and_shown_by_index_stats(table: Any) -> None:
    recorded = table.index_stats("vector_idx").calibration
    assert recorded.k == K
    assert recorded.num_rows == ROWS
    assert recorded.sample_queries == 400  # 200 of its rows, and 200 blends of two
    assert recorded.version == table.version
    assert recorded.served_queries == 0 and recorded.partitions >= 2
    levels = [level.recall for level in recorded.levels]
    assert levels == sorted(levels) and set(levels) <= {0.8, 0.9, 0.95, 0.99}
    assert 0.95 in levels  # this index reaches 0.95 with some setting
    for level in recorded.levels:
        assert 1 <= level.nprobes <= 32
        assert level.measured_recall >= level.recall
        assert level.latency_ms > 0
    assert recorded.max_recall >= max(levels)


def test_target_recall_reaches_the_target_on_held_out_queries(table: Any) -> None:
    held_out = points(300, seed=2)  # not rows of the table, from the same distribution
    for target in TARGETS:
        assert reaches(table, held_out, target)


def test_a_target_above_every_level_is_served_by_exact_search(table: Any) -> None:
    queries = points(20, seed=3)
    assert recall_at(table, queries, target_recall=1.0) == 1.0


def test_bad_target_recall_values_are_refused(db: Any, table: Any) -> None:
    query = points(1, seed=4)[0]
    for bad in (0.0, -0.5, 1.5, math.nan):
        with pytest.raises(InvalidArgument) as caught:
            table.search(query).target_recall(bad).limit(K).to_arrow()
        assert status_code_name(caught.value) == "INVALID_ARGUMENT"
        assert "target_recall" in str(caught.value)  # the message names the field to fix
    with pytest.raises(InvalidArgument) as caught:
        table.search(query).target_recall(0.9).nprobes(4).limit(K).to_arrow()
    assert "nprobes" in str(caught.value)
    # The same through the public contract, without the SDK.
    stub = gateway_pb2_grpc.GatewayStub(grpc.insecure_channel(db.gateway))
    request = gateway_pb2.SearchRequest(
        table="clusters", vector=query.astype("<f4").tobytes(), k=K, target_recall=2.0
    )
    with pytest.raises(grpc.RpcError) as failed:
        stub.Search(request)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_column_without_a_vector_index_is_searched_exactly(db: Any) -> None:
    plain = db.create_table("unindexed", rows(points(500, seed=5)))
    queries = points(10, seed=6)
    assert recall_at(plain, queries, target_recall=0.9) == 1.0
    with pytest.raises(InvalidArgument):  # the value is still checked
        plain.search(queries[0]).target_recall(0.0).to_arrow()
    assert plain.list_indices() == []


def test_the_index_is_calibrated_again_once_optimize_changed_it(db: Any) -> None:
    table = db.create_table("growing", rows(points(2000, seed=7)))
    table.create_index(
        metric="l2", num_partitions=16, num_sub_vectors=8, vector_column_name="vector"
    )
    first = calibrated(table)
    assert first.num_rows == 2000
    table.add(rows(points(500, seed=8), start=2000))
    # Unindexed rows are searched exactly, so the calibration still holds until the index
    # changes: optimize adds them to it (and Lance may split or join IVF partitions), then
    # the store calibrates again.
    assert table.index_stats("vector_idx").calibration.calibrated_at == first.calibrated_at
    table.optimize()
    second = table.index_stats("vector_idx").calibration
    assert second.calibrated_at > first.calibrated_at
    assert second.partitions != first.partitions  # what called for it: a new IVF layout
    assert second.num_rows == 2500
    assert second.version == table.version
    # Its promise holds on the changed index.
    assert reaches(table, points(300, seed=9), 0.9)


def near_copies(count: int, seed: int) -> np.ndarray:
    """Rows in tight clumps: each a copy of one of 300 originals with a little noise, as a
    corpus that holds many versions of the same texts."""
    originals = np.random.default_rng(10).normal(size=(300, DIMS))
    rng = np.random.default_rng(seed)
    picked = originals[rng.integers(0, len(originals), count)]
    return (picked + rng.normal(0, 0.05, size=(count, DIMS))).astype(np.float32)


def new_points(count: int, seed: int) -> np.ndarray:
    """Queries like new texts: drawn as the originals were, near none of the table's rows."""
    return np.random.default_rng(seed).normal(size=(count, DIMS)).astype(np.float32)


def test_calibration_moves_to_served_queries_and_keeps_its_promise_on_held_out_ones(
    db: Any,
) -> None:
    table = db.create_table("copies", rows(near_copies(6000, seed=11)))
    table.create_index(
        metric="l2", num_partitions=64, num_sub_vectors=8, vector_column_name="vector"
    )
    first = calibrated(table)
    assert first.served_queries == 0  # nothing served yet: the table's rows and blends
    for query in new_points(200, seed=12):  # the store keeps a sample of what it serves
        table.search(query).limit(K).to_arrow()
    table.optimize()  # maintenance's pass: enough served queries, so calibrate from them
    second = table.index_stats("vector_idx").calibration
    assert second.calibrated_at > first.calibrated_at
    assert second.served_queries == second.sample_queries == 200
    assert 0.95 in [level.recall for level in second.levels]  # an indexed search, not exact
    # On rows and blends alone the same target delivered 0.48-0.85 on such queries.
    assert reaches(table, new_points(500, seed=14), 0.95)


def test_a_calibration_gives_up_when_the_store_stops(tmp_path: Any) -> None:
    dataset = lance.write_dataset(rows(points(1000, seed=15)), tmp_path / "t.lance")
    dataset.create_index("vector", "IVF_PQ", num_partitions=4, num_sub_vectors=4)
    stop = threading.Event()
    stop.set()  # the server stopped: maintenance's or the build thread's calibration ends
    with pytest.raises(Unavailable):
        calibration.calibrate(
            dataset, "vector", "IVF_PQ", 4, "l2", k=K, sample_size=20, levels=[0.9], stop=stop
        )


def test_a_setting_that_cannot_be_the_cheapest_is_abandoned_after_the_first_queries(
    tmp_path: Any,
) -> None:
    """Calibration measures a setting on every query only while it may be the cheapest for
    some level: here the refine factor of 80 is made far slower than the settings that reach
    every level before it, so it is measured on the first queries and dropped."""
    dataset = lance.write_dataset(rows(points(3000, seed=16)), tmp_path / "t.lance")
    dataset.create_index("vector", "IVF_PQ", num_partitions=8, num_sub_vectors=4)
    queries = points(80, seed=17)
    calls: dict[calibration.Setting, int] = {}

    def served(query: np.ndarray, k: int, setting: calibration.Setting) -> np.ndarray:
        calls[setting] = calls.get(setting, 0) + 1
        if setting.refine_factor == 80:
            time.sleep(0.2)  # slower than any other setting, by far
        return refined_by_lance(dataset, query, k, setting)

    found = calibration.calibrate(
        dataset, "vector", "IVF_PQ", 8, "l2", k=K, sample_size=80, levels=[0.5, 0.9, 0.99],
        served=queries, refined=served,
    )  # fmt: skip
    prefix = max(calibration.PREFIX_MIN, round(len(queries) * calibration.PREFIX_SHARE))
    slow = [setting for setting in calls if setting.refine_factor == 80]
    assert slow and all(calls[setting] == prefix for setting in slow)
    assert max(calls.values()) == len(queries)  # the others were measured on every query
    assert [lv.recall for lv in found.levels] == [0.5, 0.9, 0.99]
    assert all(lv.refine_factor != 80 for lv in found.levels)
