"""The cost of the embedder's OpenAI-compatible HTTP face, against its gRPC Embed, in one run.

One embedder process serves both (``--http-port``), with the query cache off so every request
runs the model. Same texts, same bundled model: (1) 64 concurrent clients each sending single
texts, over gRPC and then over HTTP (``POST /v1/embeddings``, base64 vectors as the stock
``openai`` client asks); (2) one client, one text at a time: p50 latency over each.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

import grpc
import httpx

from bench.common import emit, percentiles, service
from bench.corpus import docstring_paragraphs
from embedsearch.contract.convert import spec_to_pb
from embedsearch.v1 import embedder_pb2, embedder_pb2_grpc
from service_kit.launch import free_port

CLIENTS = 64
TEXTS = int(os.environ.get("BENCH_EMBED_TEXTS", "2048"))
LATENCY_QUERIES = 200
MODEL = "sentence-transformers/all-MiniLM-L6-v2"

Send = Callable[[str], Awaitable[object]]


async def _throughput(send: Send, texts: list[str]) -> float:
    queue = list(reversed(texts))

    async def client() -> None:
        while queue:
            await send(queue.pop())

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return len(texts) / (time.perf_counter() - start)


async def _latencies(send: Send, texts: list[str]) -> list[float]:
    samples = []
    for text in texts:
        start = time.perf_counter()
        await send(text)
        samples.append(time.perf_counter() - start)
    return samples


async def measure(address: str, http_url: str, texts: list[str]) -> dict[str, float]:
    spec = spec_to_pb("sentence-transformers", {"name": MODEL})
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with (
        grpc.aio.insecure_channel(address) as channel,
        httpx.AsyncClient(base_url=http_url, limits=limits, timeout=60) as http,
    ):
        stub = embedder_pb2_grpc.EmbedderStub(channel)

        async def over_grpc(text: str) -> object:
            return await stub.Embed(embedder_pb2.EmbedRequest(function=spec, texts=[text]))

        async def over_http(text: str) -> object:
            body = {"model": MODEL, "input": [text], "encoding_format": "base64"}
            answer = await http.post("/embeddings", json=body)
            answer.raise_for_status()
            return answer

        for send in (over_grpc, over_http):  # warm-up: model loaded, connections open
            await asyncio.gather(*(send(t) for t in texts[:CLIENTS]))
        queries = texts[:LATENCY_QUERIES]
        return {
            "grpc_tps": await _throughput(over_grpc, texts),
            "http_tps": await _throughput(over_http, texts),
            "grpc_p50": percentiles(await _latencies(over_grpc, queries))[0],
            "http_p50": percentiles(await _latencies(over_http, queries))[0],
        }


def run() -> None:
    texts = docstring_paragraphs(TEXTS)
    port = free_port()
    flags = ("--http-port", str(port), "--query-cache-size", "0")
    with service("embedder_service", *flags) as address:
        got = asyncio.run(measure(address, f"http://127.0.0.1:{port}/v1", texts))
    emit(
        "http_embeddings",
        f"throughput_{CLIENTS}_clients_http",
        got["http_tps"],
        "texts/s",
        f"same embedder over gRPC Embed, {CLIENTS} clients",
        got["grpc_tps"],
        lower_is_better=False,
    )
    emit(
        "http_embeddings",
        "latency_p50_one_text_http",
        got["http_p50"],
        "ms",
        "same embedder over gRPC Embed, one client",
        got["grpc_p50"],
        lower_is_better=True,
    )
