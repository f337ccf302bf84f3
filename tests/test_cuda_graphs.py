"""The forward pass from CUDA graphs: buckets, padding, and vectors equal to the eager pass.

What a CPU can check runs everywhere: the buckets' padded inputs, run eagerly, give each input
the eager pass's vector. Capturing and replaying graphs runs only where torch sees a GPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from embedder_service.backends import BackendSettings
from embedder_service.backends.cuda_graphs import SHORTEST, bucket
from embedder_service.providers.sentence_transformers import SentenceTransformerEmbeddings
from embedder_service.settings import EmbedderSettings

TEXTS = [
    "a",
    "the quick brown fox jumps over the lazy dog",
    "Lance is a columnar format for machine learning data, with fast random access. " * 3,
    "an embedding maps a text to a point so that near points mean near things",
    "word " * 400,  # truncated at the model's max length
    "vector search",
    "IVF partitions the vectors; PQ compresses each one into a few bytes",
]


@pytest.fixture(scope="module")
def pipeline() -> Any:
    """The torch pipeline the graphs wrap (on a CPU, the default backend would be ONNX's)."""
    function = SentenceTransformerEmbeddings(device="cpu")
    function.use_backend(BackendSettings(backend="torch"))
    return function.pipeline()


def prepared(pipeline: Any, count: int) -> list[Any]:
    texts = (TEXTS * (count // len(TEXTS) + 1))[:count]
    return [payload for payload, _ in pipeline.prepare("source", texts)]


def test_buckets_are_powers_of_two_within_limits() -> None:
    assert [bucket(n, 1, 64) for n in (1, 2, 3, 5, 33, 64)] == [1, 2, 4, 8, 64, 64]
    assert [bucket(n, SHORTEST, 256) for n in (1, 16, 17, 100, 200, 256)] == [
        16,
        16,
        32,
        128,
        256,
        256,
    ]
    assert bucket(300, SHORTEST, 384) == 384  # a limit that is no power of two caps the bucket


@pytest.mark.parametrize("count", [1, 3, 7, 16, 20])
def test_padded_buckets_give_the_eager_vectors(pipeline: Any, count: int) -> None:
    payloads = prepared(pipeline, count)
    pipeline.graphed = None
    eager = pipeline.run("source", payloads)
    pipeline.use_graphs(32, capture=False)
    try:
        padded = pipeline.run("source", payloads)
        [(rows, length, _)] = pipeline.graphed._graphs
    finally:
        pipeline.graphed = None
    assert padded.shape == eager.shape
    assert rows == bucket(count, 1, 32) and rows >= count
    longest = max(len(p["input_ids"]) for p in payloads)
    assert length == bucket(longest, SHORTEST, pipeline.max_length) and length >= longest
    np.testing.assert_allclose(padded, eager, atol=2e-5)


def test_what_no_bucket_holds_runs_eagerly(pipeline: Any) -> None:
    pipeline.use_graphs(4, capture=False)
    try:
        graphed = pipeline.graphed
        assert graphed(prepared(pipeline, 5)) is None  # more inputs than the largest bucket
        payload = prepared(pipeline, 1)[0]
        odd = {**payload, "special_tokens_mask": [0] * len(payload["input_ids"])}
        assert graphed([odd]) is None  # a feature no bucket pads
        eager = pipeline.run("source", prepared(pipeline, 5))
        assert eager.shape == (5, 384) and not graphed._graphs
    finally:
        pipeline.graphed = None


def test_graphs_are_a_server_flag_on_by_default() -> None:
    assert BackendSettings().cuda_graphs
    settings = EmbedderSettings.from_cli(["--cuda-graphs", "false"])
    assert not settings.inference_backend.cuda_graphs


def test_a_cpu_model_is_never_graphed() -> None:
    function = SentenceTransformerEmbeddings(device="cpu")
    function.use_backend(BackendSettings(backend="torch", cuda_graphs=True))
    assert function.pipeline().graphed is None


def cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@pytest.mark.skipif(not cuda(), reason="capturing CUDA graphs needs a GPU")
def test_captured_graphs_give_the_eager_vectors_on_a_gpu() -> None:
    function = SentenceTransformerEmbeddings(device="cuda")
    function.use_backend(BackendSettings(cuda_graphs=True))
    pipeline = function.pipeline()
    graphed = pipeline.graphed
    assert graphed is not None
    for count in (1, 5, 20, 32):
        payloads = prepared(pipeline, count)
        pipeline.graphed = None
        eager = pipeline.run("source", payloads)
        pipeline.graphed = graphed
        replayed = pipeline.run("source", payloads)
        replayed_again = pipeline.run("source", payloads)  # a replay, not a capture
        assert not graphed.broken
        # fp16 on the GPU: the same vectors up to rounding, normalized in fp32
        np.testing.assert_allclose(np.linalg.norm(replayed, axis=1), 1.0, atol=1e-5)
        cosine = (eager.astype(np.float64) * replayed).sum(axis=1) / np.linalg.norm(eager, axis=1)
        assert cosine.min() > 0.9999, cosine
        np.testing.assert_array_equal(replayed, replayed_again)
    assert len(graphed._graphs) >= 3
