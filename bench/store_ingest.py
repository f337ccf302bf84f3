"""Arrow IPC ``Add`` throughput through ``python -m store_service`` vs ``lance.write_dataset``.

Rows: an id, a 200-character text and a 384-dimension unit vector (seeded Gaussian), sent in
batches of STORE_BENCH_BATCH rows (default 5,000) up to STORE_BENCH_INGEST_ROWS (default
200,000). Ours: one client, one ``Add`` RPC (one commit) per batch, over loopback gRPC. Baseline:
``lance.write_dataset(batch, mode="append")`` per batch in this process, the same commits.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.store_search import store_process

BENCH = "store_ingest"
ROWS = int(os.environ.get("STORE_BENCH_INGEST_ROWS", "200000"))
BATCH = int(os.environ.get("STORE_BENCH_BATCH", "5000"))
DIMS = 384


def batches() -> list[pa.Table]:
    rng = np.random.default_rng(0)
    out = []
    for start in range(0, ROWS, BATCH):
        count = min(BATCH, ROWS - start)
        vectors = rng.normal(size=(count, DIMS)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        out.append(
            pa.table(
                {
                    "id": pa.array(np.arange(start, start + count), pa.int64()),
                    "text": [f"row {i} " + "x" * 190 for i in range(start, start + count)],
                    "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIMS),
                }
            )
        )
    return out


def run() -> None:
    import grpc
    import lance

    from bench.common import emit
    from embedsearch.contract.wire import schema_to_ipc, table_to_ipc
    from embedsearch.v1 import store_pb2, store_pb2_grpc

    data = batches()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        for batch in data:
            lance.write_dataset(batch, Path(tmp) / "baseline.lance", mode="append")
        baseline_s = time.perf_counter() - start

        with store_process(Path(tmp) / "store") as address:
            stub = store_pb2_grpc.StoreStub(grpc.insecure_channel(address))
            stub.CreateTable(
                store_pb2.StoreCreateTableRequest(
                    name="ingest", arrow_schema=schema_to_ipc(data[0].schema)
                )
            )
            payloads = [table_to_ipc(batch) for batch in data]  # serialized as a client would
            start = time.perf_counter()
            for payload in payloads:
                stub.Add(store_pb2.StoreAddRequest(name="ingest", arrow_ipc=payload))
            ours_s = time.perf_counter() - start
            count = stub.CountRows(store_pb2.StoreCountRowsRequest(name="ingest")).count
            assert count == ROWS, count

    emit(
        BENCH,
        "add_throughput",
        ROWS / ours_s,
        "rows/s",
        f"lance.write_dataset append in-process, {BATCH}-row batches",
        ROWS / baseline_s,
        lower_is_better=False,
    )
