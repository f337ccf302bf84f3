"""Dynamic batching across callers: one queue per loaded function, batches cut by size and tokens.

Requests are prepared (tokenized) as they arrive, on tokenizer threads; the batch loop takes the
oldest inputs, sorts a window of them by length so padding stays small, computes identical inputs
once, and runs the batch on the function's inference thread while the next requests are already
being tokenized. Scattering the vectors back to their requests happens on the event loop.

A lone input that finds the model idle and nothing queued (a query, most often) skips all that:
it is tokenized and run in one hop to the inference thread, with no batch to form or wait for.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from embedder_service.budget import Budget
from embedsearch.contract.errors import Overloaded
from service_kit.tracing import Captured, capture, span

MAX_RETRY_AFTER_S = 10.0  # the longest back-off a full queue asks callers for
# How many queued inputs are sorted by length together; a larger window pads less, waits longer.
WINDOW = 256
# The padding bound for a model on a CPU unless --padding-slack sets one (BatchLimits).
CPU_PADDING_SLACK = 0.3


class Runner(Protocol):
    """How one function prepares inputs and embeds a batch of prepared inputs."""

    def prepare(self, mode: str, inputs: list[Any]) -> list[tuple[Any, int]]:
        """(payload, cost in tokens) per input; runs on a tokenizer thread."""
        ...

    def run(self, mode: str, payloads: list[Any]) -> np.ndarray:
        """Vectors for a batch of payloads; runs on an inference thread. A multi-vector
        function returns a list of (vectors, ndims) arrays, one per payload."""
        ...


class BatchLimits(BaseModel):
    """Bounds of one batch and of the queue in front of it.

    Held by EmbedderSettings, whose flags (``--max-batch-size``, ...) these fields are; a
    function's batcher gets them with its provider's ``batch_size`` applied.
    """

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(
        64, ge=1, description="Most inputs per batch (a provider's batch_size may lower it)."
    )
    max_batch_tokens: int = Field(
        16384, ge=1, description="Most padded tokens per batch (longest input x batch size)."
    )
    max_wait_ms: float = Field(
        0.0,
        ge=0,
        description="How long an idle model waits for a fuller batch (0: never; under load "
        "batches fill while the model is busy).",
    )
    # On a CPU the cost follows padded tokens, so a tight bound wins. On a GPU a forward pass
    # costs about the same for 8 inputs as for 64, so cutting batches at 30 % padding starves
    # it (measured on an H100: 186 texts/s at 0.3, 455 with the bound off; bench/README.md).
    padding_slack: float | None = Field(
        None,
        ge=0,
        description="Padded tokens may exceed real ones by this fraction; unset: "
        f"{CPU_PADDING_SLACK} for a model on a CPU, no bound on a GPU (max_batch_tokens holds).",
    )
    max_queued_inputs: int = Field(
        4096, ge=1, description="Inputs waiting per function before RESOURCE_EXHAUSTED."
    )

    @property
    def max_wait_s(self) -> float:
        return self.max_wait_ms / 1000

    @property
    def slack(self) -> float:
        return CPU_PADDING_SLACK if self.padding_slack is None else self.padding_slack

    def for_device(self, device: str, batch_size: int) -> BatchLimits:
        """These limits for a model on ``device`` whose own batch size is ``batch_size``: the
        padding bound filled in where unset, the batch no larger than the model's."""
        slack = self.padding_slack
        if slack is None:
            slack = math.inf if device.startswith("cuda") else CPU_PADDING_SLACK
        return self.model_copy(
            update={"max_batch_size": min(self.max_batch_size, batch_size), "padding_slack": slack}
        )


@dataclass(eq=False)
class _Request:
    mode: str
    size: int
    vectors: np.ndarray | list[np.ndarray] | None  # a list for a multi-vector function
    remaining: int
    future: asyncio.Future[np.ndarray]
    enqueued: float
    deadline: float | None = None  # time.monotonic() by which the caller wants an answer
    trace: Captured | None = None  # where its queueing and inference spans go, when traced


