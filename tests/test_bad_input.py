"""Bad input gets the right status code and a message that says what to fix; nothing changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pytest
from helpers import arrow_rows, create_text_table, expect_code, st_binding

import embedsearch
from embedsearch.contract.channels import channel_options
from embedsearch.contract.wire import ipc_to_table, pack_vectors, schema_to_ipc, table_to_ipc
from embedsearch.v1 import common_pb2, gateway_pb2
from gateway.server import create_server as create_gateway
from gateway.settings import GatewaySettings
from service_kit.launch import free_port

NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID = grpc.StatusCode.INVALID_ARGUMENT
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


@pytest.fixture
def table(gateway_stub, table_name):
    info = create_text_table(gateway_stub, table_name)
    gateway_stub.Add(
        gateway_pb2.AddRequest(table=table_name, rows=arrow_rows(id=[1, 2], text=["a b", "c d"]))
    )
    return info.name


def state(stub, name):
    info = stub.DescribeTable(gateway_pb2.DescribeTableRequest(name=name))
    return info.version, info.num_rows


@pytest.mark.parametrize(
    "method,request_",
    [
        ("DescribeTable", gateway_pb2.DescribeTableRequest(name="nope")),
        ("Add", gateway_pb2.AddRequest(table="nope", rows=arrow_rows(text=["x"]))),
        ("Search", gateway_pb2.SearchRequest(table="nope", text="x")),
        ("CountRows", gateway_pb2.CountRowsRequest(table="nope")),
        ("Delete", gateway_pb2.DeleteRequest(table="nope", filter="true")),
        ("DropTable", gateway_pb2.DropTableRequest(name="nope")),
        ("ListVersions", gateway_pb2.ListVersionsRequest(table="nope")),
    ],
)
def test_unknown_table_is_not_found(gateway_stub, method, request_):
    call = getattr(gateway_stub, method)
    expect_code(NOT_FOUND, lambda: call(request_), "'nope'", reason="TABLE_NOT_FOUND")


def test_existing_table_is_already_exists(gateway_stub, table):
    before = state(gateway_stub, table)
    expect_code(
        grpc.StatusCode.ALREADY_EXISTS,
        lambda: create_text_table(gateway_stub, table),
        reason="TABLE_ALREADY_EXISTS",
    )
    assert state(gateway_stub, table) == before


def test_missing_source_column_in_schema(gateway_stub, table_name):
    schema = pa.schema([pa.field("body", pa.string())])
    request = gateway_pb2.CreateTableRequest(
        name=table_name, arrow_schema=schema_to_ipc(schema), bindings=[st_binding("text")]
    )
    expect_code(INVALID, lambda: gateway_stub.CreateTable(request), "source column 'text'")
    assert table_name not in gateway_stub.ListTables(gateway_pb2.ListTablesRequest()).names


def test_rows_without_source_or_vector(gateway_stub, table):
    before = state(gateway_stub, table)
    request = gateway_pb2.AddRequest(table=table, rows=arrow_rows(id=[3]))
    expect_code(INVALID, lambda: gateway_stub.Add(request), "'text'")
    assert state(gateway_stub, table) == before


def test_null_source_names_the_row(gateway_stub, table):
    before = state(gateway_stub, table)
    request = gateway_pb2.AddRequest(
        table=table, rows=arrow_rows(id=[3, 4, 5], text=["fine", None, "ok"])
    )
    expect_code(
        INVALID, lambda: gateway_stub.Add(request), "row 1", "on_bad_vectors", f"table {table!r}"
    )
    assert state(gateway_stub, table) == before


def test_wrong_vector_dimension(gateway_stub, table):
    before = state(gateway_stub, table)
    request = gateway_pb2.AddRequest(
        table=table, rows=arrow_rows(id=[3], text=["x"], vector=[[0.1, 0.2, 0.3]])
    )
    expect_code(INVALID, lambda: gateway_stub.Add(request), "384", "row 0")
    search = gateway_pb2.SearchRequest(table=table, vector=pack_vectors([0.1, 0.2]))
    expect_code(INVALID, lambda: gateway_stub.Search(search), "2 dimensions", "384")
    assert state(gateway_stub, table) == before


def test_declared_vector_of_wrong_dimension(gateway_stub, table_name):
    schema = pa.schema(
        [pa.field("text", pa.string()), pa.field("vector", pa.list_(pa.float32(), 8))]
    )
    request = gateway_pb2.CreateTableRequest(
        name=table_name, arrow_schema=schema_to_ipc(schema), bindings=[st_binding()]
    )
    expect_code(INVALID, lambda: gateway_stub.CreateTable(request), "Vector(384)")


def test_unknown_column_and_wrong_type(gateway_stub, table):
    before = state(gateway_stub, table)
    unknown = gateway_pb2.AddRequest(table=table, rows=arrow_rows(text=["x"], colour=["red"]))
    expect_code(INVALID, lambda: gateway_stub.Add(unknown), "colour")
    wrong_type = gateway_pb2.AddRequest(table=table, rows=arrow_rows(id=["one"], text=["x"]))
    expect_code(INVALID, lambda: gateway_stub.Add(wrong_type), "'id'")
    assert state(gateway_stub, table) == before


def test_malformed_rows_filter_and_query(gateway_stub, table):
    before = state(gateway_stub, table)
    garbage = gateway_pb2.AddRequest(table=table, rows=common_pb2.RowData(arrow_ipc=b"\x00junk"))
    expect_code(INVALID, lambda: gateway_stub.Add(garbage), "Arrow IPC")
    bad_json = gateway_pb2.AddRequest(table=table, rows=common_pb2.RowData(json="[{"))
    expect_code(INVALID, lambda: gateway_stub.Add(bad_json), "JSON")
    no_rows = gateway_pb2.AddRequest(table=table)
    expect_code(INVALID, lambda: gateway_stub.Add(no_rows), "rows")
    bad_filter = gateway_pb2.SearchRequest(table=table, text="a", filter="id = = 1")
    expect_code(INVALID, lambda: gateway_stub.Search(bad_filter), "filter")
    no_query = gateway_pb2.SearchRequest(table=table)
    expect_code(INVALID, lambda: gateway_stub.Search(no_query), "query")
    nan = gateway_pb2.SearchRequest(table=table, vector=pack_vectors([float("nan")] * 384))
    expect_code(INVALID, lambda: gateway_stub.Search(nan), "NaN")
    expect_code(
        INVALID, lambda: gateway_stub.Delete(gateway_pb2.DeleteRequest(table=table)), "filter"
    )
    assert state(gateway_stub, table) == before


@pytest.mark.parametrize("name", ["../escape", "a/b", "", "x" * 200, ".hidden", "a..b"])
def test_bad_table_names(gateway_stub, name):
    expect_code(INVALID, lambda: create_text_table(gateway_stub, name), "table name")


def test_unknown_provider_and_bad_args(gateway_stub, table_name):
    from embedsearch.contract.convert import spec_to_pb

    schema = schema_to_ipc(pa.schema([pa.field("text", pa.string())]))
    for spec, fragment, code in [
        (spec_to_pb("no-such-provider", {}), "no-such-provider", NOT_FOUND),
        (spec_to_pb("sentence-transformers", {"colour": "red"}), "colour", INVALID),
        (spec_to_pb("sentence-transformers", {"batch_size": -1}), "batch_size", INVALID),
    ]:
        binding = common_pb2.EmbeddingBinding(
            function=spec, source_column="text", vector_column="vector"
        )
        request = gateway_pb2.CreateTableRequest(
            name=table_name, arrow_schema=schema, bindings=[binding]
        )
        expect_code(code, lambda r=request: gateway_stub.CreateTable(r), fragment)
    assert table_name not in gateway_stub.ListTables(gateway_pb2.ListTablesRequest()).names


def test_sdk_raises_typed_errors(stack, table):
    db = embedsearch.connect(f"grpc://{stack.gateway}")
    with pytest.raises(embedsearch.TableNotFound) as missing:
        db.open_table("nope")
    assert missing.value.reason == "TABLE_NOT_FOUND" and missing.value.table == "nope"
    with pytest.raises(embedsearch.InvalidArgument, match="row 0"):
        db.open_table(table).add([{"id": 9, "text": "   "}])


def test_embedder_unreachable_is_unavailable_and_writes_nothing(servers, stack, table):
    """A gateway whose embedder is down answers UNAVAILABLE, and the table is unchanged."""
    from conftest import QUIET

    dead = f"127.0.0.1:{free_port()}"
    address = servers.start(
        create_gateway, GatewaySettings(embedder_addr=dead, store_addr=stack.store, **QUIET)
    )
    stub = gateway_pb2_grpc_stub(address)
    before = state(stub, table)
    request = gateway_pb2.AddRequest(table=table, rows=arrow_rows(id=[7], text=["hello"]))
    expect_code(UNAVAILABLE, lambda: stub.Add(request), "embedder", reason="UNAVAILABLE")
    search = gateway_pb2.SearchRequest(table=table, text="hello")
    expect_code(UNAVAILABLE, lambda: stub.Search(search), "embedder", reason="UNAVAILABLE")
    assert state(stub, table) == before


def gateway_pb2_grpc_stub(address: str):
    from embedsearch.v1 import gateway_pb2_grpc

    return gateway_pb2_grpc.GatewayStub(grpc.insecure_channel(address))


# -- the table: one bad request per row, its status code, and nothing changed -----------------

RESOURCE = grpc.StatusCode.RESOURCE_EXHAUSTED
SMALL_MESSAGE_BYTES = 256 * 1024
SMALL_MAX_ROWS = 50


def json_rows(text: str) -> common_pb2.RowData:
    return common_pb2.RowData(json=text)


def invalid_utf8_rows() -> common_pb2.RowData:
    """A text column whose bytes are not UTF-8: Arrow IPC carries them without checking."""
    offsets = pa.py_buffer(np.array([0, 2], dtype=np.int32).tobytes())
    text = pa.Array.from_buffers(pa.string(), 1, [None, offsets, pa.py_buffer(b"\xff\xfe")])
    return common_pb2.RowData(arrow_ipc=table_to_ipc(pa.table({"id": [9], "text": text})))


def vector_rows(vector: list[float]) -> common_pb2.RowData:
    column = pa.array([vector], type=pa.list_(pa.float32(), 384))
    return common_pb2.RowData(arrow_ipc=table_to_ipc(pa.table({"id": [9], "vector": column})))


def truncated_ipc() -> common_pb2.RowData:
    whole = table_to_ipc(pa.table({"id": list(range(100)), "text": ["words"] * 100}))
    return common_pb2.RowData(arrow_ipc=whole[: len(whole) // 2])


def duplicate_columns() -> common_pb2.RowData:
    table = pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"])], names=["text", "text"])
    return common_pb2.RowData(arrow_ipc=table_to_ipc(table))


def new_table(t: str, bindings: list) -> tuple[str, gateway_pb2.CreateTableRequest]:
    schema = pa.schema([pa.field("id", pa.int64()), pa.field("text", pa.string())])
    return "CreateTable", gateway_pb2.CreateTableRequest(
        name=f"{t}_new", arrow_schema=schema_to_ipc(schema), bindings=bindings
    )


def search(t: str, **fields) -> tuple[str, gateway_pb2.SearchRequest]:
    return "Search", gateway_pb2.SearchRequest(table=t, **fields)


def add(t: str, rows: common_pb2.RowData, **fields) -> tuple[str, gateway_pb2.AddRequest]:
    return "Add", gateway_pb2.AddRequest(table=t, rows=rows, **fields)


def merge(t: str, rows: common_pb2.RowData, **fields) -> tuple[str, object]:
    return "MergeInsert", gateway_pb2.MergeInsertRequest(table=t, rows=rows, **fields)


# (case id, request for table t, expected code, a fragment of the message, small gateway?)
CASES = [
    (
        "ipc-garbage",
        lambda t: add(t, common_pb2.RowData(arrow_ipc=b"\xff\xff")),
        INVALID,
        "Arrow IPC",
        False,
    ),
    ("ipc-truncated", lambda t: add(t, truncated_ipc()), INVALID, "Arrow IPC", False),
    ("json-not-array", lambda t: add(t, json_rows('{"id": 1}')), INVALID, "array", False),
    ("json-not-objects", lambda t: add(t, json_rows("[1, 2]")), INVALID, "array of objects", False),
    (
        "json-wrong-type",
        lambda t: add(t, json_rows('[{"id": "one", "text": "x"}]')),
        INVALID,
        "'id'",
        False,
    ),
    (
        "json-unknown-column",
        lambda t: add(t, json_rows('[{"text": "x", "colour": 1}]')),
        INVALID,
        "colour",
        False,
    ),
    (
        "json-vector-wrong-length",
        lambda t: add(t, json_rows('[{"text": "x", "vector": [1, 2]}]')),
        INVALID,
        "384",
        False,
    ),
    ("no-rows", lambda t: ("Add", gateway_pb2.AddRequest(table=t)), INVALID, "rows", False),
    ("nan-vector-row", lambda t: add(t, vector_rows([float("nan")] * 384)), INVALID, "NaN", False),
    (
        "inf-vector-row",
        lambda t: add(t, vector_rows([float("inf")] * 384)),
        INVALID,
        "infinite",
        False,
    ),
    (
        "nan-query",
        lambda t: search(t, vector=pack_vectors([float("nan")] * 384)),
        INVALID,
        "NaN",
        False,
    ),
    (
        "overflowing-vector-row",
        lambda t: add(t, vector_rows([1e30] * 384)),
        INVALID,
        "overflows float32",
        False,
    ),
    (
        "overflowing-query",
        lambda t: search(t, vector=pack_vectors([1e30] * 384)),
        INVALID,
        "overflows float32",
        False,
    ),
    ("ragged-query-bytes", lambda t: search(t, vector=b"\x00" * 7), INVALID, "float32", False),
    (
        "query-wrong-dims",
        lambda t: search(t, vector=pack_vectors([0.5] * 3)),
        INVALID,
        "384",
        False,
    ),
    ("invalid-utf8-text", lambda t: add(t, invalid_utf8_rows()), INVALID, "UTF8", False),
    (
        "ten-megabyte-text",
        lambda t: add(t, json_rows(json.dumps([{"id": 9, "text": "é" * (5 << 20)}]))),
        INVALID,
        "bytes",
        False,
    ),
    (
        "oversized-message",
        lambda t: add(t, arrow_rows(id=[9], text=["x" * SMALL_MESSAGE_BYTES])),
        RESOURCE,
        "larger than",
        True,
    ),
    (
        "too-many-rows",
        lambda t: add(
            t, arrow_rows(id=list(range(SMALL_MAX_ROWS + 1)), text=["w"] * (SMALL_MAX_ROWS + 1))
        ),
        INVALID,
        "--max-rows-per-request",
        True,
    ),
    ("k-too-large", lambda t: search(t, text="a", k=1_000_000_000), INVALID, "k must be", False),
    (
        "unknown-vector-column",
        lambda t: search(t, text="a", vector_column="nope"),
        INVALID,
        "nope",
        False,
    ),
    (
        "select-unknown-column",
        lambda t: search(t, text="a", columns=["nope"]),
        INVALID,
        "nope",
        False,
    ),
    (
        "filter-stacked-statement",
        lambda t: search(t, text="a", filter="id = 1; DROP TABLE x"),
        INVALID,
        "filter",
        False,
    ),
    (
        "filter-union",
        lambda t: search(t, text="a", filter="id = 1 UNION SELECT * FROM t"),
        INVALID,
        "filter",
        False,
    ),
    (
        "filter-unbalanced",
        lambda t: search(t, text="a", filter="1=1) OR (1=1"),
        INVALID,
        "filter",
        False,
    ),
    (
        "delete-stacked-statement",
        lambda t: ("Delete", gateway_pb2.DeleteRequest(table=t, filter="true; DELETE FROM x")),
        INVALID,
        "filter",
        False,
    ),
    (
        "count-bad-filter",
        lambda t: ("CountRows", gateway_pb2.CountRowsRequest(table=t, filter="id ==== 2")),
        INVALID,
        "filter",
        False,
    ),
    (
        "update-unknown-column",
        lambda t: ("Update", gateway_pb2.UpdateRequest(table=t, updates={"nope": "1"})),
        INVALID,
        "nope",
        False,
    ),
    (
        "update-bad-expression",
        lambda t: ("Update", gateway_pb2.UpdateRequest(table=t, updates={"id": "id +* 1"})),
        INVALID,
        "id",
        False,
    ),
    (
        "merge-unknown-key",
        lambda t: merge(
            t, arrow_rows(id=[1], text=["x"]), on=["nope"], when_not_matched_insert_all=True
        ),
        INVALID,
        "nope",
        False,
    ),
    (
        "merge-no-key",
        lambda t: merge(t, arrow_rows(id=[1], text=["x"]), when_not_matched_insert_all=True),
        INVALID,
        "on",
        False,
    ),
    (
        "name-escape",
        lambda t: add("../" + t, arrow_rows(id=[1], text=["x"])),
        INVALID,
        "table name",
        False,
    ),
    (
        "name-nul",
        lambda t: add(t + "\x00", arrow_rows(id=[1], text=["x"])),
        INVALID,
        "table name",
        False,
    ),
    (
        "checkout-missing-version",
        lambda t: search(t, text="a", version=999),
        NOT_FOUND,
        "999",
        False,
    ),
    (
        "restore-missing-version",
        lambda t: ("Restore", gateway_pb2.RestoreRequest(table=t, version=999)),
        NOT_FOUND,
        "999",
        False,
    ),
    (
        "index-unknown-column",
        lambda t: (
            "CreateIndex",
            gateway_pb2.CreateIndexRequest(
                table=t, column="nope", index_type=common_pb2.INDEX_TYPE_BTREE
            ),
        ),
        INVALID,
        "nope",
        False,
    ),
    (
        "stream-without-table",
        lambda t: (
            "AddStream",
            iter([gateway_pb2.AddRequest(rows=arrow_rows(id=[1], text=["x"]))]),
        ),
        INVALID,
        "name the table",
        False,
    ),
    (
        "stream-message-after-last",
        lambda t: (
            "AddStream",
            iter(
                [
                    gateway_pb2.AddRequest(
                        table=t, ends_with_last=True, rows=arrow_rows(id=[7], text=["x"])
                    ),
                    gateway_pb2.AddRequest(last=True),
                    gateway_pb2.AddRequest(rows=arrow_rows(id=[8], text=["y"])),
                ]
            ),
        ),
        INVALID,
        "after the one marked last",
        False,
    ),
    (
        "stream-ends-without-its-last",
        lambda t: (
            "AddStream",
            iter(
                [
                    gateway_pb2.AddRequest(
                        table=t, ends_with_last=True, rows=arrow_rows(id=[7], text=["x"])
                    ),
                    gateway_pb2.AddRequest(rows=arrow_rows(id=[8], text=["y"])),
                ]
            ),
        ),
        grpc.StatusCode.CANCELLED,
        "nothing was written",
        False,
    ),
    (
        "add-marked-last",
        lambda t: ("Add", gateway_pb2.AddRequest(table=t, last=True)),
        INVALID,
        "an Add is one message",
        False,
    ),
    (
        "ipc-duplicate-columns",
        lambda t: add(t, duplicate_columns()),
        INVALID,
        "two columns are named 'text'",
        False,
    ),
    (
        "json-nested-deep",
        lambda t: add(t, json_rows("[" * 100_000 + "]" * 100_000)),
        INVALID,
        "too deeply",
        False,
    ),
    (
        "stream-names-another-table",
        lambda t: (
            "AddStream",
            iter(
                [
                    gateway_pb2.AddRequest(table=t, rows=arrow_rows(id=[7], text=["x"])),
                    gateway_pb2.AddRequest(table="other", rows=arrow_rows(id=[8], text=["y"])),
                ]
            ),
        ),
        INVALID,
        "one table",
        False,
    ),
    (
        "index-name-escape",
        lambda t: (
            "CreateIndex",
            gateway_pb2.CreateIndexRequest(
                table=t, column="id", index_type=common_pb2.INDEX_TYPE_BTREE, index_name="../x"
            ),
        ),
        INVALID,
        "index name",
        False,
    ),
    (
        "binding-from-int-column",
        lambda t: new_table(t, [st_binding(source="id")]),
        INVALID,
        "source column 'id' is int64",
        False,
    ),
    (
        "two-bindings-one-vector-column",
        lambda t: new_table(t, [st_binding(), st_binding()]),
        INVALID,
        "two bindings write vector column 'vector'",
        False,
    ),
    (
        "binding-into-its-source",
        lambda t: new_table(t, [st_binding(vector="text")]),
        INVALID,
        "its own source",
        False,
    ),
]


@pytest.fixture(scope="module")
def small_stub(servers, stack) -> object:
    """A gateway with small message and row limits over the shared embedder and store."""
    from conftest import QUIET

    from embedsearch.v1 import gateway_pb2_grpc

    settings = GatewaySettings(
        embedder_addr=stack.embedder,
        store_addr=stack.store,
        **{**QUIET, "max_message_bytes": SMALL_MESSAGE_BYTES},
        max_rows_per_request=SMALL_MAX_ROWS,
    )
    address = servers.start(create_gateway, settings)
    return gateway_pb2_grpc.GatewayStub(
        grpc.insecure_channel(address, options=channel_options(64 << 20))
    )


@pytest.mark.parametrize(
    "build,code,fragment,small", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_request_is_refused_and_changes_nothing(
    gateway_stub, small_stub, table, build, code, fragment, small
):
    stub = small_stub if small else gateway_stub
    before = state(gateway_stub, table)
    names = gateway_stub.ListTables(gateway_pb2.ListTablesRequest()).names
    method, request = build(table)
    expect_code(code, lambda: getattr(stub, method)(request, timeout=60), fragment)
    assert state(gateway_stub, table) == before
    assert gateway_stub.ListTables(gateway_pb2.ListTablesRequest()).names == names
    assert len(CASES) >= 30


STREAMING_CLIENT = """
import sys, time, grpc
from helpers import arrow_rows
from embedsearch.v1 import gateway_pb2, gateway_pb2_grpc
stub = gateway_pb2_grpc.GatewayStub(grpc.insecure_channel(sys.argv[1]))
def requests():
    yield gateway_pb2.AddRequest(
        table=sys.argv[2], ends_with_last=True, rows=arrow_rows(id=[50], text=["first chunk"])
    )
    yield gateway_pb2.AddRequest(rows=arrow_rows(id=[51], text=["second chunk"]))
    print("sent", flush=True)
    time.sleep(600)  # killed here, before its message marked last
    yield gateway_pb2.AddRequest(last=True)
