"""The embedder's caches: least-recently-used values, and values made once per key."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """Least-recently-used values, at most ``capacity`` (None: unbounded; 0 keeps nothing).

    Used from the event loop only, so it needs no lock.
    """

    def __init__(self, capacity: int | None) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        if self.capacity is not None and self.capacity <= 0:
            return
        self._entries[key] = value
        self._entries.move_to_end(key)
        while self.capacity is not None and len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def discard(self, key: K, value: V) -> None:
        """Drop ``key`` if it still holds ``value`` (and not a newer one)."""
        if self._entries.get(key) is value:
            del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)


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
