"""The server kit's hardening, on real servers over real channels: requests that do not parse or
carry undefined enum values are INVALID_ARGUMENT on every RPC, status messages are bounded and
INTERNAL gives nothing away, /metrics stays on loopback, the internal services want a token, the
gateway drains before its peers stop, and a store dying mid-stream is UNAVAILABLE."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import grpc
import lance
import pyarrow as pa
import pytest
from conftest import QUIET
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from helpers import expect_code
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from test_faults import BATCHES, HANG_S, batch_messages, services, until
from test_services import listening_hosts

import service_kit.auth as auth
from embedder_service.server import create_server as create_embedder
from embedder_service.settings import EmbedderSettings
from embedsearch.contract.channels import wait_until_serving
from embedsearch.contract.convert import spec_to_pb
from embedsearch.contract.errors import InvalidArgument
from embedsearch.contract.text import brief
from embedsearch.contract.wire import schema_to_ipc, table_to_ipc
from embedsearch.v1 import (
    common_pb2,
    embedder_pb2,
    embedder_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    store_pb2,
    store_pb2_grpc,
)
from gateway.server import create_server as create_gateway
from gateway.settings import GatewaySettings
from service_kit.cli import up_command
from service_kit.launch import free_port
from service_kit.server import RpcMetrics, drain, new_server
from service_kit.validate import check_enums
from store_service.server import create_server as create_store
from store_service.settings import StoreSettings

INVALID = grpc.StatusCode.INVALID_ARGUMENT
MODULES = {"Gateway": gateway_pb2, "Embedder": embedder_pb2, "Store": store_pb2}
ROWS = pa.schema([pa.field("id", pa.int64()), pa.field("text", pa.string())])


def every_method() -> Iterator[Any]:
    for name, module in MODULES.items():
        for method in module.DESCRIPTOR.services_by_name[name].methods:
            yield pytest.param(name, method, id=f"{name}.{method.name}")


def raw_call(channel: grpc.Channel, method: MethodDescriptor, payload: bytes) -> Any:
    """Call ``method`` with ``payload`` as the request's bytes (one message on a stream)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    if method.client_streaming and method.server_streaming:
        return list(channel.stream_stream(path)(iter([payload]), timeout=HANG_S))
    if method.client_streaming:
        return channel.stream_unary(path)(iter([payload]), timeout=HANG_S)
    if method.server_streaming:
        return list(channel.unary_stream(path)(payload, timeout=HANG_S))
    return channel.unary_unary(path)(payload, timeout=HANG_S)


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def bad_utf8(method: MethodDescriptor) -> bytes | None:
    """The request with its first string field set to bytes that are no UTF-8, if it has one."""
    for field in method.input_type.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            return varint(field.number << 3 | 2) + varint(2) + b"\xc3\x28"
    return None


def address_of(stack: Any, service: str) -> str:
    return {"Gateway": stack.gateway, "Embedder": stack.embedder, "Store": stack.store}[service]


def rows(ids: range) -> bytes:
    return table_to_ipc(pa.table({"id": list(ids), "text": [f"row {i}" for i in ids]}, ROWS))


# -- A: requests that do not parse -------------------------------------------------------------


@pytest.mark.parametrize(("service", "method"), list(every_method()))
def test_bytes_that_are_no_request_are_invalid_argument(stack, service, method):
    name = method.input_type.name
    with grpc.insecure_channel(address_of(stack, service)) as channel:
        expect_code(
            INVALID,
            lambda: raw_call(channel, method, b"\xff\xff\xff\xff"),
            f"request is not a valid {name}: ",
            reason="INVALID_ARGUMENT",
        )
        payload = bad_utf8(method)
        if payload is not None:
            expect_code(INVALID, lambda: raw_call(channel, method, payload), name, "UTF-8")


