"""OpenAI and Cohere through the embedder, with their official clients against local doubles."""

from __future__ import annotations

import urllib.request

import grpc
import numpy as np
import pytest
from api_doubles import CohereDouble, OpenAIDouble, fake_vector
from conftest import QUIET
from helpers import expect_code

from embedder_service.guards import check_endpoint
from embedder_service.server import create_server as create_embedder
from embedder_service.settings import EmbedderSettings
from embedsearch.contract.convert import args_from_pb, spec_to_pb
from embedsearch.contract.errors import PermissionDenied
from embedsearch.contract.wire import unpack_vectors
from embedsearch.v1 import common_pb2, embedder_pb2, embedder_pb2_grpc
from service_kit.launch import free_port

METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def embedder(servers):
    settings = EmbedderSettings(
        preload="", retry_base_s=0.001, **{**QUIET, "metrics_port": METRICS_PORT}
    )
    address = servers.start(create_embedder, settings)
    return embedder_pb2_grpc.EmbedderStub(grpc.insecure_channel(address))


def retries(provider: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5).read()
    prefix = f'embedder_retries_total{{provider="{provider}"}} '
    lines = [line for line in text.decode().splitlines() if line.startswith(prefix)]
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


@pytest.fixture
def openai_double():
    double = OpenAIDouble(ndims=8)
    yield double
    double.close()


@pytest.fixture
def cohere_double():
    double = CohereDouble(ndims=6)
    yield double
    double.close()


def embed(stub, provider, texts, mode=common_pb2.EMBED_MODE_SOURCE, **args):
    reply = stub.Embed(
        embedder_pb2.EmbedRequest(function=spec_to_pb(provider, args), texts=texts, mode=mode)
    )
    return unpack_vectors(reply.vectors, reply.ndims)


def test_openai_success_and_canonical_args(embedder, openai_double):
    args = {"base_url": openai_double.base_url, "api_key": "sk-literal-secret", "dim": 8}
    vectors = embed(embedder, "openai", ["hello", "world"], **args)
    np.testing.assert_allclose(vectors[1], fake_vector("world", 8), rtol=1e-6)
    assert openai_double.auth_headers[-1] == "Bearer sk-literal-secret"
    resolved = embedder.ResolveFunction(
        embedder_pb2.ResolveFunctionRequest(function=spec_to_pb("openai", args))
    )
    canonical = args_from_pb(resolved.canonical.args)
    assert "api_key" not in canonical  # a literal key is used, never echoed or persisted
    assert canonical["name"] == "text-embedding-ada-002" and resolved.ndims == 8
    assert "sk-literal-secret" not in str(resolved)


def test_openai_env_reference_is_kept_and_resolved(embedder, openai_double, monkeypatch):
    monkeypatch.setenv("TEST_OPENAI_KEY", "sk-from-env")
    args = {"base_url": openai_double.base_url, "api_key": "$env:TEST_OPENAI_KEY", "dim": 8}
    embed(embedder, "openai", ["x"], **args)
    assert openai_double.auth_headers[-1] == "Bearer sk-from-env"
    resolved = embedder.ResolveFunction(
        embedder_pb2.ResolveFunctionRequest(function=spec_to_pb("openai", args))
    )
    assert args_from_pb(resolved.canonical.args)["api_key"] == "$env:TEST_OPENAI_KEY"


def test_openai_429_then_success_is_retried(embedder, openai_double):
    before = retries("openai")
    openai_double.failures.extend([429, 429])
    vectors = embed(
        embedder, "openai", ["retry me"], base_url=openai_double.base_url, api_key="k", dim=8
    )
    assert vectors.shape == (1, 8)
    assert len(openai_double.requests) == 3
    assert retries("openai") - before == 2


def test_openai_500_past_max_retries_is_unavailable(embedder, openai_double):
    openai_double.failures.extend([500] * 10)
    args = {"base_url": openai_double.base_url, "api_key": "k", "dim": 8, "max_retries": 2}
    expect_code(
        grpc.StatusCode.UNAVAILABLE,
        lambda: embed(embedder, "openai", ["doomed"], **args),
        "500",
        "3 attempts",
    )
    assert len(openai_double.requests) == 3


def test_openai_401_and_400_are_not_retried(embedder, openai_double):
    args = {"base_url": openai_double.base_url, "api_key": "bad", "dim": 8}
    openai_double.failures.append(401)
    expect_code(
        grpc.StatusCode.UNAUTHENTICATED, lambda: embed(embedder, "openai", ["a"], **args), "401"
    )
    openai_double.failures.append(400)
    expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: embed(embedder, "openai", ["b"], **args),
        "injected 400",
    )
    assert len(openai_double.requests) == 2


