"""Bulk ingest on Ray: ``embedsearch ingest`` (ray_jobs/) with 1, then 2 workers, against the
gateway's streamed add of the same corpus, in one run; then the same IVF_PQ built by lance-ray
on 2 workers and by the store.

Corpus: BENCH_RAY_ROWS (default 6,000) short real sentences (bench/corpus.py), embedded with the
bundled all-MiniLM-L6-v2. Baseline: ``table.add`` of the rows through ``embedsearch up`` (SDK over
gRPC: the gateway streams them to the embedder and the store). Ours: the ingest job on a Ray
instance started in this process, reading a Parquet file of the rows, one embedding actor (one
core, one model) per worker, fragments written by Ray tasks and committed once. Each job's time
includes starting its actors and loading their model, as a real job's does; the baseline's
embedder is warm. Every table is checked against the gateway's, vector for vector, before any
figure is printed.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import emit, running_stack
from bench.corpus import short_texts

BENCH = "ray_ingest"
ROWS = int(os.environ.get("BENCH_RAY_ROWS", "6000"))
GATEWAY = "gateway streamed add (embedsearch up, SDK table.add)"
# IVF_PQ on 384 dimensions as bench/store_search builds it, sampled to fit a small table.
INDEX = {"num_partitions": 8, "num_sub_vectors": 48, "sample_rate": 16}


def create(uri: str, name: str) -> object:
    import embedsearch
    from embedsearch.embeddings import get_registry
    from embedsearch.pydantic import LanceModel, Vector

    func = get_registry().get("sentence-transformers").create()

    class Doc(LanceModel):
        id: int
        text: str = func.SourceField()
        vector: Vector(func.ndims()) = func.VectorField()

    return embedsearch.connect(uri).create_table(name, schema=Doc)


def gateway_add(uri: str, rows: pa.Table) -> float:
    table = create(uri, "gateway")
    create(uri, "warm").add([{"id": -1, "text": "warm-up"}])
    start = time.perf_counter()
    table.add(rows)
    return ROWS / (time.perf_counter() - start)


def ray_ingest(uri: str, data: Path, source: Path, name: str, workers: object) -> float:
    from ray_jobs.ingest import IngestJob, ingest
    from ray_jobs.progress import Reporting
    from ray_jobs.tables import TableRef

    create(uri, name)
    job = IngestJob(str(source), TableRef.from_env(str(data), name))
    result = ingest(job, workers, Reporting(every_s=10.0))  # type: ignore[arg-type]
    assert result.rows == ROWS
    return ROWS / result.seconds


def vectors(data: Path, name: str) -> np.ndarray:
    table = lance.dataset(data / f"{name}.lance").to_table(columns=["vector"])
    return np.stack(table.column("vector").to_numpy(zero_copy_only=False))


def index_builds(data: Path, workers: object) -> tuple[float, float, float]:
    """Seconds of the lance-ray build (2 workers) and of the store's build, same IVF_PQ, and
    the index's bytes per row."""
    from embedsearch.contract.values import IndexParams
    from ray_jobs.index import IndexJob, build_index
    from ray_jobs.tables import TableRef
    from store_service.indexes import IndexSpec, build

    params = IndexParams(metric="l2", **INDEX)
    start = time.perf_counter()
    build(
        lance.dataset(data / "ray1.lance"),
        IndexSpec("ray1", "vector", "IVF_PQ", "", params),
        lambda event: None,
    )
    store_s = time.perf_counter() - start
    job = IndexJob(TableRef.from_env(str(data), "ray2"), "vector", "IVF_PQ", "", params)
    ours_s = build_index(job, workers).seconds  # type: ignore[arg-type]
    index_bytes = sum(
        f.stat().st_size for f in (data / "ray2.lance" / "_indices").rglob("*") if f.is_file()
    )
    return ours_s, store_s, index_bytes / ROWS


def run() -> None:
    from ray_jobs.cluster import Workers, connect

    texts = short_texts(ROWS)
    assert len(texts) == ROWS, f"the corpus has {len(texts)} sentences, not {ROWS}"
    rows = pa.table({"id": pa.array(range(ROWS), pa.int64()), "text": texts})
    with tempfile.TemporaryDirectory() as tmp:
        data, source = Path(tmp) / "data", Path(tmp) / "corpus.parquet"
        pq.write_table(rows, source)
        with running_stack(data) as uri:
            baseline = gateway_add(uri, rows)
            # One Ray instance for both runs, with cores for two actors beside the I/O tasks.
            cluster = connect("", Workers(2))
            rates = {
                count: ray_ingest(
                    uri, data, source, f"ray{count}", Workers(count, 1.0, cluster.gpus)
                )
                for count in (1, 2)
            }
            expected = vectors(data, "gateway")
            for count in rates:
                np.testing.assert_allclose(vectors(data, f"ray{count}"), expected, atol=1e-6)
            ours_s, store_s, index_bytes = index_builds(data, Workers(2, 1.0, cluster.gpus))
            table_bytes = sum(
                f.stat().st_size for f in (data / "ray2.lance" / "data").rglob("*") if f.is_file()
            )
    for count, rate in rates.items():
        emit(
            BENCH,
            f"ingest_rows_per_s_{count}_worker{'s' * (count > 1)}",
            rate,
            "rows/s",
            GATEWAY,
            baseline,
            lower_is_better=False,
        )
    emit(
        BENCH,
        "scaling_2_workers_over_1",
        rates[2],
        "rows/s",
        "the same job on 1 worker",
        rates[1],
        lower_is_better=False,
    )
    emit(
        BENCH,
        "ivf_pq_build_s_2_workers",
        ours_s,
        "s",
        "the store's own IVF_PQ build, same parameters",
        store_s,
        lower_is_better=True,
    )
    emit(
        BENCH,
        "ivf_pq_index_bytes_per_row",
        index_bytes,
        "bytes",
        "raw 384-d float32 vector (1,536 bytes)",
        1536.0,
        lower_is_better=True,
    )
    emit(
        BENCH,
        "table_data_bytes_per_row",
        table_bytes / ROWS,
        "bytes",
        "raw 384-d float32 vector (1,536 bytes)",
        1536.0,
        lower_is_better=True,
    )
