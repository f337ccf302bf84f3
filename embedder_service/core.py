"""The embedder's core: loads providers once per spec and runs inference off the event loop."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import ValidationError

from embedsearch.embeddings.base import EmbeddingFunction
from embedsearch.embeddings.registry import EmbeddingFunctionRegistry
from embedsearch.errors import InvalidArgument

log = logging.getLogger("embedder_service")

SOURCE, QUERY = "source", "query"


@dataclass
class LoadedFunction:
    """One provider instance with its model loaded, shared by every caller with the same spec."""

    provider: str
    func: EmbeddingFunction
    canonical_args: dict[str, Any]
    ndims: int
    modalities: tuple[str, ...]
    # One thread per instance: a model is not re-entrant, and torch parallelizes within a call.
    executor: ThreadPoolExecutor = field(repr=False)

    def run(self, mode: str, inputs: list[Any]) -> np.ndarray:
        """Embed in the calling (worker) thread; returns float32 (len(inputs), ndims)."""
        compute = (
            self.func.compute_query_embeddings
            if mode == QUERY
            else self.func.compute_source_embeddings
        )
        vectors = np.asarray(compute(inputs), dtype=np.float32)
        if vectors.shape != (len(inputs), self.ndims):
            raise RuntimeError(
                f"{self.provider} returned shape {vectors.shape}, "
                f"expected ({len(inputs)}, {self.ndims})"
            )
        return vectors


def canonical_args(func: EmbeddingFunction) -> dict[str, Any]:
    """The persistable arguments: the caller's, secrets left out, with the model name filled in."""
    canonical = func.safe_model_dump()
    if "name" in type(func).model_fields:
        canonical = {**canonical, "name": func.name}  # type: ignore[attr-defined]
    return canonical


def spec_key(provider: str, args: dict[str, Any]) -> str:
    """Cache key of a function spec: provider plus its arguments in canonical JSON."""
    return json.dumps([provider, args], sort_keys=True, default=str)


class EmbedderCore:
    """Loads each (provider, args) once and embeds batches for it in a worker thread."""

    def __init__(self, registry: EmbeddingFunctionRegistry) -> None:
        self.registry = registry
        self._loaded: dict[str, asyncio.Future[LoadedFunction]] = {}

    async def resolve(self, provider: str, args: dict[str, Any]) -> LoadedFunction:
        """The loaded function for a spec, loading its model on first use: once per canonical
        spec, however many callers (or spellings of the same arguments) ask at the same time."""
        func = self._create(provider, args)
        canonical = canonical_args(func)
        secrets = {
            key: hashlib.sha256(str(value).encode()).hexdigest()
            for key, value in args.items()
            if key in func.sensitive_keys
        }
        key = spec_key(provider, {**canonical, **secrets})
        pending = self._loaded.get(key)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._loaded[key] = pending
            try:
                pending.set_result(await self._load(provider, func, canonical))
            except BaseException as exc:
                del self._loaded[key]  # a failed load is retried by the next caller
                pending.set_exception(exc)
                pending.exception()  # mark retrieved: concurrent waiters re-raise it themselves
                raise
        return await asyncio.shield(pending)

    def _create(self, provider: str, args: dict[str, Any]) -> EmbeddingFunction:
        """Validate the arguments and build the provider instance (no model is loaded yet)."""
        cls = self.registry.get(provider)
        try:
            return cls.create(**args)
        except ValidationError as exc:
            message = f"bad arguments for provider {provider!r}: {_brief(exc)}"
            raise InvalidArgument(message) from exc

    async def _load(
        self, provider: str, func: EmbeddingFunction, canonical: dict[str, Any]
    ) -> LoadedFunction:
        executor = ThreadPoolExecutor(1, thread_name_prefix=f"embed-{provider}")
        log.info("loading %s %s", provider, json.dumps(canonical, default=str))
        ndims = await asyncio.get_running_loop().run_in_executor(executor, func.ndims)
        return LoadedFunction(
            provider=provider,
            func=func,
            canonical_args=canonical,
            ndims=int(ndims),
            modalities=tuple(getattr(type(func), "modalities", ("text",))),
            executor=executor,
        )

    async def embed(
        self, provider: str, args: dict[str, Any], mode: str, inputs: list[Any]
    ) -> tuple[LoadedFunction, np.ndarray]:
        """Embed ``inputs`` as source documents or as queries, off the event loop."""
        loaded = await self.resolve(provider, args)
        if not inputs:
            return loaded, np.zeros((0, loaded.ndims), dtype=np.float32)
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(loaded.executor, loaded.run, mode, inputs)
        return loaded, vectors

    def close(self) -> None:
        """Stop the worker threads."""
        for pending in self._loaded.values():
            if pending.done() and not pending.exception():
                pending.result().executor.shutdown(wait=False, cancel_futures=True)


def _brief(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'args'}: {err['msg']}" for err in exc.errors()
    )