stub.AddStream(requests())
"""


def test_a_stream_whose_client_is_killed_mid_way_writes_nothing(stack, gateway_stub, table):
    """A killed client's stream ends, to the gateway, as a finished one does (measured with
    grpcio's asyncio server: the request iterator ends, the call is not yet cancelled). With
    ends_with_last its rows, which had reached the gateway, are not committed."""
    before = state(gateway_stub, table)
    tests = Path(__file__).parent
    client = subprocess.Popen(
        [sys.executable, "-c", STREAMING_CLIENT, stack.gateway, table],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent)])},
    )
    try:
        assert client.stdout is not None and client.stdout.readline().strip() == "sent"
        time.sleep(2.0)  # the two chunks reach the gateway and are embedded meanwhile
    finally:
        client.kill()
        client.wait(timeout=60)
    time.sleep(2.0)  # what the gateway does once the stream has ended
    assert state(gateway_stub, table) == before


def test_k_zero_means_the_default_and_an_empty_table_searches_to_nothing(gateway_stub, table_name):
    """Not errors: k=0 is proto3's unset, LanceDB's default limit of 10; an empty table
    answers every kind of query with no rows."""
    create_text_table(gateway_stub, table_name)
    for request in (
        gateway_pb2.SearchRequest(table=table_name, text="anything", k=0),
        gateway_pb2.SearchRequest(table=table_name, vector=pack_vectors([0.1] * 384)),
    ):
        reply = gateway_stub.Search(request)
        assert ipc_to_table(reply.rows.arrow_ipc).num_rows == 0


def test_unicode_edge_cases_are_good_text(gateway_stub, table):
    """Valid Unicode of every shape is embedded and stored as given, not refused."""
    texts = ["\u200b", "e\u0301", "👩‍👩‍👧‍👦", "\u202eabc", "日本語", "a\x00b", "\U0010ffff"]
    before = state(gateway_stub, table)
    gateway_stub.Add(
        gateway_pb2.AddRequest(
            table=table, rows=arrow_rows(id=list(range(10, 10 + len(texts))), text=texts)
        )
    )
    assert state(gateway_stub, table)[1] == before[1] + len(texts)
    reply = gateway_stub.Search(
        gateway_pb2.SearchRequest(table=table, text="日本語", k=50, columns=["text"])
    )
    assert set(texts) <= set(ipc_to_table(reply.rows.arrow_ipc).column("text").to_pylist())
