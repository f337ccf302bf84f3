"""What API providers share: request splitting, bounded concurrency, and retries with backoff."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, PrivateAttr, SecretStr
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_any,
    wait_random_exponential,
)

from embedder_service import budget as budgets
from embedder_service.budget import Budget
from embedsearch.contract.errors import (
    EmbedsearchError,
    InvalidArgument,
    Overloaded,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from embedsearch.contract.functions import TextEmbeddingFunction, check_texts

log = logging.getLogger("embedder_service")

MAX_WAIT_S = 30.0


class RetryableError(Exception):
    """A provider answer worth retrying: 429, 5xx, a timeout or a dropped connection."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status


def provider_error(provider: str, status: int | None, message: str) -> Exception:
    """The error to raise for a provider's HTTP answer: retryable, or a typed error to pass on."""
    text = f"{provider} answered {status}: {message}" if status else f"{provider}: {message}"
    if status in (401,):
        return Unauthenticated(f"{text}; check the api_key reference")
    if status == 403:
        return PermissionDenied(text)
    if status is not None and 400 <= status < 500 and status not in (408, 409, 429):
        return InvalidArgument(text)
    return RetryableError(status, text)


class ApiEmbeddingFunction(TextEmbeddingFunction):
    """An embedding API called with its official client.

    Inputs are split into requests of at most ``max_inputs_per_request`` inputs and
    ``max_tokens_per_request`` estimated tokens, sent ``concurrency`` at a time; 429, 5xx and
    timeouts are retried with jittered exponential backoff (at most 30 s per wait) up to
    ``max_retries`` times; 400, 401 and 403 are never retried. Inside a batch, each request
    takes at most the time its callers have left, and retries stop once they have all gone.
    """

    kind: ClassVar[str] = "api"
    provider_name: ClassVar[str] = ""
    max_inputs_per_request: ClassVar[int] = 96
    max_tokens_per_request: ClassVar[int] = 100_000
    known_ndims: ClassVar[dict[str, int]] = {}

    api_key: SecretStr | None = Field(None, description="Key, or a $env:/$var: reference.")
    base_url: str | None = Field(None, description="Endpoint of a compatible server.")
    batch_size: int = Field(96, ge=1, le=4096, description="Most inputs in one request.")
    concurrency: int = Field(4, ge=1, le=64, description="Requests in flight at once.")
    timeout: float = Field(60.0, gt=0, description="Seconds one request may take.")

    # Set by the embedder: how backoff starts, and a hook counting retries for the metrics.
    _retry_base_s: float = PrivateAttr(default=0.5)
    _on_retry: Callable[[], None] | None = PrivateAttr(default=None)
    _pool: ThreadPoolExecutor | None = PrivateAttr(default=None)

    def configure(self, retry_base_s: float, on_retry: Callable[[], None]) -> None:
        self._retry_base_s = retry_base_s
        self._on_retry = on_retry

    def ndims(self) -> int:
        if getattr(self, "dim", None):
            return int(self.dim)  # type: ignore[attr-defined]
        name = getattr(self, "name", "")
        if name in self.known_ndims:
            return self.known_ndims[name]
        return int(self.generate_embeddings(["ndims probe"]).shape[1])

    def secret(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key else None

    def generate_embeddings(self, texts: list[str], mode: str = "source") -> np.ndarray:
        """Embed texts through the API, split, concurrent and retried."""
        texts = check_texts(texts)
        chunks = list(self._chunks(texts))
        budget = budgets.current()  # read here: the pool's threads do not see it
        if len(chunks) == 1:
            return self._with_retries(chunks[0], mode, budget)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix=self.provider_name)
        parts = list(self._pool.map(lambda chunk: self._with_retries(chunk, mode, budget), chunks))
        return np.concatenate(parts)

    def compute_query_embeddings(self, query: Any) -> list[np.ndarray]:
        texts = [query] if isinstance(query, str) else list(query)
        return list(self.generate_embeddings(texts, "query"))

    def compute_source_embeddings(self, inputs: Any) -> list[np.ndarray]:
        return list(self.generate_embeddings(list(inputs), "source"))

    def _chunks(self, texts: list[str]) -> Any:
        limit = min(self.batch_size, self.max_inputs_per_request)
        chunk: list[str] = []
        tokens = 0
        for text in texts:
            cost = estimate_tokens(text)
            if chunk and (len(chunk) >= limit or tokens + cost > self.max_tokens_per_request):
                yield chunk
                chunk, tokens = [], 0
            chunk.append(text)
            tokens += cost
        if chunk:
            yield chunk

    def _with_retries(self, texts: list[str], mode: str, budget: Budget) -> np.ndarray:
        def attempt() -> list[list[float]]:
            budget.check(self.provider_name)
            return self._request(texts, mode, budget.timeout(self.timeout))

        def before_sleep(state: RetryCallState) -> None:
            if self._on_retry is not None:
                self._on_retry()
            error = state.outcome.exception() if state.outcome else None
            log.warning("%s: retry %d after %s", self.provider_name, state.attempt_number, error)

        retrying = Retrying(
            stop=stop_any(stop_after_attempt(self.max_retries + 1), lambda _: budget.spent()),
            wait=wait_random_exponential(multiplier=self._retry_base_s, max=MAX_WAIT_S),
            sleep=budget.sleep,
            retry=retry_if_exception(lambda exc: isinstance(exc, RetryableError)),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            vectors = retrying(attempt)
        except RetryableError as exc:
            budget.check(f"{self.provider_name} after {exc}")  # stopped for the callers
            attempts = self.max_retries + 1
            raise (Overloaded if exc.status == 429 else Unavailable)(
                f"{exc} (gave up after {attempts} attempt{'s' if attempts > 1 else ''})"
            ) from exc
        except EmbedsearchError:
            raise
        array = np.asarray(vectors, dtype=np.float32)
        if array.shape[0] != len(texts):
            raise Unavailable(
                f"{self.provider_name} returned {array.shape[0]} vectors for {len(texts)} inputs"
            )
        return array

    def _request(self, texts: list[str], mode: str, timeout: float) -> list[list[float]]:
        """One API call for one chunk, of at most ``timeout`` seconds; raise
        provider_error(...) for a failed answer."""
        raise NotImplementedError


def estimate_tokens(text: str) -> int:
    """A conservative token estimate (no tokenizer download): about 3 bytes a token."""
    return len(text.encode()) // 3 + 1
