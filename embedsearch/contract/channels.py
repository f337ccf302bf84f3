"""Client-side helpers: channels with our limits, and failed calls turned into typed errors."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from embedsearch.contract.errors import FailedPrecondition, Unavailable
from embedsearch.contract.status import error_from_rpc

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


def read_pem(path: str, flag: str) -> bytes | None:
    """The bytes of a PEM file named by a setting, None when unset; a clear error otherwise."""
    if not path:
        return None
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise FailedPrecondition(f"cannot read {flag} {path!r}: {exc.strerror}") from exc


def channel_credentials(
    ca_file: str = "", cert_file: str = "", key_file: str = "", use_tls: bool = False
) -> grpc.ChannelCredentials | None:
    """TLS credentials for a channel: the CA that signed the server (system roots when only
    ``use_tls``), plus a client certificate for mutual TLS. None means plaintext."""
    if not (ca_file or use_tls):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca_file, "the TLS CA file"),
        private_key=read_pem(key_file, "the TLS client key file"),
        certificate_chain=read_pem(cert_file, "the TLS client certificate file"),
    )


def aio_channel(
    address: str,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    credentials: grpc.ChannelCredentials | None = None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
) -> grpc.aio.Channel:
    """An asyncio channel to ``address`` with our options: TLS when ``credentials`` are given,
    and ``interceptors`` (a service's tracing, say) on every call."""
    target, options = target_of(address), channel_options(max_message_bytes)
    if credentials:
        return grpc.aio.secure_channel(target, credentials, options, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options, interceptors=interceptors)


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


def wait_until_serving(
    target: str, timeout: float, credentials: grpc.ChannelCredentials | None = None
) -> None:
    """Block until the service at ``target`` reports SERVING, or raise Unavailable."""
    deadline = time.monotonic() + timeout
    channel = (
        grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(
                    health_pb2.HealthCheckRequest(), timeout=min(2.0, max(timeout, 0.1))
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise Unavailable(f"{target} did not report SERVING within {timeout:.0f}s")
            time.sleep(0.1)
