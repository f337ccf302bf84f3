"""The embedder's core: specs resolved once, one loaded instance per canonical spec, batched."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from embedder_service.batcher import Batcher, Runner
from embedder_service.cache import Once
from embedder_service.guards import (
    check_endpoint,
    check_function,
    check_inputs,
    check_path_args,
)
from embedder_service.metrics import EmbedderMetrics
from embedder_service.secrets import resolve_all
from embedder_service.settings import EmbedderSettings
from embedsearch.contract.errors import (
    EmbedsearchError,
    FailedPrecondition,
    InvalidArgument,
    status_code_name,
)
from embedsearch.contract.functions import EmbeddingFunction, is_reference
from embedsearch.contract.registry import EmbeddingFunctionRegistry
from service_kit.deadline import remaining
from service_kit.lru import LRU

log = logging.getLogger("embedder_service")

SOURCE, QUERY = "source", "query"


class FunctionRunner:
    """The runner of a function without a pipeline of its own: one compute call per batch."""

    def __init__(self, func: EmbeddingFunction) -> None:
        self.func = func

    def prepare(self, mode: str, inputs: list[Any]) -> list[tuple[Any, int]]:
        return [(value, 1 + len(value) // 4 if isinstance(value, str) else 1) for value in inputs]

    def run(self, mode: str, payloads: list[Any]) -> np.ndarray:
        compute = (
            self.func.compute_query_embeddings
            if mode == QUERY
            else self.func.compute_source_embeddings
        )
        return np.asarray(compute(payloads), dtype=np.float32)


@dataclass
class LoadedFunction:
    """One provider instance with its model loaded, shared by every caller with the same spec."""

    key: str
    provider: str
    func: EmbeddingFunction
    canonical_args: dict[str, Any]
    ndims: int
    modalities: tuple[str, ...]
    batcher: Batcher
    # Several vectors per input (the provider's ``multi_vector`` ClassVar): embed() then
    # returns a list of (vectors, ndims) arrays.
    multi_vector: bool = False


def canonical_args(func: EmbeddingFunction) -> dict[str, Any]:
    """The persistable arguments: the caller's, secrets left out, with the model name filled in."""
    canonical = func.safe_model_dump()
    # A $var: reference stays one: the table keeps it, as LanceDB's metadata does.
    if "name" in type(func).model_fields and not is_reference(canonical.get("name")):
        canonical = {**canonical, "name": func.name}  # type: ignore[attr-defined]
    return canonical


def spec_key(provider: str, args: dict[str, Any]) -> str:
    """Cache key of a function spec: provider plus its arguments in canonical JSON."""
    return json.dumps([provider, args], sort_keys=True, default=str)


def received_key(provider: str, args: dict[str, Any]) -> str | None:
    """Key of a spec as received, before any validation; None for arguments nested too deep to
    serialise (check_function refuses those)."""
    try:
        return spec_key(provider, args)
    except RecursionError:
        return None


def input_key(value: Any) -> Hashable:
    """What makes two inputs identical: the text, or a digest of the bytes."""
    if isinstance(value, str):
        return value
    data = value[0] if isinstance(value, tuple) else value
    return ("blob", hashlib.sha256(data).hexdigest())


