"""Cold start: health stays honest while the model loads, and the onnx backend never loads torch."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import ClassVar

import grpc
import numpy as np
import pytest
from conftest import QUIET
from grpc_health.v1 import health_pb2, health_pb2_grpc

from embedder_service.backends import BackendSettings, gpu_visible
from embedder_service.providers.sentence_transformers import SentenceTransformerEmbeddings
from embedder_service.server import create_server as create_embedder
from embedder_service.settings import EmbedderSettings
from embedsearch.contract.channels import wait_until_serving
from embedsearch.contract.convert import spec_to_pb
from embedsearch.contract.wire import unpack_vectors
from embedsearch.embeddings import TextEmbeddingFunction, register
from embedsearch.v1 import embedder_pb2, embedder_pb2_grpc
from service_kit.launch import service_process

pytestmark = pytest.mark.slow


@register("gated-load")
class GatedLoadEmbeddings(TextEmbeddingFunction):
    """A model whose load finishes only when the test opens :attr:`gate`."""

    gate: ClassVar[threading.Event] = threading.Event()

    def ndims(self) -> int:
        self.gate.wait(timeout=60)
        return 4

    def generate_embeddings(self, texts: list[str]) -> np.ndarray:
        return np.ones((len(texts), 4), dtype=np.float32)


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status


def test_not_serving_until_the_preload_is_loaded_and_early_calls_wait(servers):
    GatedLoadEmbeddings.gate.clear()
    settings = EmbedderSettings(**{**QUIET, "preload": "gated-load", "plugins": "test_cold_start"})
    address = servers.start(create_embedder, settings)
    try:
        # Listening already, so a probe gets an answer; but not ready, so no traffic yet.
        assert health(address) == health_pb2.HealthCheckResponse.NOT_SERVING
        with grpc.insecure_channel(address) as channel:
            early = embedder_pb2_grpc.EmbedderStub(channel).Embed.future(
                embedder_pb2.EmbedRequest(function=spec_to_pb("gated-load", {}), texts=["a"]),
                timeout=60,
            )
            assert not early.done()  # it joined the load in progress rather than failing
            assert health(address) == health_pb2.HealthCheckResponse.NOT_SERVING
            GatedLoadEmbeddings.gate.set()
            wait_until_serving(address, timeout=60)
            reply = early.result()
        assert unpack_vectors(reply.vectors, reply.ndims).tolist() == [[1.0] * 4]
    finally:
        GatedLoadEmbeddings.gate.set()


@pytest.mark.skipif(gpu_visible(), reason="on a GPU, the default backend is torch")
def test_the_default_embedder_serves_without_loading_torch():
    """On a CPU, with the export cached (the default cache, which the suite's embedders share),
    the embedder runs on onnxruntime, tokenizers and numpy alone: torch, the largest part of
    its start-up and of its memory, is never loaded."""
    exported = SentenceTransformerEmbeddings()
    exported.use_backend(BackendSettings())
    assert exported.on_onnx()
    with service_process("embedder_service") as (address, proc):
        with grpc.insecure_channel(address) as channel:
            reply = embedder_pb2_grpc.EmbedderStub(channel).Embed(
                embedder_pb2.EmbedRequest(
                    function=spec_to_pb("sentence-transformers", {}), texts=["hello world"]
                )
            )
        assert reply.ndims == 384
        libraries = Path(f"/proc/{proc.pid}/maps").read_text()
    assert "onnxruntime" in libraries
    assert "libtorch" not in libraries
