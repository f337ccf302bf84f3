"""Bad input gets the right status code and a message that says what to fix; nothing changes."""

from __future__ import annotations

import grpc
import pyarrow as pa
import pytest
from helpers import arrow_rows, create_text_table, expect_code, st_binding

import embedsearch
from embedsearch.local import free_port
from embedsearch.v1 import common_pb2, gateway_pb2
from embedsearch.wire import pack_vectors, schema_to_ipc
from gateway.server import create_server as create_gateway
from gateway.settings import GatewaySettings

NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID = grpc.StatusCode.INVALID_ARGUMENT


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
    expect_code(NOT_FOUND, lambda: getattr(gateway_stub, method)(request_), "'nope'")


def test_existing_table_is_already_exists(gateway_stub, table):
    before = state(gateway_stub, table)
    expect_code(
        grpc.StatusCode.ALREADY_EXISTS,
        lambda: create_text_table(gateway_stub, table),
        "already exists",
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
    from embedsearch.rpc.convert import spec_to_pb

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
    with pytest.raises(embedsearch.TableNotFound):
        db.open_table("nope")
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
    expect_code(grpc.StatusCode.UNAVAILABLE, lambda: stub.Add(request), "embedder")
    search = gateway_pb2.SearchRequest(table=table, text="hello")
    expect_code(grpc.StatusCode.UNAVAILABLE, lambda: stub.Search(search), "embedder")
    assert state(stub, table) == before


def gateway_pb2_grpc_stub(address: str):
    from embedsearch.v1 import gateway_pb2_grpc

    return gateway_pb2_grpc.GatewayStub(grpc.insecure_channel(address))
