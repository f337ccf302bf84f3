"""Ollama, Gemini, Jina, Voyage AI, Bedrock and watsonx through the embedder, each with its
official client (Jina: httpx, as LanceDB uses plain HTTP) against a local double of its API;
and instructor, which cannot run beside this sentence-transformers."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
from api_doubles import (
    ApiDouble,
    BedrockDouble,
    GeminiDouble,
    JinaDouble,
    OllamaDouble,
    VoyageDouble,
    WatsonxDouble,
    fake_vector,
)
from conftest import QUIET
from helpers import expect_code

from embedder_service.server import create_server as create_embedder
from embedder_service.settings import EmbedderSettings
from embedsearch.contract.convert import args_from_pb, spec_to_pb
from embedsearch.contract.wire import unpack_vectors
from embedsearch.v1 import common_pb2, embedder_pb2, embedder_pb2_grpc

# ibm-watsonx-ai caps pandas below 2.4, so `make install` leaves it out (its own extra).
HAS_WATSONX = importlib.util.find_spec("ibm_watsonx_ai") is not None
NO_WATSONX = "ibm-watsonx-ai is not installed: pip install '.[watsonx]'"
SOURCE, QUERY = common_pb2.EMBED_MODE_SOURCE, common_pb2.EMBED_MODE_QUERY
AWS = {"AWS_ACCESS_KEY_ID": "AKIDTESTDOUBLE", "AWS_SECRET_ACCESS_KEY": "secret-of-the-double"}


@pytest.fixture(scope="module")
def embedder(servers):
    settings = EmbedderSettings(
        **{
            **QUIET,
            "preload": "",
            "retry_base_s": 0.001,
            "allowed_base_urls": "http://127.0.0.1,https://127.0.0.1",
        }
    )
    return embedder_pb2_grpc.EmbedderStub(
        grpc.insecure_channel(servers.start(create_embedder, settings))
    )


@pytest.fixture(autouse=True)
def environment(monkeypatch):
    """The keys the embedder holds, by reference; no vendor default variable leaks in."""
    for name in ("GOOGLE_API_KEY", "GEMINI_API_KEY", "JINA_API_KEY", "VOYAGE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("OLLAMA_API_KEY", "WATSONX_API_KEY", "WATSONX_PROJECT_ID", "WATSONX_SPACE_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TEST_VENDOR_KEY", "key-from-env")
    for name, value in AWS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def embed(stub, provider, texts, mode=SOURCE, **args) -> np.ndarray:
    reply = stub.Embed(
        embedder_pb2.EmbedRequest(function=spec_to_pb(provider, args), texts=texts, mode=mode)
    )
    return unpack_vectors(reply.vectors, reply.ndims)


@dataclass
class Case:
    """One provider against its double: its arguments, what a recorded request embedded, the
    vector the double gives a source text, and how an unauthorised key is refused."""

    provider: str
    double: Callable[[], ApiDouble]
    args: Callable[[ApiDouble], dict[str, Any]]
    inputs: Callable[[dict[str, Any]], list[str]]
    vector: Callable[[str], list[float]]
    auth: Callable[[dict[str, str]], str]


def _watsonx_double() -> WatsonxDouble:
    return WatsonxDouble(ndims=384, api_key="key-from-env")  # slate-30m


CASES = {
    "ollama": Case(
        "ollama",
        lambda: OllamaDouble(ndims=8),
        lambda d: {"host": d.url, "api_key": "$env:TEST_VENDOR_KEY"},
        lambda body: body["input"],
        lambda text: fake_vector(text, 8),
        lambda headers: headers["authorization"],
    ),
    "gemini-text": Case(
        "gemini-text",
        lambda: GeminiDouble(),
        lambda d: {"base_url": d.url, "api_key": "$env:TEST_VENDOR_KEY", "dim": 8},
        lambda body: [r["content"]["parts"][-1]["text"] for r in body["requests"]],
        lambda text: fake_vector(f"Embedding of a document {text}", 8, "RETRIEVAL_DOCUMENT"),
        lambda headers: headers["x-goog-api-key"],
    ),
    "jina": Case(
        "jina",
        lambda: JinaDouble(ndims=768),  # jina-clip-v1
        lambda d: {"base_url": f"{d.url}/v1", "api_key": "$env:TEST_VENDOR_KEY"},
        lambda body: body["input"],
        lambda text: fake_vector(text, 768),
        lambda headers: headers["authorization"],
    ),
    "voyageai": Case(
        "voyageai",
        lambda: VoyageDouble(ndims=8),
        lambda d: {
            "name": "voyage-3.5",
            "output_dimension": 256,
            "base_url": f"{d.url}/v1",
            "api_key": "$env:TEST_VENDOR_KEY",
        },
        lambda body: body["input"],
        lambda text: fake_vector(text, 256, "document"),
        lambda headers: headers["authorization"],
    ),
    "bedrock-text": Case(
        "bedrock-text",
        lambda: BedrockDouble(ndims=1024),
        lambda d: {"name": "cohere.embed-english-v3", "endpoint_url": d.url},
        lambda body: body["texts"],
        lambda text: fake_vector(text, 1024, "search_document"),
        lambda headers: headers["authorization"],
    ),
    "watsonx": Case(
        "watsonx",
        _watsonx_double,
        lambda d: {
            "name": "ibm/slate-30m-english-rtrvr-v2",
            "url": d.url,
            "auth_url": f"{d.url}/identity/token",
            "project_id": "p-test",
            "api_key": "$env:TEST_VENDOR_KEY",
        },
        lambda body: body["inputs"],
        lambda text: fake_vector(text, 384),
        lambda headers: headers["authorization"],
    ),
}


def ready(stub, case: Case, double: ApiDouble, **extra: Any) -> dict[str, Any]:
    """The case's arguments, its function resolved (ollama asks its server for the vector
    size) and the double's records cleared: what follows is the embedding calls alone."""
    args = {**case.args(double), **extra}
    stub.ResolveFunction(
        embedder_pb2.ResolveFunctionRequest(function=spec_to_pb(case.provider, args))
    )
    for records in (double.requests, double.headers, double.paths, double.auth_headers):
        records.clear()
    return args


