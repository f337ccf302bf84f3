"""Small from_pb / to_pb helpers for the types the three contracts share."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

from embedsearch.contract.errors import InvalidArgument
from embedsearch.contract.values import (
    CompactionResult,
    FragmentLengths,
    IndexCalibration,
    IndexInfo,
    IndexParams,
    IndexStats,
    RecallLevel,
    TableStatistics,
)
from embedsearch.v1 import common_pb2

P = TypeVar("P")
M = TypeVar("M", bound=Message)
INDEX_PREFIX = "INDEX_TYPE_"
# IndexType values by our name with its underscores dropped (IVFPQ, LABELLIST, ...), so that
# Lance's spellings of a kind (LabelList, FTS) find theirs too.
_INDEX_TYPES = {
    name.removeprefix(INDEX_PREFIX).replace("_", ""): value
    for name, value in common_pb2.IndexType.items()
}
_INDEX_TYPES["FTS"] = common_pb2.INDEX_TYPE_INVERTED
# CompactionOptions fields, each passed to Lance's compact_files when set.
COMPACTION_OPTIONS = tuple(f.name for f in common_pb2.CompactionOptions.DESCRIPTOR.fields)
# The index kinds a build may name: IVF_PQ, ..., INVERTED.
INDEX_TYPES = tuple(
    name.removeprefix(INDEX_PREFIX)
    for name, value in common_pb2.IndexType.items()
    if value != common_pb2.INDEX_TYPE_UNSPECIFIED
)

MODES = {
    common_pb2.EMBED_MODE_UNSPECIFIED: "source",
    common_pb2.EMBED_MODE_SOURCE: "source",
    common_pb2.EMBED_MODE_QUERY: "query",
}
MODE_TO_PB = {"source": common_pb2.EMBED_MODE_SOURCE, "query": common_pb2.EMBED_MODE_QUERY}

MODALITY_TO_PB = {
    "text": common_pb2.MODALITY_TEXT,
    "image": common_pb2.MODALITY_IMAGE,
    "audio": common_pb2.MODALITY_AUDIO,
    "video": common_pb2.MODALITY_VIDEO,
}
MODALITY_FROM_PB = {v: k for k, v in MODALITY_TO_PB.items()}

METRICS = {
    common_pb2.METRIC_UNSPECIFIED: None,
    common_pb2.METRIC_L2: "l2",
    common_pb2.METRIC_COSINE: "cosine",
    common_pb2.METRIC_DOT: "dot",
}
METRIC_TO_PB = {v: k for k, v in METRICS.items() if v}

CREATE_MODES = {
    common_pb2.CREATE_MODE_UNSPECIFIED: "create",
    common_pb2.CREATE_MODE_CREATE: "create",
    common_pb2.CREATE_MODE_OVERWRITE: "overwrite",
    common_pb2.CREATE_MODE_EXIST_OK: "exist_ok",
}
CREATE_MODE_TO_PB = {name: value for value, name in CREATE_MODES.items() if value}


def _plain(value: Any) -> Any:
    """Struct numbers are doubles; give integral ones back as ints (batch_size=32, not 32.0)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def args_from_pb(args: struct_pb2.Struct) -> dict[str, Any]:
    """create() keyword arguments from a Struct."""
    return _plain(json_format.MessageToDict(args))


def spec_from_pb(spec: common_pb2.FunctionSpec) -> tuple[str, dict[str, Any]]:
    """(provider, args) from a FunctionSpec, rejecting an empty provider name."""
    if not spec.provider:
        raise InvalidArgument("function.provider is required, e.g. 'sentence-transformers'")
    return spec.provider, args_from_pb(spec.args)


def spec_to_pb(provider: str, args: dict[str, Any]) -> common_pb2.FunctionSpec:
    """A FunctionSpec from (provider, args)."""
    return common_pb2.FunctionSpec(provider=provider, args=args_to_pb(args))


def args_to_pb(args: dict[str, Any]) -> struct_pb2.Struct:
    """create() keyword arguments as a Struct; InvalidArgument for a value JSON cannot hold."""
    struct = struct_pb2.Struct()
    try:
        struct.update(args)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"create() arguments must be JSON values: {exc}") from exc
    return struct


def metric_from_pb(metric: int) -> str | None:
    """Metric name, or None for the default."""
    if metric not in METRICS:
        raise InvalidArgument(f"unknown metric {metric}; use L2, COSINE or DOT")
    return METRICS[metric]


def projections_from_pb(projections: Iterable[common_pb2.Projection]) -> dict[str, str]:
    """Computed columns, in order, refusing a name given twice."""
    found: dict[str, str] = {}
    for projection in projections:
        if projection.name in found:
            raise InvalidArgument(f"select names the column {projection.name!r} twice")
        found[projection.name] = projection.expression
    return found


def projections_to_pb(
    projections: Mapping[str, str] | Iterable[tuple[str, str]],
) -> list[common_pb2.Projection]:
    """Computed columns (name to SQL), from a mapping or from (name, SQL) pairs."""
    pairs = projections.items() if isinstance(projections, Mapping) else projections
    return [common_pb2.Projection(name=k, expression=v) for k, v in pairs]


def optional(message: Message, name: str) -> Any:
    """An ``optional`` field's value, or None when it is unset."""
    return getattr(message, name) if message.HasField(name) else None


