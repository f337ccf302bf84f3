"""Several vectors per input (ColBERT's token vectors, LanceDB's ``MultiVector``), packed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from embedsearch.contract.errors import InvalidArgument


@dataclass
class MultiVectors:
    """The vectors of several inputs: ``vectors`` (total, ndims) row-major, input after input,
    and ``counts``, how many of them each input has.

    >>> mv = MultiVectors.from_groups([np.ones((2, 3)), np.zeros((1, 3))], 3)
    >>> mv.counts.tolist(), [g.shape for g in mv.groups()]
    ([2, 1], [(2, 3), (1, 3)])
    """

    vectors: np.ndarray
    counts: np.ndarray

    @property
    def ndims(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.counts)

    @classmethod
    def from_groups(cls, groups: Sequence[np.ndarray], ndims: int) -> MultiVectors:
        """Pack one (vectors, ndims) array per input."""
        counts = np.array([len(group) for group in groups], dtype=np.int64)
        parts = [np.asarray(group, dtype=np.float32).reshape(-1, ndims) for group in groups]
        vectors = np.concatenate(parts) if parts else np.zeros((0, ndims), np.float32)
        return cls(vectors, counts)

    @classmethod
    def unpacked(cls, vectors: np.ndarray, counts: Sequence[int]) -> MultiVectors:
        """From packed (total, ndims) vectors and the count of each input; InvalidArgument
        when the counts do not add up to the vectors."""
        counts_array = np.asarray(counts, dtype=np.int64)
        if int(counts_array.sum()) != len(vectors):
            raise InvalidArgument(
                f"vectors_per_input adds up to {int(counts_array.sum())} vectors, "
                f"but {len(vectors)} were sent"
            )
        return cls(vectors, counts_array)

    @classmethod
    def concat(cls, parts: Sequence[MultiVectors]) -> MultiVectors:
        """The inputs of ``parts``, in order."""
        return cls(
            np.concatenate([part.vectors for part in parts]),
            np.concatenate([part.counts for part in parts]),
        )

    def groups(self) -> list[np.ndarray]:
        """One (vectors, ndims) array per input."""
        return np.split(self.vectors, np.cumsum(self.counts)[:-1]) if len(self.counts) else []

    def pooled(self) -> np.ndarray:
        """One vector per input: the mean of its vectors. This is what LanceDB's ``colbert``
        function stores in a plain vector column (the mean of the last hidden states)."""
        return np.stack([group.mean(axis=0) for group in self.groups()]).astype(np.float32)


def query_vectors(values: np.ndarray, count: int) -> np.ndarray:
    """A packed query as sent (``query_vectors`` on a search request): one vector for a
    count of 0 or 1, else a (count, ndims) multi-vector query."""
    if count <= 1:
        return values
    if len(values) % count:
        raise InvalidArgument(
            f"query_vectors is {count}, but {len(values)} values are not that many equal vectors"
        )
    return values.reshape(count, -1)
