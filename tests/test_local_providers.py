"""Local-model providers on instances built in the test: Hugging Face AutoModel, entry points."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import QUIET
from helpers import expect_code, tiny_bert

from embedder_service.server import create_server as create_embedder
from embedder_service.settings import EmbedderSettings
from embedsearch.contract.convert import spec_to_pb
from embedsearch.v1 import embedder_pb2, embedder_pb2_grpc
from service_kit.launch import service_process

WORDS = [
    "the",
    "a",
    "vector",
    "search",
    "database",
    "embedding",
    "text",
    "query",
    "fast",
    "slow",
    "lance",
    "grpc",
    "model",
]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> str:
    """A 2-layer BERT with random (seeded) weights and a word-level vocabulary, saved to disk."""
    return tiny_bert(
        tmp_path_factory.mktemp("tiny-bert"), WORDS, num_hidden_layers=2, intermediate_size=64
    )


@pytest.fixture(scope="module")
def embedder(servers, tmp_path_factory):
    """An embedder that may open models under the test's temporary directories."""
    roots = str(tmp_path_factory.getbasetemp())
    settings = EmbedderSettings(**{**QUIET, "preload": "", "model_roots": roots})
    address = servers.start(create_embedder, settings)
    return embedder_pb2_grpc.EmbedderStub(grpc.insecure_channel(address))


def embed(stub, texts, **args):
    reply = stub.Embed(
        embedder_pb2.EmbedRequest(function=spec_to_pb("huggingface", args), texts=texts)
    )
    return np.frombuffer(reply.vectors, "<f4").reshape(reply.count, reply.ndims)


def test_huggingface_mean_pooling_on_a_tiny_bert(embedder, bert_dir):
    from transformers import AutoModel, AutoTokenizer

    texts = ["vector search", "the fast lance database", "grpc"]
    resolved = embedder.ResolveFunction(
        embedder_pb2.ResolveFunctionRequest(function=spec_to_pb("huggingface", {"name": bert_dir}))
    )
    assert resolved.ndims == 32

    together = embed(embedder, texts, name=bert_dir)
    alone = np.stack([embed(embedder, [t], name=bert_dir)[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)  # padding does not leak into the mean
    np.testing.assert_array_equal(embed(embedder, texts, name=bert_dir), together)

    tokenizer, model = (
        AutoTokenizer.from_pretrained(bert_dir),
        AutoModel.from_pretrained(bert_dir),
    )
    encoded = tokenizer([texts[1]], return_tensors="pt")
    expected = model(**encoded).last_hidden_state.mean(dim=1).detach().numpy()[0]
    np.testing.assert_allclose(together[1], expected, atol=1e-5)

    normalized = embed(embedder, texts, name=bert_dir, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1.0, atol=1e-5)


def test_huggingface_without_weights_says_which_arg_to_set(embedder, tmp_path):
    expect_code(
        grpc.StatusCode.FAILED_PRECONDITION,
        lambda: embed(embedder, ["x"]),
        "colbert-ir/colbertv2.0",
        "set name to a local directory",
    )
    absent = tmp_path / "absent"  # under --model-roots: tried, and reported as not loadable
    expect_code(
        grpc.StatusCode.FAILED_PRECONDITION,
        lambda: embed(embedder, ["x"], name=str(absent)),
        "cannot load model",
        "set name to a local directory",
    )


@pytest.mark.slow
def test_entry_point_plugin(tmp_path):
    """A provider published as an ``embedsearch.providers`` entry point by an installed package."""
    dist = tmp_path / "toy_ep-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-ep\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[embedsearch.providers]\ntoy-ep = toy_plugin:ToyHashEmbeddings\n"
    )
    plugins = Path(__file__).parent / "plugins"
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(plugins)])}
    with service_process("embedder_service", "--preload", "toy-ep", env=env) as (address, _):
        stub = embedder_pb2_grpc.EmbedderStub(grpc.insecure_channel(address))
        providers = stub.ListProviders(embedder_pb2.ListProvidersRequest()).providers
        assert "toy-ep" in [p.name for p in providers]
        reply = stub.Embed(
            embedder_pb2.EmbedRequest(function=spec_to_pb("toy-ep", {}), texts=["lance"])
        )
        assert (reply.count, reply.ndims) == (1, 16)
