"""A full or read-only data root: the store refuses writes with a clear error and keeps serving
reads. Real store processes; ENOSPC from a tiny tmpfs, EFBIG from RLIMIT_FSIZE, EROFS from a
read-only bind mount (both mounts in the store's own mount namespace)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pytest
from faults import (
    SERVING,
    can_mount_privately,
    file_size_limited,
    health,
    on_small_tmpfs,
    read_only,
    serve,
)
from helpers import expect_code

from embedsearch.contract.errors import StorageFull
from embedsearch.contract.schema import vector_type
from embedsearch.contract.status import error_from_rpc
from embedsearch.contract.wire import schema_to_ipc, table_to_ipc
from embedsearch.v1 import store_pb2, store_pb2_grpc
from store_service.catalog import TableCatalog

SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("blob", pa.binary()),
        pa.field("vector", vector_type(4)),
    ]
)
BIG = 512 * 1024  # bytes of incompressible payload in each filling write

needs_mounts = pytest.mark.skipif(
    not can_mount_privately(), reason="needs a private mount namespace (root or CAP_SYS_ADMIN)"
)


def rows(start: int, count: int, blob_bytes: int = 8) -> pa.Table:
    rng = np.random.default_rng(start)
    return pa.table(
        {
            "id": np.arange(start, start + count),
            "blob": [rng.bytes(blob_bytes) for _ in range(count)],
            "vector": pa.FixedSizeListArray.from_arrays(
                pa.array(rng.random(count * 4, dtype=np.float32)), 4
            ),
        },
        schema=SCHEMA,
    )


def add(stub: store_pb2_grpc.StoreStub, table: pa.Table) -> None:
    stub.Add(store_pb2.StoreAddRequest(name="t", arrow_ipc=table_to_ipc(table)), timeout=60)


def check_reads(stub: store_pb2_grpc.StoreStub, address: str, ids: set[int]) -> None:
    """Health, count, scan and vector search all still answer, with exactly ``ids``."""
    assert health(address) == SERVING
    assert stub.CountRows(store_pb2.StoreCountRowsRequest(name="t"), timeout=30).count == len(ids)
    scan = stub.Scan(store_pb2.StoreScanRequest(name="t", columns=["id"]), timeout=30)
    assert set(pa.ipc.open_stream(scan.arrow_ipc).read_all().column("id").to_pylist()) == ids
    query = np.full(4, 0.5, dtype="<f4").tobytes()
    found = stub.Search(
        store_pb2.StoreSearchRequest(name="t", vector_column="vector", vector=query, k=3),
        timeout=30,
    )
    assert pa.ipc.open_stream(found.arrow_ipc).read_all().num_rows == min(3, len(ids))


def fill_until_refused(stub: store_pb2_grpc.StoreStub, root: Path) -> tuple[set[int], str]:
    """Add BIG-byte rows until the store refuses; the ids acknowledged, and the refusal."""
    acknowledged: set[int] = set()
    for attempt in range(64):  # 32 MiB at most: far past either limit below
        batch = rows(1000 + attempt, 1, BIG)
        try:
            add(stub, batch)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
            # Not backpressure: no retry delay, so clients do not retry into a full disk.
            refused = error_from_rpc(err)
            assert type(refused) is StorageFull and refused.reason == "STORAGE_FULL"
            assert refused.retry_after_s is None
            return acknowledged, err.details()
        acknowledged.update(batch.column("id").to_pylist())
    pytest.fail(f"64 adds of {BIG} bytes each all fitted on the limited data root {root}")


@pytest.mark.parametrize(
    "limit",
    [
        pytest.param("tmpfs", marks=needs_mounts, id="ENOSPC-tmpfs"),
        pytest.param("fsize", id="EFBIG"),
    ],
)
def test_full_data_root_refuses_writes_and_keeps_serving_reads(tmp_path, limit):
    root = tmp_path / "root"
    root.mkdir()
    python = (
        on_small_tmpfs(tmp_path, root, "4m")
        if limit == "tmpfs"
        else file_size_limited(tmp_path, BIG // 2)
    )
    with ExitStack() as exits:
        address, proc = serve(exits, "store_service", "--data-root", str(root), python=python)
        stub = store_pb2_grpc.StoreStub(exits.enter_context(grpc.insecure_channel(address)))
        stub.CreateTable(
            store_pb2.StoreCreateTableRequest(name="t", arrow_schema=schema_to_ipc(SCHEMA))
        )
        add(stub, rows(0, 10))
        acknowledged, refusal = fill_until_refused(stub, root)
        # The refusal says what to do; the data root's path is for the operator's log only.
        assert "is full" in refusal and str(root) not in refusal, refusal

        version = stub.DescribeTable(store_pb2.StoreDescribeTableRequest(name="t")).version
        # A streamed add is refused the same way, and commits nothing.
        big = store_pb2.StoreAddRequest(name="t", arrow_ipc=table_to_ipc(rows(5000, 4, BIG)))
        expect_code(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            lambda: stub.AddStream(iter([big]), timeout=60),
            "data root is full",
            reason="STORAGE_FULL",
        )
        assert stub.DescribeTable(store_pb2.StoreDescribeTableRequest(name="t")).version == version
        check_reads(stub, address, set(range(10)) | acknowledged)
        assert proc.poll() is None


@needs_mounts
def test_read_only_data_root_refuses_writes_and_keeps_serving_reads(tmp_path):
    root = tmp_path / "root"
    catalog = TableCatalog(str(root))  # the table, written while the root was still writable
    catalog.create_table("t", SCHEMA, rows=rows(0, 20))
    before = catalog.describe("t").version
    with ExitStack() as exits:
        python = read_only(tmp_path, root)
        address, proc = serve(exits, "store_service", "--data-root", str(root), python=python)
        stub = store_pb2_grpc.StoreStub(exits.enter_context(grpc.insecure_channel(address)))
        refusals = {
            "add": lambda: add(stub, rows(100, 5)),
            "delete": lambda: stub.Delete(store_pb2.StoreDeleteRequest(name="t", filter="id < 5")),
            "update": lambda: stub.Update(
                store_pb2.StoreUpdateRequest(name="t", filter="id = 1", updates={"id": "id + 100"})
            ),
            "create": lambda: stub.CreateTable(
                store_pb2.StoreCreateTableRequest(name="u", arrow_schema=schema_to_ipc(SCHEMA))
            ),
            "tag": lambda: stub.CreateTag(store_pb2.StoreCreateTagRequest(name="t", tag="v1")),
        }
        for what, call in refusals.items():
            details = expect_code(
                grpc.StatusCode.FAILED_PRECONDITION, call, "data root", reason="FAILED_PRECONDITION"
            )
            assert "not writable" in details and str(root) not in details, (what, details)
        assert stub.DescribeTable(store_pb2.StoreDescribeTableRequest(name="t")).version == before
        check_reads(stub, address, set(range(20)))
        assert proc.poll() is None
