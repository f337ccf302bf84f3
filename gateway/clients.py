"""Channels to the embedder and the store; failed calls come back as typed errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

import grpc
import numpy as np

from embedsearch.rpc.client import channel_options, target_of, typed_errors
from embedsearch.rpc.convert import MODE_TO_PB, spec_to_pb
from embedsearch.rpc.deadline import remaining
from embedsearch.v1 import embedder_pb2, embedder_pb2_grpc, store_pb2_grpc
from embedsearch.wire import unpack_vectors

# Internal calls without a client deadline still end: a hung peer must not hang the gateway.
DEFAULT_TIMEOUT_S = 300.0


class Peer:
    """A channel and stub to one internal service. ``call`` forwards the caller's deadline."""

    kind: ClassVar[str] = ""
    stub_class: ClassVar[Any] = None

    def __init__(
        self,
        address: str,
        max_message_bytes: int,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.name = f"{self.kind} at {address}"
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
            return await getattr(self.stub, method)(request, timeout=timeout)

    async def stream(self, method: str, requests: AsyncIterator[Any]) -> Any:
        """A client-streaming call: send every request, then await the reply. If producing the
        requests fails, the call is cancelled (the peer commits nothing) and the error raised."""
        # No default deadline: the caller's stream sets the pace, however long the ingest.
        call = getattr(self.stub, method)(timeout=remaining(None))
        with typed_errors(self.name):
            try:
                async for request in requests:
                    await call.write(request)
                await call.done_writing()
            except BaseException:
                call.cancel()
                raise
            return await call

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
        """Vectors for texts, or for encoded images and other binary inputs."""
        request = embedder_pb2.EmbedRequest(
            function=spec_to_pb(provider, args), mode=MODE_TO_PB[mode]
        )
        if inputs and isinstance(inputs[0], bytes):
            request.blobs.extend(embedder_pb2.Blob(data=data) for data in inputs)
        else:
            request.texts.extend(inputs)
        reply: embedder_pb2.EmbedResponse = await self.call("Embed", request)
        return unpack_vectors(reply.vectors, reply.ndims).reshape(reply.count, reply.ndims)


class StoreClient(Peer):
    """The store; the gateway forwards most of its calls as they are."""

    kind = "store"
    stub_class = store_pb2_grpc.StoreStub
