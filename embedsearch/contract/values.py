"""Typed values that mean the same on both sides of a contract, for cores that speak no
protobuf (each side converts them at its edge)."""

from __future__ import annotations

from dataclasses import dataclass, field


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


@dataclass
class IndexStats:
    """One index's statistics (``common.proto`` IndexStatistics); ``index_type`` as in
    :class:`IndexInfo`, ``distance_type`` "" for a scalar or full-text index."""

    name: str
    index_type: str
    num_indexed_rows: int = 0
    num_unindexed_rows: int = 0
    distance_type: str = ""
    num_indices: int = 0
    loss: float | None = None


@dataclass
class ReadParams:
    """Rows of a table in storage order (``gateway.proto`` ReadRequest, ``store.proto``
    StoreScanRequest): a filter, columns (all when empty) or computed ``projections`` (name to
    SQL, in order; they replace ``columns`` when given), a window, a version."""

    filter: str = ""
    columns: list[str] = field(default_factory=list)
    limit: int = 0
    offset: int = 0
    version: int = 0
    with_row_id: bool = False
    projections: dict[str, str] = field(default_factory=dict)


@dataclass
class TakeParams:
    """Rows by position (``offsets``) or by ``row_ids`` (``gateway.proto`` TakeRequest), in
    ascending order, with the same projection choices as :class:`ReadParams`."""

    offsets: list[int] = field(default_factory=list)
    row_ids: list[int] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    projections: dict[str, str] = field(default_factory=dict)
    with_row_id: bool = False
    version: int = 0
