"""Fuzzing the gateway's request decoding with hypothesis, for a bounded time per target.

First the decoders themselves (Arrow IPC rows and schemas, JSON rows, packed vectors, then the
rows typed and checked against a table's schema), then the gateway servicer through a real
channel. Every input ends in a typed error (InvalidArgument in-process; INVALID_ARGUMENT and
the like over gRPC, never INTERNAL, never a crash), and a call that fails changes nothing.
``EMBEDSEARCH_FUZZ_SECONDS`` sets the time per target (default 4).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedsearch.contract.errors import InvalidArgument
from embedsearch.contract.schema import conform, vector_type
from embedsearch.contract.wire import ipc_to_schema, schema_to_ipc, table_to_ipc, unpack_vector
from embedsearch.v1 import common_pb2, gateway_pb2
from gateway.core import to_table
from gateway.server import rows_from_pb

SECONDS = float(os.environ.get("EMBEDSEARCH_FUZZ_SECONDS", "4"))
SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("text", pa.string()),
        pa.field("vector", vector_type(4)),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("flag", pa.bool_()),
        pa.field("when", pa.timestamp("us")),
    ]
)
# Codes a request may end with; INTERNAL and UNKNOWN would be bugs, UNAVAILABLE a crash.
EXPECTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
EXAMPLES_PER_RUN = 50
quick = settings(
    max_examples=EXAMPLES_PER_RUN,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def for_a_while(check: Callable[[], None]) -> None:
    """Run a @given test repeatedly, a fresh random run each time, for SECONDS in all."""
    end = time.monotonic() + SECONDS
    while time.monotonic() < end:
        check()


# -- inputs ----------------------------------------------------------------------------------


def _seed_tables() -> list[pa.Table]:
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(8, dtype=np.float32)), 4)
    return [
        pa.table(
            {
                "id": pa.array([1, 2], pa.int64()),
                "text": ["alpha", None],
                "vector": vectors,
                "tags": [["a"], []],
                "flag": [True, None],
                "when": pa.array([0, 10**12], pa.timestamp("us")),
            }
        ),
        pa.table({"id": [3], "text": pa.array(["x"]).dictionary_encode()}),
        pa.table({"id": pa.array([4], pa.int32()), "vector": [[1.0, 2.0, 3.0]]}),
        pa.table({"text": pa.array(["y"], pa.large_string()), "other": [1.5]}),
        pa.table({"id": [5], "vector": pa.array([[float("nan")] * 4], vector_type(4))}),
    ]


SEEDS = [table_to_ipc(t) for t in _seed_tables()]
SCHEMA_SEEDS = [schema_to_ipc(t.schema) for t in _seed_tables()] + [schema_to_ipc(SCHEMA)]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A valid message with a few bytes flipped, cut, inserted or repeated: it gets past the
    magic numbers and into the parsers' deeper checks."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "cut", "insert", "repeat"]))
        if kind == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[at:at] = data[at : at + draw(st.integers(1, 64))]
    return bytes(data)


ipc_bytes = st.one_of(mutated(SEEDS), st.binary(max_size=256), st.sampled_from(SEEDS))
schema_bytes = st.one_of(mutated(SCHEMA_SEEDS), st.binary(max_size=256))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
json_rows = st.lists(
    st.dictionaries(st.sampled_from(SCHEMA.names) | st.text(max_size=4), json_values, max_size=6),
    max_size=4,
)
json_text = st.one_of(json_rows.map(json.dumps), json_values.map(json.dumps), st.text(max_size=64))


# -- the decoders, in-process -------------------------------------------------------------------


def decode_rows(rows: common_pb2.RowData) -> pa.Table | None:
    """What the gateway makes of the rows of an Add: a table fit for SCHEMA, or InvalidArgument
    (None). Anything else raised is a bug."""
    try:
        decoded = to_table(rows_from_pb(rows), SCHEMA)
        if decoded.num_rows == 0:
            return decoded  # an empty add is a successful no-op, whatever its columns
        table = conform(decoded, SCHEMA)
    except InvalidArgument:
        return None
    assert table.schema == SCHEMA
    return table


# RowData's two formats, with what to fill each with.
ROW_FORMATS = [pytest.param("arrow_ipc", ipc_bytes, id="arrow"), pytest.param("json", json_text)]


@pytest.mark.parametrize("row_format,payloads", ROW_FORMATS)
def test_fuzz_rows_decode_to_the_schema_or_invalid_argument(row_format, payloads):
    @quick
    @given(payloads)
    def check(payload: bytes | str) -> None:
        decode_rows(common_pb2.RowData(**{row_format: payload}))

    for_a_while(check)


def test_fuzz_schemas_and_vectors_decode_or_invalid_argument():
    @quick
    @given(schema_bytes, st.binary(max_size=64))
    def check(schema: bytes, vector: bytes) -> None:
        for decode, data in ((ipc_to_schema, schema), (unpack_vector, vector)):
            with contextlib.suppress(InvalidArgument):
                decode(data)

    for_a_while(check)


# -- the gateway servicer, through a real channel ----------------------------------------------


@pytest.fixture(scope="module")
def fuzz_table(gateway_stub) -> str:
    gateway_stub.CreateTable(
        gateway_pb2.CreateTableRequest(name="fuzz", arrow_schema=schema_to_ipc(SCHEMA))
    )
    return "fuzz"


def state(stub: Any, table: str) -> tuple[int, int]:
    info = stub.DescribeTable(gateway_pb2.DescribeTableRequest(name=table))
    return info.version, info.num_rows


def outcome(call: Callable[[], Any]) -> tuple[grpc.StatusCode, Any]:
    """The status a call ended with, and its reply when it succeeded."""
    try:
        return grpc.StatusCode.OK, call()
    except grpc.RpcError as err:
        assert err.code() in EXPECTED, f"{err.code()}: {err.details()}"
        return err.code(), None


def check_add(stub: Any, table: str, rows: common_pb2.RowData) -> None:
    """An Add either appends exactly the rows the gateway decodes, or fails changing nothing."""
    before = state(stub, table)
    code, reply = outcome(lambda: stub.Add(gateway_pb2.AddRequest(table=table, rows=rows)))
    after = state(stub, table)
    if code != grpc.StatusCode.OK:
        assert after == before, f"a failed Add ({code}) changed the table"
        return
    decoded = decode_rows(rows)
    assert decoded is not None, "the gateway accepted rows its decoders reject"
    assert reply.rows_inserted == decoded.num_rows
    assert after[1] == before[1] + decoded.num_rows


@pytest.mark.parametrize("row_format,payloads", ROW_FORMATS)
def test_fuzz_gateway_add(gateway_stub, fuzz_table, row_format, payloads):
    @quick
    @given(payloads)
    def check(payload: bytes | str) -> None:
        check_add(gateway_stub, fuzz_table, common_pb2.RowData(**{row_format: payload}))

    for_a_while(check)


def test_fuzz_gateway_create_table_and_search(gateway_stub, fuzz_table):
    @quick
    @given(
        schema_bytes,
        st.binary(max_size=64),
        st.integers(0, 2**32 - 1),
        st.text(max_size=24),
    )
    def check(schema: bytes, vector: bytes, k: int, where: str) -> None:
        tables = set(gateway_stub.ListTables(gateway_pb2.ListTablesRequest()).names)
        request = gateway_pb2.CreateTableRequest(name="fuzz_created", arrow_schema=schema)
        code, _ = outcome(lambda: gateway_stub.CreateTable(request))
        if code == grpc.StatusCode.OK:  # a mutation that still decodes: a real table
            gateway_stub.DropTable(gateway_pb2.DropTableRequest(name="fuzz_created"))
        assert set(gateway_stub.ListTables(gateway_pb2.ListTablesRequest()).names) == tables

        before = state(gateway_stub, fuzz_table)
        search = gateway_pb2.SearchRequest(table=fuzz_table, vector=vector, k=k, filter=where)
        outcome(lambda: gateway_stub.Search(search))
        assert state(gateway_stub, fuzz_table) == before

    for_a_while(check)
