"""Vector search through ``python -m store_service`` over gRPC vs Lance and LanceDB in-process,
per index kind, on two data sets of real embeddings.

The embeddings are made once with the bundled all-MiniLM-L6-v2 and kept in ``.bench-cache/``
(bench/corpus.py), so later runs only load them.
- ``copies``: 200,000 rows. 2,800 paragraphs of the standard library's docstrings, then copies
  of them with Gaussian noise (sigma 0.01 per dimension, seeded), re-normalized to unit length
  as the model's output is. Queries: other paragraphs. STORE_BENCH_ROWS changes the size.
- ``prose``: 50,000 distinct prose paragraphs (12-160 words) from the docstrings of the standard
  library and the installed packages, read from source, deduplicated exactly: no copies.
  Queries: held-out paragraphs. STORE_BENCH_PROSE_ROWS changes the size;
  STORE_BENCH_SETS=copies (or prose) runs one data set.

Each data set has two query sets of STORE_BENCH_QUERIES (200) from the same source: ``served``,
the traffic the store sees first, and ``queries``, held out and measured. Per data set, same
data and queries in the same run:
- exact search (no index) over gRPC on the served queries vs Lance's flat search in-process:
  p50 latency, and recall against numpy's brute force;
- per index kind (IVF_PQ, IVF_HNSW_SQ, IVF_RQ), a fresh store process serves the served
  queries, then builds the index through CreateIndex; the store calibrates it on the queries
  it served (its in-memory sample of them), and the held-out queries ask for
  ``target_recall=0.95``. LanceDB then opens the store's own table (the same index build:
  k-means differs between builds, and with it what a setting reaches), is warmed on the served
  queries as the store was, and is searched with the parameters our calibration picked, and
  again at the setting the same calibration picks for LanceDB from its own latencies on the
  same served queries (``tuned``: each system at its own cheapest setting for the target).
  LanceDB also builds the same kind on a table of its own, for the build time. Measures:
  recall@10 of the held-out queries against exact (numpy), the recall the calibration
  measured, queries per second (one client, one query at a time), CPU milliseconds per query
  (client and store processes together, against LanceDB's process: other work on the machine
  does not move it), build time, and our calibration time;
- the store's RSS before and after 300 small writes, each followed by a search (flat memory),
  once settled (background maintenance, which can compact and re-index while the writes run,
  holds a transient copy), the highest RSS seen during the writes, and its peak RSS over that
  last process's run.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from bench.common import emit, percentiles
from bench.corpus import docstring_paragraphs, embedded, prose_paragraphs
from service_kit.launch import free_port

BENCH = "store_search"
ROWS = int(os.environ.get("STORE_BENCH_ROWS", "200000"))
PROSE_ROWS = int(os.environ.get("STORE_BENCH_PROSE_ROWS", "50000"))
QUERIES = int(os.environ.get("STORE_BENCH_QUERIES", "200"))
FLAT_QUERIES = 20  # Lance's flat search takes about a second a query on 200,000 rows
TEXTS, K, NOISE, TARGET = 2800, 10, 0.01, 0.95
WRITES = 300
BATCH_ROWS = 20_000
KINDS = ("IVF_PQ", "IVF_HNSW_SQ", "IVF_RQ")
QUIET_STORE = not os.environ.get("STORE_BENCH_LOG")  # set: the store's log goes to stdout


def build_params(kind: str, rows: int) -> dict[str, int]:
    """Build parameters, the same for both sides: about 800 rows per IVF partition (HNSW
    graphs take bigger ones), 48 PQ sub-vectors, 1-bit RaBitQ."""
    if kind == "IVF_HNSW_SQ":
        return {"num_partitions": max(4, rows // 5000), "m": 20, "ef_construction": 100}
    params = {"num_partitions": max(16, rows // 800)}
    if kind == "IVF_PQ":
        params["num_sub_vectors"] = 48
    if kind == "IVF_RQ":
        params["num_bits"] = 1
    return params


@dataclass
class DataSet:
    name: str
    corpus: np.ndarray
    queries: np.ndarray  # measured: never sent to the store before the index is timed
    served: np.ndarray  # traffic the store serves first, from the same source


def copies() -> DataSet:
    total = TEXTS + 2 * QUERIES
    vectors = embedded(f"docstring_paragraphs_{total}", lambda: docstring_paragraphs(total))
    base = vectors[:TEXTS]
    rng = np.random.default_rng(0)
    corpus = base[np.arange(ROWS) % len(base)]
    corpus[len(base) :] += rng.normal(0, NOISE, size=corpus[len(base) :].shape).astype(np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    return DataSet("copies", corpus, vectors[TEXTS + QUERIES :], vectors[TEXTS : TEXTS + QUERIES])


def prose() -> DataSet:
    total = max(PROSE_ROWS, 50_000) + 2 * QUERIES  # one cache file serves every smaller size
    vectors = embedded(f"prose_paragraphs_{total}", lambda: prose_paragraphs(total))
    # The queries are the last paragraphs read: held out, from the same source.
    corpus = vectors[: min(PROSE_ROWS, len(vectors) - 2 * QUERIES)]
    return DataSet("prose", corpus, vectors[-QUERIES:], vectors[-2 * QUERIES : -QUERIES])


def exact_ids(corpus: np.ndarray, queries: np.ndarray) -> list[list[int]]:
    """The ids (row numbers) of each query's K nearest rows by l2, in this process."""
    norms = (corpus * corpus).sum(axis=1)
    found = []
    for start in range(0, len(queries), 50):
        chunk = queries[start : start + 50]
        distances = norms[None] - 2 * chunk @ corpus.T
        nearest = np.argpartition(distances, K, axis=1)[:, :K]
        order = np.take_along_axis(distances, nearest, axis=1).argsort(axis=1)
        found += np.take_along_axis(nearest, order, axis=1).tolist()
    return found


