"""Index configurations and index descriptions, with the names and fields of ``lancedb.index``."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from embedsearch.contract.convert import METRIC_TO_PB, calibration_from_pb
from embedsearch.contract.errors import InvalidArgument
from embedsearch.contract.values import IndexCalibration
from embedsearch.v1 import common_pb2

DistanceType = Literal["l2", "cosine", "dot"]


class DocumentGranularity(enum.StrEnum):
    """What one full-text document is: a row (the only kind this store builds) or each element
    of a list column (LanceDB's LIST_ELEMENT, refused here)."""

    ROW = "row"
    LIST_ELEMENT = "list_element"


@dataclass
class BTree:
    """A B-tree over a scalar column: selective filters (=, <, IN, BETWEEN) on many distinct
    values.

    >>> table.create_index("id", config=BTree())  # doctest: +SKIP
    """


@dataclass
class Bitmap:
    """A bitmap per distinct value: filters on low-cardinality columns."""


@dataclass
class LabelList:
    """A bitmap index over a list column: ``array_has_any`` / ``array_has_all`` filters."""


@dataclass
class Fm:
    """LanceDB's FM-index for substring filters. The store's Lance cannot build it: refused."""


@dataclass
class FTS:
    """A full-text (BM25) index over a string column, with LanceDB's tokenizer options.

    >>> table.create_index("text", config=FTS(stem=False))  # doctest: +SKIP
    """

    with_position: bool = False
    base_tokenizer: str = "simple"
    language: str = "English"
    max_token_length: int | None = 40
    lower_case: bool = True
    stem: bool = True
    remove_stop_words: bool = True
    ascii_folding: bool = True
    ngram_min_length: int = 3
    ngram_max_length: int = 3
    prefix_only: bool = False
    block_size: int = 128
    custom_stop_words: list[str] | None = None
    memory_limit: int | None = None
    num_workers: int | None = None
    document_granularity: DocumentGranularity | str = DocumentGranularity.ROW


# LanceDB's vector index configs share groups of fields, each group in the same place. The
# groups below are private dataclasses; a config inherits them with its bases listed last group
# first, because a dataclass takes its bases' fields along the reversed MRO: ``IvfPq`` inherits
# (_Placement, _Training, _ProductQuantized, _Partitioned) and so has LanceDB's field order
# distance_type, num_partitions, num_sub_vectors, num_bits, max_iterations, sample_rate,
# target_partition_size, accelerator (positional construction matches lancedb's).


@dataclass
class _Partitioned:
    distance_type: DistanceType = "l2"
    num_partitions: int | None = None


@dataclass
class _ProductQuantized:
    num_sub_vectors: int | None = None
    num_bits: int = 8


@dataclass
class _Training:
    max_iterations: int = 50
    sample_rate: int = 256


@dataclass
class _Graph:
    m: int = 20
    ef_construction: int = 300


@dataclass
class _PartitionSize:
    target_partition_size: int | None = None


@dataclass
class _Placement(_PartitionSize):
    accelerator: str | None = None


@dataclass
class IvfPq(_Placement, _Training, _ProductQuantized, _Partitioned):
    """IVF partitions with product-quantized vectors: LanceDB's default vector index."""


@dataclass
class IvfFlat(_Placement, _Training, _Partitioned):
    """IVF partitions with full-precision vectors."""


@dataclass
class IvfSq(_Placement, _Training, _Partitioned):
    """IVF partitions with scalar-quantized vectors."""


@dataclass
class _RabitQuantized:
    num_bits: int = 1


@dataclass
class IvfRq(_Placement, _Training, _RabitQuantized, _Partitioned):
    """IVF partitions with RaBitQ-quantized vectors."""


@dataclass
class HnswPq(_Placement, _Graph, _Training, _ProductQuantized, _Partitioned):
    """IVF partitions, each an HNSW graph over product-quantized vectors."""


@dataclass
class HnswSq(_Placement, _Graph, _Training, _Partitioned):
    """IVF partitions, each an HNSW graph over scalar-quantized vectors."""


@dataclass
class HnswFlat(_PartitionSize, _Graph, _Training, _Partitioned):
    """IVF partitions, each an HNSW graph over full-precision vectors."""


IvfHnswPq = HnswPq
IvfHnswSq = HnswSq
IvfHnswFlat = HnswFlat

IndexConfigType = (
    IvfPq | IvfFlat | IvfSq | IvfRq | HnswPq | HnswSq | HnswFlat | BTree | Bitmap | LabelList | FTS
)

# The store's index kind (common.proto IndexType without its prefix) per config class name;
# lancedb's classes of the same names are accepted too.
CONFIG_KINDS = {
    "IvfPq": "IVF_PQ",
    "IvfFlat": "IVF_FLAT",
    "IvfSq": "IVF_SQ",
    "IvfRq": "IVF_RQ",
    "HnswPq": "IVF_HNSW_PQ",
    "HnswSq": "IVF_HNSW_SQ",
    "HnswFlat": "IVF_HNSW_FLAT",
    "BTree": "BTREE",
    "Bitmap": "BITMAP",
    "LabelList": "LABEL_LIST",
    "FTS": "INVERTED",
}
# The legacy ``index_type=`` strings of create_index / create_scalar_index, by kind.
LEGACY_VECTOR_CONFIGS: dict[str, type] = {
    "IVF_PQ": IvfPq,
    "IVF_FLAT": IvfFlat,
    "IVF_SQ": IvfSq,
    "IVF_RQ": IvfRq,
    "IVF_HNSW_PQ": HnswPq,
    "IVF_HNSW_SQ": HnswSq,
    "IVF_HNSW_FLAT": HnswFlat,
}
SCALAR_CONFIGS: dict[str, type] = {"BTREE": BTree, "BITMAP": Bitmap, "LABEL_LIST": LabelList}
# What list_indices() says (LanceDB's IndexConfig.index_type) and what index_stats() says
# (LanceDB's IndexStatistics.index_type), by kind.
_LISTED_NAMES = {
    "IVF_PQ": "IvfPq",
    "IVF_FLAT": "IvfFlat",
    "IVF_SQ": "IvfSq",
    "IVF_RQ": "IvfRq",
    "IVF_HNSW_PQ": "IvfHnswPq",
    "IVF_HNSW_SQ": "IvfHnswSq",
    "IVF_HNSW_FLAT": "IvfHnswFlat",
    "BTREE": "BTree",
    "BITMAP": "Bitmap",
    "LABEL_LIST": "LabelList",
    "INVERTED": "FTS",
}
_METRICS = {value: name for name, value in METRIC_TO_PB.items()}


def _kind(index_type: int) -> str:
    if index_type == common_pb2.INDEX_TYPE_UNSPECIFIED:
        return ""
    return common_pb2.IndexType.Name(index_type).removeprefix("INDEX_TYPE_")


@dataclass
class IndexConfig:
    """An index as ``list_indices()`` describes it: LanceDB's ``name``, ``index_type`` ("IvfPq",
    "BTree", "FTS", ...) and ``columns``, then how its build goes (``status`` "building",
    "ready" or "failed: <reason>", ``stage``, ``progress``) and its coverage."""

    name: str
    index_type: str
    columns: list[str]
    status: str = "ready"
    stage: str = ""
    progress: float = 0.0
    num_indexed_rows: int | None = None
    num_unindexed_rows: int | None = None
    num_segments: int | None = None
    index_uuid: str | None = None
    type_url: str | None = None
    created_at: datetime | None = None
    size_bytes: int | None = None
    index_version: int | None = None
    index_details: dict[str, Any] | None = field(default=None, repr=False)

    @classmethod
    def from_pb(cls, info: common_pb2.IndexInfo) -> IndexConfig:
        kind = _kind(info.index_type)
        return cls(
            name=info.name,
            index_type=_LISTED_NAMES.get(kind, kind),
            columns=list(info.columns),
            status=info.status,
            stage=info.stage,
            progress=info.progress,
            num_indexed_rows=info.num_indexed_rows,
            num_unindexed_rows=info.num_unindexed_rows,
            num_segments=info.num_deltas,
        )


@dataclass
class IndexStatistics:
    """LanceDB's ``index_stats()``: coverage, kind ("IVF_PQ", "BTREE", "FTS", ...), the metric
    of a vector index, the number of segments; ``loss`` (k-means loss of a vector index) is
    ours."""

    num_indexed_rows: int
    num_unindexed_rows: int
    index_type: str
    distance_type: str | None = None
    num_indices: int | None = None
    loss: float | None = None
    # Ours: the recall levels the store measured for a vector index (None until calibrated).
    calibration: IndexCalibration | None = None

    def __getitem__(self, key: str) -> Any:
        """LanceDB's older dict-shaped statistics: ``stats["num_indexed_rows"]``."""
        return getattr(self, key)

    @classmethod
    def from_pb(cls, stats: common_pb2.IndexStatistics) -> IndexStatistics:
        kind = _kind(stats.index_type)
        return cls(
            num_indexed_rows=stats.num_indexed_rows,
            num_unindexed_rows=stats.num_unindexed_rows,
            index_type="FTS" if kind == "INVERTED" else kind,
            distance_type=_METRICS.get(stats.distance_type),
            num_indices=stats.num_indices,
            loss=stats.loss if stats.HasField("loss") else None,
            calibration=(
                calibration_from_pb(stats.calibration) if stats.HasField("calibration") else None
            ),
        )


def config_to_pb(config: Any, replace: bool) -> tuple[str, common_pb2.IndexParams]:
    """The store's index kind and build parameters of a config (ours or lancedb's); refuses
    what the store cannot build rather than building something else."""
    name = type(config).__name__
    if name not in CONFIG_KINDS:
        raise InvalidArgument(
            f"config {name} is not an index this store builds; use one of {sorted(CONFIG_KINDS)}"
            + (" (Fm needs a newer Lance than the store's)" if name == "Fm" else "")
        )
    if getattr(config, "accelerator", None) is not None:
        raise InvalidArgument("accelerator is not supported: the store builds indexes itself")
    kind = CONFIG_KINDS[name]
    params = common_pb2.IndexParams(replace=replace)
    if kind == "INVERTED":
        _text_params(config, params)
    elif kind not in SCALAR_CONFIGS:
        metric = getattr(config, "distance_type", "l2") or "l2"
        if metric not in METRIC_TO_PB:
            raise InvalidArgument(
                f"distance_type must be one of {sorted(METRIC_TO_PB)}, got {metric!r}"
            )
        params.metric = METRIC_TO_PB[metric]
        for attribute in (
            "num_partitions",
            "num_sub_vectors",
            "num_bits",
            "max_iterations",
            "sample_rate",
            "m",
            "ef_construction",
            "target_partition_size",
        ):
            value = getattr(config, attribute, None)
            if value is not None:
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise InvalidArgument(f"{attribute} must be a whole number >= 0, not {value!r}")
                setattr(params, attribute, value)
    return kind, params


def _text_params(config: Any, params: common_pb2.IndexParams) -> None:
    for attribute in ("memory_limit", "num_workers"):
        if getattr(config, attribute, None) is not None:
            raise InvalidArgument(
                f"{attribute} is a build resource the store's operator sets; leave it None"
            )
    granularity = getattr(config, "document_granularity", DocumentGranularity.ROW)
    if str(getattr(granularity, "value", granularity)).lower() != "row":
        raise InvalidArgument("only document_granularity=ROW full-text indexes are supported")
    params.with_position = bool(config.with_position)
    params.base_tokenizer = config.base_tokenizer or ""
    params.language = config.language or ""
    params.max_token_length = config.max_token_length or 0
    params.lower_case = bool(config.lower_case)
    params.stem = bool(config.stem)
    params.remove_stop_words = bool(config.remove_stop_words)
    params.ascii_folding = bool(config.ascii_folding)
    if config.custom_stop_words is not None:
        params.use_custom_stop_words = True
        params.custom_stop_words.extend(config.custom_stop_words)
    params.ngram_min_length = config.ngram_min_length or 0
    params.ngram_max_length = config.ngram_max_length or 0
    params.prefix_only = bool(config.prefix_only)
    params.block_size = config.block_size or 0


__all__ = [
    "FTS",
    "BTree",
    "Bitmap",
    "DocumentGranularity",
    "Fm",
    "HnswFlat",
    "HnswPq",
    "HnswSq",
    "IndexConfig",
    "IndexStatistics",
    "IvfFlat",
    "IvfHnswFlat",
    "IvfHnswPq",
    "IvfHnswSq",
    "IvfPq",
    "IvfRq",
    "IvfSq",
    "LabelList",
]
