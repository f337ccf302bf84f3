"""The embedder's own Prometheus metrics: batches, queue, inference, providers, retries, cache."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from embedder_service.batcher import BatchStats
from service_kit.server import LATENCY_BUCKETS

SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768)


class EmbedderMetrics:
    """Created once per server, in the server's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.batch_size = Histogram(
            "embedder_batch_size",
            "Inputs per inference batch.",
            ["provider"],
            buckets=SIZE_BUCKETS,
            registry=registry,
        )
        self.batch_tokens = Histogram(
            "embedder_batch_tokens",
            "Padded tokens per inference batch.",
            ["provider"],
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self.duplicates = Counter(
            "embedder_batch_duplicate_inputs_total",
            "Inputs computed once for several identical inputs in one batch.",
            ["provider"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "embedder_queue_depth", "Inputs waiting for a batch.", ["provider"], registry=registry
        )
        self.queue_seconds = Histogram(
            "embedder_queue_seconds",
            "Time an input waited before its batch ran.",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inference_seconds = Histogram(
            "embedder_inference_seconds",
            "Time to compute one batch.",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.requests = Counter(
            "embedder_embed_requests_total",
            "Embed calls by provider and status code.",
            ["provider", "code"],
            registry=registry,
        )
        self.model_loads = Counter(
            "embedder_model_loads_total",
            "Models loaded (or tried): one per new function spec, by provider.",
            ["provider"],
            registry=registry,
        )
        self.inputs = Counter(
            "embedder_inputs_total",
            "Inputs embedded, by provider and mode.",
            ["provider", "mode"],
            registry=registry,
        )
        self.retries = Counter(
            "embedder_retries_total",
            "Retried provider API requests.",
            ["provider"],
            registry=registry,
        )
        self.cache = Counter(
            "embedder_query_cache_total",
            "Query-cache lookups by result (hit or miss).",
            ["result"],
            registry=registry,
        )

    def record_batch(self, provider: str, stats: BatchStats) -> None:
        self.batch_size.labels(provider).observe(stats.unique)
        self.batch_tokens.labels(provider).observe(stats.padded_tokens)
        self.duplicates.labels(provider).inc(stats.size - stats.unique)
        self.inference_seconds.labels(provider).observe(stats.inference_s)
        queue = self.queue_seconds.labels(provider)
        for waited in stats.queue_s:
            queue.observe(waited)
