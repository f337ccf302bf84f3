"""Dynamic batching: merged across callers, sorted, deduplicated, bounded, cancellable."""

from __future__ import annotations

import asyncio
import math
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from conftest import QUIET
from helpers import expect_code
from pydantic import ValidationError

from embedder_service.batcher import Batcher, BatchLimits, BatchStats
from embedder_service.server import create_server as create_embedder
from embedder_service.settings import EmbedderSettings
from embedsearch.contract.channels import wait_until_serving
from embedsearch.contract.convert import spec_to_pb
from embedsearch.contract.errors import RETRY_AFTER_KEY, Overloaded
from embedsearch.contract.status import details_of
from embedsearch.v1 import common_pb2, embedder_pb2, embedder_pb2_grpc, gateway_pb2_grpc
from gateway.server import create_server as create_gateway
from gateway.settings import GatewaySettings
from service_kit.launch import free_port
from store_service.server import create_server as create_store
from store_service.settings import StoreSettings


class CountingRunner:
    """A provider double: vector = [len(text), batch number]; records every batch it runs."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[str]] = []
        self.delay_s = delay_s
        self.release = threading.Event()
        self.release.set()

    def prepare(self, mode, inputs):
        return [(text, len(text)) for text in inputs]

    def run(self, mode, payloads):
        self.release.wait()
        time.sleep(self.delay_s)
        self.batches.append(list(payloads))
        return np.array([[len(p), len(self.batches)] for p in payloads], dtype=np.float32)


def make_batcher(runner, stats=None, **limits):
    return Batcher(
        runner,
        BatchLimits(**{"max_wait_ms": 10, **limits}),
        ThreadPoolExecutor(2),
        ThreadPoolExecutor(1),
        on_batch=stats.append if stats is not None else None,
    )


async def call(batcher, texts, mode="source"):
    return await batcher.embed(mode, texts, list(texts))


def test_concurrent_callers_share_batches():
    async def main():
        runner = CountingRunner(delay_s=0.02)
        batcher = make_batcher(runner, max_batch_size=16)
        results = await asyncio.gather(*(call(batcher, [f"text {i}"]) for i in range(48)))
        return runner, results

    runner, results = asyncio.run(main())
    assert sum(len(b) for b in runner.batches) == 48
    assert len(runner.batches) <= 6  # 48 single-text callers, batches of up to 16
    assert all(r.shape == (1, 2) and r[0, 0] == len(f"text {i}") for i, r in enumerate(results))


def test_identical_inputs_are_computed_once_and_batches_are_sorted():
    async def main():
        runner = CountingRunner()
        runner.release.clear()
        stats: list[BatchStats] = []
        batcher = make_batcher(runner, stats, max_batch_size=64, padding_slack=10.0)
        first = asyncio.ensure_future(call(batcher, ["warm-up"]))
        await asyncio.sleep(0.05)  # the first batch holds the model; the rest queue up behind it
        texts = ["ccc", "a", "same", "bbbbbbb", "same", "dd", "same"]
        pending = asyncio.gather(*(call(batcher, [t]) for t in texts))
        await asyncio.sleep(0.05)
        runner.release.set()
        await first
        return runner, stats, await pending

    runner, stats, results = asyncio.run(main())
    batch = runner.batches[1]
    assert batch == sorted(set(batch), key=len)  # sorted by length, "same" once
    assert stats[1].size == 7 and stats[1].unique == 5
    assert [r[0, 0] for r in results] == [3, 1, 4, 7, 4, 2, 4]


def test_similar_lengths_are_batched_together_and_the_oldest_goes_first():
    async def main():
        runner = CountingRunner()
        runner.release.clear()
        batcher = make_batcher(runner, max_batch_size=64, padding_slack=0.3)
        first = asyncio.ensure_future(call(batcher, ["warm-up"]))
        await asyncio.sleep(0.05)
        texts = ["L" * 50, "s1", "L" * 51, "s2", "L" * 52, "s3"]
        pending = asyncio.gather(*(call(batcher, [t]) for t in texts))
        await asyncio.sleep(0.05)
        runner.release.set()
        await first
        await pending
        return runner

    runner = asyncio.run(main())
    # One padded batch of 6 would cost 52 x 6 = 312 tokens; two batches cost 6 + 153.
    assert runner.batches[1:] == [["L" * 50, "L" * 51, "L" * 52], ["s1", "s2", "s3"]]


def test_token_budget_splits_batches():
    async def main():
        runner = CountingRunner()
        batcher = make_batcher(runner, max_batch_size=100, max_batch_tokens=40)
        await asyncio.gather(*(call(batcher, ["x" * 10]) for _ in range(1)))
        await asyncio.gather(*(call(batcher, [f"{i:010d}"]) for i in range(12)))
        return runner

    runner = asyncio.run(main())
    assert all(len(b) * max(map(len, b)) <= 40 for b in runner.batches)


def test_full_queue_is_overloaded_at_once_and_cancelled_callers_leave():
    async def main():
        runner = CountingRunner()
        runner.release.clear()
        batcher = make_batcher(runner, max_queued_inputs=4, max_batch_size=1)
        running = asyncio.ensure_future(call(batcher, ["running"]))
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(call(batcher, ["a", "b", "c"]))
        await asyncio.sleep(0.05)
        # The runner is blocked, so only a refusal that does not wait can return in time.
        with pytest.raises(Overloaded) as refused:
            await asyncio.wait_for(call(batcher, ["d", "e"]), timeout=10)
        queued.cancel()
        await asyncio.sleep(0.01)
        depth_after_cancel = batcher.queued
        runner.release.set()
        await running
        return refused.value, depth_after_cancel, runner

    refused, depth, runner = asyncio.run(main())
    assert 0 < refused.retry_after_s <= 10
    assert depth == 0
    assert runner.batches == [["running"]]  # the cancelled request's inputs never ran


@pytest.fixture(scope="module")
def embedder_with_metrics(servers):
    metrics_port = free_port()
    settings = EmbedderSettings(**{**QUIET, "metrics_port": metrics_port})
    address = servers.start(create_embedder, settings)
    stub = embedder_pb2_grpc.EmbedderStub(grpc.insecure_channel(address))
    return stub, f"http://127.0.0.1:{metrics_port}/metrics"


def scrape(url):
    return urllib.request.urlopen(url, timeout=5).read().decode()


def metric(text, name):
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_server_batches_concurrent_requests(embedder_with_metrics):
    stub, url = embedder_with_metrics
    spec = spec_to_pb("sentence-transformers", {})
    before = scrape(url)
    futures = [
        stub.Embed.future(embedder_pb2.EmbedRequest(function=spec, texts=[f"sentence {i}"]))
        for i in range(64)
    ]
    replies = [f.result() for f in futures]
    after = scrape(url)
    assert all(r.count == 1 and r.ndims == 384 for r in replies)
    batches = metric(after, 'embedder_batch_size_count{provider="sentence-transformers"}') - metric(
        before, 'embedder_batch_size_count{provider="sentence-transformers"}'
    )
    assert 2 <= batches < 64 / 2  # merged: far fewer forward passes than requests
    assert 'embedder_queue_depth{provider="sentence-transformers"} 0.0' in after
    assert metric(after, "embedder_inference_seconds_count") > 0


def test_query_cache_hits(embedder_with_metrics):
    stub, url = embedder_with_metrics
    request = embedder_pb2.EmbedRequest(
        function=spec_to_pb("sentence-transformers", {}),
        texts=["a cached query", "a cached query"],
        mode=common_pb2.EMBED_MODE_QUERY,
    )
    before = scrape(url)
    first = stub.Embed(request)
    second = stub.Embed(request)
    after = scrape(url)
    assert first.vectors == second.vectors
    hits = 'embedder_query_cache_total{result="hit"}'
    misses = 'embedder_query_cache_total{result="miss"}'
    assert metric(after, misses) - metric(before, misses) == 2
    assert metric(after, hits) - metric(before, hits) == 2


def test_batch_limits_are_settings_with_flags_and_variables(monkeypatch):
    monkeypatch.setenv("EMBEDDER_MAX_BATCH_SIZE", "8")
    settings = EmbedderSettings.from_cli(["--max-wait-ms", "5", "--padding-slack", "1"])
    limits = settings.batch_limits  # what each batcher gets: the same values, built once
    assert isinstance(limits, BatchLimits) and limits is settings.batch_limits
    assert (limits.max_batch_size, limits.max_wait_s, limits.padding_slack) == (8, 0.005, 1.0)
    with pytest.raises(ValidationError) as refused:
        EmbedderSettings.from_cli(["--max-batch-size", "0"])
    explained = EmbedderSettings.explain(refused.value)
    assert "--max-batch-size (or EMBEDDER_MAX_BATCH_SIZE)" in explained


def test_padding_bound_follows_the_device_unless_set():
    unset = BatchLimits(max_batch_size=64)
    on_cpu, on_gpu = unset.for_device("cpu", 32), unset.for_device("cuda:0", 256)
    assert (on_cpu.padding_slack, on_cpu.max_batch_size) == (0.3, 32)
    assert (on_gpu.padding_slack, on_gpu.max_batch_size) == (math.inf, 64)
    assert BatchLimits(padding_slack=1.0).for_device("cuda", 32).padding_slack == 1.0


def test_plugin_module_provider(servers):
    settings = EmbedderSettings(**{**QUIET, "preload": "toy-hash", "plugins": "toy_plugin"})
    stub = embedder_pb2_grpc.EmbedderStub(
        grpc.insecure_channel(servers.start(create_embedder, settings))
    )
    names = [p.name for p in stub.ListProviders(embedder_pb2.ListProvidersRequest()).providers]
    assert "toy-hash" in names and "sentence-transformers" in names
    reply = stub.Embed(
        embedder_pb2.EmbedRequest(
            function=spec_to_pb("toy-hash", {"dims": 8}), texts=["a b", "b a"]
        )
    )
    vectors = np.frombuffer(reply.vectors, "<f4").reshape(2, 8)
    assert reply.ndims == 8 and np.allclose(vectors[0], vectors[1])


def test_missing_plugin_stops_start_up(servers):
    settings = EmbedderSettings(**{**QUIET, "plugins": "no_such_plugin_module"})
    with pytest.raises(Exception, match="no_such_plugin_module"):
        servers.start(create_embedder, settings)


def test_unknown_provider_preload_and_bad_modality(embedder_with_metrics):
    stub, _ = embedder_with_metrics
    request = embedder_pb2.EmbedRequest(
        function=spec_to_pb("sentence-transformers", {}),
        blobs=[embedder_pb2.Blob(data=b"\x89PNG", mime_type="image/png")],
    )
    expect_code(grpc.StatusCode.INVALID_ARGUMENT, lambda: stub.Embed(request), "text only")


def test_gateway_passes_backpressure_on_with_a_retry_after(servers, tmp_path):
    """Past the embedder's queue limit, callers of the gateway get RESOURCE_EXHAUSTED at once,
    reason OVERLOADED with a RetryInfo delay (and, for older clients, ``retry-after-ms``
    metadata), and admitted calls still finish."""
    embedder = servers.start(
        create_embedder,
        EmbedderSettings(
            **{**QUIET, "plugins": "toy_plugin", "max_queued_inputs": 2, "max_batch_size": 1}
        ),
    )
    store = servers.start(create_store, StoreSettings(**{**QUIET, "data_root": str(tmp_path)}))
    gateway = servers.start(
        create_gateway, GatewaySettings(**{**QUIET, "embedder_addr": embedder, "store_addr": store})
    )
    wait_until_serving(gateway, 60)
    request = embedder_pb2.EmbedRequest(
        function=spec_to_pb("toy-slow", {"delay_s": 0.5}), texts=["slow words"]
    )

    async def flood() -> list[grpc.aio.AioRpcError | None]:
        async with grpc.aio.insecure_channel(gateway) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)

            async def one() -> grpc.aio.AioRpcError | None:
                try:
                    await stub.GenerateEmbeddings(request, timeout=60)
                except grpc.aio.AioRpcError as err:
                    return err
                return None

            return await asyncio.gather(*(one() for _ in range(8)))

    outcomes = asyncio.run(flood())
    refused = [err for err in outcomes if err is not None]
    assert refused and len(refused) < len(outcomes)  # some admitted, the rest turned away
    for err in refused:
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
        details = details_of(err)
        assert details.reason == "OVERLOADED"
        assert 0 < details.retry_after_s <= 10
        hint = dict(err.trailing_metadata())[RETRY_AFTER_KEY]
        assert int(hint) == max(1, round(details.retry_after_s * 1000))
