"""Helpers shared by tests: building requests and asserting status codes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pyarrow as pa
import pytest

from embedsearch.contract.convert import spec_to_pb
from embedsearch.contract.wire import schema_to_ipc, table_to_ipc
from embedsearch.v1 import common_pb2, gateway_pb2


def st_binding(source: str = "text", vector: str = "vector") -> common_pb2.EmbeddingBinding:
    return common_pb2.EmbeddingBinding(
        function=spec_to_pb("sentence-transformers", {}), source_column=source, vector_column=vector
    )


def create_text_table(stub: Any, name: str) -> gateway_pb2.TableInfo:
    """A table with text -> vector through the bundled model, plus an id column."""
    schema = pa.schema([pa.field("id", pa.int64()), pa.field("text", pa.string())])
    return stub.CreateTable(
        gateway_pb2.CreateTableRequest(
            name=name, arrow_schema=schema_to_ipc(schema), bindings=[st_binding()]
        )
    )


def arrow_rows(**columns: list) -> common_pb2.RowData:
    return common_pb2.RowData(arrow_ipc=table_to_ipc(pa.table(columns)))


def expect_code(code: grpc.StatusCode, call: Callable[[], Any], *fragments: str) -> str:
    """Run ``call``; assert it fails with ``code`` and a message containing ``fragments``."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code, info.value.details()
    details = info.value.details()
    for fragment in fragments:
        assert fragment in details, details
    return details
