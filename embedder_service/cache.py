"""Values made once per key, however many callers ask at once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from service_kit.lru import LRU

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Once(Generic[K, V]):
    """Values made once per key, however many callers ask at the same time.

    The value is made in a task of its own, so a caller that gives up does not fail the
    others. A failure is not kept: its waiters see it, and the next caller makes the value
    again. Beyond ``capacity`` keys the least recently used is forgotten (a caller awaiting it
    still gets it); None keeps every value.
    """

    def __init__(self, capacity: int | None = None) -> None:
        self._made: LRU[K, asyncio.Future[V]] = LRU(capacity)

    async def get(self, key: K, make: Callable[[], Awaitable[V]]) -> V:
        """The value of ``key``, awaiting ``make()`` if no caller made or is making it."""
        made = self._made.get(key)
        if made is None:
            made = asyncio.ensure_future(make())
            self._made.put(key, made)
            made.add_done_callback(lambda done: self._forget_failure(key, done))
        return await asyncio.shield(made)

    def _forget_failure(self, key: K, done: asyncio.Future[V]) -> None:
        # Reading the exception also marks it retrieved: the waiters re-raise it themselves.
        if done.cancelled() or done.exception() is not None:
            self._made.discard(key, done)

    def __len__(self) -> int:
        return len(self._made)