@pytest.fixture(params=sorted(CASES))
def case(request, monkeypatch):
    if request.param == "watsonx" and not HAS_WATSONX:
        pytest.skip(NO_WATSONX)
    case = CASES[request.param]
    double = case.double()
    if double.ca_file:  # watsonx speaks HTTPS only: the embedder trusts the double's CA
        monkeypatch.setenv("SSL_CERT_FILE", double.ca_file)
    yield case, double
    double.close()


def test_vectors_and_request(embedder, case):
    case, double = case
    vectors = embed(embedder, case.provider, ["alpha", "beta"], **ready(embedder, case, double))
    texts = [text for body in double.requests for text in case.inputs(body)]
    assert texts == ["alpha", "beta"]
    np.testing.assert_allclose(vectors[0], case.vector("alpha"), rtol=1e-6)
    np.testing.assert_allclose(vectors[1], case.vector("beta"), rtol=1e-6)


def test_splits_by_batch_size(embedder, case):
    case, double = case
    texts = [f"text number {i}" for i in range(25)]
    args = ready(embedder, case, double, batch_size=10)
    vectors = embed(embedder, case.provider, texts, **args)
    assert sorted(len(case.inputs(body)) for body in double.requests) == [5, 10, 10]
    np.testing.assert_allclose(vectors[17], case.vector("text number 17"), rtol=1e-6)


def test_429_then_success_is_retried(embedder, case):
    case, double = case
    args = ready(embedder, case, double)
    double.failures.extend([429, 429])
    vectors = embed(embedder, case.provider, ["retry me"], **args)
    np.testing.assert_allclose(vectors[0], case.vector("retry me"), rtol=1e-6)
    assert len(double.requests) == 3


def test_5xx_past_max_retries_is_unavailable(embedder, case):
    case, double = case
    args = ready(embedder, case, double, max_retries=1)
    double.failures.extend([503] * 5)
    expect_code(grpc.StatusCode.UNAVAILABLE, lambda: embed(embedder, case.provider, ["x"], **args))
    assert len(double.requests) == 2


def test_400_and_401_are_not_retried(embedder, case):
    case, double = case
    args = ready(embedder, case, double)
    double.failures.append(400)
    expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: embed(embedder, case.provider, ["bad input"], **args),
        "injected 400",
    )
    double.failures.append(401)
    expect_code(
        grpc.StatusCode.UNAUTHENTICATED,
        lambda: embed(embedder, case.provider, ["bad key"], **args),
    )
    assert len(double.requests) == 2


def test_credentials_come_from_the_reference(embedder, case):
    case, double = case
    embed(embedder, case.provider, ["who am i"], **ready(embedder, case, double))
    header = case.auth(double.headers[0])
    if case.provider == "bedrock-text":  # SigV4, signed with the embedder's AWS credentials
        assert header.startswith(f"AWS4-HMAC-SHA256 Credential={AWS['AWS_ACCESS_KEY_ID']}/")
    elif case.provider == "watsonx":  # the key buys an IAM token, which the calls carry
        assert double.other_requests[0] == "/identity/token"
        assert header == f"Bearer {double.token}"
    elif case.provider == "gemini-text":
        assert header == "key-from-env"
    else:
        assert header == "Bearer key-from-env"


