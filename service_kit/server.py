"""Server runtime shared by the services: interceptor, health, reflection, metrics and shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import sys
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from functools import cache
from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from pydantic import ValidationError

from embedsearch.contract.channels import read_pem
from embedsearch.contract.errors import (
    RETRY_AFTER_KEY,
    EmbedsearchError,
    Internal,
    InvalidArgument,
    status_code_name,
)
from embedsearch.contract.status import rich_status
from embedsearch.contract.text import clip_utf8
from service_kit.auth import Guard, token_guard
from service_kit.deadline import set_deadline
from service_kit.launch import PARENT_PID_ENV
from service_kit.memory import return_large_blocks_to_the_system
from service_kit.settings import ServiceSettings, TracingSettings
from service_kit.tracing import Tracing, span
from service_kit.tracing import start as start_tracing
from service_kit.validate import parse_request

log = logging.getLogger("service_kit")

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


class Outcome:
    """Records one call's status code and latency when the call ends, and what it is about."""

    def __init__(self, metrics: RpcMetrics, method: str) -> None:
        self.metrics, self.method, self.code = metrics, method, "OK"
        # What the call is about (say "table 'docs'"), for error messages; set once parsed.
        self.subject = ""
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


# A status message travels in the grpc-message trailer, percent-encoded, under gRPC's metadata
# limit (8 to 16 KiB): a message quoting a huge input would turn into RESOURCE_EXHAUSTED.
MAX_STATUS_MESSAGE_BYTES = 1024


async def _abort_for(exc: BaseException, context: grpc.aio.ServicerContext, out: Outcome) -> None:
    """End a failed call with the status its error maps to; unexpected errors become INTERNAL.

    The status carries the error's reason, metadata, retry delay and field violations as a
    ``google.rpc.Status`` (:func:`~embedsearch.contract.status.rich_status`). The call's subject
    (say "table 'docs'") is put in front of a message that does not name it yet. An INTERNAL
    answer reveals nothing of the server: the traceback goes to the log, under an error id the
    message quotes and the metadata carries.
    """
    if isinstance(exc, EmbedsearchError):
        message = str(exc)
        if out.subject and out.subject.split(" ", 1)[-1] not in message:
            message = f"{out.subject}: {message}"
    else:
        error_id = secrets.token_hex(4)
        log.error("unhandled error in %s (error id %s)", out.method, error_id, exc_info=exc)
        message = f"internal error in {out.method}; see the server log (error id {error_id})"
        exc = Internal(message, metadata={"error_id": error_id})
    out.close(status_code_name(exc))
    status = rich_status(exc, clip_utf8(message, MAX_STATUS_MESSAGE_BYTES))
    trailers = status.trailing_metadata
    if exc.retry_after_s is not None:  # for clients of the previous release, which read this
        trailers += ((RETRY_AFTER_KEY, str(max(1, round(exc.retry_after_s * 1000)))),)
    await context.abort(status.code, status.details, trailers)


@asynccontextmanager
async def _answering(
    metrics: RpcMetrics,
    method: str,
    context: grpc.aio.ServicerContext,
    admit: Callable[[], None] | None = None,
) -> AsyncIterator[Outcome]:
    """Around one call: admit it, record its deadline, code and latency, and map a raised
    error to a status."""
    out = Outcome(metrics, method)
    set_deadline(context.time_remaining())
    try:
        if admit is not None:
            admit()
        yield out
    except grpc.aio.AbortError:
        out.code = context.code().name if context.code() else "UNKNOWN"
        raise
    except asyncio.CancelledError:
        out.code = "CANCELLED"
        raise
    except Exception as exc:
        await _abort_for(exc, context, out)
    finally:
        out.close()


class _RequestStream:
    """A request stream parsed message by message as the servicer reads it.

    A message that does not parse ends the call with INVALID_ARGUMENT even when the servicer
    reads the stream in a task of its own (EmbedStream does, to embed while it reads): that
    task cancels the call's task, and :meth:`failing_the_call` turns the cancellation back into
    the parse error.
    """

    def __init__(self, raw: AsyncIterator[bytes], message_class: type[Message]) -> None:
        self._raw, self._class = raw, message_class
        self._call_task = asyncio.current_task()
        self._error: InvalidArgument | None = None

    async def __aiter__(self) -> AsyncIterator[Message]:
        async for data in self._raw:
            try:
                message = parse_request(self._class, data)
            except InvalidArgument as exc:
                self._error = exc
                if self._call_task is not None and asyncio.current_task() is not self._call_task:
                    self._call_task.cancel()
                raise
            yield message

    @contextmanager
    def failing_the_call(self) -> Iterator[None]:
        try:
            yield
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._error is None or task is None:
                raise
            task.uncancel()
            raise self._error from None