def test_a_bad_message_later_in_a_stream_read_by_a_task_ends_the_call(stack):
    """EmbedStream reads its requests in a task of its own: a message there that does not
    parse still ends the call at once, with INVALID_ARGUMENT, not a hang."""
    good = embedder_pb2.EmbedRequest(
        function=spec_to_pb("sentence-transformers", {}), texts=["hello"]
    ).SerializeToString()
    with grpc.insecure_channel(stack.embedder) as channel:
        call = channel.stream_stream("/embedsearch.v1.Embedder/EmbedStream")
        expect_code(
            INVALID,
            lambda: list(call(iter([good, b"\xff\xff"]), timeout=HANG_S)),
            "request is not a valid EmbedRequest",
        )


# -- B: enum values the contract does not define -----------------------------------------------


def _gateway_cases() -> Iterator[Any]:
    """(method, request, the field named in the refusal), one undefined enum value each."""
    search = {"table": "t", "vector": b"\0" * 16}
    index = {"table": "t", "column": "v"}
    for method, request, field in (
        ("Search", gateway_pb2.SearchRequest(query_type=99, **search), "query_type"),
        ("Search", gateway_pb2.SearchRequest(result_format=99, **search), "result_format"),
        ("Search", gateway_pb2.SearchRequest(metric=99, **search), "metric"),
        ("CreateTable", gateway_pb2.CreateTableRequest(name="enum_t", mode=99), "mode"),
        (
            "CreateTable",
            gateway_pb2.CreateTableRequest(name="enum_t", on_bad_vectors=99),
            "on_bad_vectors",
        ),
        ("Add", gateway_pb2.AddRequest(table="t", on_bad_vectors=99), "on_bad_vectors"),
        ("CreateIndex", gateway_pb2.CreateIndexRequest(index_type=99, **index), "index_type"),
        (
            "CreateIndex",
            gateway_pb2.CreateIndexRequest(params=common_pb2.IndexParams(metric=99), **index),
            "params.metric",  # nested
        ),
    ):
        yield pytest.param(method, request, field, id=f"{method}.{field}")


@pytest.mark.parametrize(("method", "request_", "field"), list(_gateway_cases()))
def test_undefined_enum_values_are_refused_by_the_gateway(gateway_stub, method, request_, field):
    details = expect_code(
        INVALID,
        lambda: getattr(gateway_stub, method)(request_, timeout=HANG_S),
        f"{field} is 99",
        reason="INVALID_ARGUMENT",
        fields=[field],
    )
    assert re.search(r"use one of \w+_UNSPECIFIED \(0\), \w+ \(1\)", details), details
    names = gateway_stub.ListTables(gateway_pb2.ListTablesRequest(), timeout=HANG_S).names
    assert "enum_t" not in names  # nothing was created


def test_undefined_enum_values_are_refused_by_the_internal_services(embedder_stub, store_stub):
    expect_code(
        INVALID,
        lambda: embedder_stub.Embed(embedder_pb2.EmbedRequest(mode=99), timeout=HANG_S),
        "mode is 99",
        "EMBED_MODE_QUERY",
        fields=["mode"],
    )
    for method, request in (
        ("Search", store_pb2.StoreSearchRequest(name="t", metric=99)),
        ("CreateIndex", store_pb2.StoreCreateIndexRequest(name="t", index_type=99)),
        ("CreateTable", store_pb2.StoreCreateTableRequest(name="enum_s", mode=99)),
    ):
        call = getattr(store_stub, method)
        expect_code(INVALID, lambda c=call, r=request: c(r, timeout=HANG_S), "99")
    names = store_stub.ListTables(store_pb2.StoreListTablesRequest(), timeout=HANG_S).names
    assert "enum_s" not in names


def test_the_enum_check_walks_repeated_fields():
    reply = embedder_pb2.ResolveFunctionResponse(modalities=[1, 99])
    with pytest.raises(InvalidArgument) as refused:
        check_enums(reply)
    [(field, description)] = refused.value.field_violations
    assert field == "modalities[1]" and "MODALITY_TEXT" in description, description
    assert "modalities[1] is 99" in str(refused.value)
    check_enums(embedder_pb2.ResolveFunctionResponse(modalities=[1, 2]))


# -- C: bounded status messages, and an INTERNAL that gives nothing away -----------------------


