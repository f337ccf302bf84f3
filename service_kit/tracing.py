"""OpenTelemetry tracing: W3C trace context in gRPC metadata, a span per hop, OTLP export.

Off unless a service is given ``--otlp-endpoint``. Off, nothing here imports OpenTelemetry, no
interceptor is installed, and :func:`span` and :func:`capture` cost one context-variable read.

On, each service has a tracer provider of its own (three services may share a process: tests,
embedded mode), named ``embedsearch-<service>``. The server interceptor opens a SERVER span per
call, as the child of the caller's ``traceparent`` when it sends one, and makes the service's
tracer current for the call, so that code below it (:func:`span`, :func:`capture`) records into
the right provider without being handed it. The gateway's channels to its peers carry a CLIENT
span per call and send its context on as ``traceparent``.

Span names: ``<package.Service>/<Method>`` for calls (SERVER and CLIENT), ``parse`` and
``serialize`` for the request's and reply's bytes, ``embed.tokenize``, ``embed.queue`` and
``embed.inference`` in the embedder's batcher, and whatever a service adds with :func:`span`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

    from service_kit.settings import TracingSettings

log = logging.getLogger("service_kit.tracing")

# The tracer of the service handling the current call; None when that service does not trace.
_TRACER: contextvars.ContextVar[Tracer | None] = contextvars.ContextVar(
    "embedsearch_tracer", default=None
)
_NOTHING: AbstractContextManager[None] = nullcontext()
# Tasks ending client spans, held until done (the loop keeps weak references only).
_ENDING: set[asyncio.Task[None]] = set()
# The W3C keys, the only metadata the propagator reads.
TRACE_KEYS = ("traceparent", "tracestate")


class Tracing:
    """One service's tracer: its provider, exporter and sampler. Built by :func:`start`."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer: Tracer = provider.get_tracer("embedsearch")
        self.propagator = TraceContextTextMapPropagator()

    def server_interceptor(self) -> grpc.aio.ServerInterceptor:
        return TracingInterceptor(self)

    def client_interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        """The interceptors of a channel to a peer: one per kind of call, as grpc.aio wants."""
        return [
            _UnaryUnary(self),
            _UnaryStream(self),
            _StreamUnary(self),
            _StreamStream(self),
        ]

    def flush(self, timeout_s: float = 5.0) -> None:
        """Send the spans still buffered (at shutdown, or when a test wants them now)."""
        self.provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        self.provider.shutdown()


def start(
    settings: TracingSettings, service_name: str, exporter: SpanExporter | None = None
) -> Tracing | None:
    """The service's tracing, exporting to ``settings.otlp_endpoint`` (or to ``exporter``);
    None, and nothing imported, when tracing is off.

    The sampler follows a caller's decision (its ``traceparent``'s sampled flag) and samples
    ``trace_sample_ratio`` of the traces that start here.
    """
    if exporter is None and not settings.otlp_endpoint:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    if exporter is None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        # http:// is plaintext, https:// TLS (the exporter tells them apart by the scheme).
        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint)
    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio)),
        resource=Resource.create({"service.name": f"embedsearch-{service_name}"}),
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info(
        "%s sends traces to %s (sampling %.3g of new traces)",
        service_name,
        settings.otlp_endpoint or type(exporter).__name__,
        settings.trace_sample_ratio,
    )
    return Tracing(provider)


# -- spans inside a call ----------------------------------------------------------------------


def span(name: str, **attributes: Any) -> AbstractContextManager[Any]:
    """A child span of the current one, for a step of a call; nothing when the service handling
    the call does not trace. Threads started with ``asyncio.to_thread`` see the call's span.

    >>> with span("store.search", table="docs"):  # doctest: +SKIP
    ...     found = catalog.search(name, query)
    """
    tracer = _TRACER.get()
    if tracer is None:
        return _NOTHING
    return tracer.start_as_current_span(name, attributes=attributes or None)


@dataclass
class Captured:
    """Where a step that runs elsewhere (another task, a batch shared by several calls) belongs:
    the calling service's tracer and the call's context."""

    tracer: Tracer
    context: Context
    # Wall-clock time minus perf_counter time, read once: every span of the call maps the same
    # perf_counter instant to the same time (two reads apart differ by the time between them,
    # which put a step's end a few hundred nanoseconds after the next step's start).
    offset_ns: int = field(default_factory=lambda: time.time_ns() - time.perf_counter_ns())

    def record(
        self, name: str, start: float, end: float, attributes: dict[str, Any] | None = None
    ) -> None:
        """A finished span from ``start`` to ``end`` (``time.perf_counter()`` seconds)."""
        done = self.tracer.start_span(
            name,
            context=self.context,
            attributes=attributes,
            start_time=int(start * 1e9) + self.offset_ns,
        )
        done.end(end_time=int(end * 1e9) + self.offset_ns)


