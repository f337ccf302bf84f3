"""The current call's deadline, carried in a context variable from server to outgoing calls."""

from __future__ import annotations

import time
from contextvars import ContextVar

from embedsearch.contract.errors import DeadlineExceeded

_DEADLINE: ContextVar[float | None] = ContextVar("embedsearch_deadline", default=None)


def set_deadline(time_remaining: float | None) -> None:
    """Record the incoming call's remaining time (None: no deadline)."""
    _DEADLINE.set(None if time_remaining is None else time.monotonic() + time_remaining)


def remaining(default: float | None = None) -> float | None:
    """Seconds left for an outgoing call: the incoming deadline's, else ``default``."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return default
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("the caller's deadline passed before the request was forwarded")
    return left if default is None else min(left, default)