def table(vectors: np.ndarray) -> pa.Table:
    dims = vectors.shape[1]
    return pa.table(
        {
            "id": pa.array(np.arange(len(vectors)), pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dims),
        }
    )


@contextmanager
def store_process(root: Path) -> Iterator[tuple[str, int]]:
    """``python -m store_service`` on a free port, as deployed (background maintenance on);
    yields its address and process id."""
    from embedsearch.contract.channels import wait_until_serving

    port = free_port()
    command = [sys.executable, "-m", "store_service", "--data-root", str(root)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--metrics-port", "-1"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL if QUIET_STORE else None)
    try:
        wait_until_serving(f"127.0.0.1:{port}", 120)
        yield f"127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def memory_mb(pid: int, field: str) -> float:
    """VmRSS or VmHWM (peak) of a process, in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", status).group(1)) / 1024


def settled_mb(pid: int, steady_s: float = 5.0, limit_s: float = 120.0) -> float:
    """A process's RSS in MiB once it has moved by under 1% for ``steady_s`` (or after
    ``limit_s``): what it holds, not a copy that work in flight holds for a moment."""
    window = int(steady_s / 0.5) + 1  # samples 0.5 s apart spanning steady_s
    samples: list[float] = []
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        samples.append(memory_mb(pid, "VmRSS"))
        recent = samples[-window:]
        if len(recent) == window and max(recent) - min(recent) < 0.01 * recent[-1]:
            break
        time.sleep(0.5)
    return samples[-1]


def cpu_s(pid: int) -> float:
    """User and system CPU seconds a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Timing:
    seconds: list[float]
    found: list[list[int]]
    cpu_ms: float  # per query, in this process and the ``also`` one

    @property
    def qps(self) -> float:
        return len(self.seconds) / sum(self.seconds)


def timed(
    search: Callable[[np.ndarray], list[int]], queries: np.ndarray, also: int | None = None
) -> Timing:
    """Each query's latency and results, after two warm-up queries."""
    for query in queries[:2]:
        search(query)
    samples, found = [], []
    cpu = time.process_time() + (cpu_s(also) if also else 0.0)
    for query in queries:
        start = time.perf_counter()
        found.append(search(query))
        samples.append(time.perf_counter() - start)
    cpu = time.process_time() + (cpu_s(also) if also else 0.0) - cpu
    return Timing(samples, found, cpu * 1000 / len(queries))


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    pairs = zip(found, truth, strict=True)
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in pairs]))