def capture() -> Captured | None:
    """The current call's place in its trace, to record steps done on its behalf later; None
    when the service handling it does not trace."""
    tracer = _TRACER.get()
    if tracer is None:
        return None
    from opentelemetry.context import get_current

    return Captured(tracer, get_current())


# -- the server side ---------------------------------------------------------------------------


class TracingInterceptor(grpc.aio.ServerInterceptor):
    """Opens a SERVER span around each call (health and reflection aside), as the child of the
    caller's ``traceparent``, with the service's tracer current for the call. The reply is
    serialized inside the call, under a ``serialize`` span; the span ends with the call's
    status code.

    Install it first (outermost), so that the span covers the other interceptors' work.
    """

    def __init__(self, tracing: Tracing) -> None:
        self._tracing = tracing

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or details.method.startswith("/grpc."):
            return handler
        tracing, name = self._tracing, details.method.lstrip("/")
        serializer = handler.response_serializer or (lambda reply: reply)

        @contextmanager
        def call_span(context: grpc.aio.ServicerContext) -> Iterator[None]:
            parent = tracing.propagator.extract(_trace_headers(details.invocation_metadata))
            with _server_span(tracing, name, parent, context):
                yield

        def serialized(reply: Any) -> bytes:
            with tracing.tracer.start_as_current_span("serialize"):
                return serializer(reply)

        if handler.unary_unary or handler.stream_unary:
            inner = handler.unary_unary or handler.stream_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> bytes:
                with call_span(context):
                    return serialized(await inner(request, context))

            factory = (
                grpc.unary_unary_rpc_method_handler
                if handler.unary_unary
                else grpc.stream_unary_rpc_method_handler
            )
            return _bytes_handler(factory, unary, handler)

        inner_stream = handler.unary_stream or handler.stream_stream

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            with call_span(context):
                async for reply in inner_stream(request, context):
                    yield serialized(reply)

        factory = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream
            else grpc.stream_stream_rpc_method_handler
        )
        return _bytes_handler(factory, stream, handler)


def _bytes_handler(
    factory: Callable[..., grpc.RpcMethodHandler],
    behaviour: Callable[..., Any],
    original: grpc.RpcMethodHandler,
) -> grpc.RpcMethodHandler:
    """``behaviour`` answering serialized replies, taking requests as ``original`` does."""
    return factory(
        behaviour, request_deserializer=original.request_deserializer, response_serializer=None
    )


@contextmanager
def _server_span(
    tracing: Tracing, name: str, parent: Context, context: grpc.aio.ServicerContext
) -> Iterator[None]:
    from opentelemetry.trace import SpanKind, Status, StatusCode

    service, _, method = name.rpartition("/")
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
    token = _TRACER.set(tracing.tracer)
    try:
        with tracing.tracer.start_as_current_span(
            name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as current:
            try:
                yield
            finally:
                code = context.code() or grpc.StatusCode.OK
                code = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
                current.set_attribute("rpc.grpc.status_code", code.value[0])
                if code is not grpc.StatusCode.OK:
                    current.set_status(Status(StatusCode.ERROR, code.name))
    finally:
        _TRACER.reset(token)


def _trace_headers(metadata: Sequence[tuple[str, Any]] | None) -> dict[str, str]:
    return {key: value for key, value in metadata or () if key in TRACE_KEYS}


# -- the client side ---------------------------------------------------------------------------


class _ClientSpan:
    """A CLIENT span per call on a channel, its context sent on as ``traceparent``."""

    def __init__(self, tracing: Tracing) -> None:
        self._tracing = tracing

    def _start(
        self, details: grpc.aio.ClientCallDetails
    ) -> tuple[Span, grpc.aio.ClientCallDetails]:
        from opentelemetry.trace import SpanKind, set_span_in_context

        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        name = method.lstrip("/")
        service, _, rpc = name.rpartition("/")
        current = self._tracing.tracer.start_span(
            name,
            kind=SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc},
        )
        headers: dict[str, str] = {}
        self._tracing.propagator.inject(headers, context=set_span_in_context(current))
        metadata = grpc.aio.Metadata(*(details.metadata or ()), *headers.items())
        return current, details._replace(metadata=metadata)

    @staticmethod
    def _end_with(current: Span, call: Any) -> Any:
        """End the span when ``call`` ends, with its status code."""

        async def end(finished: Any, end_ns: int) -> None:
            from opentelemetry.trace import Status, StatusCode

            code = grpc.StatusCode.CANCELLED if finished.cancelled() else await finished.code()
            current.set_attribute("rpc.grpc.status_code", code.value[0])
            if code is not grpc.StatusCode.OK:
                current.set_status(Status(StatusCode.ERROR, code.name))
            current.end(end_time=end_ns)

        def done(finished: Any) -> None:
            # grpc.aio tells a call's status by a coroutine: read it in a task of its own.
            task = asyncio.get_running_loop().create_task(end(finished, time.time_ns()))
            _ENDING.add(task)
            task.add_done_callback(_ENDING.discard)

        call.add_done_callback(done)
        return call

    async def _intercept(self, continuation: Any, details: Any, request: Any) -> Any:
        current, details = self._start(details)
        try:
            call = await continuation(details, request)
        except BaseException:
            current.end()
            raise
        return self._end_with(current, call)