@cache
def _request_class(method: str) -> type[Message] | None:
    """The request message class of ``/package.Service/Method``, from the descriptor pool the
    generated modules registered in; None for a method that is not ours."""
    service, _, name = method.strip("/").partition("/")
    try:
        descriptor = descriptor_pool.Default().FindMethodByName(f"{service}.{name}")
    except KeyError:
        return None
    return message_factory.GetMessageClass(descriptor.input_type)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Parses and checks requests, admits callers, maps typed errors to status codes, logs
    unexpected ones, and records request metrics.

    Servicers therefore never catch errors themselves: they raise, and this one place answers.
    The handlers it returns take the request's bytes and parse them inside the call
    (:func:`~service_kit.validate.parse_request`), so that bytes that are no valid message,
    or an enum value the contract does not define, answer INVALID_ARGUMENT through the same
    table as every other error. Streamed requests are parsed one by one as they are read;
    servicers read them by iterating, not with ``context.read()``.
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
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or details.method.startswith("/grpc."):
            return handler
        request_class = _request_class(details.method)
        if request_class is None:  # no contract to parse and guard it by: not served
            return None
        method = details.method.rsplit("/", 1)[-1]
        metrics, subject, guard = self._metrics, self._subject, self._guard
        admit = (
            None if guard is None else lambda: guard(details.method, details.invocation_metadata)
        )

        def answering(context: grpc.aio.ServicerContext) -> AbstractAsyncContextManager[Outcome]:
            return _answering(metrics, method, context, admit)

        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary_unary(data: bytes, context: grpc.aio.ServicerContext) -> Any:
                async with answering(context) as call:
                    with span("parse"):
                        request = parse_request(request_class, data)
                    call.subject = subject(request)
                    return await inner(request, context)

            return _handler(grpc.unary_unary_rpc_method_handler, unary_unary, handler)

        if handler.stream_unary:
            inner = handler.stream_unary

            async def stream_unary(
                raw: AsyncIterator[bytes], context: grpc.aio.ServicerContext
            ) -> Any:
                async with answering(context):
                    requests = _RequestStream(raw, request_class)
                    with requests.failing_the_call():
                        return await inner(requests, context)

            return _handler(grpc.stream_unary_rpc_method_handler, stream_unary, handler)

        if handler.unary_stream:
            inner = handler.unary_stream

            async def unary_stream(
                data: bytes, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                async with answering(context) as call:
                    with span("parse"):
                        request = parse_request(request_class, data)
                    call.subject = subject(request)
                    async for response in inner(request, context):
                        yield response

            return _handler(grpc.unary_stream_rpc_method_handler, unary_stream, handler)

        inner = handler.stream_stream

        async def stream_stream(
            raw: AsyncIterator[bytes], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            async with answering(context):
                requests = _RequestStream(raw, request_class)
                with requests.failing_the_call():
                    async for response in inner(requests, context):
                        yield response

        return _handler(grpc.stream_stream_rpc_method_handler, stream_stream, handler)


def _handler(
    factory: Callable[..., grpc.RpcMethodHandler],
    behaviour: Callable[..., Any],
    original: grpc.RpcMethodHandler,
) -> grpc.RpcMethodHandler:
    """A handler for ``behaviour`` that receives the request's bytes (no deserializer: the
    interceptor parses them) and serializes replies as ``original`` does."""
    return factory(
        behaviour, request_deserializer=None, response_serializer=original.response_serializer
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


# The health of each server built by new_server, for drain() to turn NOT_SERVING.
_READINESS: weakref.WeakKeyDictionary[grpc.aio.Server, Readiness] = weakref.WeakKeyDictionary()
# The tracing of each server that traces, for drain() to flush.
_TRACING: weakref.WeakKeyDictionary[grpc.aio.Server, Tracing] = weakref.WeakKeyDictionary()


def tracing_of(server: grpc.aio.Server) -> Tracing | None:
    """The tracing of a server built by :func:`new_server`; None where tracing is off."""
    return _TRACING.get(server)


async def new_server(
    settings: ServiceSettings,
    service_full_names: list[str],
    add_servicers: Callable[[grpc.aio.Server], None],
    metrics: RpcMetrics,
    subject: Callable[[Any], str] | None = None,
    tracing: Tracing | None = None,
) -> tuple[grpc.aio.Server, int, Readiness]:
    """Build a gRPC server with our interceptor, health, reflection and limits, and bind it.

    With ``--otlp-endpoint`` set, a tracing interceptor goes in front of ours (or ``tracing``,
    where the service built it first to trace its own channels: the gateway).

    The server is not started; health answers NOT_SERVING until :meth:`Readiness.set`.
    Callers need one of the settings' bearer tokens when any is configured (a read-only one
    for the RPCs the contract marks NO_SIDE_EFFECTS); health and reflection answer without
    one, for probes and discovery.
    """
    guard = token_guard(settings, service_full_names)
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
    tracing = tracing or start_tracing(settings.group(TracingSettings), settings.service_name)
    interceptors: list[grpc.aio.ServerInterceptor] = [ErrorInterceptor(metrics, subject, guard)]
    if tracing is not None:
        interceptors.insert(0, tracing.server_interceptor())
    server = grpc.aio.server(interceptors=interceptors, options=options)
    if tracing is not None:
        _TRACING[server] = tracing
    add_servicers(server)
    readiness = Readiness(service_full_names)
    _READINESS[server] = readiness
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
        httpd, _ = start_http_server(
            settings.metrics_port, addr=settings.metrics_host, registry=metrics.registry
        )
        log.info(
            "%s metrics on %s:%d/metrics",
            settings.service_name,
            settings.metrics_host,
            httpd.server_port,
        )
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
    await drain(server, settings.grace_period_s)


async def drain(server: grpc.aio.Server, grace_s: float) -> None:
    """Stop ``server`` gracefully: health turns NOT_SERVING for good first, so that probes and
    load balancers stop sending, then calls in flight get ``grace_s`` seconds to finish while
    new ones are refused; the spans of a server that traces are sent last."""
    readiness = _READINESS.get(server)
    if readiness is not None:
        await readiness.servicer.enter_graceful_shutdown()
    await server.stop(grace_s)
    tracing = _TRACING.get(server)
    if tracing is not None:  # the last calls' spans
        await asyncio.to_thread(tracing.shutdown)


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
