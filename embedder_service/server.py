"""gRPC adapter of the embedder: thin servicer methods over :class:`EmbedderCore`."""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections.abc import AsyncIterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from embedder_service.core import EmbedderCore, LoadedFunction
from embedder_service.http_api import HttpFace, HttpServer, start_http
from embedder_service.metrics import EmbedderMetrics
from embedder_service.plugins import load_plugins
from embedder_service.providers import (  # noqa: F401 - importing them registers them
    BUILTIN,
    bedrock,
    cohere,
    cohere_rerank,
    colbert,
    cross_encoder,
    gemini_text,
    huggingface,
    imagebind,
    instructor,
    jina,
    ollama,
    open_clip,
    openai,
    sentence_transformers,
    voyageai,
    watsonx,
)
from embedder_service.providers.sentence_transformers import bundled_model_path
from embedder_service.rerank import RerankCore
from embedder_service.settings import EmbedderSettings
from embedsearch.contract.convert import (
    MODALITY_TO_PB,
    MODES,
    args_to_pb,
    spec_from_pb,
    spec_to_pb,
)
from embedsearch.contract.errors import InvalidArgument
from embedsearch.contract.functions import EmbeddingFunction, sensitive_keys_of
from embedsearch.contract.multivector import MultiVectors
from embedsearch.contract.wire import pack_vectors
from embedsearch.v1 import common_pb2, embedder_pb2, embedder_pb2_grpc
from service_kit.auth import token_guard
from service_kit.paths import comma_list
from service_kit.server import RpcMetrics, new_server

log = logging.getLogger("embedder")
# The HTTP face's bound port, by gRPC server (its --http-port may be 0: a free one).
HTTP_PORTS: weakref.WeakKeyDictionary[grpc.aio.Server, int] = weakref.WeakKeyDictionary()
SERVICE = embedder_pb2.DESCRIPTOR.services_by_name["Embedder"].full_name


def resolved_to_pb(loaded: LoadedFunction) -> embedder_pb2.ResolveFunctionResponse:
    return embedder_pb2.ResolveFunctionResponse(
        canonical=spec_to_pb(loaded.provider, loaded.canonical_args),
        ndims=loaded.ndims,
        modalities=[MODALITY_TO_PB[m] for m in loaded.modalities],
        multi_vector=loaded.multi_vector,
    )


def inputs_from_pb(request: embedder_pb2.EmbedRequest) -> list[object]:
    """The request's inputs: texts, or blobs as (bytes, mime type); exactly one kind."""
    if request.texts and request.blobs:
        raise InvalidArgument("send texts or blobs in one request, not both")
    if request.blobs:
        return [(blob.data, blob.mime_type) for blob in request.blobs]
    return list(request.texts)


def mode_from_pb(mode: int) -> str:
    """``source`` or ``query``; an enum value the contract does not define is refused."""
    try:
        return MODES[mode]
    except KeyError:
        known = ", ".join(common_pb2.EmbedMode.keys())
        raise InvalidArgument(f"mode {mode} is no EmbedMode; use one of {known}") from None


