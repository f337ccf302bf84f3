"""The embedder's OpenAI-compatible HTTP face (embedder_service/http_api.py), driven by the
official ``openai`` client, by LanceDB's own ``openai`` function and by LangChain's
OpenAI embeddings, against a real embedder whose gRPC ``Embed`` gives the expected vectors."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import openai
import pytest
from conftest import QUIET, Servers
from test_conformance_rerank import DOCS, build_cross_encoder

from embedder_service.providers.sentence_transformers import bundled_model_path
from embedder_service.server import HTTP_PORTS
from embedder_service.server import create_server as create_embedder
from embedder_service.settings import EmbedderSettings
from embedsearch.contract.channels import wait_until_serving
from embedsearch.contract.convert import spec_to_pb
from embedsearch.v1 import embedder_pb2, embedder_pb2_grpc

TOKEN, READ_ONLY = "sk-embedsearch-test", "sk-read-only"
MINI = "sentence-transformers/all-MiniLM-L6-v2"
TEXTS = ["a cat sat on the mat", "stock markets fell sharply", "the kitten purred"]
MAX_BODY = 256 << 10


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_cross_encoder(tmp_path_factory.mktemp("models") / "tiny-ce")


@pytest.fixture(scope="module")
def embedder(servers: Servers, cross_encoder: str) -> tuple[str, str]:
    """(gRPC address, HTTP base URL) of an embedder with its HTTP face on, tokens required."""
    settings = EmbedderSettings(
        **QUIET,
        http_port=0,
        auth_tokens=f"{TOKEN},{READ_ONLY}:ro",
        http_model_aliases=f"text-embedding-3-small={MINI}, mini-matryoshka={MINI}",
        http_matryoshka_models="mini-matryoshka",
        http_max_body_bytes=MAX_BODY,
        max_queued_inputs=64,
        model_roots=str(Path(cross_encoder).parent),
    )
    address = servers.start(create_embedder, settings)
    wait_until_serving(address, timeout=120)  # health answers without a token
    port = HTTP_PORTS[servers.started[-1]]
    return address, f"http://127.0.0.1:{port}/v1"


def client(base_url: str, key: str = TOKEN) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)


def grpc_vectors(address: str, texts: list[str], mode: int = 1) -> np.ndarray:
    stub = embedder_pb2_grpc.EmbedderStub(grpc.insecure_channel(address))
    reply = stub.Embed(
        embedder_pb2.EmbedRequest(
            function=spec_to_pb("sentence-transformers", {"name": MINI}), texts=texts, mode=mode
        ),
        metadata=(("authorization", f"Bearer {TOKEN}"),),
    )
    return np.frombuffer(reply.vectors, "<f4").reshape(reply.count, reply.ndims)


def token_count(texts: list[str]) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundled_model_path())
    return sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=256).input_ids)


def test_vectors_and_usage_match_grpc(embedder) -> None:
    """The stock client (which asks for base64 and decodes it) gets the gRPC Embed vectors,
    and usage counts the model's tokens."""
    address, base_url = embedder
    reply = client(base_url).embeddings.create(model=MINI, input=TEXTS)
    got = np.array([item.embedding for item in reply.data], dtype=np.float32)
    np.testing.assert_allclose(got, grpc_vectors(address, TEXTS), rtol=0, atol=1e-6)
    assert [item.index for item in reply.data] == [0, 1, 2]
    assert reply.model == MINI and reply.object == "list"
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == token_count(TEXTS)


def test_float_and_base64_encodings_agree(embedder) -> None:
    _, base_url = embedder
    headers = {"authorization": f"Bearer {TOKEN}"}
    answers = {
        fmt: httpx.post(
            f"{base_url}/embeddings",
            json={"model": "text-embedding-3-small", "input": "one", "encoding_format": fmt},
            headers=headers,
        ).json()
        for fmt in ("float", "base64")
    }
    as_float = np.array(answers["float"]["data"][0]["embedding"], dtype=np.float32)
    packed = base64.b64decode(answers["base64"]["data"][0]["embedding"])
    np.testing.assert_array_equal(np.frombuffer(packed, "<f4"), as_float)
    assert as_float.shape == (384,)


