"""Store settings: every field is a flag and a ``STORE_*`` environment variable."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from service_kit.memory import MMAP_THRESHOLD_BYTES
from service_kit.settings import MMAP_THRESHOLD_HELP, ServiceSettings
from store_service.expressions import ExpressionLimits

GiB = 1024**3
METADATA_CACHE_BYTES = 8 * 1024**2
# Lance's own default is 6 GiB; a service in a memory-limited container needs a smaller bound.
INDEX_CACHE_BYTES = 2 * GiB
ROW_CACHE_BYTES = 512 * 1024**2


class StoreSettings(ExpressionLimits, ServiceSettings):
    """Settings of store_service."""

    model_config = SettingsConfigDict(env_prefix="STORE_")
    service_name: ClassVar[str] = "store"

    port: int = Field(50052, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int = Field(9452, ge=-1, le=65535, description="/metrics port; -1 is off.")
    # Lance's and Arrow's buffers fragment glibc's heaps (service_kit/memory.py).
    malloc_mmap_threshold_bytes: int = Field(
        MMAP_THRESHOLD_BYTES,
        ge=0,
        description=MMAP_THRESHOLD_HELP,
    )
    data_root: str = Field(
        "./data", description="Directory or object-store URI (s3://bucket/prefix) of the tables."
    )
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        description="Lance object-store options as JSON, over those read from AWS_* variables "
        '(e.g. {"aws_endpoint": "http://minio:9000", "allow_http": "true"}).',
    )
    exact_cache_max_bytes: int = Field(
        2 * GiB,
        ge=0,
        description="Memory for vector columns (rows x dims x 4 bytes) kept as matrices, all "
        "tables together, for exact search and the refine step of indexed search, and for the "
        "second copy, grouped by partition, that target_recall's scans from memory use; first "
        "come, first served. A column that does not fit uses Lance's flat search and refine "
        "(and target_recall levels that scan from memory run exactly). 0 turns the cache off.",
    )
    row_cache_max_bytes: int = Field(
        ROW_CACHE_BYTES,
        ge=0,
        description="Memory for the rows of tables (every column but vectors, which the "
        "matrices hold), all tables together, first come, first served: the results of "
        "searches answered from the matrices are read from it instead of the data files "
        "(about 0.5 ms less per search). A table that does not fit is read from Lance. "
        "0 turns it off.",
    )
    # Lance's session caches the manifest of every version it reads; each lists every fragment,
    # so a table taking many small commits fills the cache by versions x fragments. Only the
    # latest versions are read again: a small bound keeps the store's memory flat.
    metadata_cache_bytes: int = Field(
        METADATA_CACHE_BYTES,
        ge=0,
        description="Bound of Lance's cache of manifests and file metadata, shared by all tables.",
    )
    index_cache_bytes: int = Field(
        INDEX_CACHE_BYTES,
        ge=0,
        description="Bound of Lance's cache of vector and full-text index partitions, shared "
        "by all tables; searches of an index larger than this read partitions from storage.",
    )
    commit_retries: int = Field(
        8, ge=0, description="Retries of a write whose commit lost a race with another writer."
    )
    index_build_threads: int = Field(
        1, ge=1, description="Index builds running at once (each uses every core Lance gets)."
    )
    warm_on_start: bool = Field(
        True, description="Load indexes and exact-search matrices before reporting SERVING."
    )
    maintenance_interval_s: float = Field(
        300.0, ge=0, description="Seconds between background maintenance passes; 0 is off."
    )
    compact_min_fragments: int = Field(
        16, ge=2, description="Compact a table once it has this many small fragments."
    )
    compact_target_rows: int = Field(
        1024 * 1024, ge=1024, description="Rows per fragment that compaction aims for."
    )
    compact_deleted_fraction: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Rewrite a fragment once this fraction of its rows is deleted.",
    )
    index_min_unindexed_rows: int = Field(
        1, ge=1, description="Add new rows to an index once this many are unindexed."
    )
    retention_s: float = Field(
        7 * 24 * 3600.0,
        ge=0,
        description="Cleanup removes untagged versions older than this many seconds.",
    )
    cleanup_min_age_s: float = Field(
        600.0,
        ge=0,
        description="Floor under every cleanup, Optimize(cleanup_older_than_s=0) included: a "
        "version is removed only once its successor is this old, so a request on it in another "
        "store process sharing the root (deadlines are at most 300 s) has finished.",
    )
    calibrate_indexes: bool = Field(
        True,
        description="Measure each vector index's recall against exact search after it is "
        "built, so that searches may ask for a target_recall.",
    )
    calibration_levels: list[float] = Field(
        default_factory=lambda: [0.8, 0.9, 0.95, 0.99],
        min_length=1,
        description="Recall levels a calibration finds the cheapest search parameters for.",
    )
    calibration_k: int = Field(10, ge=1, le=1000, description="The k of recall@k calibrated.")
    calibration_queries: int = Field(
        100,
        ge=10,
        le=10_000,
        description="Rows of the table used as calibration queries (each also blended with "
        "another into one more query).",
    )
    calibration_served_queries: int = Field(
        200,
        ge=0,
        le=10_000,
        description="Query vectors kept per vector column, a uniform sample of those served "
        "since start (in memory only); once that many were served, calibration measures "
        "recall on them instead of on the table's rows. 0: keep none.",
    )
    calibration_growth: float = Field(
        0.2,
        gt=0,
        description="Calibrate an index again (in maintenance or optimize) once its table has "
        "grown by this fraction of the rows it had when last calibrated.",
    )
    max_columns: int = Field(1024, ge=1, description="Most columns in a table's schema.")
    max_search_window: int = Field(
        100_000, ge=1, description="Most rows one search gathers: k + offset."
    )
    max_search_candidates: int = Field(
        1_000_000,
        ge=1,
        description="Most candidates one search asks Lance for, (k + offset) x refine_factor "
        "and ef: Lance allocates them up front.",
    )

    @field_validator("calibration_levels")
    @classmethod
    def _levels_are_recalls(cls, levels: list[float]) -> list[float]:
        if not all(0 < level <= 1 for level in levels):
            raise ValueError(f"calibration levels must lie in (0, 1], got {levels}")
        return sorted(set(levels))

    def expression_limits(self) -> ExpressionLimits:
        return self.group(ExpressionLimits)
