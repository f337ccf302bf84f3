"""Conversion between typed errors and gRPC statuses, in both directions.

A typed error goes out as its status code and message plus a ``google.rpc.Status`` in the
``grpc-status-details-bin`` trailer (AIP-193): an ``ErrorInfo`` with the error's reason, domain
``embedsearch.v1`` and metadata; a ``RetryInfo`` when it says when to retry; a ``BadRequest``
when it names the fields at fault. :func:`error_from_rpc` rebuilds the same class from them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from embedsearch.contract.errors import (
    ERROR_DOMAIN,
    EmbedsearchError,
    error_for,
    status_code_name,
)
from embedsearch.contract.text import clip_utf8

# The trailer that carries the serialized google.rpc.Status.
STATUS_DETAILS_KEY = rpc_status.GRPC_DETAILS_METADATA_KEY
# Bounds on what one error puts in the trailer, under gRPC's metadata limit (8 to 16 KiB).
MAX_DETAIL_BYTES = 256
MAX_FIELD_VIOLATIONS = 16

_REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def status_for(exc: EmbedsearchError) -> grpc.StatusCode:
    """The gRPC status code for a typed error (the table is in ``contract/errors.py``)."""
    return grpc.StatusCode[status_code_name(exc)]


def rich_status(exc: EmbedsearchError, message: str) -> grpc.Status:
    """The status a server answers ``exc`` with: its code, ``message``, and the
    ``google.rpc.Status`` details in the trailing metadata."""
    code = status_for(exc)
    status = status_pb2.Status(code=code.value[0], message=message)
    info = error_details_pb2.ErrorInfo(reason=exc.reason, domain=ERROR_DOMAIN)
    for key, value in exc.metadata.items():
        info.metadata[key] = clip_utf8(str(value), MAX_DETAIL_BYTES)
    status.details.add().Pack(info)
    if exc.retry_after_s is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(max(0, round(exc.retry_after_s * 1e9)))
        status.details.add().Pack(retry)
    if exc.field_violations:
        bad = error_details_pb2.BadRequest()
        for name, description in exc.field_violations[:MAX_FIELD_VIOLATIONS]:
            bad.field_violations.add(
                field=clip_utf8(name, MAX_DETAIL_BYTES),
                description=clip_utf8(description, MAX_DETAIL_BYTES),
            )
        status.details.add().Pack(bad)
    return rpc_status.to_status(status)


@dataclass
class RichDetails:
    """What a failed call's ``google.rpc.Status`` says beyond its code and message."""

    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    field_violations: list[tuple[str, str]] = field(default_factory=list)
    retry_after_s: float | None = None


def details_of(err: grpc.RpcError) -> RichDetails:
    """The details of a failed call, empty when it carries none (say an error of grpc's own,
    like UNAVAILABLE for a peer that cannot be reached)."""
    found = RichDetails()
    for detail in _status_of(err).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            found.reason, found.domain = info.reason, info.domain
            found.metadata = dict(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            found.retry_after_s = retry.retry_delay.ToNanoseconds() / 1e9
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.field_violations = [(v.field, v.description) for v in bad.field_violations]
    return found


def _status_of(err: grpc.RpcError) -> status_pb2.Status:
    """The google.rpc.Status in a failed call's trailers; an empty one when there is none or
    it does not decode."""
    trailing = getattr(err, "trailing_metadata", None)
    pairs: Iterable[tuple[str, str | bytes]] = (trailing() if trailing else None) or ()
    for key, value in pairs:
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except DecodeError:
                break
    return status_pb2.Status()


def error_from_rpc(err: grpc.RpcError, peer: str = "") -> EmbedsearchError:
    """Rebuild the typed error from a failed call, by the reason in its ErrorInfo (falling back
    to its status code), with the metadata, field violations and retry delay it carries.

    The message names the peer for connection failures and for refused credentials (a gateway
    without its peer token must not read as the client's own token being wrong).
    """
    code: grpc.StatusCode = err.code()  # type: ignore[attr-defined]
    message: str = err.details() or code.name  # type: ignore[attr-defined]
    if code == grpc.StatusCode.UNAVAILABLE and peer:
        message = f"{peer} is unavailable: {message}"
    elif code in _REFUSED and peer and not message.startswith(peer):
        message = f"{peer} refused the call: {message}"
    found = details_of(err)
    return error_for(
        code.name,
        message,
        found.reason if found.domain == ERROR_DOMAIN else "",
        metadata=found.metadata,
        field_violations=found.field_violations,
        retry_after_s=found.retry_after_s,
    )