def test_a_huge_filter_is_answered_in_a_bounded_message(gateway_stub, table_name):
    gateway_stub.CreateTable(
        gateway_pb2.CreateTableRequest(name=table_name, arrow_schema=schema_to_ipc(ROWS)),
        timeout=HANG_S,
    )
    for call in (
        lambda: gateway_stub.Delete(
            gateway_pb2.DeleteRequest(table=table_name, filter="(" * 5000), timeout=HANG_S
        ),
        lambda: gateway_stub.CountRows(
            gateway_pb2.CountRowsRequest(table=table_name, filter="(" * 5000), timeout=HANG_S
        ),
    ):
        details = expect_code(INVALID, call)
        assert len(details.encode()) <= 1024, len(details.encode())


def test_brief_quotes_a_prefix():
    assert brief("price > 10") == "'price > 10'"
    quoted = brief("(" * 5000)
    assert len(quoted) < 120 and quoted.startswith("'(((") and "5000 characters" in quoted


class Broken(embedder_pb2_grpc.EmbedderServicer):
    """An embedder whose methods fail: one by a bug, one with a very long typed error."""

    async def ListProviders(self, request: Any, context: Any) -> Any:
        raise RuntimeError("secret detail at /srv/private/path")

    async def ResolveFunction(self, request: Any, context: Any) -> Any:
        raise InvalidArgument("é" * 5000)


@pytest.fixture(scope="module")
def broken(servers) -> str:
    async def create(settings: EmbedderSettings) -> tuple[grpc.aio.Server, int]:
        server, port, readiness = await new_server(
            settings,
            ["embedsearch.v1.Embedder"],
            lambda s: embedder_pb2_grpc.add_EmbedderServicer_to_server(Broken(), s),
            RpcMetrics("broken", CollectorRegistry()),
        )
        await readiness.set(True)
        return server, port

    return servers.start(create, EmbedderSettings(**QUIET))


def test_internal_errors_name_an_id_in_the_log_and_nothing_else(broken, caplog):
    stub = embedder_pb2_grpc.EmbedderStub(grpc.insecure_channel(broken))
    details = expect_code(
        grpc.StatusCode.INTERNAL,
        lambda: stub.ListProviders(embedder_pb2.ListProvidersRequest(), timeout=HANG_S),
        "internal error in ListProviders; see the server log (error id ",
        reason="INTERNAL",
    )
    assert "secret" not in details and "RuntimeError" not in details
    error_id = re.search(r"error id ([0-9a-f]+)\)$", details).group(1)
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and logged[0].exc_info and "secret detail" in str(logged[0].exc_info[1])


def test_long_messages_are_cut_on_a_character_boundary(broken):
    stub = embedder_pb2_grpc.EmbedderStub(grpc.insecure_channel(broken))
    details = expect_code(
        INVALID,
        lambda: stub.ResolveFunction(embedder_pb2.ResolveFunctionRequest(), timeout=HANG_S),
    )
    assert len(details.encode()) <= 1024 and details.endswith("é…")


# -- D: /metrics on loopback unless told otherwise ---------------------------------------------


def test_metrics_listen_on_loopback_unless_told_otherwise(servers, tmp_path):
    """The default is 127.0.0.1; --metrics-host moves it (here to another loopback address, so
    that nothing listens beyond this machine)."""
    ports = {host: free_port() for host in ("", "127.0.0.2")}
    for host, port in ports.items():
        given = {"metrics_host": host} if host else {}
        settings = StoreSettings(
            data_root=str(tmp_path / (host or "default")),
            **{**QUIET, "metrics_port": port, **given},
        )
        servers.start(create_store, settings)
    assert listening_hosts(ports[""]) == {"127.0.0.1"}
    assert listening_hosts(ports["127.0.0.2"]) == {"127.0.0.2"}
    scraped = urllib.request.urlopen(f"http://127.0.0.2:{ports['127.0.0.2']}/metrics", timeout=10)
    assert b"store_requests_in_flight" in scraped.read()


# -- E: tokens on the internal services --------------------------------------------------------

RW, RO = "internal-rw-token", "internal-ro-token"


def bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


