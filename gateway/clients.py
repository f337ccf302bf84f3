"""Channels to the embedder and the store; failed calls come back as typed errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import grpc
import numpy as np

from embedsearch.contract.channels import channel_options, target_of, typed_errors
from embedsearch.contract.convert import MODE_TO_PB, spec_to_pb
from embedsearch.contract.errors import Internal
from embedsearch.contract.wire import unpack_vectors
from embedsearch.v1 import embedder_pb2, embedder_pb2_grpc, store_pb2_grpc
from service_kit.auth import PeerToken
from service_kit.deadline import remaining

# Inputs per Embed request (under the embedder's default --max-inputs-per-request, 2048), and
# such requests in flight per embed.
EMBED_REQUEST_INPUTS = 1024
EMBED_REQUESTS_IN_FLIGHT = 2
# Internal calls without a client deadline still end: a hung peer must not hang the gateway.
DEFAULT_TIMEOUT_S = 300.0


class Peer:
    """A channel and stub to one internal service. ``call`` forwards the caller's deadline;
    every call carries the gateway's bearer token, when it has one (``--peer-token-file``)."""

    kind: ClassVar[str] = ""
    stub_class: ClassVar[Any] = None

    def __init__(
        self,
        address: str,
        max_message_bytes: int,
        credentials: grpc.ChannelCredentials | None = None,
        token: PeerToken | None = None,
    ) -> None:
        self.name = f"{self.kind} at {address}"
        self.token = token
        target, options = target_of(address), channel_options(max_message_bytes)
        self.channel = (
            grpc.aio.secure_channel(target, credentials, options=options)
            if credentials
            else grpc.aio.insecure_channel(target, options=options)
        )
        self.stub = self.stub_class(self.channel)

    async def call(self, method: str, request: Any) -> Any:
        """Invoke ``method`` with the time the incoming call has left."""
        timeout = remaining(DEFAULT_TIMEOUT_S)
        with typed_errors(self.name):
            return await getattr(self.stub, method)(
                request, timeout=timeout, metadata=self._metadata()
            )

    async def stream(self, method: str, requests: AsyncIterator[Any]) -> Any:
        """A client-streaming call: send every request, then await the reply. If producing the
        requests fails, the call is cancelled (the peer commits nothing) and the error raised.
        If the peer ends the call first (it failed, or went away), its status is raised."""
        # No default deadline: the caller's stream sets the pace, however long the ingest.
        call = getattr(self.stub, method)(timeout=remaining(None), metadata=self._metadata())
        with typed_errors(self.name):
            try:
                async for request in requests:
                    await call.write(request)
                await call.done_writing()
            except asyncio.InvalidStateError:
                # Writing to a call that has ended: awaiting it raises its real status
                # (UNAVAILABLE for a peer that died), as a typed error.
                await call
                raise Internal(f"{self.name} answered {method} before the stream ended") from None
            except BaseException:
                call.cancel()
                raise
            return await call

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return self.token.metadata() if self.token else ()

    async def close(self) -> None:
        await self.channel.close()


class EmbedderClient(Peer):
    """The embedder, with helpers for the calls the schema mapping makes."""

    kind = "embedder"
    stub_class = embedder_pb2_grpc.EmbedderStub

    async def resolve(
        self, provider: str, args: dict[str, Any]
    ) -> embedder_pb2.ResolveFunctionResponse:
        request = embedder_pb2.ResolveFunctionRequest(function=spec_to_pb(provider, args))
        return await self.call("ResolveFunction", request)

    async def embed(
        self, provider: str, args: dict[str, Any], mode: str, inputs: list[str] | list[bytes]
    ) -> np.ndarray:
        """Vectors for texts, or for encoded images and other binary inputs.

        Inputs go in requests of at most EMBED_REQUEST_INPUTS (the embedder bounds a request
        by --max-inputs-per-request), two at a time: one is tokenized while the model runs
        the other, and a large add never floods the embedder's queue.
        """
        function, pb_mode = spec_to_pb(provider, args), MODE_TO_PB[mode]
        slots = asyncio.Semaphore(EMBED_REQUESTS_IN_FLIGHT)

        async def one(part: list[str] | list[bytes]) -> np.ndarray:
            request = embedder_pb2.EmbedRequest(function=function, mode=pb_mode)
            if part and isinstance(part[0], bytes):
                request.blobs.extend(embedder_pb2.Blob(data=data) for data in part)
            else:
                request.texts.extend(part)
            async with slots:
                reply: embedder_pb2.EmbedResponse = await self.call("Embed", request)
            return unpack_vectors(reply.vectors, reply.ndims).reshape(reply.count, reply.ndims)

        step = EMBED_REQUEST_INPUTS
        parts = [inputs[i : i + step] for i in range(0, len(inputs), step)] or [inputs]
        vectors = await asyncio.gather(*(one(part) for part in parts))
        return vectors[0] if len(vectors) == 1 else np.concatenate(vectors)


class StoreClient(Peer):
    """The store; the gateway forwards most of its calls as they are."""

    kind = "store"
    stub_class = store_pb2_grpc.StoreStub