class Ours:
    """The store over gRPC, as the gateway calls it."""

    def __init__(self, address: str) -> None:
        import grpc

        from embedsearch.v1 import store_pb2_grpc

        options = [("grpc.max_send_message_length", 64 << 20)]
        self.stub = store_pb2_grpc.StoreStub(grpc.insecure_channel(address, options=options))

    def load(self, data: pa.Table) -> None:
        from embedsearch.contract.wire import schema_to_ipc, table_to_ipc
        from embedsearch.v1 import store_pb2

        schema = schema_to_ipc(data.schema)
        self.stub.CreateTable(store_pb2.StoreCreateTableRequest(name="docs", arrow_schema=schema))
        for batch in data.to_batches(BATCH_ROWS):
            self.stub.Add(store_pb2.StoreAddRequest(name="docs", arrow_ipc=table_to_ipc(batch)))

    def search(self, query: np.ndarray, **options: Any) -> list[int]:
        from embedsearch.contract.wire import ipc_to_table, pack_vectors
        from embedsearch.v1 import store_pb2

        request = store_pb2.StoreSearchRequest(
            name="docs", vector_column="vector", vector=pack_vectors(query), k=K,
            columns=["id"], **options,
        )  # fmt: skip
        return ipc_to_table(self.stub.Search(request).arrow_ipc).column("id").to_pylist()

    def build(
        self, kind: str, params: dict[str, int], served: np.ndarray
    ) -> tuple[float, float, Any]:
        """Serve the ``served`` queries, then build the index: (build seconds, calibration
        seconds, the calibration, which the store made on those queries)."""
        from embedsearch.contract.convert import calibration_from_pb
        from embedsearch.v1 import common_pb2, store_pb2

        for query in served:
            self.search(query)
        start = time.perf_counter()
        self.stub.CreateIndex(
            store_pb2.StoreCreateIndexRequest(
                name="docs",
                column="vector",
                index_type=common_pb2.IndexType.Value(f"INDEX_TYPE_{kind}"),
                params=common_pb2.IndexParams(metric=common_pb2.METRIC_L2, **params),
                wait=True,
            ),
            timeout=1800,
        )
        built = time.perf_counter()
        request = store_pb2.StoreIndexStatsRequest(name="docs", index_name="vector_idx")
        while not (stats := self.stub.IndexStats(request)).HasField("calibration"):
            if time.perf_counter() - built > 1800:
                raise TimeoutError(f"the store did not calibrate {kind} (see its log)")
            time.sleep(0.2)
        calibrated = time.perf_counter()
        found = calibration_from_pb(stats.calibration)
        if not found.served_queries:
            raise RuntimeError(f"the store calibrated {kind} on its rows, not served queries")
        return built - start, calibrated - built, found

    def drop_index(self) -> None:
        from embedsearch.v1 import store_pb2

        self.stub.DropIndex(store_pb2.StoreDropIndexRequest(name="docs", index_name="vector_idx"))

    def add(self, rows: pa.Table) -> None:
        from embedsearch.contract.wire import table_to_ipc
        from embedsearch.v1 import store_pb2

        self.stub.Add(store_pb2.StoreAddRequest(name="docs", arrow_ipc=table_to_ipc(rows)))


def lancedb_search(anchor: Any, level: Any) -> Callable[[np.ndarray], list[int]]:
    """LanceDB's search with the parameters our calibration picked (exact if it picked none)."""

    def search(query: np.ndarray) -> list[int]:
        query_ = anchor.search(query).limit(K).select(["id"])
        if level is None:
            query_ = query_.bypass_vector_index()
        else:
            query_ = query_.nprobes(level.nprobes)
            if level.refine_factor:
                query_ = query_.refine_factor(level.refine_factor)
            if level.ef:
                query_ = query_.ef(level.ef)
        return query_.to_arrow()["id"].to_pylist()

    return search


