"""OpenTelemetry tracing over real channels: one trace from the caller through gateway, embedder
and store, exported over OTLP/gRPC to a receiver started here; nothing when tracing is off."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from conftest import QUIET
from helpers import arrow_rows, create_text_table

from embedder_service.server import create_server as create_embedder
from embedder_service.settings import EmbedderSettings
from embedsearch.contract.channels import wait_until_serving
from embedsearch.v1 import gateway_pb2, gateway_pb2_grpc
from gateway.server import create_server as create_gateway
from gateway.settings import GatewaySettings
from service_kit.server import tracing_of
from service_kit.tracing import ReceivedSpan, SpanReceiver
from store_service.server import create_server as create_store
from store_service.settings import StoreSettings

SERVER, CLIENT = 2, 3  # OTLP's SpanKind values
GATEWAY_SEARCH = "embedsearch.v1.Gateway/Search"
EMBED = "embedsearch.v1.Embedder/Embed"
STORE_SEARCH = "embedsearch.v1.Store/Search"


@dataclass
class Started:
    gateway: str
    servers: list[grpc.aio.Server]


def start_stack(servers, root, **tracing) -> Started:
    """Embedder, store and gateway with the given tracing settings, once SERVING."""
    first = len(servers.started)
    embedder = servers.start(create_embedder, EmbedderSettings(**QUIET, **tracing))
    store = servers.start(
        create_store,
        StoreSettings(data_root=str(root), maintenance_interval_s=0, **QUIET, **tracing),
    )
    gateway = servers.start(
        create_gateway,
        GatewaySettings(embedder_addr=embedder, store_addr=store, **QUIET, **tracing),
    )
    wait_until_serving(gateway, timeout=120)
    return Started(gateway, servers.started[first:])


@pytest.fixture(scope="module")
def receiver() -> Iterator[SpanReceiver]:
    with SpanReceiver() as started:
        yield started


@pytest.fixture(scope="module")
def traced(servers, receiver, tmp_path_factory) -> Started:
    # Spans leave each service's buffer every 50 ms instead of every 5 s.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
        return start_stack(
            servers, tmp_path_factory.mktemp("traced"), otlp_endpoint=receiver.endpoint
        )


def text_table(gateway: str, name: str) -> gateway_pb2_grpc.GatewayStub:
    stub = gateway_pb2_grpc.GatewayStub(grpc.insecure_channel(gateway))
    create_text_table(stub, name)
    texts = ["cats purr and sleep", "stock markets fell", "rain is falling"]
    stub.Add(gateway_pb2.AddRequest(table=name, rows=arrow_rows(id=[1, 2, 3], text=texts)))
    return stub


def traceparent(trace_id: str, parent_id: str, sampled: bool = True) -> tuple[str, str]:
    return ("traceparent", f"00-{trace_id}-{parent_id}-{'01' if sampled else '00'}")


def search(stub: gateway_pb2_grpc.GatewayStub, name: str, query: str, metadata=()) -> None:
    request = gateway_pb2.SearchRequest(table=name, text=query, k=2)
    assert stub.Search(request, metadata=metadata).rows.arrow_ipc


def one(spans: list[ReceivedSpan], name: str, kind: int | None = None) -> ReceivedSpan:
    found = [s for s in spans if s.name == name and kind in (None, s.kind)]
    assert len(found) == 1, f"{len(found)} spans {name!r} (kind {kind}) in {spans}"
    return found[0]


def whole_search(trace_id: str) -> object:
    """True of the received spans once a text search's trace is complete."""
    wanted = {(GATEWAY_SEARCH, SERVER), (EMBED, CLIENT), (EMBED, SERVER), (STORE_SEARCH, SERVER)}
    wanted |= {(name, None) for name in ("embed.tokenize", "embed.queue", "embed.inference")}

    def done(spans: list[ReceivedSpan]) -> bool:
        mine = [s for s in spans if s.trace_id == trace_id]
        have = {(s.name, s.kind) for s in mine} | {(s.name, None) for s in mine}
        return wanted <= have

    return done


