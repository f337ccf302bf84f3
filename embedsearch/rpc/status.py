"""Conversion between typed errors and gRPC status codes, in both directions."""

from __future__ import annotations

import grpc

from embedsearch.errors import EmbedsearchError, error_for_code, status_code_name


def status_for(exc: EmbedsearchError) -> grpc.StatusCode:
    """The gRPC status code for a typed error (the table lives in :mod:`embedsearch.errors`)."""
    return grpc.StatusCode[status_code_name(exc)]


def error_from_rpc(err: grpc.RpcError, peer: str = "") -> EmbedsearchError:
    """Rebuild the typed error from a failed call, naming the peer for connection failures."""
    code: grpc.StatusCode = err.code()  # type: ignore[attr-defined]
    details: str = err.details() or code.name  # type: ignore[attr-defined]
    if code == grpc.StatusCode.UNAVAILABLE and peer:
        details = f"{peer} is unavailable: {details}"
    return error_for_code(code.name, details)
