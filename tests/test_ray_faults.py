"""Faults in a Ray ingest, on a local directory and on an S3 API (moto): a worker killed
mid-job costs no row and doubles none; a driver killed mid-job leaves no partial commit, and a
rerun completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ray_cluster import local_ray
from test_store_concurrency import s3_endpoint  # noqa: F401 - moto on loopback, a fixture
from toy_plugin import ToyHashEmbeddings

from embedsearch.contract.schema import vector_type
from gateway.mapping import Binding, schema_with_bindings
from store_service.storage import storage_options_from_env

pytestmark = pytest.mark.slow
ROWS, DIMS = 160, 16
TEXTS = [f"note {i} about {('ice', 'salt', 'wind', 'clay')[i % 4]}" for i in range(ROWS)]
TRIGGER = TEXTS[100]  # the batch holding it fails: well into the job
WAIT_S = 300.0


@pytest.fixture(scope="module")
def ray_address() -> str:
    return local_ray()


@pytest.fixture(params=["directory", "s3"])
def root(request, tmp_path, monkeypatch) -> tuple[str, dict[str, str]]:
    """A data root, and the AWS_* variables that reach it (none for a directory)."""
    if request.param == "directory":
        return str(tmp_path / "data"), {}
    env = request.getfixturevalue("s3_endpoint")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # moto keeps its buckets for the life of the process: a prefix of the test's own.
    return f"s3://tables/{tmp_path.name}", env


def create(root: str, name: str, provider: str, marker: Path) -> str:
    """A table whose text is embedded by ``provider`` (tests/plugins/ray_faults.py); its URI."""
    from ray_jobs.tables import TableRef

    binding = Binding(
        provider, {"dims": DIMS, "trigger": TRIGGER, "marker": str(marker)}, "text", "vector"
    )
    schema = pa.schema(
        [
            pa.field("id", pa.int64()),
            pa.field("text", pa.string()),
            pa.field("vector", vector_type(DIMS)),
        ]
    )
    table = TableRef.from_env(root, name)
    lance.write_dataset(
        schema_with_bindings(schema, [binding]).empty_table(),
        table.uri,
        storage_options=table.storage_options,
    )
    return table.uri


def source(tmp_path: Path) -> str:
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"id": pa.array(range(ROWS), pa.int64()), "text": TEXTS}), path)
    return str(path)


def ingest(root: str, table: str, corpus: str, workers: int) -> object:
    from ray_jobs.cluster import Workers, connect
    from ray_jobs.ingest import IngestJob
    from ray_jobs.ingest import ingest as run
    from ray_jobs.progress import Reporting
    from ray_jobs.tables import TableRef

    job = IngestJob(corpus, TableRef.from_env(root, table), batch_rows=20)
    return run(job, connect("", Workers(workers)), Reporting(every_s=1.0))


def assert_every_row_once(uri: str, options: dict[str, str]) -> None:
    """Each source row once, in order, with the hashing embedder's vector."""
    stored = lance.dataset(uri, storage_options=storage_options_from_env(options)).to_table()
    assert stored.column("id").to_pylist() == list(range(ROWS))
    expected = ToyHashEmbeddings(dims=DIMS).generate_embeddings(TEXTS)
    got = np.stack(stored.column("vector").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_a_worker_killed_mid_job(ray_address, root, tmp_path, monkeypatch):
    data_root, env = root
    marker = tmp_path / "killed"
    uri = create(data_root, "docs", "dies-once", marker)
    monkeypatch.setenv("EMBEDDER_PLUGINS", "ray_faults")

    result = ingest(data_root, "docs", source(tmp_path), workers=2)

    assert marker.exists()  # a worker did die, on the batch holding TRIGGER
    assert result.rows == ROWS and result.version == result.read_version + 1
    assert_every_row_once(uri, env)


def test_a_driver_killed_mid_job(ray_address, root, tmp_path, monkeypatch):
    data_root, env = root
    marker = tmp_path / "hung"
    uri = create(data_root, "docs", "hangs-once", marker)
    corpus = source(tmp_path)
    command = [sys.executable, "-m", "service_kit.cli", "ingest", corpus, "--table", "docs"]
    command += ["--data-root", data_root, "--address", ray_address, "--batch-rows", "20"]
    driver = subprocess.Popen(
        command,
        env={**os.environ, **env, "EMBEDDER_PLUGINS": "ray_faults"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # The job is under way once a worker reaches TRIGGER's batch (and hangs on it).
        deadline = time.monotonic() + WAIT_S
        while not marker.exists():
            assert driver.poll() is None, "the driver exited before the job reached its fault"
            assert time.monotonic() < deadline, "no worker reached the batch that hangs"
            time.sleep(0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    killed = lance.dataset(uri, storage_options=storage_options_from_env(env))
    assert (killed.version, killed.count_rows()) == (1, 0)  # nothing committed
    monkeypatch.setenv("EMBEDDER_PLUGINS", "ray_faults")

    result = ingest(data_root, "docs", corpus, workers=1)  # the rerun

    assert result.version == 2
    assert_every_row_once(uri, env)