def test_input_type_query_embeds_as_a_query(embedder) -> None:
    address, base_url = embedder
    raw = httpx.post(
        f"{base_url}/embeddings",
        json={"model": MINI, "input": ["what purrs"], "input_type": "query"},
        headers={"authorization": f"Bearer {TOKEN}"},
    ).json()
    query = grpc_vectors(address, ["what purrs"], mode=2)
    np.testing.assert_allclose(raw["data"][0]["embedding"], query[0], atol=1e-6)


def test_dimensions(embedder) -> None:
    """A length equal to the model's is accepted anywhere; a shorter one only for a model the
    operator lists as Matryoshka: cut, and re-normalized as the model's vectors are."""
    _, base_url = embedder
    api = client(base_url)
    full = np.array(api.embeddings.create(model=MINI, input="x", dimensions=384).data[0].embedding)
    cut = api.embeddings.create(model="mini-matryoshka", input="x", dimensions=64).data[0]
    cut_vector = np.array(cut.embedding)
    assert cut_vector.shape == (64,)
    np.testing.assert_allclose(cut_vector, full[:64] / np.linalg.norm(full[:64]), atol=1e-6)
    with pytest.raises(openai.BadRequestError, match="no Matryoshka model"):
        api.embeddings.create(model=MINI, input="x", dimensions=64)
    with pytest.raises(openai.BadRequestError, match="more than"):
        api.embeddings.create(model="mini-matryoshka", input="x", dimensions=999)


def test_models_lists_aliases_and_providers(embedder) -> None:
    _, base_url = embedder
    ids = [model.id for model in client(base_url).models.list()]
    assert {"text-embedding-3-small", "mini-matryoshka", "sentence-transformers"} <= set(ids)
    assert any(i.startswith("sentence-transformers:") for i in ids)  # the loaded model


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"message", "type", "param", "code"} <= set(body["error"])
    return body["error"]


def test_errors_in_openai_shape(embedder) -> None:
    _, base_url = embedder
    api = client(base_url)
    with pytest.raises(openai.AuthenticationError):
        client(base_url, key="wrong").embeddings.create(model=MINI, input="x")
    no_token = httpx.post(f"{base_url}/embeddings", json={"model": MINI, "input": "x"})
    assert no_token.status_code == 401 and "Bearer" in error_of(no_token)["message"]
    with pytest.raises(openai.NotFoundError, match="cannot be served"):
        api.embeddings.create(model="no-such-org/no-such-model", input="x")
    with pytest.raises(openai.BadRequestError, match="token ids"):
        api.embeddings.create(model=MINI, input=[[1, 2, 3]])
    with pytest.raises(openai.BadRequestError, match="empty"):
        api.embeddings.create(model=MINI, input=[])
    headers = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    bad = httpx.post(f"{base_url}/embeddings", content=b"{not json", headers=headers)
    assert bad.status_code == 400 and error_of(bad)["type"] == "invalid_request_error"
    huge = json.dumps({"model": MINI, "input": "x" * MAX_BODY})
    too_large = httpx.post(f"{base_url}/embeddings", content=huge, headers=headers)
    assert (
        too_large.status_code == 413 and "--http-max-body-bytes" in error_of(too_large)["message"]
    )