class _UnaryUnary(_ClientSpan, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._intercept(continuation, details, request)


class _UnaryStream(_ClientSpan, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._intercept(continuation, details, request)


class _StreamUnary(_ClientSpan, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await self._intercept(continuation, details, requests)


class _StreamStream(_ClientSpan, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await self._intercept(continuation, details, requests)


# -- a receiver, for tests, benchmarks and a quick look without a collector --------------------


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as a collector received it; ids in hex, times in epoch nanoseconds."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


class SpanReceiver:
    """An OTLP/gRPC trace receiver on loopback that keeps the spans it is sent: point services'
    ``--otlp-endpoint`` at :attr:`endpoint`.

    >>> with SpanReceiver() as receiver:  # doctest: +SKIP
    ...     run_stack(otlp_endpoint=receiver.endpoint)
    ...     receiver.wait_for(lambda spans: len(spans) >= 10)
    """

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        self._spans: list[ReceivedSpan] = []
        self._changed = threading.Condition()
        self._server = grpc.server(ThreadPoolExecutor(2, thread_name_prefix="otlp-receiver"))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Receiving(self), self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{port}"
        self._server.start()

    def add(self, spans: list[ReceivedSpan]) -> None:
        with self._changed:
            self._spans.extend(spans)
            self._changed.notify_all()

    def spans(self) -> list[ReceivedSpan]:
        with self._changed:
            return list(self._spans)

    def clear(self) -> None:
        with self._changed:
            self._spans.clear()

    def wait_for(
        self, done: Callable[[list[ReceivedSpan]], bool], timeout_s: float = 60.0
    ) -> list[ReceivedSpan]:
        """The spans received, once ``done`` holds of them; TimeoutError if it never does."""
        with self._changed:
            if not self._changed.wait_for(lambda: done(self._spans), timeout_s):
                raise TimeoutError(f"{len(self._spans)} spans received; still waiting for more")
            return list(self._spans)

    def close(self) -> None:
        self._server.stop(0)

    def __enter__(self) -> SpanReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Receiving:
    """The TraceService servicer behind :class:`SpanReceiver`."""

    def __init__(self, receiver: SpanReceiver) -> None:
        self._receiver = receiver

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        self._receiver.add(list(_received(request)))
        return trace_service_pb2.ExportTraceServiceResponse()


def _received(request: Any) -> Iterator[ReceivedSpan]:
    for resource_spans in request.resource_spans:
        resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for one in scope_spans.spans:
                attributes = {a.key: _plain(a.value) for a in one.attributes}
                yield ReceivedSpan(
                    service=resource.get("service.name", ""),
                    name=one.name,
                    trace_id=one.trace_id.hex(),
                    span_id=one.span_id.hex(),
                    parent_id=one.parent_span_id.hex(),
                    kind=one.kind,
                    start_ns=one.start_time_unix_nano,
                    end_ns=one.end_time_unix_nano,
                    attributes=attributes,
                )


def _plain(value: Any) -> Any:
    """The Python value of an OTLP ``AnyValue`` of a scalar kind (None for arrays and maps)."""
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind in _SCALARS else None


_SCALARS = {"string_value", "bool_value", "int_value", "double_value", "bytes_value"}