@pytest.fixture(scope="module")
def internal(servers, tmp_path_factory) -> dict[str, str]:
    """A store and an embedder that want RW (or RO, read-only), and a table in the store."""
    root = tmp_path_factory.mktemp("guarded")
    tokens = {"auth_tokens": f"{RW},{RO}:ro"}
    store = servers.start(
        create_store,
        StoreSettings(data_root=str(root), maintenance_interval_s=0, **tokens, **QUIET),
    )
    embedder = servers.start(create_embedder, EmbedderSettings(preload="", **tokens, **QUIET))
    stub = store_pb2_grpc.StoreStub(grpc.insecure_channel(store))
    stub.CreateTable(
        store_pb2.StoreCreateTableRequest(name="kept", arrow_schema=schema_to_ipc(ROWS)),
        metadata=bearer(RW),
        timeout=HANG_S,
    )
    for start in (0, 10):  # two fragments: something for Optimize to do
        stub.Add(
            store_pb2.StoreAddRequest(name="kept", arrow_ipc=rows(range(start, start + 10))),
            metadata=bearer(RW),
            timeout=HANG_S,
        )
    return {"store": store, "embedder": embedder, "root": str(root)}


def on_disk(root: str, table: str) -> tuple[int, int]:
    dataset = lance.dataset(os.path.join(root, f"{table}.lance"))
    return dataset.version, dataset.count_rows()


def test_internal_services_refuse_writes_without_a_read_write_token(internal):
    store = store_pb2_grpc.StoreStub(grpc.insecure_channel(internal["store"]))
    embedder = embedder_pb2_grpc.EmbedderStub(grpc.insecure_channel(internal["embedder"]))
    before = on_disk(internal["root"], "kept")
    writes = [
        (store.DropTable, store_pb2.StoreDropTableRequest(name="kept")),
        (store.Delete, store_pb2.StoreDeleteRequest(name="kept", filter="id >= 0")),
        (store.Optimize, store_pb2.StoreOptimizeRequest(name="kept", cleanup_older_than_s=0)),
    ]
    embed = embedder_pb2.EmbedRequest(function=spec_to_pb("sentence-transformers", {}))
    for call, request in [*writes, (embedder.Embed, embed)]:
        for token in (None, "not-a-token"):
            expect_code(
                grpc.StatusCode.UNAUTHENTICATED,
                lambda c=call, r=request, t=token: c(r, metadata=bearer(t), timeout=HANG_S),
                "authorization: Bearer" if token is None else "not valid",
            )
    for call, request in writes:
        expect_code(
            grpc.StatusCode.PERMISSION_DENIED,
            lambda c=call, r=request: c(r, metadata=bearer(RO), timeout=HANG_S),
            "read-only",
        )
    assert on_disk(internal["root"], "kept") == before
    # A read-only token reads; health and reflection need no token at all.
    count = store.CountRows(
        store_pb2.StoreCountRowsRequest(name="kept"), metadata=bearer(RO), timeout=HANG_S
    )
    assert count.count == before[1] == 20
    providers = embedder.ListProviders(
        embedder_pb2.ListProvidersRequest(), metadata=bearer(RO), timeout=HANG_S
    )
    assert providers.providers
    for address in (internal["store"], internal["embedder"]):
        wait_until_serving(address, timeout=HANG_S)
        reflection = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(address))
        listing = reflection_pb2.ServerReflectionRequest(list_services="")
        assert next(reflection.ServerReflectionInfo(iter([listing]))).list_services_response


