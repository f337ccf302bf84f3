"""Client-side helpers: channels with our limits, and failed calls turned into typed errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from embedsearch.rpc.status import error_from_rpc

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """Options for every channel we open: message limits and keepalive for long-lived peers."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Reconnect quickly after a peer restarts instead of backing off for up to two minutes.
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]


def target_of(address: str) -> str:
    """gRPC target for ``host:port``, ``unix:/path`` or ``grpc://host:port``."""
    return address.removeprefix("grpc://")


@contextmanager
def typed_errors(peer: str) -> Iterator[None]:
    """Re-raise a failed call as the typed error its status code maps to."""
    try:
        yield
    except grpc.RpcError as err:
        raise error_from_rpc(err, peer) from None
