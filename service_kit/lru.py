"""A least-recently-used map, for the services' caches (query vectors, function specs, table
descriptors)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
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

    def drop(self, matching: Callable[[K], bool]) -> None:
        """Drop every key ``matching`` accepts."""
        for key in [key for key in self._entries if matching(key)]:
            del self._entries[key]

    def discard(self, key: K, value: V) -> None:
        """Drop ``key`` if it still holds ``value`` (and not a newer one)."""
        if self._entries.get(key) is value:
            del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)