def test_a_full_queue_answers_429_with_retry_after(embedder) -> None:
    """More inputs than the queue holds (--max-queued-inputs 64) are refused at once."""
    _, base_url = embedder
    answer = httpx.post(
        f"{base_url}/embeddings",
        json={"model": MINI, "input": [f"text {i}" for i in range(65)]},
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    assert answer.status_code == 429
    assert int(answer.headers["retry-after"]) >= 1
    assert error_of(answer)["type"] == "rate_limit_error"


def test_an_unreachable_provider_answers_503(embedder) -> None:
    """An API provider whose endpoint does not answer: UNAVAILABLE, so 503."""
    _, base_url = embedder
    answer = httpx.post(
        f"{base_url}/embeddings",
        json={"model": "ollama:nomic-embed-text", "input": "x"},
        headers={"authorization": f"Bearer {TOKEN}"},
        timeout=60,
    )
    assert answer.status_code == 503, answer.text
    assert error_of(answer)["type"] == "server_error"


def test_rerank(embedder, cross_encoder: str) -> None:
    """Cohere's and infinity's request and response shape; the scores are the gRPC Rerank's."""
    address, base_url = embedder
    stub = embedder_pb2_grpc.EmbedderStub(grpc.insecure_channel(address))
    expected = stub.Rerank(
        embedder_pb2.RerankRequest(
            reranker=spec_to_pb("cross-encoder", {"model_name": cross_encoder}),
            query="cats",
            documents=DOCS,
        ),
        metadata=(("authorization", f"Bearer {TOKEN}"),),
    ).scores
    answer = httpx.post(
        f"{base_url}/rerank",
        json={
            "model": f"cross-encoder:{cross_encoder}",
            "query": "cats",
            "documents": DOCS,
            "top_n": 3,
            "return_documents": True,
        },
        headers={"authorization": f"Bearer {READ_ONLY}"},
    )
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    order = np.argsort(-np.asarray(expected), kind="stable")[:3]
    assert [r["index"] for r in results] == order.tolist()
    np.testing.assert_allclose([r["relevance_score"] for r in results], np.asarray(expected)[order])
    assert [r["document"]["text"] for r in results] == [DOCS[i] for i in order]


def test_lancedb_openai_function_embeds_through_us(embedder, tmp_path: Path) -> None:
    """LanceDB's own ``openai`` function, given our base_url: its table's adds and searches
    embed through this embedder (an alias gives the OpenAI name LanceDB knows the length of)."""
    import lancedb
    from lancedb.embeddings import get_registry
    from lancedb.pydantic import LanceModel, Vector

    address, base_url = embedder
    registry = get_registry()
    registry.set_var("embedsearch_token", TOKEN)
    func = registry.get("openai").create(
        name="text-embedding-3-small", dim=384, base_url=base_url, api_key="$var:embedsearch_token"
    )

    class Doc(LanceModel):
        text: str = func.SourceField()
        vector: Vector(func.ndims()) = func.VectorField()  # type: ignore[valid-type]

    table = lancedb.connect(tmp_path).create_table("docs", schema=Doc)
    table.add([{"text": t} for t in TEXTS])
    stored = np.array(table.to_pandas()["vector"].tolist(), dtype=np.float32)
    np.testing.assert_allclose(stored, grpc_vectors(address, TEXTS), atol=1e-6)
    found = table.search("a small cat purring").limit(1).to_list()
    assert found[0]["text"] in (TEXTS[0], TEXTS[2])
    assert found[0]["_distance"] < 1.0


def test_langchain_openai_embeddings(embedder) -> None:
    """LangChain's OpenAIEmbeddings, told to send text (its default sends tiktoken ids, and
    tiktoken's tables are a download)."""
    from langchain_openai import OpenAIEmbeddings

    address, base_url = embedder
    embeddings = OpenAIEmbeddings(
        model=MINI, base_url=base_url, api_key=TOKEN, check_embedding_ctx_length=False
    )
    np.testing.assert_allclose(
        embeddings.embed_documents(TEXTS), grpc_vectors(address, TEXTS), atol=1e-6
    )


def test_through_embedsearch_up(tmp_path: Path) -> None:
    """The running stack as ``embedsearch up`` starts it: the HTTP API answers with the key it
    was given, and its vectors are the ones the gateway stores for the same texts."""
    import embedsearch
    from embedsearch.embeddings import get_registry as our_registry
    from service_kit.cli import running
    from service_kit.launch import free_port

    port = free_port()
    env = {"EMBEDSEARCH_API_KEY": "sk-up-key"}
    with running(str(tmp_path / "data"), env=env, http_port=port) as gateway:
        func = our_registry().get("sentence-transformers").create()
        db = embedsearch.connect(f"grpc://{gateway}")
        table = db.create_table(
            "docs",
            data=[{"text": t} for t in TEXTS],
            embedding_functions=[
                embedsearch.embeddings.EmbeddingFunctionConfig(
                    source_column="text", vector_column="vector", function=func
                )
            ],
        )
        stored = np.array(table.to_pandas()["vector"].tolist(), dtype=np.float32)
        api = client(f"http://127.0.0.1:{port}/v1", key="sk-up-key")
        reply = api.embeddings.create(model=MINI, input=TEXTS)
        np.testing.assert_allclose([d.embedding for d in reply.data], stored, atol=1e-6)
        with pytest.raises(openai.AuthenticationError):
            client(f"http://127.0.0.1:{port}/v1", key="nope").embeddings.create(
                model=MINI, input="x"
            )