@dataclass(eq=False)
class _Item:
    request: _Request
    index: int
    key: Hashable
    payload: Any
    cost: int


@dataclass(frozen=True)
class _Shape:
    """Size and token counts of a batch being formed; identical inputs are computed once."""

    limits: BatchLimits
    keys: frozenset[Hashable] = frozenset()
    longest: int = 0
    tokens: int = 0

    def plus(self, item: _Item) -> _Shape:
        if item.key in self.keys:
            return self
        return _Shape(
            self.limits,
            self.keys | {item.key},
            max(self.longest, item.cost),
            self.tokens + item.cost,
        )

    def fits(self, item: _Item) -> bool:
        grown = self.plus(item)
        padded = grown.longest * len(grown.keys)
        return (
            len(grown.keys) <= self.limits.max_batch_size
            and padded <= self.limits.max_batch_tokens
            and padded <= (1 + self.limits.slack) * grown.tokens
        )


@dataclass
class BatchStats:
    """What one batch looked like, reported to metrics."""

    size: int
    unique: int
    padded_tokens: int
    queue_s: list[float] = field(default_factory=list)
    inference_s: float = 0.0


class Batcher:
    """Merges the inputs of concurrent ``embed`` calls on one function into batches.

    ``concurrency`` batches run at once: 1 for a local model, more for an API provider.
    """

    def __init__(
        self,
        runner: Runner,
        limits: BatchLimits,
        tokenizers: ThreadPoolExecutor,
        inference: ThreadPoolExecutor,
        on_batch: Any = None,
        concurrency: int = 1,
    ) -> None:
        self.runner = runner
        self.limits = limits
        self.concurrency = concurrency
        self._tokenizers = tokenizers
        self._inference = inference
        self._on_batch = on_batch
        self._queue: collections.deque[_Item] = collections.deque()
        self._arrived = asyncio.Event()
        self._in_flight = 0
        self._worker: asyncio.Task[None] | None = None
        self._seconds_per_input = 0.01  # moving average of inference time per input

    @property
    def queued(self) -> int:
        """Inputs waiting for a batch."""
        return len(self._queue)

    async def embed(
        self,
        mode: str,
        inputs: list[Any],
        keys: list[Hashable],
        deadline: float | None = None,
    ) -> np.ndarray:
        """Vectors for ``inputs`` (in order). Raises Overloaded at once when the queue is full.

        ``deadline`` (``time.monotonic()`` seconds) bounds the provider calls made for them.
        """
        if self.queued + len(inputs) > self.limits.max_queued_inputs:
            # Back off for about as long as the queue ahead takes to drain at recent speed.
            wait_s = min(MAX_RETRY_AFTER_S, max(0.05, self.queued * self._seconds_per_input))
            raise Overloaded(
                f"the embedder queue is full ({self.queued} inputs waiting, limit "
                f"{self.limits.max_queued_inputs}); retry after {wait_s:.2f}s",
                retry_after_s=wait_s,
            )
        if len(inputs) == 1 and self._idle():
            return await self._at_once(mode, inputs, deadline)
        loop = asyncio.get_running_loop()
        with span("embed.tokenize", inputs=len(inputs)):
            prepared = await loop.run_in_executor(
                self._tokenizers, self.runner.prepare, mode, inputs
            )
        request = _Request(
            mode,
            len(inputs),
            None,
            len(inputs),
            loop.create_future(),
            time.perf_counter(),
            deadline,
            capture(),
        )
        self._queue.extend(
            _Item(request, i, key, payload, cost)
            for i, (key, (payload, cost)) in enumerate(zip(keys, prepared, strict=True))
        )
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._loop())
        try:
            return await asyncio.shield(request.future)
        except asyncio.CancelledError:
            # The caller gave up (deadline, cancel): its inputs leave the queue, and a running
            # batch that no caller waits for any more is told to stop (see _budget).
            self._queue = collections.deque(i for i in self._queue if i.request is not request)
            request.future.cancel()
            raise

    def _idle(self) -> bool:
        """Nothing queued, a batch slot free, and no batch window to wait for."""
        return (
            not self._queue and self._in_flight < self.concurrency and self.limits.max_wait_s == 0
        )

    async def _at_once(self, mode: str, inputs: list[Any], deadline: float | None) -> Any:
        """Embed a lone input on an idle model: tokenized and run on the inference thread in
        one hop. It holds a batch slot while it runs, so inputs arriving meanwhile queue and
        batch as usual; a caller that gives up leaves it to finish, as a batch would."""
        trace, arrived = capture(), time.perf_counter()
        budget = Budget(deadline)
        self._in_flight += 1
        job = asyncio.get_running_loop().run_in_executor(
            self._inference, budget.run, self._prepare_and_run, mode, inputs
        )
        job.add_done_callback(self._slot_freed)
        try:
            vectors, cost, (started, tokenized, ended) = await asyncio.shield(job)
        except asyncio.CancelledError:
            budget.abandoned.set()
            raise
        if len(vectors) != 1:
            raise RuntimeError(f"1 input gave {len(vectors)} vectors")
        if trace is not None:
            trace.record("embed.queue", arrived, started)
            trace.record("embed.tokenize", started, tokenized, {"inputs": 1})
            trace.record("embed.inference", tokenized, ended, {"batch.size": 1, "batch.unique": 1})
        self._seconds_per_input += 0.2 * (ended - tokenized - self._seconds_per_input)
        if self._on_batch is not None:
            self._on_batch(
                BatchStats(
                    size=1,
                    unique=1,
                    padded_tokens=cost,
                    queue_s=[started - arrived],
                    inference_s=ended - tokenized,
                )
            )
        return vectors if isinstance(vectors, list) else np.asarray(vectors, dtype=np.float32)

    def _prepare_and_run(self, mode: str, inputs: list[Any]) -> tuple[Any, int, tuple[float, ...]]:
        """On the inference thread: the vectors, the input's cost, and when each step began."""
        started = time.perf_counter()
        [(payload, cost)] = self.runner.prepare(mode, inputs)
        tokenized = time.perf_counter()
        vectors = self.runner.run(mode, [payload])
        return vectors, cost, (started, tokenized, time.perf_counter())

    def _slot_freed(self, _: object) -> None:
        self._in_flight -= 1
        self._arrived.set()  # the batch loop may start what queued meanwhile

    async def _loop(self) -> None:
        try:
            await self._batches()
        except BaseException as exc:  # a bug here must fail the callers, not strand them
            for item in self._queue:
                if not item.request.future.done():
                    item.request.future.set_exception(exc)
            self._queue.clear()
            raise

    async def _batches(self) -> None:
        running: set[asyncio.Task[None]] = set()
        while self._queue or running:
            if not self._queue or self._in_flight >= self.concurrency:
                self._arrived.clear()
                waiters = [asyncio.ensure_future(self._arrived.wait()), *running]
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                waiters[0].cancel()
                running = {t for t in running if not t.done()}
                continue
            await self._fill()
            batch = self._take()
            if batch:
                self._in_flight += 1
                task = asyncio.get_running_loop().create_task(self._run(batch))
                running.add(task)

    async def _fill(self) -> None:
        """When nothing is running, wait a moment for a fuller batch; never while a batch runs,
        since the queue fills by itself then."""
        if self._in_flight or len(self._queue) >= self.limits.max_batch_size:
            return
        deadline = self._queue[0].request.enqueued + self.limits.max_wait_s
        while len(self._queue) < self.limits.max_batch_size:
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                return

    def _take(self) -> list[_Item]:
        """The next batch. It always holds the oldest input, so nothing starves; around it, in
        a window of queued inputs of the same mode sorted by length, it grows towards the
        neighbour closest in length while size, padded tokens and padding waste stay in bounds.
        The rest stay queued, in arrival order."""
        mode = self._queue[0].request.mode
        window: list[_Item] = []
        kept: list[_Item] = []
        while self._queue and len(window) < WINDOW:
            item = self._queue.popleft()
            (window if item.request.mode == mode else kept).append(item)
        oldest = window[0]
        window.sort(key=lambda item: item.cost)
        lo = hi = next(i for i, item in enumerate(window) if item is oldest)
        shape = _Shape(self.limits).plus(oldest)
        while True:
            sides = [i for i in (lo - 1, hi + 1) if 0 <= i < len(window)]
            sides.sort(key=lambda i: abs(window[i].cost - oldest.cost))
            index = next((i for i in sides if shape.fits(window[i])), None)
            if index is None:
                break
            shape = shape.plus(window[index])
            lo, hi = min(lo, index), max(hi, index)
        kept.extend(window[:lo] + window[hi + 1 :])
        kept.sort(key=lambda item: item.request.enqueued)
        self._queue.extendleft(reversed(kept))
        return window[lo : hi + 1]

    async def _run(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        firsts: dict[Hashable, int] = {}
        payloads: list[Any] = []
        for item in batch:
            if item.key not in firsts:
                firsts[item.key] = len(payloads)
                payloads.append(item.payload)
        mode = batch[0].request.mode
        loop = asyncio.get_running_loop()
        budget = _budget(batch)
        try:
            vectors = await loop.run_in_executor(
                self._inference, budget.run, self.runner.run, mode, payloads
            )
            if len(vectors) != len(payloads):
                raise RuntimeError(f"{len(payloads)} inputs gave {len(vectors)} vectors")
        except BaseException as exc:
            for item in batch:
                if not item.request.future.done():
                    item.request.future.set_exception(exc)
            return
        finally:
            self._in_flight -= 1
            self._arrived.set()
        for item in batch:
            request = item.request
            if request.future.done():
                continue
            if request.vectors is None:
                request.vectors = (
                    [vectors[0]] * request.size  # each input's (vectors, ndims), placed below
                    if isinstance(vectors, list)
                    else np.empty((request.size, vectors.shape[1]), dtype=np.float32)
                )
            request.vectors[item.index] = vectors[firsts[item.key]]
            request.remaining -= 1
            if request.remaining == 0:
                request.future.set_result(request.vectors)
        ended = time.perf_counter()
        _record_spans(batch, len(payloads), started, ended)
        took = ended - started
        self._seconds_per_input += 0.2 * (took / len(payloads) - self._seconds_per_input)
        if self._on_batch is not None:
            self._on_batch(
                BatchStats(
                    size=len(batch),
                    unique=len(payloads),
                    padded_tokens=max(i.cost for i in batch) * len(payloads),
                    queue_s=[started - i.request.enqueued for i in batch],
                    inference_s=took,
                )
            )


def _record_spans(batch: list[_Item], unique: int, started: float, ended: float) -> None:
    """Each traced caller's wait in the queue and the batch its inputs ran in."""
    requests = {id(item.request): item.request for item in batch if item.request.trace}
    for request in requests.values():
        trace = request.trace
        assert trace is not None
        trace.record("embed.queue", request.enqueued, started)
        attributes = {"batch.size": len(batch), "batch.unique": unique}
        trace.record("embed.inference", started, ended, attributes)


def _budget(batch: list[_Item]) -> Budget:
    """The batch's budget: the latest deadline of its callers (none if one has none), spent
    once every one of them has gone."""
    requests = list({id(item.request): item.request for item in batch}.values())
    deadlines = [request.deadline for request in requests]
    budget = Budget(None if None in deadlines else max(d for d in deadlines if d is not None))

    def abandon_when_all_gone(_: asyncio.Future[np.ndarray]) -> None:
        if all(request.future.cancelled() for request in requests):
            budget.abandoned.set()

    for request in requests:
        request.future.add_done_callback(abandon_when_all_gone)
    return budget
