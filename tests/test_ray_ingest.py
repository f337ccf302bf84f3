"""`embedsearch ingest` on Ray: a corpus embedded by Ray actors with the table's own function
and committed once writes what the gateway writes for the same rows, row for row."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import lance
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from helpers import create_text_table
from ray_cluster import local_ray
from test_store_concurrency import s3_endpoint  # noqa: F401 - moto on loopback, a fixture

import embedsearch
from embedsearch.contract.errors import BadVectors, TableNotFound
from embedsearch.v1 import gateway_pb2_grpc

pytestmark = pytest.mark.slow
ROWS = 240
TOPICS = ["rivers", "databases", "music", "orbits", "bread", "chess"]


@pytest.fixture(scope="module")
def ray_address() -> str:
    return local_ray()


@pytest.fixture(scope="module")
def corpus() -> pa.Table:
    ids = list(range(ROWS))
    texts = [f"note {i} on {TOPICS[i % len(TOPICS)]}, {'long ' * (i % 5)}draft" for i in ids]
    return pa.table({"id": pa.array(ids, pa.int64()), "text": texts})


@pytest.fixture(scope="module")
def gateway_stub(stack):
    import grpc

    return gateway_pb2_grpc.GatewayStub(grpc.insecure_channel(stack.gateway))


@pytest.fixture(scope="module")
def through_gateway(stack, gateway_stub, corpus) -> pa.Table:
    """The corpus added through the gateway (the SDK's add, embedded by the embedder)."""
    create_text_table(gateway_stub, "ray_reference")
    embedsearch.connect(f"grpc://{stack.gateway}").open_table("ray_reference").add(corpus)
    return stored(stack.data_root, "ray_reference")


def stored(root: Path | str, name: str, options: dict | None = None) -> pa.Table:
    """The table as the store wrote it (its schema metadata included)."""
    return lance.dataset(f"{root}/{name}.lance", storage_options=options).to_table()


def assert_same_rows(ours: pa.Table, reference: pa.Table) -> None:
    """Same schema and metadata, same rows in the same order, vectors within 1e-6."""
    assert ours.schema.equals(reference.schema, check_metadata=True)
    assert ours.drop(["vector"]).equals(reference.drop(["vector"]))
    np.testing.assert_allclose(vectors(ours), vectors(reference), rtol=0, atol=1e-6)


def vectors(table: pa.Table) -> np.ndarray:
    return np.stack(table.column("vector").to_numpy(zero_copy_only=False))


def ingest(root: Path | str, table: str, source: str, workers: int = 1, **job: object) -> object:
    from ray_jobs.cluster import Workers, connect
    from ray_jobs.ingest import IngestJob
    from ray_jobs.ingest import ingest as run
    from ray_jobs.progress import Reporting
    from ray_jobs.tables import TableRef

    connected = connect("", Workers(workers))
    return run(
        IngestJob(source, TableRef.from_env(str(root), table), batch_rows=64, **job),  # type: ignore[arg-type]
        connected,
        Reporting(every_s=1.0),
    )


def test_parquet_on_two_workers_writes_what_the_gateway_writes(
    ray_address, stack, gateway_stub, corpus, through_gateway, tmp_path
):
    pq.write_table(corpus.slice(0, 120), tmp_path / "a.parquet")
    pq.write_table(corpus.slice(120), tmp_path / "b.parquet")
    create_text_table(gateway_stub, "ray_parquet")
    before = lance.dataset(f"{stack.data_root}/ray_parquet.lance").version

    result = ingest(stack.data_root, "ray_parquet", str(tmp_path), workers=2, format="parquet")

    assert result.rows == ROWS and result.version == before + 1  # one commit
    assert_same_rows(stored(stack.data_root, "ray_parquet"), through_gateway)
    # The gateway serves it at once: a text query finds what it finds in the reference.
    db = embedsearch.connect(f"grpc://{stack.gateway}")
    found = db.open_table("ray_parquet").search("orbits").limit(5).to_arrow()
    expected = db.open_table("ray_reference").search("orbits").limit(5).to_arrow()
    assert found.column("id").to_pylist() == expected.column("id").to_pylist()


def _jsonl(corpus: pa.Table, path: Path) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in corpus.to_pylist()))


def _csv(corpus: pa.Table, path: Path) -> None:
    pacsv.write_csv(corpus, path)


def _lancedb(corpus: pa.Table, path: Path) -> None:
    import lancedb

    lancedb.connect(path.parent / "lancedb").create_table("source", data=corpus)