class EmbedderServicer(embedder_pb2_grpc.EmbedderServicer):
    """Unpacks requests, calls the core, packs replies. Errors are mapped by the interceptor."""

    def __init__(self, core: EmbedderCore, reranking: RerankCore | None = None) -> None:
        self.core = core
        self.reranking = reranking or RerankCore(
            core.settings, core.model_roots, core._tokenizers, core.metrics
        )
        self.http: HttpServer | None = None  # the OpenAI-compatible face, when --http-port

    async def ListProviders(
        self, request: embedder_pb2.ListProvidersRequest, context: grpc.aio.ServicerContext
    ) -> embedder_pb2.ListProvidersResponse:
        return embedder_pb2.ListProvidersResponse(
            providers=[
                embedder_pb2.ProviderInfo(
                    name=name,
                    default_model=getattr(cls, "default_model", ""),
                    modalities=[MODALITY_TO_PB[m] for m in getattr(cls, "modalities", ("text",))],
                    arguments=sorted(cls.model_fields),
                    kind=getattr(cls, "kind", "local"),
                    multi_vector=bool(getattr(cls, "multi_vector", False)),
                    defaults=args_to_pb(argument_defaults(cls)),
                )
                for name, cls in self.core.registry.items()
            ]
        )

    async def ResolveFunction(
        self, request: embedder_pb2.ResolveFunctionRequest, context: grpc.aio.ServicerContext
    ) -> embedder_pb2.ResolveFunctionResponse:
        return resolved_to_pb(await self.core.resolve(*spec_from_pb(request.function)))

    async def Embed(
        self, request: embedder_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> embedder_pb2.EmbedResponse:
        provider, args = spec_from_pb(request.function)
        inputs = inputs_from_pb(request)
        loaded, vectors = await self.core.embed(provider, args, mode_from_pb(request.mode), inputs)
        if isinstance(vectors, list):  # a multi-vector function: each input's vectors in turn
            multi = MultiVectors.from_groups(vectors, loaded.ndims)
            return embedder_pb2.EmbedResponse(
                ndims=loaded.ndims,
                count=len(multi.vectors),
                vectors=pack_vectors(multi.vectors),
                request_id=request.request_id,
                vectors_per_input=multi.counts.tolist(),
            )
        return embedder_pb2.EmbedResponse(
            ndims=loaded.ndims,
            count=len(vectors),
            vectors=pack_vectors(vectors),
            request_id=request.request_id,
        )

    async def EmbedStream(
        self,
        request_iterator: AsyncIterator[embedder_pb2.EmbedRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[embedder_pb2.EmbedResponse]:
        """Each request is embedded as soon as it arrives; replies go out as they finish."""
        replies: asyncio.Queue[embedder_pb2.EmbedResponse | BaseException | None] = asyncio.Queue()

        async def one(request: embedder_pb2.EmbedRequest) -> None:
            try:
                await replies.put(await self.Embed(request, context))
            except BaseException as exc:
                await replies.put(exc)

        async def read() -> None:
            async with asyncio.TaskGroup() as group:
                async for request in request_iterator:
                    group.create_task(one(request))
            await replies.put(None)

        reader = asyncio.get_running_loop().create_task(read())
        # A message that does not parse fails the reader and ends the call with its error (the
        # kit's request stream does that); the reader's copy of it is seen here, not logged.
        reader.add_done_callback(lambda task: task.cancelled() or task.exception())
        try:
            while (reply := await replies.get()) is not None:
                if isinstance(reply, BaseException):
                    raise reply
                yield reply
        finally:
            reader.cancel()

    async def Rerank(
        self, request: embedder_pb2.RerankRequest, context: grpc.aio.ServicerContext
    ) -> embedder_pb2.RerankResponse:
        kind, args = spec_from_pb(request.reranker)
        documents = list(request.documents)
        scores = await self.reranking.rerank(kind, args, request.query, documents)
        return embedder_pb2.RerankResponse(scores=scores.tolist())


async def create_server(settings: EmbedderSettings) -> tuple[grpc.aio.Server, int]:
    """Build the embedder server, bound but not started; SERVING once preloads are loaded."""
    registry = CollectorRegistry()
    metrics = RpcMetrics("embedder", registry)
    providers = BUILTIN.copy()
    load_plugins(providers, settings.plugin_modules())
    # The bundled model is always allowed: it is the default, and its canonical name.
    bundled = (os.path.realpath(bundled_model_path()),)
    core = EmbedderCore(providers, settings, EmbedderMetrics(registry), bundled)
    servicer = EmbedderServicer(core)
    server, port, readiness = await new_server(
        settings,
        [SERVICE],
        lambda s: embedder_pb2_grpc.add_EmbedderServicer_to_server(servicer, s),
        metrics,
    )
    preload = settings.preloaded()

    async def warm_up() -> None:
        for provider in preload:
            await core.resolve(provider, {})

    if settings.http_port >= 0:
        face = HttpFace(
            core,
            servicer.reranking,
            token_guard(settings, [SERVICE]),
            metrics,
            aliases=settings.http_aliases(),
            matryoshka=frozenset(comma_list(settings.http_matryoshka_models)),
            max_body_bytes=settings.http_max_body_bytes,
        )
        servicer.http = await start_http(face, settings.host, settings.http_port)
        HTTP_PORTS[server] = servicer.http.port
        log.info(
            "embedder OpenAI-compatible HTTP API on %s:%d/v1", settings.host, servicer.http.port
        )
    readiness.warm_up(warm_up(), f"embedder, preloaded {preload or 'nothing'}")
    servicer.readiness = readiness  # the servicer, held by the server, keeps the warm-up alive
    return server, port


def argument_defaults(cls: type[EmbeddingFunction]) -> dict[str, Any]:
    """The defaults of ``cls``'s create() arguments that JSON can hold, secrets left out."""
    secret = sensitive_keys_of(cls)
    found: dict[str, Any] = {}
    for name, info in cls.model_fields.items():
        if info.is_required() or name in secret:
            continue
        value = info.get_default(call_default_factory=True)
        if value is None or isinstance(value, str | bool | int | float):
            found[name] = value
    return found