def test_one_trace_from_the_callers_span_through_all_three_services(traced, receiver, table_name):
    stub = text_table(traced.gateway, table_name)
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    search(stub, table_name, "a sleepy kitten", [traceparent(trace_id, caller_span)])

    spans = receiver.wait_for(whole_search(trace_id))
    mine = [s for s in spans if s.trace_id == trace_id]
    gateway = one(mine, GATEWAY_SEARCH, SERVER)
    assert gateway.parent_id == caller_span  # the caller's traceparent is the root's parent
    assert gateway.service == "embedsearch-gateway"
    assert gateway.attributes["rpc.grpc.status_code"] == 0

    to_embedder, embedder = one(mine, EMBED, CLIENT), one(mine, EMBED, SERVER)
    to_store, store = one(mine, STORE_SEARCH, CLIENT), one(mine, STORE_SEARCH, SERVER)
    assert to_embedder.parent_id == to_store.parent_id == gateway.span_id
    assert embedder.parent_id == to_embedder.span_id
    assert store.parent_id == to_store.span_id
    assert (embedder.service, store.service) == ("embedsearch-embedder", "embedsearch-store")
    # The query is embedded before the store searches with its vector.
    assert to_embedder.end_ns <= to_store.start_ns

    steps = {name: one(mine, name) for name in ("embed.tokenize", "embed.queue", "embed.inference")}
    assert {s.parent_id for s in steps.values()} == {embedder.span_id}
    # A lone query on an idle model waits for the inference thread, and is tokenized there.
    assert steps["embed.queue"].end_ns <= steps["embed.tokenize"].start_ns
    assert steps["embed.tokenize"].end_ns <= steps["embed.inference"].start_ns
    assert all(
        embedder.start_ns <= s.start_ns <= s.end_ns <= embedder.end_ns for s in steps.values()
    )
    assert steps["embed.inference"].attributes["batch.size"] == 1
    # Each service parses the request and serializes the reply under its own call's span.
    for call in (gateway, embedder, store):
        children = {s.name for s in mine if s.parent_id == call.span_id}
        assert {"parse", "serialize"} <= children, (call.name, children)


def test_a_search_without_traceparent_starts_a_trace_at_the_gateway(traced, receiver, table_name):
    stub = text_table(traced.gateway, table_name)
    search(stub, table_name, "falling markets")

    def started_here(spans: list[ReceivedSpan]) -> bool:
        return any(s.name == GATEWAY_SEARCH and not s.parent_id for s in spans)

    spans = receiver.wait_for(started_here)
    root = next(s for s in spans if s.name == GATEWAY_SEARCH and not s.parent_id)
    spans = receiver.wait_for(whole_search(root.trace_id))
    embedder = one([s for s in spans if s.trace_id == root.trace_id], EMBED, SERVER)
    assert embedder.service == "embedsearch-embedder"


def test_a_caller_that_does_not_sample_is_not_recorded(traced, receiver, table_name):
    stub = text_table(traced.gateway, table_name)
    unsampled, sampled = secrets.token_hex(16), secrets.token_hex(16)
    search(stub, table_name, "wet weather", [traceparent(unsampled, "1" * 16, sampled=False)])
    search(stub, table_name, "wet weather again", [traceparent(sampled, "2" * 16)])
    # Each service exports its spans in the order they end: once the second search's have all
    # arrived, the first one's would have too.
    spans = receiver.wait_for(whole_search(sampled))
    assert not [s for s in spans if s.trace_id == unsampled]


def test_a_failed_call_ends_its_span_with_the_status(traced, receiver):
    stub = gateway_pb2_grpc.GatewayStub(grpc.insecure_channel(traced.gateway))
    trace_id = secrets.token_hex(16)
    with pytest.raises(grpc.RpcError) as failed:
        search(stub, "no_such_table", "anything", [traceparent(trace_id, "3" * 16)])
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND

    def ended(spans: list[ReceivedSpan]) -> bool:
        return any(s.trace_id == trace_id and s.name == GATEWAY_SEARCH for s in spans)

    spans = receiver.wait_for(ended)
    gateway = one([s for s in spans if s.trace_id == trace_id], GATEWAY_SEARCH, SERVER)
    assert gateway.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]


def test_nothing_is_traced_or_exported_when_tracing_is_off(
    servers, traced, receiver, tmp_path, table_name
):
    # OpenTelemetry's own variables name the receiver: they alone must not turn tracing on.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        env.setenv("OTEL_TRACES_EXPORTER", "otlp")
        env.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
        untraced = start_stack(servers, tmp_path)
        assert os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] == receiver.endpoint
        assert [tracing_of(server) for server in untraced.servers] == [None] * 3
        stub = text_table(untraced.gateway, table_name)
        quiet = secrets.token_hex(16)
        search(stub, table_name, "a quiet search", [traceparent(quiet, "4" * 16)])

    # A traced search afterwards, as a marker: once its spans are in, nothing else is coming.
    marker = secrets.token_hex(16)
    search(
        text_table(traced.gateway, table_name),
        table_name,
        "marker",
        [traceparent(marker, "5" * 16)],
    )
    spans = receiver.wait_for(whole_search(marker))
    assert not [s for s in spans if s.trace_id == quiet]
    for server in untraced.servers:
        servers.loop.run(server.stop(0))
