"""Conversion between typed errors and gRPC status codes, in both directions."""

from __future__ import annotations

import grpc

from embedsearch.contract.errors import (
    RETRY_AFTER_KEY,
    EmbedsearchError,
    error_for_code,
    status_code_name,
)

_REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def status_for(exc: EmbedsearchError) -> grpc.StatusCode:
    """The gRPC status code for a typed error (the table is in ``contract/errors.py``)."""
    return grpc.StatusCode[status_code_name(exc)]


def error_from_rpc(err: grpc.RpcError, peer: str = "") -> EmbedsearchError:
    """Rebuild the typed error from a failed call, naming the peer for connection failures and
    for refused credentials (a gateway without its peer token must not read as the client's
    own token being wrong)."""
    code: grpc.StatusCode = err.code()  # type: ignore[attr-defined]
    details: str = err.details() or code.name  # type: ignore[attr-defined]
    if code == grpc.StatusCode.UNAVAILABLE and peer:
        details = f"{peer} is unavailable: {details}"
    elif code in _REFUSED and peer and not details.startswith(peer):
        details = f"{peer} refused the call: {details}"
    return error_for_code(code.name, details, retry_after_of(err))


def retry_after_of(err: grpc.RpcError) -> float | None:
    """The server's ``retry-after-ms`` hint on a failed call, in seconds, if it sent one."""
    trailing = getattr(err, "trailing_metadata", None)
    for key, value in (trailing() if trailing else None) or ():
        if key == RETRY_AFTER_KEY:
            try:
                return max(0.0, int(value) / 1000)
            except ValueError:
                return None
    return None
