"""embedder_service over a real channel: provider registry, resolution and inference."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from conftest import QUIET
from helpers import expect_code
from toy_plugin import ToyCountedEmbeddings

from embedder_service.server import create_server as create_embedder
from embedder_service.settings import EmbedderSettings
from embedsearch.contract.convert import args_from_pb, spec_to_pb
from embedsearch.contract.wire import unpack_vectors
from embedsearch.v1 import common_pb2, embedder_pb2, embedder_pb2_grpc

TEXTS = ["Embeddings map text to vectors.", "Lance stores them on disk.", "ok", "é ✓ 漢字"]


def embed(stub, texts, mode=common_pb2.EMBED_MODE_SOURCE, **args):
    reply = stub.Embed(
        embedder_pb2.EmbedRequest(
            function=spec_to_pb("sentence-transformers", args), texts=texts, mode=mode
        )
    )
    return unpack_vectors(reply.vectors, reply.ndims)


def test_list_providers(embedder_stub):
    providers = {
        p.name: p
        for p in embedder_stub.ListProviders(embedder_pb2.ListProvidersRequest()).providers
    }
    st = providers["sentence-transformers"]
    assert common_pb2.MODALITY_TEXT in st.modalities
    assert {"name", "device", "normalize", "batch_size", "max_retries"} <= set(st.arguments)


def test_resolve_canonicalizes_to_the_bundled_model(embedder_stub, model_path):
    reply = embedder_stub.ResolveFunction(
        embedder_pb2.ResolveFunctionRequest(function=spec_to_pb("sentence-transformers", {}))
    )
    assert reply.ndims == 384
    assert args_from_pb(reply.canonical.args) == {"name": model_path}
    aliased = embedder_stub.ResolveFunction(
        embedder_pb2.ResolveFunctionRequest(
            function=spec_to_pb("sentence-transformers", {"name": "all-MiniLM-L6-v2"})
        )
    )
    assert aliased.ndims == 384


def test_vectors_match_sentence_transformers(embedder_stub, model_path):
    from sentence_transformers import SentenceTransformer

    expected = SentenceTransformer(model_path, device="cpu").encode(
        TEXTS, normalize_embeddings=True
    )
    got = embed(embedder_stub, TEXTS)
    cosine = (
        (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    )
    assert got.shape == (4, 384) and got.dtype == np.float32
    assert cosine.min() >= 0.9999
    small_batches = embed(embedder_stub, TEXTS, batch_size=1)  # another spec, same model output
    np.testing.assert_allclose(small_batches, got, atol=1e-5)


def test_bad_requests(embedder_stub):
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    expect_code(invalid, lambda: embed(embedder_stub, ["fine", ""]), "input 1", "empty")
    expect_code(invalid, lambda: embed(embedder_stub, ["x"], device_count=2), "device_count")
    expect_code(
        grpc.StatusCode.NOT_FOUND,
        lambda: embedder_stub.Embed(
            embedder_pb2.EmbedRequest(function=spec_to_pb("nope", {}), texts=["x"])
        ),
        "no embedding provider 'nope'",
    )
    expect_code(
        invalid,
        lambda: embedder_stub.Embed(embedder_pb2.EmbedRequest(texts=["x"])),
        "provider is required",
    )


def test_missing_weights_are_failed_precondition(embedder_stub):
    expect_code(
        grpc.StatusCode.FAILED_PRECONDITION,
        lambda: embed(embedder_stub, ["x"], name="no-such-org/no-such-model"),
        "no-such-org/no-such-model",
        "local model directory",
        "--model-roots",
    )


def test_a_path_outside_the_model_roots_is_refused(embedder_stub, tmp_path):
    """The shared stack sets no --model-roots: only the bundled model's directory is open."""
    expect_code(
        grpc.StatusCode.PERMISSION_DENIED,
        lambda: embed(embedder_stub, ["x"], name=str(tmp_path / "no-model-here")),
        "--model-roots",
    )