@pytest.mark.parametrize(
    ("writer", "name"),
    [(_jsonl, "src.jsonl"), (_csv, "src.csv"), (_lancedb, "lancedb/source.lance")],
    ids=["jsonl", "csv", "lancedb-table"],
)
def test_other_sources_write_what_the_gateway_writes(
    ray_address, stack, gateway_stub, corpus, through_gateway, tmp_path, writer, name
):
    rows = 48
    writer(corpus.slice(0, rows), tmp_path / name.split("/")[-1])
    table = f"ray_{name.split('.')[-1]}"
    create_text_table(gateway_stub, table)

    ingest(stack.data_root, table, str(tmp_path / name))

    assert_same_rows(stored(stack.data_root, table), through_gateway.slice(0, rows))


def test_a_failed_job_commits_nothing(ray_address, stack, gateway_stub, corpus, tmp_path):
    """A null text under on_bad_vectors=error fails the job, naming the row, as the gateway
    refuses the add; the table keeps its version."""
    bad = pa.table({"id": pa.array([1, 2], pa.int64()), "text": ["fine", None]})
    pq.write_table(bad, tmp_path / "bad.parquet")
    create_text_table(gateway_stub, "ray_refused")
    before = lance.dataset(f"{stack.data_root}/ray_refused.lance").version

    with pytest.raises(Exception) as failed:
        ingest(stack.data_root, "ray_refused", str(tmp_path / "bad.parquet"))

    from ray_jobs.cli import job_error

    assert isinstance(job_error(failed.value), BadVectors)
    after = lance.dataset(f"{stack.data_root}/ray_refused.lance")
    assert (after.version, after.count_rows()) == (before, 0)


def test_a_missing_table_is_named(ray_address, tmp_path):
    with pytest.raises(TableNotFound, match="no_such_table"):
        ingest(tmp_path, "no_such_table", str(tmp_path / "any.parquet"))


class _Pushgateway(http.server.BaseHTTPRequestHandler):
    """Prometheus Pushgateway's push endpoint (PUT /metrics/job/<job>/...): keeps each body."""

    pushed: ClassVar[list[tuple[str, str]]] = []

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        type(self).pushed.append((self.path, body))
        self.send_response(202)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def pushgateway() -> Iterator[str]:
    _Pushgateway.pushed = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pushgateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_the_command_on_a_cluster_prints_and_pushes_progress(
    ray_address, stack, gateway_stub, corpus, through_gateway, tmp_path, pushgateway
):
    """`embedsearch ingest --address` as a driver of its own on the running cluster."""
    pq.write_table(corpus.slice(0, 64), tmp_path / "src.parquet")
    create_text_table(gateway_stub, "ray_cli")
    command = [sys.executable, "-m", "service_kit.cli", "ingest", str(tmp_path / "src.parquet")]
    command += ["--table", "ray_cli", "--data-root", str(stack.data_root)]
    command += ["--address", ray_address, "--pushgateway", pushgateway, "--batch-rows", "16"]

    done = subprocess.run(command, capture_output=True, text=True, timeout=600)

    assert done.returncode == 0, done.stderr[-3000:]
    assert "ingest ray_cli: 64/64 rows (100%)" in done.stdout
    assert "rows/s" in done.stdout
    assert "committed 64 rows" in done.stdout
    path, body = _Pushgateway.pushed[-1]
    assert path == "/metrics/job/embedsearch-ingest/table/ray_cli"
    assert 'jobs_rows_done{command="ingest",table="ray_cli"} 64.0' in body
    assert 'jobs_finished{command="ingest",table="ray_cli"} 1.0' in body
    assert_same_rows(stored(stack.data_root, "ray_cli"), through_gateway.slice(0, 64))


def test_s3_source_and_data_root(ray_address, through_gateway, corpus, s3_endpoint, monkeypatch):  # noqa: F811
    """The source and the table both on an S3 API (moto): the same rows as the gateway's."""
    from ray_jobs.sources import filesystem
    from store_service.storage import storage_options_from_env

    for name, value in s3_endpoint.items():
        monkeypatch.setenv(name, value)
    options = storage_options_from_env(s3_endpoint)
    pq.write_table(
        corpus.slice(0, 48), "tables/corpus/src.parquet", filesystem=filesystem("s3://", options)
    )
    root = "s3://tables/embedsearch"
    lance.write_dataset(
        through_gateway.schema.empty_table(), f"{root}/docs.lance", storage_options=options
    )

    ingest(root, "docs", "s3://tables/corpus/src.parquet")

    assert_same_rows(stored(root, "docs", options), through_gateway.slice(0, 48))
