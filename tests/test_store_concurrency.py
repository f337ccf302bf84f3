"""Concurrent writers (RPCs; two store processes on a directory, or on S3 via moto): no row lost."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import grpc
import pyarrow as pa
import pytest

from embedsearch.contract.channels import wait_until_serving
from embedsearch.contract.wire import schema_to_ipc, table_to_ipc
from embedsearch.v1 import store_pb2, store_pb2_grpc
from service_kit.launch import free_port

SCHEMA = pa.schema([pa.field("writer", pa.int64()), pa.field("seq", pa.int64())])
WRITES = 25


@contextmanager
def store_process(data_root: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """``python -m store_service`` in its own process, as deployed; yields its address."""
    port = free_port()
    command = [sys.executable, "-m", "store_service", "--data-root", data_root]
    command += ["--host", "127.0.0.1", "--port", str(port), "--metrics-port", "-1"]
    proc = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL)
    try:
        wait_until_serving(f"127.0.0.1:{port}", 60)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0  # drained and exited cleanly on SIGTERM


def append_all(stubs: list[store_pb2_grpc.StoreStub], table: str) -> set[tuple[int, int]]:
    """WRITES one-row adds per stub, all stubs at once; the rows each Add acknowledged."""

    def writer(index: int) -> set[tuple[int, int]]:
        done = set()
        for seq in range(WRITES):
            rows = pa.table({"writer": [index], "seq": [seq]}, schema=SCHEMA)
            stubs[index].Add(store_pb2.StoreAddRequest(name=table, arrow_ipc=table_to_ipc(rows)))
            done.add((index, seq))
        return done

    with ThreadPoolExecutor(len(stubs)) as pool:
        return set().union(*pool.map(writer, range(len(stubs))))


def stored_rows(stub: store_pb2_grpc.StoreStub, table: str) -> int:
    return stub.CountRows(store_pb2.StoreCountRowsRequest(name=table)).count


def check_every_row(root_uri: str, table: str, acknowledged: set, options: dict) -> None:
    """Read the table with Lance itself, not through the store."""
    import lance

    dataset = lance.dataset(f"{root_uri}/{table}.lance", storage_options=options)
    found = dataset.to_table().to_pylist()
    assert {(r["writer"], r["seq"]) for r in found} == acknowledged
    assert len(found) == len(acknowledged)  # and none twice


def create(stub: store_pb2_grpc.StoreStub, table: str) -> None:
    stub.CreateTable(
        store_pb2.StoreCreateTableRequest(name=table, arrow_schema=schema_to_ipc(SCHEMA))
    )


def test_concurrent_rpcs_on_one_store(store_stub, stack, table_name):
    create(store_stub, table_name)
    stubs = [store_stub] * 4
    acknowledged = append_all(stubs, table_name)
    with ThreadPoolExecutor(3) as pool:  # writers that Lance cannot always rebase: retried
        list(
            pool.map(
                lambda i: store_stub.Update(
                    store_pb2.StoreUpdateRequest(
                        name=table_name, filter=f"writer = {i}", updates={"seq": "seq + 1000"}
                    )
                ),
                range(3),
            )
        )
    acknowledged = {(w, s + 1000 if w < 3 else s) for w, s in acknowledged}
    assert stored_rows(store_stub, table_name) == 4 * WRITES
    check_every_row(str(stack.data_root), table_name, acknowledged, {})


@pytest.mark.slow
def test_two_store_processes_share_a_directory(tmp_path, table_name):
    root = str(tmp_path / "shared")
    with store_process(root) as first, store_process(root) as second:
        stubs = [store_pb2_grpc.StoreStub(grpc.insecure_channel(a)) for a in (first, second)]
        create(stubs[0], table_name)
        acknowledged = append_all(stubs, table_name)
        # Each process sees the other's commits on its next request.
        assert stored_rows(stubs[0], table_name) == stored_rows(stubs[1], table_name) == 2 * WRITES
    check_every_row(root, table_name, acknowledged, {})


@pytest.fixture
def s3_endpoint() -> Iterator[dict[str, str]]:
    """An S3 API on loopback (moto in server mode) with one bucket; the AWS_* variables."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket="tables")
    yield env
    server.stop()


@pytest.mark.slow
def test_two_store_processes_share_an_s3_bucket(s3_endpoint, table_name):
    from store_service.storage import storage_options_from_env

    root = "s3://tables/embedsearch"
    with store_process(root, s3_endpoint) as first, store_process(root, s3_endpoint) as second:
        stubs = [store_pb2_grpc.StoreStub(grpc.insecure_channel(a)) for a in (first, second)]
        create(stubs[0], table_name)
        acknowledged = append_all(stubs, table_name)
        assert stored_rows(stubs[1], table_name) == 2 * WRITES
        assert table_name in stubs[1].ListTables(store_pb2.StoreListTablesRequest()).names
    check_every_row(root, table_name, acknowledged, storage_options_from_env(s3_endpoint))
