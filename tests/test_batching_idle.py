"""An idle batcher runs a lone input at once: tokenized and run in one hop on the inference
thread; what arrives meanwhile still queues and batches."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from embedder_service.batcher import Batcher, BatchLimits, BatchStats
from embedsearch.contract.errors import InvalidArgument


class ThreadRecordingRunner:
    """Records the thread of each step and each batch; holds batches until released."""

    def __init__(self) -> None:
        self.threads: list[tuple[str, str]] = []
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.release.set()

    def prepare(self, mode, inputs):
        self.threads.append(("prepare", threading.current_thread().name))
        if "bad" in inputs:
            raise InvalidArgument("a bad input")
        return [(text, len(text)) for text in inputs]

    def run(self, mode, payloads):
        self.threads.append(("run", threading.current_thread().name))
        self.release.wait()
        self.batches.append(list(payloads))
        return np.array([[len(p)] for p in payloads], dtype=np.float32)


def make_batcher(runner, stats=None, **limits):
    return Batcher(
        runner,
        BatchLimits(**limits),
        ThreadPoolExecutor(2, thread_name_prefix="tokenize"),
        ThreadPoolExecutor(1, thread_name_prefix="infer"),
        on_batch=stats.append if stats is not None else None,
    )


def test_a_lone_input_is_tokenized_and_run_on_the_inference_thread():
    runner, stats = ThreadRecordingRunner(), []

    async def main():
        batcher = make_batcher(runner, stats)
        return await batcher.embed("query", ["kitten"], ["kitten"])

    vectors = asyncio.run(main())
    assert vectors.tolist() == [[6.0]] and vectors.dtype == np.float32
    assert [step for step, _ in runner.threads] == ["prepare", "run"]
    assert {thread.split("_")[0] for _, thread in runner.threads} == {"infer"}
    assert len(stats) == 1 and isinstance(stats[0], BatchStats)
    assert (stats[0].size, stats[0].unique, stats[0].padded_tokens) == (1, 1, 6)


def test_what_arrives_while_it_runs_queues_and_batches_after_it():
    runner = ThreadRecordingRunner()
    runner.release.clear()

    async def main():
        batcher = make_batcher(runner)
        first = asyncio.ensure_future(batcher.embed("query", ["first"], ["first"]))
        while not runner.threads:  # the lone input holds the model
            await asyncio.sleep(0.01)
        texts = ["bb", "aa", "cc"]  # one length: no padding to split them over
        rest = asyncio.gather(*(batcher.embed("query", [t], [t]) for t in texts))
        while batcher.queued < len(texts):
            await asyncio.sleep(0.01)
        runner.release.set()
        return await first, await rest

    first, rest = asyncio.run(main())
    assert [sorted(batch) for batch in runner.batches] == [["first"], ["aa", "bb", "cc"]]
    assert first.tolist() == [[5.0]] and [r.tolist() for r in rest] == [[[2.0]]] * 3
    # The queued ones were tokenized on the tokenizer threads, as batches are.
    assert [t.split("_")[0] for step, t in runner.threads if step == "prepare"][1:] == [
        "tokenize"
    ] * 3


def test_a_batch_window_is_respected():
    runner = ThreadRecordingRunner()

    async def main():
        batcher = make_batcher(runner, max_wait_ms=1)
        await batcher.embed("query", ["kitten"], ["kitten"])

    asyncio.run(main())
    assert runner.threads[0] == ("prepare", runner.threads[0][1])
    assert runner.threads[0][1].startswith("tokenize")


def test_a_failed_lone_input_frees_the_model():
    runner = ThreadRecordingRunner()

    async def main():
        batcher = make_batcher(runner)
        with pytest.raises(InvalidArgument):
            await batcher.embed("query", ["bad"], ["bad"])
        return await batcher.embed("query", ["good"], ["good"])

    assert asyncio.run(main()).tolist() == [[4.0]]
    assert runner.batches == [["good"]]
