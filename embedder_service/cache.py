"""An LRU cache of query embeddings, keyed by (function, text)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

import numpy as np


class QueryCache:
    """Least-recently-used vectors; used from the event loop only, so it needs no lock."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, Hashable], np.ndarray] = OrderedDict()

    def get(self, function: str, key: Hashable) -> np.ndarray | None:
        vector = self._entries.get((function, key))
        if vector is not None:
            self._entries.move_to_end((function, key))
        return vector

    def put(self, function: str, key: Hashable, vector: np.ndarray) -> None:
        if self.capacity <= 0:
            return
        self._entries[(function, key)] = vector
        self._entries.move_to_end((function, key))
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