def test_stream_echoes_request_ids(embedder_stub):
    requests = [
        embedder_pb2.EmbedRequest(
            function=spec_to_pb("sentence-transformers", {}), texts=[f"text {i}"], request_id=str(i)
        )
        for i in range(5)
    ]
    replies = list(embedder_stub.EmbedStream(iter(requests)))
    assert sorted(r.request_id for r in replies) == [str(i) for i in range(5)]
    assert all(r.count == 1 and r.ndims == 384 for r in replies)


# -- a spec is validated and its secrets resolved once ----------------------------------------


@pytest.fixture(scope="module")
def counted_stub(servers) -> embedder_pb2_grpc.EmbedderStub:
    """An embedder with the toy plugins, keeping two specs validated (--function-cache-size)."""
    settings = EmbedderSettings(
        **{**QUIET, "preload": "", "plugins": "toy_plugin", "function_cache_size": 2}
    )
    return embedder_pb2_grpc.EmbedderStub(
        grpc.insecure_channel(servers.start(create_embedder, settings))
    )


def validations(tag: str) -> list[str]:
    """The api_key values toy-counted's validator saw for specs tagged ``tag``, in order."""
    return [key for seen, key in ToyCountedEmbeddings.validated if seen == tag]


def embed_counted(stub: embedder_pb2_grpc.EmbedderStub, **args: object) -> int:
    reply = stub.Embed(
        embedder_pb2.EmbedRequest(function=spec_to_pb("toy-counted", args), texts=["a b"])
    )
    return reply.ndims


def test_a_spec_is_validated_and_its_secrets_resolved_once(counted_stub, monkeypatch):
    monkeypatch.setenv("TOY_COUNTED_KEY", "first")
    spec = {"tag": "once", "api_key": "$env:TOY_COUNTED_KEY", "dims": 8}
    with ThreadPoolExecutor(8) as pool:  # first callers at once: still one validation
        assert set(pool.map(lambda _: embed_counted(counted_stub, **spec), range(8))) == {8}
    for _ in range(3):
        assert embed_counted(counted_stub, **spec) == 8
        resolved = counted_stub.ResolveFunction(
            embedder_pb2.ResolveFunctionRequest(function=spec_to_pb("toy-counted", spec))
        )
        assert args_from_pb(resolved.canonical.args)["api_key"] == "$env:TOY_COUNTED_KEY"
    assert validations("once") == ["first"]  # validated once, with the reference resolved
    # Resolved once means the value read then holds while the spec is in use (see EmbedderCore).
    monkeypatch.setenv("TOY_COUNTED_KEY", "second")
    assert embed_counted(counted_stub, **spec) == 8
    assert validations("once") == ["first"]


def test_a_failed_spec_is_not_kept(counted_stub, monkeypatch):
    monkeypatch.delenv("TOY_COUNTED_UNSET", raising=False)
    spec = {"tag": "unset", "api_key": "$env:TOY_COUNTED_UNSET"}
    failed = grpc.StatusCode.FAILED_PRECONDITION
    expect_code(failed, lambda: embed_counted(counted_stub, **spec))
    expect_code(failed, lambda: embed_counted(counted_stub, **spec))
    monkeypatch.setenv("TOY_COUNTED_UNSET", "now set")
    assert embed_counted(counted_stub, **spec) == 16
    assert validations("unset") == ["now set"]

    bad = {"tag": "bad", "api_key": "k", "dims": "many"}
    for _ in range(2):
        expect_code(grpc.StatusCode.INVALID_ARGUMENT, lambda: embed_counted(counted_stub, **bad))
    assert validations("bad") == ["k", "k"]  # refused each time, never kept as a success


def test_specs_beyond_the_function_cache_are_validated_again(counted_stub):
    first, second, third = ({"tag": "lru", "api_key": "k", "dims": d} for d in (4, 5, 6))
    for spec in (first, second, first, third, first, second):
        embed_counted(counted_stub, **spec)
    # Two specs kept: the third evicts the least recently used (second), which comes back.
    assert validations("lru") == ["k"] * 4
