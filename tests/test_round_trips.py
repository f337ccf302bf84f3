"""Round trips: what one public request costs the store and the embedder, counted by their own
Prometheus request counters, through real servers; and two gateways on one store, where a
schema change through one is seen by the other."""

from __future__ import annotations

import urllib.request
from collections import Counter
from dataclasses import dataclass

import grpc
import numpy as np
import pyarrow as pa
import pytest
from conftest import QUIET, Servers
from helpers import arrow_rows, create_text_table, st_binding
from prometheus_client.parser import text_string_to_metric_families

from embedder_service.server import create_server as create_embedder
from embedder_service.settings import EmbedderSettings
from embedsearch.contract.channels import wait_until_serving
from embedsearch.contract.wire import ipc_to_table, schema_to_ipc
from embedsearch.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from gateway.server import create_server as create_gateway
from gateway.settings import GatewaySettings
from service_kit.launch import free_port
from store_service.server import create_server as create_store
from store_service.settings import StoreSettings


@dataclass
class Metered:
    """An embedder and a store whose /metrics are on, and two gateways in front of them."""

    first: gateway_pb2_grpc.GatewayStub
    second: gateway_pb2_grpc.GatewayStub
    embedder_metrics: int
    store_metrics: int

    def calls(self) -> tuple[Counter[str], Counter[str]]:
        """Requests each peer has handled so far, by method: (embedder, store)."""
        return requests(self.embedder_metrics, "embedder"), requests(self.store_metrics, "store")


