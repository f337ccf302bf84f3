"""Rows embedded as the gateway embeds them, with the embedder's own core, in this process.

A Ray actor holds one :class:`RowEmbedder`: the gateway's row handling (``GatewayCore``: typing,
``on_bad_vectors``, which rows lack a vector) over the embedder's servicer and core (providers,
batching limits, one loaded model per function), called in process instead of over gRPC. The
request and reply messages are the ones the gateway would send, so the vectors are too.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from embedder_service.core import EmbedderCore
from embedder_service.plugins import load_plugins
from embedder_service.providers.sentence_transformers import bundled_model_path
from embedder_service.server import BUILTIN, EmbedderServicer
from embedder_service.settings import EmbedderSettings
from embedsearch.contract.schema import conform
from gateway.clients import EmbedderClient
from gateway.core import GatewayCore
from gateway.mapping import Binding
from gateway.settings import GatewaySettings
from gateway.values import BadVectors

# The gateway's peer addresses, which a job never dials: its embedder is in process.
IN_PROCESS = "in-process"


class _ServicerStub:
    """The embedder's servicer called in process the way the gateway calls its gRPC stub."""

    def __init__(self, servicer: EmbedderServicer) -> None:
        self._servicer = servicer

    def __getattr__(self, method: str) -> Callable[..., Awaitable[Any]]:
        handler = getattr(self._servicer, method)

        async def call(request: Any, timeout: float | None = None, metadata: Any = ()) -> Any:
            return await handler(request, None)

        return call


class InProcessEmbedder(EmbedderClient):
    """The gateway's embedder client over an :class:`EmbedderCore` in this process: the same
    splitting into requests, media reading and message packing, without a channel."""

    def __init__(self, core: EmbedderCore) -> None:  # no Peer.__init__: there is no channel
        self.name = "embedder (in process)"
        self.token = None
        self.stub = _ServicerStub(EmbedderServicer(core))

    async def close(self) -> None:
        return None


def embedder_core(settings: EmbedderSettings) -> EmbedderCore:
    """An embedder core as ``python -m embedder_service`` builds one: built-in providers,
    --plugins, and the bundled model allowed whatever --model-roots says."""
    providers = BUILTIN.copy()
    load_plugins(providers, settings.plugin_modules())
    return EmbedderCore(providers, settings, None, (os.path.realpath(bundled_model_path()),))


def gateway_settings() -> GatewaySettings:
    """The gateway's settings from GATEWAY_* variables (media roots and hosts among them)."""
    return GatewaySettings(embedder_addr=IN_PROCESS, store_addr=IN_PROCESS, metrics_port=-1)


@dataclass
class Embedding:
    """What a worker needs to embed rows as the gateway would: the table's schema (or the part
    of it a job writes), the bindings to fill, the on_bad_vectors policy, and the embedder's
    and gateway's settings, read once by the driver from its EMBEDDER_* and GATEWAY_*
    variables and shipped to every worker."""

    schema: pa.Schema
    bindings: list[Binding]
    bad: BadVectors = field(default_factory=BadVectors)
    embedder: EmbedderSettings = field(default_factory=EmbedderSettings)
    gateway: GatewaySettings = field(default_factory=gateway_settings)


class RowEmbedder:
    """Fills the bound vector columns of row batches and types them by the table's schema.

    Each instance has an event loop and an embedder core of its own; build one per process
    (per Ray actor), where its models stay loaded for every batch.
    """

    def __init__(self, spec: Embedding) -> None:
        self.spec = spec
        self.loop = asyncio.new_event_loop()
        self.core = embedder_core(spec.embedder)
        self.gateway = GatewayCore(InProcessEmbedder(self.core), None, spec.gateway)  # type: ignore[arg-type]

    def embed(self, rows: pa.Table) -> pa.Table:
        """``rows`` (any column order, source types) as the gateway would hand them to the
        store, cast to the table's schema as the store would write them."""
        return conform(self.loop.run_until_complete(self._embed(rows)), self.spec.schema)

    async def _embed(self, rows: pa.Table) -> pa.Table:
        # The gateway's own steps for an Add message: type and check the rows, then embed.
        spec = self.spec
        rows = self.gateway._conform(rows, spec.schema, spec.bindings, spec.bad)
        return await self.gateway.embed_rows(rows, spec.schema, spec.bindings, spec.bad)

    async def bind(self, wanted: Binding) -> Binding:
        """``wanted`` with canonical arguments and its vector length, as the gateway binds a
        function when it creates a table."""
        return await self.gateway._bind(self.spec.schema, wanted)

    def close(self) -> None:
        self.core.close()
        self.loop.close()