@pytest.mark.parametrize("provider", ["gemini-text", "jina", "voyageai", "watsonx"])
def test_missing_key_is_unauthenticated(embedder, provider, monkeypatch):
    if provider == "watsonx" and not HAS_WATSONX:
        pytest.skip(NO_WATSONX)
    case = CASES[provider]
    double = case.double()
    try:
        if double.ca_file:
            monkeypatch.setenv("SSL_CERT_FILE", double.ca_file)
        args = {key: value for key, value in case.args(double).items() if key != "api_key"}
        variable = {"gemini-text": "GOOGLE_API_KEY", "jina": "JINA_API_KEY"}.get(
            provider, f"{provider.upper().removesuffix('AI')}_API_KEY"
        )
        expect_code(
            grpc.StatusCode.UNAUTHENTICATED,
            lambda: embed(embedder, provider, ["no key"], **args),
            "api_key='$env:",
            variable,
        )
        assert double.requests == []
    finally:
        double.close()


def test_query_and_source_modes(embedder):
    """Each provider marks queries and documents as LanceDB does."""
    gemini = GeminiDouble()
    try:
        args = CASES["gemini-text"].args(gemini)
        embed(embedder, "gemini-text", ["the doc"], **args)
        query = embed(embedder, "gemini-text", ["the query"], QUERY, **args)
        source_request, query_request = (body["requests"][0] for body in gemini.requests)
        assert source_request["taskType"] == "RETRIEVAL_DOCUMENT"
        assert source_request["content"]["parts"][0] == {"text": "Embedding of a document"}
        assert query_request["taskType"] == "RETRIEVAL_QUERY"
        assert query_request["content"]["parts"] == [{"text": "the query"}]
        assert source_request["outputDimensionality"] == 8
        assert source_request["model"] == "models/gemini-embedding-001"
        np.testing.assert_allclose(query[0], fake_vector("the query", 8, "RETRIEVAL_QUERY"))
    finally:
        gemini.close()

    voyage = VoyageDouble()
    try:
        args = CASES["voyageai"].args(voyage)
        embed(embedder, "voyageai", ["the doc"], **args)
        query = embed(embedder, "voyageai", ["a voyage query"], QUERY, **args)
        assert [b["input_type"] for b in voyage.requests] == ["document", "query"]
        assert {b["model"] for b in voyage.requests} == {"voyage-3.5"}
        np.testing.assert_allclose(query[0], fake_vector("a voyage query", 256, "query"), rtol=1e-6)
    finally:
        voyage.close()

    jina = JinaDouble(ndims=768)
    try:
        args = CASES["jina"].args(jina)
        embed(embedder, "jina", ["plain"], **args)  # LanceDB sends no task
        tasks = {"query_task": "retrieval.query", "source_task": "retrieval.passage"}
        embed(embedder, "jina", ["the doc"], **args, **tasks)
        embed(embedder, "jina", ["a jina query"], QUERY, **args, **tasks)
        assert [b.get("task") for b in jina.requests] == [
            None,
            "retrieval.passage",
            "retrieval.query",
        ]
        assert {b["model"] for b in jina.requests} == {"jina-clip-v1"}
    finally:
        jina.close()

    bedrock = BedrockDouble(ndims=1024)
    try:
        args = CASES["bedrock-text"].args(bedrock)
        embed(embedder, "bedrock-text", ["the doc"], **args)
        query = embed(embedder, "bedrock-text", ["a bedrock query"], QUERY, **args)
        assert [b["input_type"] for b in bedrock.requests] == ["search_document", "search_query"]
        assert bedrock.paths[0] == "/model/cohere.embed-english-v3/invoke"
        np.testing.assert_allclose(query[0], fake_vector("a bedrock query", 1024, "search_query"))
    finally:
        bedrock.close()


def test_bedrock_titan_takes_one_text_per_call(embedder):
    double = BedrockDouble(ndims=1536)  # amazon.titan-embed-text-v1
    try:
        texts = ["one", "two", "three"]
        vectors = embed(embedder, "bedrock-text", texts, endpoint_url=double.url)
        assert sorted(body["inputText"] for body in double.requests) == sorted(texts)
        assert set(double.paths) == {"/model/amazon.titan-embed-text-v1/invoke"}
        np.testing.assert_allclose(vectors[2], fake_vector("three", 1536), rtol=1e-6)
    finally:
        double.close()


def test_ollama_request_and_probed_ndims(embedder):
    double = OllamaDouble(ndims=8)
    try:
        args = {"host": double.url, "name": "mxbai-embed-large", "keep_alive": "5m"}
        resolved = embedder.ResolveFunction(
            embedder_pb2.ResolveFunctionRequest(function=spec_to_pb("ollama", args))
        )
        assert resolved.ndims == 8  # asked of the server, as LanceDB does
        assert double.requests[0] == {
            "model": "mxbai-embed-large",
            "input": ["ndims probe"],
            "keep_alive": "5m",
        }
        assert "authorization" not in double.headers[0]
    finally:
        double.close()