def requests(port: int, prefix: str) -> Counter[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{prefix}_requests_total":
                counts[sample.labels["method"]] += int(sample.value)
    return counts


@pytest.fixture(scope="module")
def metered(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Metered:
    embedder_metrics, store_metrics = free_port(), free_port()
    embedder = servers.start(
        create_embedder, EmbedderSettings(**{**QUIET, "metrics_port": embedder_metrics})
    )
    store = servers.start(
        create_store,
        StoreSettings(
            data_root=str(tmp_path_factory.mktemp("round_trips")),
            maintenance_interval_s=0,
            **{**QUIET, "metrics_port": store_metrics},
        ),
    )
    stubs = []
    for _ in range(2):
        address = servers.start(
            create_gateway, GatewaySettings(embedder_addr=embedder, store_addr=store, **QUIET)
        )
        wait_until_serving(address, timeout=120)
        stubs.append(gateway_pb2_grpc.GatewayStub(grpc.insecure_channel(address)))
    return Metered(stubs[0], stubs[1], embedder_metrics, store_metrics)


def cost(metered: Metered, call: object) -> tuple[dict[str, int], dict[str, int]]:
    """What ``call()`` cost each peer: (embedder, store) requests by method."""
    embedder_before, store_before = metered.calls()
    call()  # type: ignore[operator]
    embedder_after, store_after = metered.calls()
    return dict(embedder_after - embedder_before), dict(store_after - store_before)


def text_search(stub: gateway_pb2_grpc.GatewayStub, table: str, **fields: object) -> pa.Table:
    reply = stub.Search(gateway_pb2.SearchRequest(table=table, text="a cat", k=3, **fields))
    return ipc_to_table(reply.rows.arrow_ipc)


def test_an_add_costs_one_store_call_and_one_embedder_call(metered, table_name):
    create_text_table(metered.first, table_name)
    rows = arrow_rows(id=[1, 2, 3], text=["a cat", "a dog", "a car"])
    add = gateway_pb2.AddRequest(table=table_name, rows=rows)
    assert cost(metered, lambda: metered.first.Add(add)) == ({"Embed": 1}, {"Add": 1})
    # The second gateway has not seen the table: its first add describes it, once.
    assert cost(metered, lambda: metered.second.Add(add)) == (
        {"Embed": 1},
        {"DescribeTable": 1, "Add": 1},
    )
    assert cost(metered, lambda: metered.second.Add(add)) == ({"Embed": 1}, {"Add": 1})


def test_a_text_search_costs_one_embedder_call_and_one_store_call(metered, table_name):
    create_text_table(metered.first, table_name)
    rows = arrow_rows(id=[1, 2, 3], text=["a cat", "a dog", "a car"])
    metered.first.Add(gateway_pb2.AddRequest(table=table_name, rows=rows))
    found: list[pa.Table] = []
    spent = cost(metered, lambda: found.append(text_search(metered.first, table_name)))
    assert spent == ({"Embed": 1}, {"Search": 1})
    assert found[0].column("id").to_pylist()[0] == 1


def test_a_vector_search_costs_one_store_call(metered, table_name):
    create_text_table(metered.first, table_name)
    metered.first.Add(gateway_pb2.AddRequest(table=table_name, rows=arrow_rows(id=[1], text=["x"])))
    vector = np.full(384, 0.05, dtype="<f4").tobytes()
    search = gateway_pb2.SearchRequest(table=table_name, vector=vector, k=1)
    assert cost(metered, lambda: metered.first.Search(search)) == ({}, {"Search": 1})


def overwrite(stub: gateway_pb2_grpc.GatewayStub, name: str, schema: pa.Schema, source: str):
    """Replace table ``name`` with one of ``schema``, ``source`` bound to ``vector``."""
    stub.CreateTable(
        gateway_pb2.CreateTableRequest(
            name=name,
            arrow_schema=schema_to_ipc(schema),
            bindings=[st_binding(source=source)],
            mode=common_pb2.CREATE_MODE_OVERWRITE,
        )
    )


def test_a_schema_change_through_another_gateway_is_refused_by_the_store_then_seen(
    metered, table_name
):
    first, second = metered.first, metered.second
    create_text_table(first, table_name)
    first.Add(gateway_pb2.AddRequest(table=table_name, rows=arrow_rows(id=[1], text=["a cat"])))
    text_search(first, table_name)  # the first gateway's descriptor is cached
    # The second gateway adds a column: rows the first gateway's cached schema would accept
    # as they are, so only the store can tell that the schema moved on.
    schema = pa.schema([("id", pa.int64()), ("text", pa.string()), ("colour", pa.string())])
    overwrite(second, table_name, schema, "text")

    rows = arrow_rows(id=[2], text=["a red cat"], colour=["red"])
    add = gateway_pb2.AddRequest(table=table_name, rows=rows)
    embedder_calls, store_calls = cost(metered, lambda: first.Add(add))
    # Refused once for its stale fingerprint, described again, added.
    assert store_calls == {"Add": 2, "DescribeTable": 1}
    assert embedder_calls == {"Embed": 2}
    found = text_search(first, table_name, columns=["id", "colour"])
    assert found.select(["id", "colour"]).to_pylist() == [{"id": 2, "colour": "red"}]
    assert cost(metered, lambda: first.Add(add)) == ({"Embed": 1}, {"Add": 1})


def test_a_renamed_column_through_another_gateway_is_seen(metered, table_name):
    first, second = metered.first, metered.second
    old = create_text_table(first, table_name).version
    first.Add(gateway_pb2.AddRequest(table=table_name, rows=arrow_rows(id=[1], text=["a cat"])))
    text_search(first, table_name)
    overwrite(second, table_name, pa.schema([("id", pa.int64()), ("body", pa.string())]), "body")

    # Rows the first gateway's cached schema refuses (no 'text'): it checks with the store
    # before saying so, and finds the new schema.
    rows = arrow_rows(id=[5], body=["a white dog"])
    result = first.Add(gateway_pb2.AddRequest(table=table_name, rows=rows))
    assert result.rows_inserted == 1
    assert text_search(first, table_name).column("body").to_pylist() == ["a white dog"]
    # A search of a version before the change reads that version's schema.
    before = text_search(first, table_name, version=old + 1)
    assert before.column("text").to_pylist() == ["a cat"]