def test_a_gateway_with_the_peer_token_works_through_guarded_peers(
    servers, internal, tmp_path, monkeypatch
):
    monkeypatch.setattr(auth, "RELOAD_EVERY_S", 0.0)
    token_file = tmp_path / "peer-token"
    token_file.write_text(f"# the internal token\n{RW}\n")
    address = servers.start(
        create_gateway,
        GatewaySettings(
            embedder_addr=internal["embedder"],
            store_addr=internal["store"],
            peer_token_file=str(token_file),
            **QUIET,
        ),
    )
    wait_until_serving(address, timeout=HANG_S)
    stub = gateway_pb2_grpc.GatewayStub(grpc.insecure_channel(address))
    assert stub.ListProviders(embedder_pb2.ListProvidersRequest(), timeout=HANG_S).providers
    stub.CreateTable(
        gateway_pb2.CreateTableRequest(name="through", arrow_schema=schema_to_ipc(ROWS)),
        timeout=HANG_S,
    )
    stub.Add(
        gateway_pb2.AddRequest(table="through", rows=common_pb2.RowData(arrow_ipc=rows(range(5)))),
        timeout=HANG_S,
    )
    chunks = [
        gateway_pb2.AddRequest(table="through", rows=common_pb2.RowData(arrow_ipc=rows(ids)))
        for ids in (range(5, 10), range(10, 15))
    ]
    assert stub.AddStream(iter(chunks), timeout=HANG_S).rows_inserted == 10
    count = stub.CountRows(gateway_pb2.CountRowsRequest(table="through"), timeout=HANG_S)
    assert count.count == 15

    # A rotated Secret: the gateway presents the file's new token from its next call on.
    token_file.write_text("a-token-the-store-does-not-know\n")
    details = expect_code(
        grpc.StatusCode.UNAUTHENTICATED,
        lambda: stub.CountRows(gateway_pb2.CountRowsRequest(table="through"), timeout=HANG_S),
        f"store at {internal['store']} refused the call",
        "not valid",
    )
    assert "a-token-the-store-does-not-know" not in details
    token_file.write_text(f"{RW}:rw\n")
    stub.CountRows(gateway_pb2.CountRowsRequest(table="through"), timeout=HANG_S)


def test_a_gateway_without_the_peer_token_is_refused_by_its_peers(servers, internal):
    address = servers.start(
        create_gateway,
        GatewaySettings(embedder_addr=internal["embedder"], store_addr=internal["store"], **QUIET),
    )
    wait_until_serving(address, timeout=HANG_S)  # health is open: the gateway comes up
    stub = gateway_pb2_grpc.GatewayStub(grpc.insecure_channel(address))
    for call in (
        lambda: stub.ListTables(gateway_pb2.ListTablesRequest(), timeout=HANG_S),
        lambda: stub.ListProviders(embedder_pb2.ListProvidersRequest(), timeout=HANG_S),
        lambda: stub.DropTable(gateway_pb2.DropTableRequest(name="kept"), timeout=HANG_S),
    ):
        expect_code(
            grpc.StatusCode.UNAUTHENTICATED,
            call,
            "refused the call",
            "--peer-token",
            reason="UNAUTHENTICATED",
        )
    assert on_disk(internal["root"], "kept")[1] == 20


# -- F: the gateway drains before its peers stop -----------------------------------------------


