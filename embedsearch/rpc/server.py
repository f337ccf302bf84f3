"""Server runtime shared by the services: interceptor, health, reflection, metrics and shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.descriptor_pb2 import MethodOptions
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from pydantic import ValidationError

from embedsearch.errors import RETRY_AFTER_KEY, EmbedsearchError, Overloaded, status_code_name
from embedsearch.rpc.client import read_pem
from embedsearch.rpc.deadline import set_deadline
from embedsearch.rpc.memory import return_large_blocks_to_the_system
from embedsearch.rpc.settings import ServiceSettings

log = logging.getLogger("embedsearch.rpc")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class RpcMetrics:
    """Per-service request metrics, registered in the service's own registry.

    Each server gets its own :class:`CollectorRegistry`, so several services (or several test
    servers) can live in one process without clashing.
    """

    def __init__(self, prefix: str, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            f"{prefix}_requests_total",
            "RPCs handled, by method and status code.",
            ["method", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            f"{prefix}_request_duration_seconds",
            "RPC handling time in seconds, by method.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            f"{prefix}_requests_in_flight", "RPCs being handled now.", registry=registry
        )


class _Outcome:
    """Records one call's status code and latency when the call ends."""

    def __init__(self, metrics: RpcMetrics, method: str) -> None:
        self.metrics, self.method, self.code = metrics, method, "OK"
        self.start = time.perf_counter()
        self.closed = False
        metrics.in_flight.inc()

    def close(self, code: str | None = None) -> None:
        """Record the call once; an error is recorded before its status reaches the caller."""
        if self.closed:
            return
        self.closed = True
        self.code = code or self.code
        self.metrics.in_flight.dec()
        self.metrics.requests.labels(self.method, self.code).inc()
        self.metrics.latency.labels(self.method).observe(time.perf_counter() - self.start)


