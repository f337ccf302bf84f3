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
class RecallLevel:
    """The cheapest search parameters measured to reach one recall level (``common.proto``
    RecallLevel); zero ``refine_factor`` and ``ef`` are unset. ``memory_scan``: the store
    scans ``nprobes`` of its own partitions (``IndexCalibration.scan_partitions``) from its
    in-memory matrix instead of searching Lance's index."""

    recall: float
    nprobes: int = 0
    refine_factor: int = 0
    ef: int = 0
    measured_recall: float = 0.0
    latency_ms: float = 0.0
    memory_scan: bool = False


@dataclass
class IndexCalibration:
    """Recall@k of a vector index against its search parameters, measured on a sample of
    served queries or of the table's own vectors (``common.proto`` IndexCalibration)."""

    k: int
    sample_queries: int
    num_rows: int
    version: int
    calibrated_at: float
    levels: list[RecallLevel] = field(default_factory=list)
    max_recall: float = 0.0
    served_queries: int = 0
    partitions: int = 0
    scan_partitions: int = 0

    def level_for(self, target: float) -> RecallLevel | None:
        """The cheapest level that reaches ``target``; None when none does.

        ``target`` may have travelled as a float32 (``target_recall`` in the contracts), which
        moves it by up to 6e-8: 0.99 arrives as 0.9900000095, which a level of 0.99 must still
        reach."""
        reaching = [level for level in self.levels if level.recall >= target - 1e-6]
        return min(reaching, key=lambda level: level.latency_ms, default=None)


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
    calibration: IndexCalibration | None = None


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


# Languages a full-text index stems and removes stop words for (IndexParams.language), by their
# code in LanceDB's "<code>_stem" tokenizer names.
STEM_LANGUAGES = {
    "ar": "Arabic",
    "da": "Danish",
    "du": "Dutch",
    "en": "English",
    "fi": "Finnish",
    "fr": "French",
    "de": "German",
    "gr": "Greek",
    "hu": "Hungarian",
    "it": "Italian",
    "no": "Norwegian",
    "pt": "Portuguese",
    "ro": "Romanian",
    "ru": "Russian",
    "es": "Spanish",
    "sv": "Swedish",
    "ta": "Tamil",
    "tr": "Turkish",
}


@dataclass
class IndexParams:
    """Parameters of an index build (``common.proto`` IndexParams): what the gateway forwards
    and the store builds with. Zero means "let the store choose" (as LanceDB would); ``metric``
    None is the default metric."""

    num_partitions: int = 0
    num_sub_vectors: int = 0
    num_bits: int = 0
    m: int = 0
    ef_construction: int = 0
    metric: str | None = None
    replace: bool = False
    max_iterations: int = 0
    sample_rate: int = 0
    target_partition_size: int = 0
    # Full-text tokenizer options; None (for the optional ones) means "LanceDB's default".
    with_position: bool = False
    base_tokenizer: str = ""
    language: str = ""
    max_token_length: int | None = None
    lower_case: bool | None = None
    stem: bool | None = None
    remove_stop_words: bool | None = None
    ascii_folding: bool | None = None
    custom_stop_words: list[str] = field(default_factory=list)
    use_custom_stop_words: bool = False
    ngram_min_length: int = 0
    ngram_max_length: int = 0
    prefix_only: bool = False
    block_size: int = 0


@dataclass
class FragmentLengths:
    """Rows per fragment (``common.proto`` FragmentLengths, LanceDB's FragmentSummaryStats)."""

    min: int = 0
    max: int = 0
    mean: int = 0
    p25: int = 0
    p50: int = 0
    p75: int = 0
    p99: int = 0


@dataclass
class TableStatistics:
    """LanceDB's TableStatistics (``common.proto`` TableStatistics)."""

    total_bytes: int = 0
    num_rows: int = 0
    num_indices: int = 0
    num_fragments: int = 0
    num_small_fragments: int = 0
    lengths: FragmentLengths = field(default_factory=FragmentLengths)


@dataclass
class CompactionResult:
    """What a compaction did (``common.proto`` CompactionMetrics, Lance's CompactionMetrics),
    and the version after it."""

    fragments_removed: int = 0
    fragments_added: int = 0
    files_removed: int = 0
    files_added: int = 0
    version: int = 0


@dataclass
class OptimizeResult:
    """What an optimize did (``gateway.proto`` OptimizeResponse, ``store.proto``
    StoreOptimizeResponse), and the version after it."""

    fragments_removed: int = 0
    fragments_added: int = 0
    versions_removed: int = 0
    bytes_removed: int = 0
    version: int = 0


@dataclass
class TagInfo:
    """A tag, the version it names, and the size of that version's manifest (``gateway.proto``
    TagInfo, ``store.proto`` StoreTag)."""

    tag: str
    version: int = 0
    manifest_size: int = 0