class EmbedderCore:
    """Resolves each function spec once, loads each (provider, canonical args) once, and embeds
    through the loaded function's batcher.

    A spec as received (provider and arguments in canonical JSON, :func:`received_key`) keys
    the function it resolved to, in an LRU of ``--function-cache-size`` specs. A spec seen
    again skips the function guards, secret resolution and the provider's validation: each
    depends only on the spec and these settings, which hold for the life of the process.
    What a request carries besides its spec (its inputs, their modality, the queue they join)
    is checked on every call. A spec that fails is not kept; the next call tries it afresh.

    Secrets are resolved when a spec is first seen, and the loaded instance keeps them: it is
    keyed by the references (``$env:``, ``$var:``), not by their values.
    A rotated ``$var:`` file or a changed variable therefore reaches a function already in use
    only on restart (a rolling restart of the Deployment); one not yet resolved, or a spec whose
    variable was missing, sees the new value on its next call. Dropping an entry from the LRU
    would not help either: the spec would resolve to the same loaded instance.
    """

    def __init__(
        self,
        registry: EmbeddingFunctionRegistry,
        settings: EmbedderSettings,
        metrics: EmbedderMetrics | None = None,
        always_allowed_roots: Sequence[str] = (),
    ) -> None:
        """``always_allowed_roots`` (real paths) hold models a caller may name whatever
        ``--model-roots`` lists: the bundled model."""
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self.batch_limits = settings.batch_limits
        self.request_limits = settings.request_limits
        self.model_roots = (*settings.model_root_dirs(), *always_allowed_roots)
        self.base_url_rules = settings.base_url_rules()
        self.cache: LRU[tuple[str, Hashable], np.ndarray] = LRU(settings.query_cache_size)
        self._tokenizers = ThreadPoolExecutor(settings.tokenizer_workers, "tokenize")
        self._executors: list[ThreadPoolExecutor] = [self._tokenizers]
        # Spec as received -> its function; canonical spec -> its loaded instance. Loaded
        # instances hold threads and models in use: they are never dropped.
        self._functions: Once[str, LoadedFunction] = Once(settings.function_cache_size)
        self._loaded: Once[str, LoadedFunction] = Once()
        self._loaded_list: list[LoadedFunction] = []

    async def resolve(self, provider: str, args: dict[str, Any]) -> LoadedFunction:
        """The loaded function for a spec: validated and its secrets resolved once per spec as
        received, its model loaded once per canonical spec, however many callers (or
        spellings of the same arguments) ask at the same time."""
        key = received_key(provider, args)
        if key is None:
            return await self._resolve(provider, args)
        return await self._functions.get(key, lambda: self._resolve(provider, args))

    async def _resolve(self, provider: str, args: dict[str, Any]) -> LoadedFunction:
        check_function(provider, args, self.request_limits)
        func = self._create(provider, args)
        canonical = canonical_args(func)
        secrets = {
            key: hashlib.sha256(str(value).encode()).hexdigest()
            for key, value in args.items()
            if key in func.sensitive_keys
        }
        key = spec_key(provider, {**canonical, **secrets})
        # A failed load is not kept: the next caller retries it.
        return await self._loaded.get(key, lambda: self._load(key, provider, func, canonical))

    def _create(self, provider: str, args: dict[str, Any]) -> EmbeddingFunction:
        """Validate the arguments and build the provider instance (no model is loaded yet).

        Arguments a provider lists in its ``path_keys`` ClassVar may name a local path: such
        a path must lie under --model-roots (a plugin opts in the same way).
        """
        cls = self.registry.get(provider)
        check_endpoint(args, self.base_url_rules)
        resolved = resolve_all(args, cls.sensitive_keys, self.settings.secrets_dir)
        check_path_args(getattr(cls, "path_keys", ()), resolved, self.model_roots)
        try:
            # Built from the resolved values (not create(), which refuses a literal secret as
            # LanceDB does in a client: here the secrets are resolved on purpose).
            func = cls(**resolved)
        except ValidationError as exc:
            message = f"bad arguments for provider {provider!r}: {_brief(exc)}"
            raise InvalidArgument(message) from exc
        func._original_args = dict(args)  # references, not the secrets they resolve to
        configure = getattr(func, "configure", None)
        if configure is not None:
            configure(self.settings.retry_base_s, self._retry_counter(provider))
        # The engine of a local model is the server's choice (--backend), never the spec's.
        use_backend = getattr(func, "use_backend", None)
        if use_backend is not None:
            use_backend(self.settings.inference_backend)
        return func

    def _retry_counter(self, provider: str) -> Any:
        metrics = self.metrics
        return (lambda: metrics.retries.labels(provider).inc()) if metrics else (lambda: None)

    async def _load(
        self, key: str, provider: str, func: EmbeddingFunction, canonical: dict[str, Any]
    ) -> LoadedFunction:
        concurrency = int(getattr(func, "concurrency", 1))
        inference = ThreadPoolExecutor(concurrency, thread_name_prefix=f"infer-{provider}")
        self._executors.append(inference)
        log.info("loading %s %s", provider, json.dumps(canonical, default=str))
        if self.metrics:
            self.metrics.model_loads.labels(provider).inc()
        loop = asyncio.get_running_loop()
        ndims = await loop.run_in_executor(inference, func.ndims)
        pipeline = getattr(func, "pipeline", None)
        runner: Runner = (
            await loop.run_in_executor(inference, pipeline) if pipeline else FunctionRunner(func)
        )
        limits = self.batch_limits.for_device(
            str(getattr(runner, "device", "cpu")), int(getattr(func, "batch_size", 10**9))
        )
        batcher = Batcher(
            runner,
            limits,
            self._tokenizers,
            inference,
            on_batch=(lambda stats: self.metrics.record_batch(provider, stats))
            if self.metrics
            else None,
            concurrency=concurrency,
        )
        if self.metrics:
            self.metrics.queue_depth.labels(provider).set_function(lambda: batcher.queued)
        loaded = LoadedFunction(
            key=key,
            provider=provider,
            func=func,
            canonical_args=canonical,
            ndims=int(ndims),
            modalities=tuple(getattr(type(func), "modalities", ("text",))),
            batcher=batcher,
            multi_vector=bool(getattr(type(func), "multi_vector", False)),
        )
        self._loaded_list.append(loaded)
        return loaded

    async def embed(
        self, provider: str, args: dict[str, Any], mode: str, inputs: list[Any]
    ) -> tuple[LoadedFunction, np.ndarray | list[np.ndarray]]:
        """Embed ``inputs`` as source documents or queries, batched with other callers'.
        A multi-vector function gives a list of (vectors, ndims) arrays, one per input."""
        try:
            check_inputs(inputs, self.request_limits)
            loaded = await self.resolve(provider, args)
            vectors = _checked(loaded, await self._embed(loaded, mode, inputs))
        except EmbedsearchError as exc:
            self._count(provider, status_code_name(exc))
            raise
        except Exception:
            self._count(provider, "INTERNAL")
            raise
        self._count(provider, "OK")
        if self.metrics:
            self.metrics.inputs.labels(provider, mode).inc(len(inputs))
        return loaded, vectors

    async def _embed(
        self, loaded: LoadedFunction, mode: str, inputs: list[Any]
    ) -> np.ndarray | list[np.ndarray]:
        _check_modalities(loaded, inputs)
        keys = [input_key(value) for value in inputs]
        if not inputs:
            return [] if loaded.multi_vector else np.zeros((0, loaded.ndims), dtype=np.float32)
        # The caller's deadline travels with the inputs, down to the provider's API calls.
        left = remaining()
        deadline = None if left is None else time.monotonic() + left
        if mode != QUERY or self.settings.query_cache_size <= 0:
            return await loaded.batcher.embed(mode, inputs, keys, deadline)
        cached = [self.cache.get((loaded.key, key)) for key in keys]
        missing = [i for i, vector in enumerate(cached) if vector is None]
        if self.metrics:
            self.metrics.cache.labels("hit").inc(len(inputs) - len(missing))
            self.metrics.cache.labels("miss").inc(len(missing))
        if missing:
            fresh = await loaded.batcher.embed(
                mode, [inputs[i] for i in missing], [keys[i] for i in missing], deadline
            )
            for i, vector in zip(missing, fresh, strict=True):
                self.cache.put((loaded.key, keys[i]), vector)
                cached[i] = vector
        if loaded.multi_vector:
            return cached  # type: ignore[return-value]
        return np.stack(cached).astype(np.float32, copy=False)

    async def count_tokens(self, loaded: LoadedFunction, mode: str, inputs: list[Any]) -> int:
        """What ``inputs`` cost as the batcher counts it: the model's tokens (special tokens
        included, after truncation) for a local model; an estimate for an API's."""
        loop = asyncio.get_running_loop()
        prepare = loaded.batcher.runner.prepare
        prepared = await loop.run_in_executor(self._tokenizers, prepare, mode, inputs)
        return sum(cost for _, cost in prepared)

    def loaded_functions(self) -> list[LoadedFunction]:
        """The functions whose models are loaded, oldest first."""
        return list(self._loaded_list)

    def _count(self, provider: str, code: str) -> None:
        if self.metrics:
            # A provider name is the caller's: one label per made-up name would grow without end.
            label = provider if provider in self.registry else "unknown"
            self.metrics.requests.labels(label, code).inc()

    def close(self) -> None:
        """Stop the worker threads."""
        for executor in self._executors:
            executor.shutdown(wait=False, cancel_futures=True)


