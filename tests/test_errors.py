"""Typed errors on the wire: every error carries a google.rpc.Status whose ErrorInfo reason
rebuilds the same class, with its metadata, field violations and retry delay, across a hop
through the gateway and into the SDK; the reasons documented in common.proto are those
defined in errors.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import QUIET
from helpers import expect_code, reason_of
from prometheus_client import CollectorRegistry

import embedsearch
from embedder_service.settings import EmbedderSettings
from embedsearch import errors
from embedsearch.contract.channels import typed_errors
from embedsearch.contract.errors import ERRORS_BY_REASON, STATUS_CODES, EmbedsearchError
from embedsearch.v1 import common_pb2, embedder_pb2, embedder_pb2_grpc, gateway_pb2_grpc
from gateway.settings import GatewaySettings
from service_kit.server import RpcMetrics, new_server
from store_service.expressions import ExpressionLimits

COMMON_PROTO = (
    Path(__file__).resolve().parents[1] / "protos" / "embedsearch" / "v1" / "common.proto"
)
# A row of the reasons table in common.proto: "// REASON  STATUS_CODE  key, key" (or "-").
DOCUMENTED = re.compile(r"^// ([A-Z][A-Z_]+) +([A-Z][A-Z_]+) +(-|[a-z_]+(?:, [a-z_]+)*)$")


def test_the_reasons_documented_in_the_protos_are_those_errors_py_defines():
    rows = [DOCUMENTED.match(line) for line in COMMON_PROTO.read_text().splitlines()]
    documented = {m[1]: (m[2], () if m[3] == "-" else tuple(m[3].split(", "))) for m in rows if m}
    defined = {cls.reason: (code, cls.metadata_keys) for cls, code in STATUS_CODES.items()}
    assert documented == defined


def test_every_error_class_has_its_own_reason_and_a_status_code():
    classes = [
        cls
        for name in errors.__all__
        if isinstance(cls := getattr(errors, name), type) and issubclass(cls, EmbedsearchError)
    ]
    assert set(classes) - {EmbedsearchError} == set(STATUS_CODES)
    assert len(ERRORS_BY_REASON) == len(STATUS_CODES)
    for cls in STATUS_CODES:
        assert re.fullmatch(r"[A-Z]+(_[A-Z]+)*", cls.reason), cls
        assert grpc.StatusCode[STATUS_CODES[cls]], cls


def sample(cls: type[EmbedsearchError]) -> EmbedsearchError:
    """An instance of ``cls`` with every kind of detail set."""
    return cls(
        f"a {cls.__name__}: fix this",
        metadata={"table": "docs", "setting": "max_things"},
        field_violations=[("rows[0].text", "is empty"), ("k", "must be positive")],
        retry_after_s=0.25,
    )


class Raising(embedder_pb2_grpc.EmbedderServicer):
    """An embedder whose ResolveFunction raises the typed error named by the provider field,
    and whose ListProviders fails by a bug."""

    async def ResolveFunction(self, request: Any, context: Any) -> Any:
        raise sample(ERRORS_BY_REASON[request.function.provider])

    async def ListProviders(self, request: Any, context: Any) -> Any:
        raise RuntimeError("a bug")


@pytest.fixture(scope="module")
def raising(servers) -> str:
    async def create(settings: EmbedderSettings) -> tuple[grpc.aio.Server, int]:
        server, port, readiness = await new_server(
            settings,
            ["embedsearch.v1.Embedder"],
            lambda s: embedder_pb2_grpc.add_EmbedderServicer_to_server(Raising(), s),
            RpcMetrics("raising", CollectorRegistry()),
        )
        await readiness.set(True)
        return server, port

    return servers.start(create, EmbedderSettings(**QUIET))


@pytest.fixture(scope="module")
def gateway_to_raising(servers, stack, raising) -> str:
    """A real gateway whose embedder is the raising one."""
    from gateway.server import create_server

    return servers.start(
        create_server, GatewaySettings(embedder_addr=raising, store_addr=stack.store, **QUIET)
    )


def resolve(stub: Any, reason: str) -> Any:
    request = embedder_pb2.ResolveFunctionRequest(function=common_pb2.FunctionSpec(provider=reason))
    return stub.ResolveFunction(request, timeout=30)


@pytest.mark.parametrize("hops", ["direct", "through the gateway"])
@pytest.mark.parametrize("cls", list(STATUS_CODES), ids=lambda cls: cls.reason)
def test_each_error_comes_back_as_its_class_with_its_details(
    raising, gateway_to_raising, hops, cls
):
    address = raising if hops == "direct" else gateway_to_raising
    stub_class = (
        embedder_pb2_grpc.EmbedderStub if hops == "direct" else gateway_pb2_grpc.GatewayStub
    )
    stub = stub_class(grpc.insecure_channel(address))
    code = grpc.StatusCode[STATUS_CODES[cls]]
    expect_code(code, lambda: resolve(stub, cls.reason), "fix this", reason=cls.reason)

    with pytest.raises(EmbedsearchError) as raised, typed_errors("the peer"):
        resolve(stub, cls.reason)
    error, sent = raised.value, sample(cls)
    assert type(error) is cls and error.reason == cls.reason
    assert error.metadata == sent.metadata
    assert error.field_violations == sent.field_violations
    assert error.retry_after_s == pytest.approx(0.25)


@pytest.mark.parametrize("through_gateway", [False, True])
def test_an_unexpected_failure_is_internal_with_the_error_id_as_metadata(
    raising, gateway_to_raising, through_gateway
):
    stub_class = gateway_pb2_grpc.GatewayStub if through_gateway else embedder_pb2_grpc.EmbedderStub
    stub = stub_class(grpc.insecure_channel(gateway_to_raising if through_gateway else raising))
    with pytest.raises(errors.Internal) as raised, typed_errors("the peer"):
        stub.ListProviders(embedder_pb2.ListProvidersRequest(), timeout=30)
    error_id = raised.value.metadata["error_id"]
    assert re.fullmatch(r"[0-9a-f]{8}", error_id) and error_id in str(raised.value)


def test_a_missing_table_reaches_the_sdk_as_table_not_found_through_a_real_gateway(stack):
    db = embedsearch.connect(f"grpc://{stack.gateway}")
    with pytest.raises(embedsearch.errors.TableNotFound) as raised:
        db.open_table("no_such_table_here")
    assert raised.value.reason == "TABLE_NOT_FOUND"
    assert raised.value.metadata == {"table": "no_such_table_here"}
    assert raised.value.table == "no_such_table_here"


def test_an_existing_table_reaches_the_sdk_as_table_already_exists(stack, table_name):
    db = embedsearch.connect(f"grpc://{stack.gateway}")
    db.create_table(table_name, data=[{"id": 1}])
    with pytest.raises(embedsearch.errors.TableAlreadyExists) as raised:
        db.create_table(table_name, data=[{"id": 2}])
    assert raised.value.reason == "TABLE_ALREADY_EXISTS"
    assert raised.value.table == table_name


def test_an_undefined_enum_value_names_the_field_as_a_violation(stack):
    stub = embedder_pb2_grpc.EmbedderStub(grpc.insecure_channel(stack.embedder))
    request = embedder_pb2.EmbedRequest(texts=["x"], mode=99)
    with pytest.raises(grpc.RpcError) as raised:
        stub.Embed(request, timeout=30)
    assert reason_of(raised.value) == "INVALID_ARGUMENT"
    with pytest.raises(errors.InvalidArgument) as typed, typed_errors("embedder"):
        stub.Embed(request, timeout=30)
    [(field, description)] = typed.value.field_violations
    assert field == "mode" and "EMBED_MODE_QUERY" in description


def test_an_error_of_grpc_itself_falls_back_to_its_status_code():
    with grpc.insecure_channel("127.0.0.1:1") as channel:
        stub = embedder_pb2_grpc.EmbedderStub(channel)
        with pytest.raises(errors.Unavailable) as raised, typed_errors("embedder at 127.0.0.1:1"):
            stub.ListProviders(embedder_pb2.ListProvidersRequest(), timeout=5)
    assert raised.value.reason == "UNAVAILABLE" and raised.value.metadata == {}
    assert "embedder at 127.0.0.1:1 is unavailable" in str(raised.value)


@pytest.mark.parametrize(
    ("limits", "sql", "setting"),
    [
        ({"max_expression_bytes": 8}, "id = 123456789", "max_expression_bytes"),
        ({"max_expression_depth": 1}, "((id = 1))", "max_expression_depth"),
        ({"max_expression_run": 2}, "NOT NOT NOT true", "max_expression_run"),
        ({"max_expression_operators": 1}, "id = 1 AND id = 2", "max_expression_operators"),
    ],
)
def test_a_bound_the_request_went_over_is_named_as_metadata(limits, sql, setting):
    with pytest.raises(errors.InvalidArgument) as refused:
        ExpressionLimits(**limits).check(sql)
    assert refused.value.metadata == {"setting": setting}