def params_from_pb(message: Message, cls: type[P], **computed: Any) -> P:
    """A dataclass from the message's fields of the same names; ``computed`` win, and a
    dataclass field the message lacks keeps its default.

    Repeated fields become lists, maps dicts, and an unset ``optional`` field becomes None.
    """
    by_name = message.DESCRIPTOR.fields_by_name
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        pb_field = by_name.get(field.name)
        if field.name in computed or pb_field is None:
            continue
        value = getattr(message, field.name)
        if pb_field.message_type is not None and pb_field.message_type.GetOptions().map_entry:
            values[field.name] = dict(value)
        elif pb_field.is_repeated:
            values[field.name] = list(value)
        elif pb_field.has_presence and not message.HasField(field.name):
            values[field.name] = None
        else:
            values[field.name] = value
    return cls(**values, **computed)


def value_to_pb(value: Any, cls: type[M], omit: tuple[str, ...] = (), **computed: Any) -> M:
    """A ``cls`` message from the dataclass ``value``'s fields of the same names, ``computed``
    giving the others; a field of ``value`` neither in the message nor in ``omit`` is an
    error here (ValueError)."""
    same = {
        field.name: getattr(value, field.name)
        for field in dataclasses.fields(value)
        if field.name not in computed and field.name not in omit
    }
    return cls(**same, **computed)


def metric_to_pb(metric: str | None) -> int:
    """The Metric of a name; METRIC_UNSPECIFIED for None, "" or one the contract lacks."""
    return METRIC_TO_PB.get(metric or "", common_pb2.METRIC_UNSPECIFIED)


def index_type_from_pb(value: int) -> str:
    """``IVF_PQ``, ``INVERTED``, ...; "" for INDEX_TYPE_UNSPECIFIED."""
    if value == common_pb2.INDEX_TYPE_UNSPECIFIED:
        return ""
    return common_pb2.IndexType.Name(value).removeprefix(INDEX_PREFIX)


def index_type_to_pb(name: str) -> int:
    """The IndexType of ``IVF_PQ``, ``INVERTED`` (or Lance's ``FTS``, ``LabelList``, ...);
    INDEX_TYPE_UNSPECIFIED for "" or a kind the contract lacks."""
    kind = name.upper().replace("_", "")
    return _INDEX_TYPES.get(kind, common_pb2.INDEX_TYPE_UNSPECIFIED)


def index_params_from_pb(params: common_pb2.IndexParams) -> IndexParams:
    return params_from_pb(params, IndexParams, metric=metric_from_pb(params.metric))


def index_params_to_pb(params: IndexParams) -> common_pb2.IndexParams:
    return value_to_pb(params, common_pb2.IndexParams, metric=metric_to_pb(params.metric))


def index_from_pb(index: common_pb2.IndexInfo) -> IndexInfo:
    return params_from_pb(index, IndexInfo, index_type=index_type_from_pb(index.index_type))


def index_to_pb(index: IndexInfo) -> common_pb2.IndexInfo:
    return value_to_pb(index, common_pb2.IndexInfo, index_type=index_type_to_pb(index.index_type))


def calibration_from_pb(calibration: common_pb2.IndexCalibration) -> IndexCalibration:
    levels = [params_from_pb(level, RecallLevel) for level in calibration.levels]
    return params_from_pb(calibration, IndexCalibration, levels=levels)


def calibration_to_pb(calibration: IndexCalibration) -> common_pb2.IndexCalibration:
    levels = [value_to_pb(level, common_pb2.RecallLevel) for level in calibration.levels]
    return value_to_pb(calibration, common_pb2.IndexCalibration, levels=levels)


def index_stats_from_pb(stats: common_pb2.IndexStatistics) -> IndexStats:
    return params_from_pb(
        stats,
        IndexStats,
        index_type=index_type_from_pb(stats.index_type),
        distance_type=metric_from_pb(stats.distance_type) or "",
        calibration=(
            calibration_from_pb(stats.calibration) if stats.HasField("calibration") else None
        ),
    )


def index_stats_to_pb(stats: IndexStats) -> common_pb2.IndexStatistics:
    return value_to_pb(
        stats,
        common_pb2.IndexStatistics,
        index_type=index_type_to_pb(stats.index_type),
        distance_type=metric_to_pb(stats.distance_type),
        calibration=calibration_to_pb(stats.calibration) if stats.calibration else None,
    )


def compaction_options_from_pb(options: common_pb2.CompactionOptions) -> dict[str, Any]:
    """Lance's compact_files options: those set, by name."""
    return {name: getattr(options, name) for name in COMPACTION_OPTIONS if options.HasField(name)}


def compaction_from_pb(metrics: common_pb2.CompactionMetrics) -> CompactionResult:
    return params_from_pb(metrics, CompactionResult)


def compaction_to_pb(result: CompactionResult) -> common_pb2.CompactionMetrics:
    return value_to_pb(result, common_pb2.CompactionMetrics)


def statistics_from_pb(stats: common_pb2.TableStatistics) -> TableStatistics:
    lengths = params_from_pb(stats.lengths, FragmentLengths)
    return params_from_pb(stats, TableStatistics, lengths=lengths)


def statistics_to_pb(stats: TableStatistics) -> common_pb2.TableStatistics:
    lengths = value_to_pb(stats.lengths, common_pb2.FragmentLengths)
    return value_to_pb(stats, common_pb2.TableStatistics, lengths=lengths)
