"""Small from_pb / to_pb helpers for the types the three contracts share."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format, struct_pb2

from embedsearch.contract.errors import InvalidArgument
from embedsearch.v1 import common_pb2

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
    struct = struct_pb2.Struct()
    try:
        struct.update(args)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"create() arguments must be JSON values: {exc}") from exc
    return common_pb2.FunctionSpec(provider=provider, args=struct)


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


def projections_to_pb(projections: dict[str, str]) -> list[common_pb2.Projection]:
    return [common_pb2.Projection(name=k, expression=v) for k, v in projections.items()]