def test_openai_splits_large_requests(embedder, openai_double):
    texts = [f"text number {i}" for i in range(25)]
    vectors = embed(
        embedder,
        "openai",
        texts,
        base_url=openai_double.base_url,
        api_key="k",
        dim=8,
        batch_size=10,
    )
    assert vectors.shape == (25, 8)
    assert sorted(len(r["input"]) for r in openai_double.requests) == [5, 10, 10]
    np.testing.assert_allclose(vectors[17], fake_vector("text number 17", 8), rtol=1e-6)


def test_empty_text_is_rejected_naming_the_row(embedder, openai_double):
    args = {"base_url": openai_double.base_url, "api_key": "k", "dim": 8}
    expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: embed(embedder, "openai", ["fine", " "], **args),
        "input 1",
    )
    assert openai_double.requests == []


def test_cohere_input_types(embedder, cohere_double):
    args = {"base_url": cohere_double.base_url, "api_key": "co-key", "dim": 6}
    source = embed(embedder, "cohere", ["doc"], **args)
    query = embed(embedder, "cohere", ["doc"], mode=common_pb2.EMBED_MODE_QUERY, **args)
    assert [r["input_type"] for r in cohere_double.requests] == ["search_document", "search_query"]
    np.testing.assert_allclose(source[0], fake_vector("doc", 6, "search_document"), rtol=1e-6)
    np.testing.assert_allclose(query[0], fake_vector("doc", 6, "search_query"), rtol=1e-6)
    assert cohere_double.auth_headers[0] == "Bearer co-key"


def test_cohere_retries_and_failures(embedder, cohere_double):
    args = {"base_url": cohere_double.base_url, "api_key": "k", "dim": 6, "max_retries": 1}
    cohere_double.failures.extend([503])
    assert embed(embedder, "cohere", ["ok"], **args).shape == (1, 6)
    cohere_double.failures.extend([500, 500])
    expect_code(grpc.StatusCode.UNAVAILABLE, lambda: embed(embedder, "cohere", ["no"], **args))
    cohere_double.failures.append(401)
    expect_code(grpc.StatusCode.UNAUTHENTICATED, lambda: embed(embedder, "cohere", ["no"], **args))
    assert len(cohere_double.requests) == 5  # 2 + 2 + 1: 401 is not retried


def test_held_keys_go_only_to_allowed_endpoints(servers, openai_double, monkeypatch):
    """A caller naming their own base_url must not receive a key the embedder holds: a
    `$env:` reference, or the OPENAI_API_KEY the client library would read by itself."""
    monkeypatch.setenv("TEST_OPENAI_KEY", "sk-held-by-the-embedder")
    settings = EmbedderSettings(**{**QUIET, "preload": "", "allowed_base_urls": ""})
    stub = embedder_pb2_grpc.EmbedderStub(
        grpc.insecure_channel(servers.start(create_embedder, settings))
    )
    before = len(openai_double.requests)

    def resolve(**args):
        spec = {"base_url": openai_double.base_url, "dim": 8, **args}
        return stub.ResolveFunction(
            embedder_pb2.ResolveFunctionRequest(function=spec_to_pb("openai", spec))
        )

    for held in ({"api_key": "$env:TEST_OPENAI_KEY"}, {"api_key": "$var:test_openai_key"}, {}):
        expect_code(
            grpc.StatusCode.PERMISSION_DENIED, lambda h=held: resolve(**h), "--allowed-base-urls"
        )
    assert len(openai_double.requests) == before, "no request reached the endpoint"
    assert resolve(api_key="sk-the-callers-own").ndims == 8


@pytest.mark.parametrize(
    "url,allowed",
    [
        ("http://127.0.0.1:8080/v1", True),
        ("http://127.0.0.1.evil.example/v1", False),
        ("https://127.0.0.1/v1", False),
        ("http://api.internal:9000/v1", True),
        ("http://api.internal:9001/v1", False),
        ("http://api.internal:9000/other", False),
    ],
)
def test_allowed_base_urls_match_scheme_host_port_and_path(url, allowed):
    rules = ("http://127.0.0.1", "http://api.internal:9000/v1")
    refused = False
    try:
        check_endpoint({"base_url": url, "api_key": "$env:K"}, rules)
    except PermissionDenied:
        refused = True
    assert refused != allowed


def test_vectors_of_another_length_than_declared_are_refused(embedder, openai_double):
    """The double answers 8 values; text-embedding-3-small declares 1536: nothing of that
    size reaches a table."""
    args = {"base_url": openai_double.base_url, "api_key": "sk-x", "name": "text-embedding-3-small"}
    with pytest.raises(grpc.RpcError) as failed:
        embed(embedder, "openai", ["hello"], **args)
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "8-dimensional" in failed.value.details() and "1536" in failed.value.details()