@pytest.mark.skipif(not HAS_WATSONX, reason=NO_WATSONX)
def test_watsonx_sends_project_and_model(embedder, monkeypatch):
    double = _watsonx_double()
    monkeypatch.setenv("SSL_CERT_FILE", double.ca_file)
    try:
        args = CASES["watsonx"].args(double)
        embed(embedder, "watsonx", ["ibm text"], **args)
        body = double.requests[0]
        assert body["model_id"] == "ibm/slate-30m-english-rtrvr-v2"
        assert body["project_id"] == "p-test" and body["inputs"] == ["ibm text"]
        assert "/v2/projects/p-test" in double.other_requests
        resolved = embedder.ResolveFunction(
            embedder_pb2.ResolveFunctionRequest(function=spec_to_pb("watsonx", args))
        )
        assert resolved.ndims == 384  # LanceDB's table: no call needed
        assert args_from_pb(resolved.canonical.args)["api_key"] == "$env:TEST_VENDOR_KEY"
    finally:
        double.close()


@pytest.mark.parametrize(
    "provider,endpoint",
    [
        ("ollama", "host"),
        ("watsonx", "url"),
        ("watsonx", "auth_url"),
        ("bedrock-text", "endpoint_url"),
        ("jina", "base_url"),
    ],
)
def test_held_credentials_go_only_to_allowed_endpoints(servers, provider, endpoint):
    """A caller's own endpoint must not receive a key or AWS signature the embedder holds."""
    settings = EmbedderSettings(**{**QUIET, "preload": "", "allowed_base_urls": ""})
    stub = embedder_pb2_grpc.EmbedderStub(
        grpc.insecure_channel(servers.start(create_embedder, settings))
    )
    args = {endpoint: "http://127.0.0.1:9/elsewhere", "project_id": "p"}
    if provider != "bedrock-text":
        args["api_key"] = "$env:TEST_VENDOR_KEY"
    args = {k: v for k, v in args.items() if k != "project_id" or provider == "watsonx"}
    expect_code(
        grpc.StatusCode.PERMISSION_DENIED,
        lambda: embed(stub, provider, ["x"], **args),
        endpoint,
        "--allowed-base-urls",
    )


@pytest.mark.skipif(HAS_WATSONX, reason="ibm-watsonx-ai is installed")
def test_watsonx_without_its_client_names_the_package(embedder):
    expect_code(
        grpc.StatusCode.FAILED_PRECONDITION,
        lambda: embed(embedder, "watsonx", ["x"], api_key="k", project_id="p"),
        "ibm-watsonx-ai",
        "embedsearch[watsonx]",
    )


def test_known_ndims_without_a_call(embedder):
    for provider, args, ndims in [
        ("gemini-text", {}, 768),
        ("jina", {}, 768),
        ("voyageai", {"name": "voyage-code-2"}, 1536),
        ("voyageai", {"name": "voyage-3-lite"}, 512),
        ("bedrock-text", {}, 1536),
        ("bedrock-text", {"name": "amazon.titan-embed-text-v2:0"}, 1024),
        ("watsonx", {}, 768),
    ]:
        # An unreachable endpoint: ResolveFunction must not need it.
        resolved = embedder.ResolveFunction(
            embedder_pb2.ResolveFunctionRequest(
                function=spec_to_pb(provider, {**args, "api_key": "literal"})
                if provider != "bedrock-text"
                else spec_to_pb(provider, args)
            )
        )
        assert resolved.ndims == ndims, provider


def test_voyage_multimodal_models_are_refused(embedder):
    expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: embed(embedder, "voyageai", ["x"], name="voyage-multimodal-3", api_key="k"),
        "multimodal",
    )


def test_instructor_answers_failed_precondition_naming_what_is_missing(embedder):
    """InstructorEmbedding 1.0.1 is written for sentence-transformers 2.2; with the installed
    one it would load a model without its instruction masking and fail on encode."""
    message = expect_code(
        grpc.StatusCode.FAILED_PRECONDITION,
        lambda: embed(embedder, "instructor", ["x"], name="hkunlp/instructor-base"),
        "InstructorEmbedding",
        "sentence-transformers",
    )
    assert "2.2" in message


def test_providers_are_listed(embedder):
    listed = {
        p.name: p for p in embedder.ListProviders(embedder_pb2.ListProvidersRequest()).providers
    }
    for name in ("ollama", "instructor", "gemini-text", "jina", "voyageai", "bedrock-text"):
        assert name in listed
    assert listed["watsonx"].kind == "api" and "project_id" in listed["watsonx"].arguments
    assert "host" in listed["ollama"].arguments
