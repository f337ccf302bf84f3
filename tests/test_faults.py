"""Faults on purpose, all on loopback, with every service a real process: a store killed mid-write,
an embedder stopped during an ingest, and a slow or failing provider API behind the embedder."""

from __future__ import annotations

import itertools
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import lance
import pyarrow as pa
import pytest
from api_doubles import OpenAIDouble
from faults import rows_by_key, serve
from helpers import expect_code, reason_of

from embedsearch.contract.convert import spec_to_pb
from embedsearch.contract.wire import schema_to_ipc, table_to_ipc
from embedsearch.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from service_kit.launch import free_port

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
# A bound on calls that must end by themselves: far past any deadline they are given, so that a
# call still running then has hung (a correctness bound, not a performance claim).
HANG_S = 30.0


@dataclass
class Services:
    """Store, embedder and gateway as processes; the embedder and store on ports kept across a
    restart, so the gateway's channels find them again by themselves."""

    root: Path
    exits: ExitStack
    embedder_flags: tuple[str, ...]
    env: dict[str, str]
    store_flags: tuple[str, ...] = ()
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, Any] = field(default_factory=dict)
    gateway: str = ""

    def start(self, name: str) -> None:
        """Start (or restart) ``name`` on its port; the gateway last, once."""
        if name == "store":
            flags: tuple[str, ...] = ("--data-root", str(self.root), *self.store_flags)
        elif name == "embedder":
            flags = ("--preload", "", *self.embedder_flags)
        else:
            flags = ("--embedder-addr", self.address("embedder"))
            flags += ("--store-addr", self.address("store"))
        port = self.ports.setdefault(name, free_port()) if name != "gateway" else 0
        address, proc = serve(self.exits, _MODULES[name], *flags, port=port, env=self.env)
        self.procs[name] = proc
        if name == "gateway":
            self.gateway = address

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def stop(self, name: str, sig: signal.Signals) -> None:
        proc = self.procs[name]
        proc.send_signal(sig)
        proc.wait(timeout=HANG_S)

    def stub(self) -> gateway_pb2_grpc.GatewayStub:
        channel = self.exits.enter_context(grpc.insecure_channel(self.gateway))
        return gateway_pb2_grpc.GatewayStub(channel)


_MODULES = {"store": "store_service", "embedder": "embedder_service", "gateway": "gateway"}


def services(
    exits: ExitStack,
    root: Path,
    *embedder_flags: str,
    store_flags: tuple[str, ...] = (),
    **env: str,
) -> Services:
    stack = Services(root, exits, embedder_flags, env, store_flags)
    for name in ("store", "embedder", "gateway"):
        stack.start(name)
    return stack


def lance_rows(root: Path, table: str) -> pa.Table:
    """The table as Lance itself reads it from disk, not through the store."""
    return lance.dataset(str(root / f"{table}.lance")).to_table()


def until(condition: Callable[[], bool], what: str, timeout: float = HANG_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.05)


# -- the store killed mid-write --------------------------------------------------------------

BATCH_ROWS = 40
BATCHES = pa.schema(
    [pa.field("batch", pa.int64()), pa.field("row", pa.int64()), pa.field("text", pa.string())]
)


