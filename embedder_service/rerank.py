"""Reranker models in the embedder: (query, document) pairs scored in batches across callers.

A reranker spec (kind plus arguments, as a FunctionSpec) is validated and its secrets resolved
once per spec as received, and its model loaded once per canonical spec, as embedding functions
are. Each loaded reranker has a :class:`~embedder_service.batcher.Batcher`: pairs from every
caller are merged into batches within the same size and token limits, identical pairs are
scored once, and a batch's callers' deadline bounds the API calls made for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, PrivateAttr, SecretStr, ValidationError

from embedder_service.batcher import Batcher, Runner
from embedder_service.cache import Once
from embedder_service.guards import check_endpoint, check_function, check_path_args
from embedder_service.metrics import EmbedderMetrics
from embedder_service.secrets import resolve_all
from embedder_service.settings import EmbedderSettings
from embedsearch.contract.errors import EmbedsearchError, InvalidArgument, status_code_name
from embedsearch.contract.text import brief
from service_kit.deadline import remaining

log = logging.getLogger("embedder_service")

MODE = "rerank"  # the batcher's mode for every pair: one queue per loaded reranker


class RerankModel(BaseModel):
    """A reranker's create() arguments, and how it loads: subclasses register in
    :data:`RERANKERS` under their kind."""

    model_config = ConfigDict(extra="forbid")

    kind: ClassVar[str] = ""
    #: Arguments holding secrets: resolved from references, never logged or echoed.
    sensitive_keys: ClassVar[frozenset[str]] = frozenset()
    #: Arguments that may name a local path (checked against --model-roots).
    path_keys: ClassVar[frozenset[str]] = frozenset()
    #: Arguments filled in before resolution when the caller gives none.
    default_args: ClassVar[dict[str, Any]] = {}
    #: Batches run at once: 1 for a local model, more for an API.
    concurrency: ClassVar[int] = 1

    # Set by the core from --retry-base-s: how an API reranker's backoff starts.
    _retry_base_s: float = PrivateAttr(default=0.5)

    def retry_base_s(self) -> float:
        return self._retry_base_s

    def most_per_batch(self) -> int:
        """Most pairs in one batch (the provider's own limit)."""
        return 10**9

    def runner(self) -> Runner:
        """Load the model (on the inference thread) and return what scores batches: its
        ``run`` returns an (n, 1) float32 array of scores."""
        raise NotImplementedError

    def canonical(self) -> dict[str, Any]:
        """The arguments with defaults filled in, secrets left out."""
        return self.model_dump(exclude=set(self.sensitive_keys), mode="json")


class RerankerRegistry(dict[str, type[RerankModel]]):
    """Reranker kinds by name."""

    def register(self, kind: str) -> Any:
        def add(cls: type[RerankModel]) -> type[RerankModel]:
            cls.kind = kind
            self[kind] = cls
            return cls

        return add


#: The built-in rerankers; ``embedder_service.providers.cross_encoder`` and
#: ``...cohere_rerank`` register theirs when imported.
RERANKERS = RerankerRegistry()


def pair_cost(pair: tuple[str, str]) -> int:
    """Estimated tokens of a (query, document) pair, about 4 characters a token."""
    return 1 + (len(pair[0]) + len(pair[1])) // 4


@dataclass
class LoadedReranker:
    """One reranker with its model loaded, shared by every caller with the same spec."""

    key: str
    kind: str
    model: RerankModel
    batcher: Batcher


class RerankCore:
    """Scores documents against a query with a reranker, batched across callers.

    ``model_roots`` (real paths) are where a caller's ``model_name`` path may point;
    ``tokenizers`` is the pool pairs are prepared on (shared with the embedding core).
    """

    def __init__(
        self,
        settings: EmbedderSettings,
        model_roots: Sequence[str],
        tokenizers: ThreadPoolExecutor,
        metrics: EmbedderMetrics | None = None,
        registry: dict[str, type[RerankModel]] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = RERANKERS if registry is None else registry
        self.model_roots = tuple(model_roots)
        self.base_url_rules = settings.base_url_rules()
        self.metrics = metrics
        self._tokenizers = tokenizers
        self._executors: list[ThreadPoolExecutor] = []
        self._received: Once[str, LoadedReranker] = Once(settings.function_cache_size)
        self._loaded: Once[str, LoadedReranker] = Once()

    async def rerank(
        self, kind: str, args: dict[str, Any], query: str, documents: list[str]
    ) -> np.ndarray:
        """One float32 score per document, in document order; higher is more relevant."""
        try:
            self._check(kind, args, query, documents)
            try:
                key = json.dumps([kind, args], sort_keys=True, default=str)
            except RecursionError:  # check_function refused deeper nesting already
                raise InvalidArgument("reranker arguments nest too deep") from None
            loaded = await self._received.get(key, lambda: self._resolve(kind, args))
            scores = await self._score(loaded, query, documents)
        except EmbedsearchError as exc:
            self._count(kind, status_code_name(exc))
            raise
        except Exception:
            self._count(kind, "INTERNAL")
            raise
        self._count(kind, "OK")
        return scores

    def _check(self, kind: str, args: dict[str, Any], query: str, documents: list[str]) -> None:
        limits = self.settings.request_limits
        check_function(kind, args, limits)
        if len(documents) > limits.max_inputs_per_request:
            raise InvalidArgument(
                f"{len(documents)} documents in one request is over the limit of "
                f"{limits.max_inputs_per_request} (--max-inputs-per-request): split the request"
            )
        for row, text in enumerate([query, *documents]):
            if len(text) * 4 > limits.max_text_bytes:
                size = len(text.encode("utf-8", "surrogatepass"))
                if size > limits.max_text_bytes:
                    what = "the query" if row == 0 else f"document {row - 1}"
                    raise InvalidArgument(
                        f"{what} is {size} bytes, over the limit of {limits.max_text_bytes} "
                        "(--max-text-bytes): shorten it"
                    )

    async def _resolve(self, kind: str, args: dict[str, Any]) -> LoadedReranker:
        cls = self.registry.get(kind)
        if cls is None:
            raise InvalidArgument(
                f"no reranker {brief(kind)} in the embedder; use one of {sorted(self.registry)}"
            )
        given = {**cls.default_args, **args}
        check_endpoint(given, self.base_url_rules)
        resolved = resolve_all(given, cls.sensitive_keys, self.settings.secrets_dir)
        check_path_args(cls.path_keys, resolved, self.model_roots)
        try:
            model = cls(**resolved)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'args'}: {e['msg']}" for e in exc.errors()
            )
            raise InvalidArgument(f"bad arguments for reranker {kind!r}: {problems}") from exc
        model._retry_base_s = self.settings.retry_base_s
        secrets = {k: str(v) for k, v in given.items() if k in cls.sensitive_keys}
        key = json.dumps([kind, model.canonical(), secrets], sort_keys=True, default=str)
        return await self._loaded.get(key, lambda: self._load(key, kind, model))

    async def _load(self, key: str, kind: str, model: RerankModel) -> LoadedReranker:
        inference = ThreadPoolExecutor(model.concurrency, thread_name_prefix=f"rerank-{kind}")
        self._executors.append(inference)
        log.info("loading reranker %s %s", kind, json.dumps(model.canonical(), default=str))
        if self.metrics:
            self.metrics.model_loads.labels(kind).inc()
        runner = await asyncio.get_running_loop().run_in_executor(inference, model.runner)
        limits = self.settings.batch_limits
        size = min(limits.max_batch_size, model.most_per_batch())
        metrics = self.metrics
        batcher = Batcher(
            runner,
            limits.model_copy(update={"max_batch_size": size}),
            self._tokenizers,
            inference,
            on_batch=(lambda stats: metrics.record_batch(kind, stats)) if metrics else None,
            concurrency=model.concurrency,
        )
        return LoadedReranker(key=key, kind=kind, model=model, batcher=batcher)

    async def _score(self, loaded: LoadedReranker, query: str, documents: list[str]) -> np.ndarray:
        if not documents:
            return np.zeros(0, dtype=np.float32)
        pairs = [(query, document) for document in documents]
        left = remaining()
        deadline = None if left is None else time.monotonic() + left
        scores = await loaded.batcher.embed(MODE, pairs, list(pairs), deadline)
        return np.asarray(scores[:, 0], dtype=np.float32)

    def _count(self, kind: str, code: str) -> None:
        if self.metrics:
            label = kind if kind in self.registry else "unknown"
            self.metrics.requests.labels(label, code).inc()

    def close(self) -> None:
        """Stop the inference threads."""
        for executor in self._executors:
            executor.shutdown(wait=False, cancel_futures=True)


class SecretModel(RerankModel):
    """A reranker holding an API key (literal, or a resolved reference)."""

    sensitive_keys: ClassVar[frozenset[str]] = frozenset({"api_key"})

    api_key: SecretStr | None = None

    def secret(self) -> str:
        return self.api_key.get_secret_value() if self.api_key else ""
