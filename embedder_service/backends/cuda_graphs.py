"""A text model's forward pass replayed from CUDA graphs, one graph per (batch, length) bucket.

Eager PyTorch launches each of a forward pass's few hundred small kernels from Python. For a
small model on a GPU that dispatch, not the GPU, sets the time of a batch, and it holds the
GIL that the embedder's event loop needs to take requests in. A CUDA graph replays the whole
pass in one launch. A graph has fixed shapes, so inputs are padded up to a bucket: the batch to
a power of two, the length to a power of two from 16, up to the model's limits. Padding tokens
are masked and padding rows are thrown away, so each input's vector is what the eager pass
gives, up to the GPU's fp16 rounding.

A bucket's graph is captured on its first use (two warm-up passes, then the capture: 0.06-0.12 s
on an H100, the first of a process about 1 s), into one memory pool that the buckets share. A
lock lets one graph replay at a time (the batcher runs a function on one thread anyway). Where
a model cannot be captured (its forward pass reads a tensor's values on the host, say), the
failure is logged once and the eager pass runs from then on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger("embedder_service")

# The token features a BERT-style tokenizer gives, and what each is padded with (None: the
# tokenizer's pad token). A model fed any other feature runs eagerly.
PADDING: dict[str, int | None] = {"input_ids": None, "attention_mask": 0, "token_type_ids": 0}
SHORTEST = 16  # the smallest length bucket
Shape = tuple[int, int, tuple[str, ...]]  # (rows, tokens, feature names) of a bucket


def bucket(size: int, smallest: int, limit: int) -> int:
    """The bucket ``size`` is padded to: the next power of two from ``smallest``, at most
    ``limit`` (``size`` is never above ``limit``)."""
    step = smallest
    while step < size:
        step *= 2
    return min(step, limit)


class GraphedForward:
    """``forward`` (token features on ``device`` -> one fp32 vector per input) from CUDA graphs.

    ``capture=False`` runs the same padded buckets eagerly: what a CPU can check of the
    padding, and nothing faster.
    """

    def __init__(
        self,
        forward: Callable[[dict[str, Any]], Any],
        device: str,
        pad_id: int,
        max_batch: int,
        max_length: int,
        capture: bool = True,
    ) -> None:
        self.forward = forward
        self.device = device
        self.pad_id = pad_id
        self.max_batch = bucket(max_batch, 1, 1 << 30)
        self.max_length = max_length
        self.capture = capture
        self.broken = False
        self._graphs: dict[Shape, tuple[dict[str, Any], Callable[[], Any]]] = {}
        self._pool: Any = None
        self._lock = threading.Lock()

    def __call__(self, payloads: list[dict[str, list[int]]]) -> Any | None:
        """The vectors of a batch of tokenized inputs, as a tensor on the host; None where no
        graph serves it (too many inputs, an unknown feature, or capture failed), for the
        caller to run eagerly."""
        names = tuple(sorted(payloads[0]))
        if self.broken or len(payloads) > self.max_batch or not set(names) <= set(PADDING):
            return None
        longest = max(len(payload["input_ids"]) for payload in payloads)
        shape = (
            bucket(len(payloads), 1, self.max_batch),
            bucket(longest, SHORTEST, max(self.max_length, longest)),
            names,
        )
        host = self._padded(payloads, shape)
        with self._lock:  # one replay at a time: the buckets share their buffers and pool
            graph = self._graphs.get(shape) or self._build(shape)
            if graph is None:
                return None
            inputs, replay = graph
            for name, values in host.items():
                inputs[name].copy_(values)
            return replay()[: len(payloads)].cpu()

    def _padded(self, payloads: list[dict[str, list[int]]], shape: Shape) -> dict[str, Any]:
        """Host tensors of the bucket's shape. Rows past the batch hold one unmasked pad token,
        so that no row is all padding (whose attention would be undefined)."""
        import torch

        rows, length, names = shape
        arrays = {}
        for name in names:
            fill = PADDING[name]
            array = np.full((rows, length), self.pad_id if fill is None else fill, np.int64)
            for i, payload in enumerate(payloads):
                array[i, : len(payload[name])] = payload[name]
            arrays[name] = array
        if "attention_mask" in arrays:
            arrays["attention_mask"][len(payloads) :, 0] = 1
        return {name: torch.from_numpy(array) for name, array in arrays.items()}

    def _run(self, inputs: dict[str, Any]) -> Any:
        return self.forward(dict(inputs))  # a copy: sentence-transformers adds its outputs

    def _build(self, shape: Shape) -> tuple[dict[str, Any], Callable[[], Any]] | None:
        """A bucket's static inputs on the device, and what runs the pass on them and returns
        its static output: the graph captured now."""
        import torch

        rows, length, names = shape
        inputs = {
            name: torch.zeros((rows, length), dtype=torch.int64, device=self.device)
            for name in names
        }
        if "attention_mask" in inputs:
            inputs["attention_mask"][:, 0] = 1
        if not self.capture:
            self._graphs[shape] = (inputs, lambda: self._run(inputs))
            return self._graphs[shape]
        started = time.perf_counter()
        try:
            with torch.cuda.device(torch.device(self.device)):
                if self._pool is None:
                    self._pool = torch.cuda.graph_pool_handle()
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):  # warm-up: lazy library handles, kernel choice
                    for _ in range(2):
                        self._run(inputs)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self._pool):
                    output = self._run(inputs)
        except Exception as exc:  # torch raises RuntimeError and others from inside capture
            self.broken = True
            log.warning(
                "CUDA graph capture failed (%s: %s); this model's forward pass runs eagerly",
                type(exc).__name__,
                exc,
            )
            return None
        log.info(
            "captured a CUDA graph for %d inputs of %d tokens in %.0f ms",
            rows,
            length,
            (time.perf_counter() - started) * 1000,
        )

        def replay() -> Any:
            graph.replay()
            return output

        self._graphs[shape] = (inputs, replay)
        return self._graphs[shape]
