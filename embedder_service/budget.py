"""What a running batch may still spend: its callers' latest deadline, and whether any waits.

The batcher gives each batch a :class:`Budget` and runs it with that budget current on the
inference thread. A provider that calls out (an HTTP API) reads it with :func:`current` to bound
each request by the deadline, and to stop retrying once every caller has gone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import TypeVar

from embedsearch.contract.errors import Cancelled, DeadlineExceeded

T = TypeVar("T")


class Budget:
    """A deadline (``time.monotonic()`` seconds; None: none) and an abandoned flag."""

    def __init__(self, deadline: float | None = None) -> None:
        self.deadline = deadline
        self.abandoned = threading.Event()

    def left(self) -> float | None:
        """Seconds to the deadline (negative once past); None without one."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def spent(self) -> bool:
        """Whether the work is no longer wanted: every caller gone, or the deadline past."""
        left = self.left()
        return self.abandoned.is_set() or (left is not None and left <= 0)

    def check(self, what: str) -> None:
        """Raise Cancelled or DeadlineExceeded, naming ``what``, once the budget is spent."""
        if self.abandoned.is_set():
            raise Cancelled(f"{what}: every caller of the batch has gone")
        left = self.left()
        if left is not None and left <= 0:
            raise DeadlineExceeded(f"{what}: the callers' deadline passed")

    def timeout(self, limit: float) -> float:
        """``limit``, or less when the deadline is nearer: the most one request may take."""
        left = self.left()
        return limit if left is None else max(0.001, min(limit, left))

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, waking early when the callers go, and never past the deadline."""
        left = self.left()
        self.abandoned.wait(seconds if left is None else max(0.0, min(seconds, left)))

    def run(self, fn: Callable[..., T], *args: object) -> T:
        """Call ``fn(*args)`` with this budget current (on an executor thread)."""
        token = _CURRENT.set(self)
        try:
            return fn(*args)
        finally:
            _CURRENT.reset(token)


_CURRENT: ContextVar[Budget | None] = ContextVar("embedder_budget", default=None)


def current() -> Budget:
    """The budget of the batch running on this thread; an unbounded one outside a batch."""
    return _CURRENT.get() or Budget()