async def _abort_for(
    exc: BaseException, context: grpc.aio.ServicerContext, out: _Outcome, subject: str
) -> None:
    """End a failed call with the status its error maps to; unexpected errors become INTERNAL.

    ``subject`` (say "table 'docs'") is put in front of a message that does not name it yet.
    """
    if isinstance(exc, EmbedsearchError):
        out.close(status_code_name(exc))
        message = str(exc)
        if subject and subject.split(" ", 1)[-1] not in message:
            message = f"{subject}: {message}"
        if isinstance(exc, Overloaded):
            milliseconds = max(1, round(exc.retry_after_s * 1000))
            context.set_trailing_metadata(((RETRY_AFTER_KEY, str(milliseconds)),))
        await context.abort(grpc.StatusCode[out.code], message)
    out.close("INTERNAL")
    log.exception("unhandled error in %s", out.method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {out.method}: {exc!r}")


# Decides whether a call may proceed, from its full method name and its metadata; raises a
# typed error (Unauthenticated, PermissionDenied) to refuse it.
Guard = Callable[[str, Sequence[tuple[str, Any]]], None]


@asynccontextmanager
async def _answering(
    metrics: RpcMetrics,
    method: str,
    context: grpc.aio.ServicerContext,
    subject: str = "",
    admit: Callable[[], None] | None = None,
) -> AsyncIterator[None]:
    """Around one call: admit it, record its deadline, code and latency, and map a raised
    error to a status."""
    out = _Outcome(metrics, method)
    set_deadline(context.time_remaining())
    try:
        if admit is not None:
            admit()
        yield
    except grpc.aio.AbortError:
        out.code = context.code().name if context.code() else "UNKNOWN"
        raise
    except asyncio.CancelledError:
        out.code = "CANCELLED"
        raise
    except Exception as exc:
        await _abort_for(exc, context, out, subject)
    finally:
        out.close()


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps typed errors to status codes, logs unexpected ones, and records request metrics.

    Servicers therefore never catch errors themselves: they raise, and this one place answers.
    """

    def __init__(
        self,
        metrics: RpcMetrics,
        subject: Callable[[Any], str] | None = None,
        guard: Guard | None = None,
    ) -> None:
        self._metrics = metrics
        self._subject = subject or (lambda request: "")
        self._guard = guard

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith("/grpc."):
            return handler
        method = details.method.rsplit("/", 1)[-1]
        metrics, subject, guard = self._metrics, self._subject, self._guard
        admit = (
            None if guard is None else lambda: guard(details.method, details.invocation_metadata)
        )

        if handler.unary_unary or handler.stream_unary:
            inner = handler.unary_unary or handler.stream_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                about = subject(request) if handler.unary_unary else ""
                async with _answering(metrics, method, context, about, admit):
                    return await inner(request, context)

            factory = (
                grpc.unary_unary_rpc_method_handler
                if handler.unary_unary
                else grpc.stream_unary_rpc_method_handler
            )
            return factory(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

        inner_stream = handler.unary_stream or handler.stream_stream

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with _answering(metrics, method, context, admit=admit):
                async for response in inner_stream(request, context):
                    yield response

        factory = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream
            else grpc.stream_stream_rpc_method_handler
        )
        return factory(
            streaming,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class Readiness:
    """Drives grpc.health.v1 for one service: NOT_SERVING until warm-up succeeds."""

    def __init__(self, services: Iterable[str]) -> None:
        self.servicer = health.aio.HealthServicer()
        self._services = ["", *services]
        self._task: asyncio.Task[None] | None = None

    async def set(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self._services:
            await self.servicer.set(name, status)

    def warm_up(self, coro: Awaitable[None], what: str) -> None:
        """Run a warm-up in the background and report SERVING once it succeeds."""

        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("warm-up failed: %s; staying NOT_SERVING", what)
                return
            await self.set(True)
            log.info("serving: %s", what)

        self._task = asyncio.get_running_loop().create_task(run())


def read_only_methods(service: ServiceDescriptor) -> frozenset[str]:
    """Full method names (``/pkg.Service/Method``) the contract marks ``NO_SIDE_EFFECTS``."""
    return frozenset(
        f"/{service.full_name}/{method.name}"
        for method in service.methods
        if method.GetOptions().idempotency_level == MethodOptions.NO_SIDE_EFFECTS
    )


def server_credentials(settings: ServiceSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings' files; client certificates are required when a
    client CA is given (mutual TLS). None serves plaintext."""
    if not settings.tls_cert_file:
        return None
    ca = read_pem(settings.tls_client_ca_file, "--tls-client-ca-file")
    return grpc.ssl_server_credentials(
        [
            (
                read_pem(settings.tls_key_file, "--tls-key-file"),
                read_pem(settings.tls_cert_file, "--tls-cert-file"),
            )
        ],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


async def new_server(
    settings: ServiceSettings,
    service_full_names: list[str],
    add_servicers: Callable[[grpc.aio.Server], None],
    metrics: RpcMetrics,
    subject: Callable[[Any], str] | None = None,
    guard: Guard | None = None,
) -> tuple[grpc.aio.Server, int, Readiness]:
    """Build a gRPC server with our interceptor, health, reflection and limits, and bind it.

    The server is not started; health answers NOT_SERVING until :meth:`Readiness.set`.
    Health and reflection answer without ``guard``: probes and discovery carry no token.
    """
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
        # Clients keep idle channels alive with pings every 30 s (rpc/client.py); accept them
        # instead of answering GOAWAY "too_many_pings" during long calls.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    server = grpc.aio.server(
        interceptors=[ErrorInterceptor(metrics, subject, guard)], options=options
    )
    add_servicers(server)
    readiness = Readiness(service_full_names)
    await readiness.set(False)  # grpc's HealthServicer starts "" as SERVING; we are not, yet
    health_pb2_grpc.add_HealthServicer_to_server(readiness.servicer, server)
    reflection.enable_server_reflection(
        [*service_full_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    credentials = server_credentials(settings)
    port = (
        server.add_secure_port(settings.address, credentials)
        if credentials
        else server.add_insecure_port(settings.address)
    )
    if port == 0 and not settings.socket:
        raise OSError(f"could not bind {settings.address}")
    if settings.metrics_port >= 0:
        httpd, _ = start_http_server(settings.metrics_port, registry=metrics.registry)
        log.info("%s metrics on :%d/metrics", settings.service_name, httpd.server_port)
    return server, port, readiness


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        event = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=False)


def configure_logging(level: str) -> None:
    """Send structured logs to stdout; called once, by an entry point."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


async def serve(
    settings: ServiceSettings,
    create_server: Callable[[Any], Awaitable[tuple[grpc.aio.Server, int]]],
) -> None:
    """Run one service until SIGINT/SIGTERM, then drain in-flight calls within the grace period."""
    server, port = await create_server(settings)
    await server.start()
    log.info("%s listening on %s (port %d)", settings.service_name, settings.address, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("%s shutting down (grace %.1fs)", settings.service_name, settings.grace_period_s)
    await server.stop(settings.grace_period_s)


PARENT_PID_ENV = "EMBEDSEARCH_PARENT_PID"


def die_with_parent() -> None:
    """Get SIGTERM when the launcher named by ``EMBEDSEARCH_PARENT_PID`` dies, even by SIGKILL,
    so ``embedsearch up`` never leaves a service running without its supervisor (Linux only).

    The child arms this itself, at start-up: a ``preexec_fn`` in the launcher would fork a
    process that already runs gRPC's threads, and gRPC's fork handlers can abort that child.
    """
    parent = os.environ.get(PARENT_PID_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != int(parent):  # the launcher died before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)


def main(
    settings_cls: type[ServiceSettings],
    create_server: Callable[[Any], Awaitable[tuple[grpc.aio.Server, int]]],
    argv: list[str] | None = None,
) -> None:
    """Entry point of ``python -m <service>``: settings, logging, then serve until signalled."""
    try:
        settings = settings_cls.from_cli(argv)
    except ValidationError as exc:
        sys.exit(f"{settings_cls.service_name}: {settings_cls.explain(exc)}")
    configure_logging(settings.log_level)
    if settings.malloc_mmap_threshold_bytes:
        return_large_blocks_to_the_system(settings.malloc_mmap_threshold_bytes)
    die_with_parent()
    asyncio.run(serve(settings, create_server))
