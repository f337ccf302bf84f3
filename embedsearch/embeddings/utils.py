"""Retries, rate limits and batching for embedding calls, as in ``lancedb.embeddings.utils``."""

from __future__ import annotations

import functools
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Self, TypeVar

import numpy as np
import pyarrow as pa

from embedsearch.contract.functions import retry_with_exponential_backoff, retryable

R = TypeVar("R")


class RateLimiter:
    """A decorator that lets at most ``max_calls`` calls start per ``period`` seconds; the
    others wait for the next period (LanceDB's ``RateLimiter``). Use it on a ``@register``
    class's ``generate_embeddings`` to keep to an API's quota.

    >>> limited = RateLimiter(max_calls=2, period=1.0)(lambda x: x)
    >>> limited(1), limited(2)
    (1, 2)
    """

    def __init__(self, max_calls: float = 1, period: float = 1.0) -> None:
        self.period = period
        self.max_calls = max(1, min(sys.maxsize, math.floor(max_calls)))
        self._last_reset = time.monotonic()
        self._num_calls = 0
        self._lock = threading.RLock()

    def _check_sleep(self) -> float:
        now = time.monotonic()
        remaining = self.period - (now - self._last_reset)
        if remaining <= 0:
            self._num_calls = 0
            self._last_reset = now
            remaining = self.period
        self._num_calls += 1
        return remaining if self._num_calls > self.max_calls else 0.0

    def __call__(self, func: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> R:
            with self._lock:
                wait = self._check_sleep()
                if wait:
                    time.sleep(wait)
                    self._num_calls, self._last_reset = 1, time.monotonic()
            return func(*args, **kwargs)

        return wrapper


def retry(
    tries: int = 10, delay: float = 1, max_delay: float = 30, backoff: float = 3, jitter: float = 1
) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """A decorator that calls again after any exception, up to ``tries`` calls in all,
    waiting ``min(delay * backoff**i + jitter, max_delay)`` seconds (LanceDB's ``retry``)."""

    def wrapper(fn: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> R:
            for i in range(tries):
                try:
                    return fn(*args, **kwargs)
                except Exception:
                    if i + 1 == tries:
                        raise
                    time.sleep(min(delay * backoff**i + jitter, max_delay))
            raise AssertionError("unreachable")

        return wrapped

    return wrapper


class FunctionWrapper:
    """A plain embedding callable with rate limiting, retries and batching (LanceDB's
    ``FunctionWrapper``, what :func:`with_embeddings` wraps a function in)."""

    def __init__(self, func: Callable[[list[Any]], Any]) -> None:
        self.func = func
        self.rate_limiter_kwargs: dict[str, float] = {}
        self.retry_kwargs: dict[str, float] = {}
        self._batch_size: int | None = None

    def __call__(self, text: Any) -> list[Any]:
        def embed(chunk: Any) -> Any:
            return self.func(chunk.tolist() if hasattr(chunk, "tolist") else list(chunk))

        if self.retry_kwargs:
            embed = retry(**self.retry_kwargs)(embed)  # type: ignore[arg-type]
        if self.rate_limiter_kwargs:
            embed = RateLimiter(**self.rate_limiter_kwargs)(embed)
        return [vector for chunk in self.to_batches(text) for vector in embed(chunk)]

    def rate_limit(self, max_calls: float = 0.9, period: float = 1.0) -> Self:
        """At most ``max_calls`` calls per ``period`` seconds."""
        self.rate_limiter_kwargs = {"max_calls": max_calls, "period": period}
        return self

    def retry(
        self,
        tries: int = 10,
        delay: float = 1,
        max_delay: float = 30,
        backoff: float = 3,
        jitter: float = 1,
    ) -> Self:
        """Retry each batch as :func:`retry` does."""
        self.retry_kwargs = {
            "tries": tries,
            "delay": delay,
            "max_delay": max_delay,
            "backoff": backoff,
            "jitter": jitter,
        }
        return self

    def batch_size(self, batch_size: int) -> Self:
        """Embed ``batch_size`` inputs per call."""
        self._batch_size = batch_size
        return self

    def to_batches(self, values: Any) -> Iterator[Any]:
        size = self._batch_size or max(len(values), 1)
        for start in range(0, len(values), size):
            yield values[start : start + size]


def with_embeddings(
    func: Callable[[list[Any]], Any],
    data: Any,
    column: str = "text",
    wrap_api: bool = True,
    show_progress: bool = False,
    batch_size: int = 1000,
) -> pa.Table:
    """``data`` (an Arrow table or a DataFrame) with a ``vector`` column of ``func`` applied
    to ``column`` (LanceDB's ``with_embeddings``); ``wrap_api`` adds retries and a rate limit
    of 0.9 calls a second, as LanceDB does."""
    wrapped = FunctionWrapper(func).batch_size(batch_size)
    if wrap_api:
        wrapped = wrapped.retry().rate_limit()
    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
    vectors = wrapped(np.asarray(table.column(column).to_pylist(), dtype=object))
    ndims = len(vectors[0]) if vectors else 0
    flat = pa.array(np.asarray(vectors, dtype=np.float32).ravel(), type=pa.float32())
    return table.append_column("vector", pa.FixedSizeListArray.from_arrays(flat, ndims))


__all__ = [
    "FunctionWrapper",
    "RateLimiter",
    "retry",
    "retry_with_exponential_backoff",
    "retryable",
    "with_embeddings",
]