class Lines:
    """The output of a process, read on a thread; waits for a line holding a fragment."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait_for(self, fragment: str) -> None:
        with self._changed:
            if not self._changed.wait_for(
                lambda: any(fragment in line for line in self.lines), timeout=120
            ):
                pytest.fail(f"never printed {fragment!r}: {''.join(self.lines[-20:])}")


def test_embedsearch_up_drains_the_gateway_before_stopping_its_peers(tmp_path):
    """A streamed add that commits every chunk is in flight when `up` is told to stop: its
    chunks after the signal still reach the store, since the store stops after the gateway."""
    ports = {name: free_port() for name in ("gateway", "embedder", "store")}
    command = up_command(str(tmp_path / "data"), "127.0.0.1", ports, dict.fromkeys(ports, -1))
    env = {**os.environ, "EMBEDDER_PRELOAD": "", "STORE_MAINTENANCE_INTERVAL_S": "0"}
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    output, release = Lines(proc), threading.Event()
    try:
        output.wait_for("embedsearch is up")
        stub = gateway_pb2_grpc.GatewayStub(grpc.insecure_channel(f"127.0.0.1:{ports['gateway']}"))
        stub.CreateTable(
            gateway_pb2.CreateTableRequest(name="drained", arrow_schema=schema_to_ipc(ROWS)),
            timeout=HANG_S,
        )

        def chunks() -> Iterator[gateway_pb2.AddRequest]:
            for start in range(0, 40, 10):
                if start:
                    release.wait(HANG_S)
                yield gateway_pb2.AddRequest(
                    table="drained",
                    rows=common_pb2.RowData(arrow_ipc=rows(range(start, start + 10))),
                    commit_per_chunk=True,
                )

        ingest = stub.AddStream.future(chunks(), timeout=120)
        # The first chunk is committed: the gateway is inside the call.
        count = gateway_pb2.CountRowsRequest(table="drained")
        until(lambda: stub.CountRows(count, timeout=HANG_S).count == 10, "the first chunk")
        proc.send_signal(signal.SIGTERM)
        output.wait_for('"msg": "gateway shutting down')
        release.set()  # each further chunk is a new call to the store, after the signal
        result = ingest.result(timeout=HANG_S)
        assert result.rows_inserted == 40
        assert proc.wait(timeout=60) == 0
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert lance.dataset(str(tmp_path / "data" / "drained.lance")).count_rows() == 40
    stopping = [re.search(r'"msg": "(\w+) shutting down', line) for line in output.lines]
    stopped = [found.group(1) for found in stopping if found]
    assert stopped[0] == "gateway" and set(stopped) == {"gateway", "embedder", "store"}


def test_draining_turns_health_not_serving_for_calls_watching_it(servers, tmp_path):
    address = servers.start(
        create_store, StoreSettings(data_root=str(tmp_path), maintenance_interval_s=0, **QUIET)
    )
    server = servers.started[-1]
    wait_until_serving(address, timeout=HANG_S)
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(address))
    watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=HANG_S)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    stopping = threading.Thread(target=servers.loop.run, args=(drain(server, 2.0),))
    stopping.start()
    try:
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        stopping.join(timeout=HANG_S)


# -- G: the store dying in the middle of a streamed add ----------------------------------------


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_store_killed_mid_stream_is_unavailable_and_writes_nothing(tmp_path):
    metrics_port = free_port()
    with ExitStack() as exits:
        stack = services(
            exits, tmp_path / "data", store_flags=("--metrics-port", str(metrics_port))
        )
        stub = stack.stub()
        stub.CreateTable(
            gateway_pb2.CreateTableRequest(name="cut", arrow_schema=schema_to_ipc(BATCHES)),
            timeout=HANG_S,
        )
        before = stub.DescribeTable(gateway_pb2.DescribeTableRequest(name="cut"), timeout=HANG_S)
        describe = ("store_requests_total", (("code", "OK"), ("method", "DescribeTable")))
        described = scrape(metrics_port)[describe]
        release = threading.Event()

        def chunks() -> Iterator[gateway_pb2.AddRequest]:
            yield from batch_messages("cut", 0)
            release.wait(HANG_S)
            for batch in range(1, 6):
                yield from batch_messages("cut", batch)

        ingest = stub.AddStream.future(chunks(), timeout=HANG_S)

        def stream_open_at_the_store() -> bool:
            now = scrape(metrics_port)
            in_flight = now[("store_requests_in_flight", ())]
            # The gateway's DescribeTable for this stream is over; what is in flight is the
            # stream itself.
            return now[describe] == described + 1 and in_flight == 1

        until(stream_open_at_the_store, "the gateway's AddStream open at the store")
        stack.stop("store", signal.SIGKILL)
        release.set()
        with pytest.raises(grpc.RpcError) as failed:
            ingest.result(timeout=HANG_S)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, failed.value.details()
        assert "store at" in failed.value.details()
        assert "RPC already finished" not in failed.value.details()

        stack.start("store")  # same port and data root: nothing of the stream was committed
        until(lambda: stack_serving(stub), "the store back")
        after = stub.DescribeTable(gateway_pb2.DescribeTableRequest(name="cut"), timeout=HANG_S)
        assert (after.version, after.num_rows) == (before.version, 0)


def stack_serving(stub: gateway_pb2_grpc.GatewayStub) -> bool:
    try:
        stub.ListTables(gateway_pb2.ListTablesRequest(), timeout=5)
    except grpc.RpcError:
        return False
    return True