def _checked(
    loaded: LoadedFunction, vectors: np.ndarray | list[np.ndarray]
) -> np.ndarray | list[np.ndarray]:
    """``vectors``, refused if their length is not the function's: an API server answering
    another model's vectors would otherwise write them into a column of another size."""
    if isinstance(vectors, np.ndarray):
        lengths = {vectors.shape[1]} if len(vectors) else set()
    else:
        lengths = {v.shape[-1] for v in vectors if v.size}
    wrong = lengths - {loaded.ndims}
    if wrong:
        raise FailedPrecondition(
            f"{loaded.provider} returned {wrong.pop()}-dimensional vectors, but the function "
            f"declares {loaded.ndims}: check its model and dimension arguments"
        )
    return vectors


def _check_modalities(loaded: LoadedFunction, inputs: list[Any]) -> None:
    """Reject, naming the row, an input of a kind the function does not embed."""
    for row, value in enumerate(inputs):
        if isinstance(value, str) and "text" not in loaded.modalities:
            raise InvalidArgument(f"input {row}: {loaded.provider} does not embed text")
        if not isinstance(value, str) and loaded.modalities == ("text",):
            raise InvalidArgument(
                f"input {row}: {loaded.provider} embeds text only; send texts, not blobs"
            )


def _brief(exc: ValidationError) -> str:
    """Pydantic's errors, one per argument; argument names are the caller's, so clipped."""
    return "; ".join(
        f"{'.'.join(_clip(str(p)) for p in err['loc']) or 'args'}: "
        f"{str(err['msg']).removeprefix('Value error, ')}"
        for err in exc.errors()
    )


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