def batch_messages(table: str, batch: int) -> list[gateway_pb2.AddRequest]:
    """One batch of BATCH_ROWS rows, as one Add message (odd ids) or four AddStream messages."""
    rows = pa.table(
        {
            "batch": [batch] * BATCH_ROWS,
            "row": list(range(BATCH_ROWS)),
            "text": [f"batch {batch} row {r} " + "x" * 200 for r in range(BATCH_ROWS)],
        },
        schema=BATCHES,
    )
    parts = [rows] if batch % 2 else [rows.slice(i, BATCH_ROWS // 4) for i in range(0, 40, 10)]
    return [
        gateway_pb2.AddRequest(table=table, rows=common_pb2.RowData(arrow_ipc=table_to_ipc(p)))
        for p in parts
    ]


@dataclass
class Writers:
    """Threads adding numbered batches until stopped; what was acknowledged, and what failed."""

    stub: gateway_pb2_grpc.GatewayStub
    table: str
    acknowledged: set[int] = field(default_factory=set)
    attempted: set[int] = field(default_factory=set)
    failures: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    @contextmanager
    def run(self, count: int) -> Iterator[None]:
        ids = itertools.count()
        lock = threading.Lock()

        def write() -> None:
            while not self.stop.is_set():
                with lock:
                    batch = next(ids)
                    self.attempted.add(batch)
                messages = batch_messages(self.table, batch)
                try:
                    if len(messages) == 1:
                        self.stub.Add(messages[0], timeout=HANG_S)
                    else:
                        self.stub.AddStream(iter(messages), timeout=HANG_S)
                except grpc.RpcError as err:
                    with lock:
                        self.failures[err.code().name] += 1
                    time.sleep(0.05)
                    continue
                with lock:
                    self.acknowledged.add(batch)

        threads = [threading.Thread(target=write, daemon=True) for _ in range(count)]
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(timeout=HANG_S)


def test_store_killed_mid_write_loses_no_acknowledged_batch_and_tears_none(tmp_path):
    with ExitStack() as exits:
        stack = services(exits, tmp_path / "data")
        stub = stack.stub()
        stub.CreateTable(
            gateway_pb2.CreateTableRequest(name="batches", arrow_schema=schema_to_ipc(BATCHES))
        )
        writers = Writers(stub, "batches")
        with writers.run(4):
            until(lambda: len(writers.acknowledged) >= 12, "12 batches acknowledged")
            stack.stop("store", signal.SIGKILL)
            time.sleep(0.5)  # the writers keep going against the dead store
            before_restart = len(writers.acknowledged)
            stack.start("store")  # same port, same data root
            until(
                lambda: len(writers.acknowledged) >= before_restart + 8,
                "writes through the gateway succeed again after the store restarted",
            )
        # Every failure was the store being away; none was a bug answered INTERNAL.
        assert set(writers.failures) <= {"UNAVAILABLE"}, writers.failures
        assert writers.failures, "no write was refused: the store was not killed mid-loop"

        info = stub.DescribeTable(gateway_pb2.DescribeTableRequest(name="batches"))
        stored = rows_by_key(lance_rows(stack.root, "batches"), "batch", "row")
        whole = list(range(BATCH_ROWS))
        torn = {batch: rows for batch, rows in stored.items() if rows != whole}
        assert not torn, f"batches torn or doubled by the crash: {torn}"
        assert writers.acknowledged <= set(stored), "an acknowledged batch is missing"
        assert set(stored) <= writers.attempted, "a batch nobody sent is present"
        assert info.num_rows == len(stored) * BATCH_ROWS


# -- the embedder down during an ingest --------------------------------------------------------

DOCS = pa.schema([pa.field("id", pa.int64()), pa.field("text", pa.string())])


def openai_binding(double: OpenAIDouble, **args: Any) -> common_pb2.EmbeddingBinding:
    spec = {"name": "text-embedding-3-small", "dim": 8, "base_url": double.base_url, **args}
    return common_pb2.EmbeddingBinding(
        function=spec_to_pb("openai", spec), source_column="text", vector_column="vector"
    )


def docs(ids: range) -> common_pb2.RowData:
    rows = pa.table({"id": list(ids), "text": [f"document number {i}" for i in ids]}, schema=DOCS)
    return common_pb2.RowData(arrow_ipc=table_to_ipc(rows))


def upsert(ids: range) -> gateway_pb2.MergeInsertRequest:
    return gateway_pb2.MergeInsertRequest(
        table="docs",
        on=["id"],
        rows=docs(ids),
        when_matched_update_all=True,
        when_not_matched_insert_all=True,
    )


@pytest.fixture
def double() -> Iterator[OpenAIDouble]:
    api = OpenAIDouble(ndims=8)
    yield api
    api.failures.clear()
    api.latency_s = 0.0
    api.close()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
def test_embedder_down_mid_ingest_then_back(tmp_path, double, sig):
    with ExitStack() as exits:
        stack = services(exits, tmp_path / "data", OPENAI_API_KEY="sk-test")
        stub = stack.stub()
        stub.CreateTable(
            gateway_pb2.CreateTableRequest(
                name="docs", arrow_schema=schema_to_ipc(DOCS), bindings=[openai_binding(double)]
            )
        )
        stub.MergeInsert(upsert(range(10)), timeout=HANG_S)
        before = stub.DescribeTable(gateway_pb2.DescribeTableRequest(name="docs"))

        # A streamed ingest of five chunks, each embedding for a second at the provider.
        double.latency_s = 1.0
        seen = len(double.requests)
        chunks = [
            gateway_pb2.AddRequest(table="docs", rows=docs(range(i, i + 10)))
            for i in (10, 20, 30, 40, 50)
        ]
        ingest = stub.AddStream.future(iter(chunks), timeout=HANG_S)
        until(lambda: len(double.requests) > seen, "the ingest reaches the provider")
        stack.stop("embedder", sig)
        with pytest.raises(grpc.RpcError) as failed:
            ingest.result()
        # UNAVAILABLE, not DEADLINE_EXCEEDED: the gateway answered as soon as the embedder went.
        assert failed.value.code() == UNAVAILABLE, failed.value.details()
        assert reason_of(failed.value) == "UNAVAILABLE"
        assert "embedder" in failed.value.details()
        expect_code(
            UNAVAILABLE,
            lambda: stub.Add(
                gateway_pb2.AddRequest(table="docs", rows=docs(range(60, 61))), timeout=HANG_S
            ),
            "embedder",
        )
        after = stub.DescribeTable(gateway_pb2.DescribeTableRequest(name="docs"))
        assert (after.version, after.num_rows) == (before.version, before.num_rows)

        # Back on the same port: the gateway, never restarted, reconnects by itself. The client
        # retries the whole ingest as an upsert on id, twice, as one that never saw an answer would.
        double.latency_s = 0.0
        stack.start("embedder")
        retry = upsert(range(60))
        attempts = retry_while_unavailable(lambda: stub.MergeInsert(retry, timeout=HANG_S))
        stub.MergeInsert(retry, timeout=HANG_S)
        ids = lance_rows(stack.root, "docs").column("id").to_pylist()
        assert sorted(ids) == list(range(60)), f"duplicates or gaps after {attempts} attempt(s)"
        count = stub.CountRows(gateway_pb2.CountRowsRequest(table="docs"))
        assert count.count == 60


def retry_while_unavailable(call: Callable[[], Any]) -> int:
    """Call until it succeeds, for at most HANG_S; every failure must be UNAVAILABLE."""
    deadline = time.monotonic() + HANG_S
    for attempt in itertools.count(1):
        try:
            call()
            return attempt
        except grpc.RpcError as err:
            assert err.code() == UNAVAILABLE, err.details()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    raise AssertionError("unreachable")


# -- a slow or failing provider API ----------------------------------------------------------


@pytest.fixture(scope="module")
def provider_stack(tmp_path_factory) -> Iterator[tuple[Services, OpenAIDouble]]:
    """The stack with the embedder retrying the provider at once (no backoff), so a retry loop
    that goes on shows at the double at once."""
    api = OpenAIDouble(ndims=8)
    with ExitStack() as exits:
        root = tmp_path_factory.mktemp("provider")
        stack = services(exits, root, "--retry-base-s", "0", OPENAI_API_KEY="sk-test")
        yield stack, api
    api.close()


@pytest.fixture
def slow_api(provider_stack, request) -> Iterator[tuple[gateway_pb2_grpc.GatewayStub, str]]:
    """A table bound to the double through the provider stack; the double reset afterwards."""
    stack, api = provider_stack
    stub = stack.stub()
    table = request.node.name.split("[")[0][-60:]
    binding = openai_binding(api, max_retries=100_000)
    stub.CreateTable(
        gateway_pb2.CreateTableRequest(
            name=table, arrow_schema=schema_to_ipc(DOCS), bindings=[binding]
        )
    )
    yield stub, table
    api.failures.clear()
    api.latency_s = 0.0


def search(table: str, text: str) -> gateway_pb2.SearchRequest:
    return gateway_pb2.SearchRequest(table=table, text=text, k=1)


def settled_count(api: OpenAIDouble, quiet_s: float = 1.5) -> int:
    """The number of requests the double has seen, once none arrived for ``quiet_s``."""
    count = len(api.requests)
    deadline = time.monotonic() + HANG_S
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        if len(api.requests) == count:
            return count
        count = len(api.requests)
    pytest.fail(f"the provider is still being called {HANG_S:.0f}s after the caller left")


def test_client_deadline_reaches_the_provider_call(provider_stack, slow_api):
    _, api = provider_stack
    stub, table = slow_api
    api.latency_s = HANG_S  # the provider answers after the test is over
    seen = len(api.requests)
    started = time.monotonic()
    expect_code(
        grpc.StatusCode.DEADLINE_EXCEEDED, lambda: stub.Search(search(table, "slow"), timeout=2)
    )
    assert time.monotonic() - started < HANG_S / 2
    # The provider's HTTP request itself was given what was left of the client's 2 s (the
    # client's default is 60 s); grpc-timeout headers round up, hence the small margin.
    sent = api.headers[seen:]
    assert sent, "the query never reached the provider"
    timeouts = [float(h["x-stainless-read-timeout"]) for h in sent]
    assert all(0 < t <= 2.1 for t in timeouts), timeouts
    assert settled_count(api) == seen + len(timeouts)


def test_failing_provider_stops_retrying_at_the_deadline(provider_stack, slow_api):
    _, api = provider_stack
    stub, table = slow_api
    api.failures.extend([500] * 1_000_000)
    api.latency_s = 0.05  # about 20 failing attempts a second, for as long as they go on
    expect_code(
        grpc.StatusCode.DEADLINE_EXCEEDED, lambda: stub.Search(search(table, "fails"), timeout=2)
    )
    retries = settled_count(api)
    assert retries > 2, "the provider was not retried before the deadline"
    api.failures.clear()
    found = stub.Search(search(table, "works again"), timeout=HANG_S)
    assert found.rows.arrow_ipc
    assert len(api.requests) == retries + 1


def test_cancelled_search_stops_its_provider_calls(provider_stack, slow_api):
    _, api = provider_stack
    stub, table = slow_api
    api.failures.extend([500] * 1_000_000)
    api.latency_s = 0.05  # about 20 failing attempts a second, for as long as they go on
    seen = len(api.requests)
    call = stub.Search.future(search(table, "cancelled"))  # no deadline at all
    until(lambda: len(api.requests) > seen + 5, "the provider is being retried")
    call.cancel()
    settled_count(api)  # raises if the retries go on without a caller
    assert call.cancelled()
