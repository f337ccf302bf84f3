"""Typed values that mean the same on both sides of a contract, for cores that speak no
protobuf (each side converts them at its edge)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class IndexInfo:
    """An index and how much of the table it covers (``common.proto`` IndexInfo);
    ``index_type`` is a name such as ``IVF_PQ`` or ``INVERTED``."""

    name: str
    columns: list[str]
    index_type: str
    status: str = "ready"
    num_indexed_rows: int = 0
    num_unindexed_rows: int = 0
    progress: float = 0.0
    stage: str = ""
    num_deltas: int = 0