def chosen(level: Any) -> str:
    """A calibrated level's search parameters, as the baselines name them."""
    if level is None:
        return "exact (no calibrated level)"
    if level.memory_scan:
        return f"a scan of {level.nprobes} partitions from memory"
    return f"nprobes={level.nprobes} refine_factor={level.refine_factor} ef={level.ef}"


def lancedb_tuned(
    anchor: Any, kind: str, params: dict[str, int], served: np.ndarray, queries: np.ndarray
) -> tuple[Any, Timing]:
    """LanceDB at the setting our calibration picks for it at TARGET, from its own latencies
    on ``served``, and its timing on ``queries``."""
    from store_service.calibration import calibrate

    found = calibrate(
        anchor.to_lance(), "vector", kind, params["num_partitions"], "l2",
        k=K, sample_size=len(served), levels=[TARGET], served=served,
    )  # fmt: skip
    level = found.level_for(TARGET)
    return level, timed(lancedb_search(anchor, level), queries)


def run_data_set(data: DataSet, tmp: Path) -> None:
    import lance
    import lancedb

    name = data.name
    rows = table(data.corpus)
    truth = exact_ids(data.corpus, data.queries)
    root = tmp / f"store-{name}"
    with store_process(root) as (address, pid):
        ours = Ours(address)
        ours.load(rows)
        exact = timed(ours.search, data.served, also=pid)
        flat_ds = lance.write_dataset(rows, tmp / f"flat-{name}.lance")

        def lance_flat(query: np.ndarray) -> list[int]:
            nearest = {"column": "vector", "q": query, "k": K, "use_index": False}
            return flat_ds.to_table(columns=["id", "_distance"], nearest=nearest)["id"].to_pylist()

        flat = timed(lance_flat, data.served[:FLAT_QUERIES])
        emit(
            BENCH, f"{name}_exact_p50_latency", percentiles(exact.seconds)[0], "ms",
            "lance flat search in-process", percentiles(flat.seconds)[0], lower_is_better=True,
        )  # fmt: skip
        served_truth = exact_ids(data.corpus, data.served)
        emit(
            BENCH, f"{name}_exact_recall_at_10", recall(exact.found, served_truth), "recall",
            "numpy brute force", 1.0, lower_is_better=False,
        )  # fmt: skip

    db = lancedb.connect(tmp / f"lancedb-{name}")
    anchor = db.create_table("docs", rows)
    for kind in KINDS:
        # A fresh store per index kind, as after a restart: it has served only data.served
        # (its sample of served queries, which the calibration measures recall on) when the
        # index is built, and data.queries are measured after.
        with store_process(root) as (address, pid):
            ours = Ours(address)
            params = build_params(kind, len(rows))
            ours_build, calibration_s, found = ours.build(kind, params, data.served)
            level = found.level_for(TARGET)
            search = functools.partial(ours.search, target_recall=TARGET)
            ours_timing = timed(search, data.queries, also=pid)
            # LanceDB searches the store's own table: the same rows, fragments and index build
            # (k-means differs between builds, and with it the recall of a setting).
            same = lancedb.connect(root).open_table("docs")
            # Warm, as our store is: it served data.served before the build and calibrated on
            # them after. Timed cold, LanceDB's first pass reads index partitions from storage
            # (measured: 95.5 queries/s cold, 118.5 warm, same setting and build).
            # LanceDB runs our pick, unless it is a scan of the store's own partitions, which
            # LanceDB has no way to run: then its own pick (below) stands for it.
            at_ours = level is None or not level.memory_scan
            for query in data.served:
                if at_ours:
                    lancedb_search(same, level)(query)
                else:  # the index with LanceDB's defaults
                    same.search(query).limit(K).select(["id"]).to_arrow()
            # LanceDB tuned for itself: the same calibration on the same served queries, timed
            # with Lance's own search (its refine step reads vectors from the data files),
            # picks the setting that is cheapest for LanceDB at the target.
            own, own_timing = lancedb_tuned(same, kind, params, data.served, data.queries)
            anchor_timing = (
                timed(lancedb_search(same, level), data.queries) if at_ours else own_timing
            )
            ours.drop_index()
        start = time.perf_counter()
        anchor.create_index(
            metric="l2", index_type=kind, vector_column_name="vector", replace=True, **params
        )
        anchor_build = time.perf_counter() - start
        baseline = f"lancedb in-process on the store's table (same {kind} build), " + (
            chosen(level) if at_ours else f"at its own calibrated {chosen(own)}"
        )
        measure = f"{name}_{kind.lower()}"
        emit(
            BENCH, f"{measure}_recall_at_10", recall(ours_timing.found, truth), "recall",
            baseline, recall(anchor_timing.found, truth), lower_is_better=False,
        )  # fmt: skip
        emit(
            BENCH, f"{measure}_calibrated_recall", level.measured_recall if level else 1.0,
            "recall", f"what target_recall asked for ({len(data.served)} served queries)",
            TARGET, lower_is_better=False,
        )  # fmt: skip
        emit(
            BENCH, f"{measure}_qps", ours_timing.qps, "queries/s", baseline,
            anchor_timing.qps, lower_is_better=False,
        )  # fmt: skip
        emit(
            BENCH, f"{measure}_cpu_per_query", ours_timing.cpu_ms, "ms", baseline,
            anchor_timing.cpu_ms, lower_is_better=True,
        )  # fmt: skip
        tuned = f"lancedb in-process on the same build, at its own calibrated {chosen(own)}"
        emit(
            BENCH, f"{measure}_qps_vs_lancedb_tuned", ours_timing.qps, "queries/s", tuned,
            own_timing.qps, lower_is_better=False,
        )  # fmt: skip
        emit(
            BENCH, f"{measure}_recall_vs_lancedb_tuned", recall(ours_timing.found, truth),
            "recall", tuned, recall(own_timing.found, truth), lower_is_better=False,
        )  # fmt: skip
        emit(
            BENCH, f"{measure}_build_time", ours_build, "s",
            f"lancedb in-process, the same {kind} build of its own table", anchor_build,
            lower_is_better=True,
        )  # fmt: skip
        emit(
            BENCH, f"{measure}_calibration_time", calibration_s, "s",
            "our build time of the same index", ours_build, lower_is_better=True,
        )  # fmt: skip

    with store_process(root) as (address, pid):
        ours = Ours(address)
        ours.build(KINDS[0], build_params(KINDS[0], len(rows)), data.served)
        before = memory_mb(pid, "VmRSS")
        rng = np.random.default_rng(1)
        highest = before
        for write in range(WRITES):
            picked = rng.integers(0, len(rows), 10)
            batch = rows.take(picked).set_column(
                0, "id", pa.array(np.arange(10) + len(rows) + 10 * write, pa.int64())
            )
            ours.add(batch)
            ours.search(data.queries[write % len(data.queries)], target_recall=TARGET)
            highest = max(highest, memory_mb(pid, "VmRSS"))
        emit(
            BENCH, f"{name}_store_rss_after_{WRITES}_writes", settled_mb(pid), "MiB",
            "the store's RSS before them", before, lower_is_better=True,
        )  # fmt: skip
        emit(
            BENCH, f"{name}_store_rss_highest_during_writes", highest, "MiB",
            "the store's RSS before them", before, lower_is_better=True,
        )  # fmt: skip
        vectors_mb = data.corpus.nbytes / 2**20
        emit(
            BENCH, f"{name}_store_peak_rss", memory_mb(pid, "VmHWM"), "MiB",
            "the vectors' size (rows x dims x 4 bytes)", vectors_mb, lower_is_better=True,
        )  # fmt: skip


def run() -> None:
    makers = {"copies": copies, "prose": prose}
    chosen = os.environ.get("STORE_BENCH_SETS", ",".join(makers)).split(",")
    with tempfile.TemporaryDirectory() as tmp:
        for name in chosen:
            run_data_set(makers[name](), Path(tmp))
