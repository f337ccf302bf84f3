"""embedder_service over a real channel: provider registry, resolution and inference."""

from __future__ import annotations

import grpc
import numpy as np
from helpers import expect_code

from embedsearch.contract.convert import args_from_pb, spec_to_pb
from embedsearch.contract.wire import unpack_vectors
from embedsearch.v1 import common_pb2, embedder_pb2

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
