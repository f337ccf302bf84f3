"""The ``cohere`` reranker: Cohere's rerank API through the official client, retried."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, PrivateAttr
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_any,
    wait_random_exponential,
)

from embedder_service import budget as budgets
from embedder_service.providers.api import MAX_WAIT_S, RetryableError, provider_error
from embedder_service.rerank import RERANKERS, SecretModel, pair_cost
from embedsearch.contract.errors import Overloaded, Unavailable

log = logging.getLogger("embedder_service")


@RERANKERS.register("cohere")
class CohereRerankModel(SecretModel):
    """LanceDB's CohereReranker arguments, plus where and how to call. Every document is
    scored: LanceDB's top_n is applied by whoever orders the results (the gateway)."""

    # LanceDB's CohereReranker reads COHERE_API_KEY when given no key.
    default_args: ClassVar[dict[str, Any]] = {"api_key": "$env:COHERE_API_KEY"}
    concurrency: ClassVar[int] = 4
    # Cohere's documented limit: 1000 documents per rerank request.
    max_documents: ClassVar[int] = 1000

    model_name: str = Field("rerank-english-v3.0", description="Rerank model.")
    base_url: str | None = Field(None, description="Endpoint of a compatible server.")
    timeout: float = Field(60.0, gt=0, description="Seconds one request may take.")
    max_retries: int = Field(7, ge=0, le=20, description="Retries of 429, 5xx and timeouts.")

    _client: Any = PrivateAttr(default=None)

    def most_per_batch(self) -> int:
        return self.max_documents

    def client(self) -> Any:
        if self._client is None:
            import cohere

            self._client = cohere.ClientV2(
                api_key=self.secret(), base_url=self.base_url, timeout=self.timeout
            )
        return self._client

    def runner(self) -> CohereRunner:
        return CohereRunner(self)

    def request(self, query: str, documents: list[str], timeout: float) -> list[float]:
        """One rerank call; the scores in document order."""
        import httpx
        from cohere.core.api_error import ApiError

        try:
            reply = self.client().rerank(
                model=self.model_name,
                query=query,
                documents=documents,
                # Retries are ours; the timeout is what the batch's callers have left.
                request_options={"max_retries": 0, "timeout_in_seconds": timeout},
            )
        except ApiError as exc:
            body = exc.body
            message = str(body.get("message", body)) if isinstance(body, dict) else str(body)
            raise provider_error("cohere", exc.status_code, message) from exc
        except httpx.TransportError as exc:
            raise provider_error("cohere", None, str(exc)) from exc
        scores = [float("nan")] * len(documents)
        for result in reply.results:
            scores[result.index] = float(result.relevance_score)
        if any(s != s for s in scores):
            raise Unavailable(f"cohere scored {len(reply.results)} of {len(documents)} documents")
        return scores


class CohereRunner:
    """A batch's pairs grouped by query, one API call per query, each retried with backoff."""

    def __init__(self, model: CohereRerankModel) -> None:
        self.model = model

    def prepare(self, mode: str, inputs: list[Any]) -> list[tuple[Any, int]]:
        return [(pair, pair_cost(pair)) for pair in inputs]

    def run(self, mode: str, payloads: list[Any]) -> np.ndarray:
        budget = budgets.current()
        by_query: dict[str, list[int]] = {}
        for i, (query, _) in enumerate(payloads):
            by_query.setdefault(query, []).append(i)
        scores = np.zeros((len(payloads), 1), dtype=np.float32)
        for query, rows in by_query.items():
            documents = [payloads[i][1] for i in rows]
            scores[rows, 0] = self._with_retries(query, documents, budget)
        return scores

    def _with_retries(self, query: str, documents: list[str], budget: Any) -> list[float]:
        model = self.model

        def attempt() -> list[float]:
            budget.check("cohere rerank")
            return model.request(query, documents, budget.timeout(model.timeout))

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            log.warning("cohere rerank: retry %d after %s", state.attempt_number, error)

        retrying = Retrying(
            stop=stop_any(stop_after_attempt(model.max_retries + 1), lambda _: budget.spent()),
            wait=wait_random_exponential(multiplier=model.retry_base_s(), max=MAX_WAIT_S),
            sleep=budget.sleep,
            retry=retry_if_exception(lambda exc: isinstance(exc, RetryableError)),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except RetryableError as exc:
            budget.check(f"cohere rerank after {exc}")
            raise (Overloaded if exc.status == 429 else Unavailable)(
                f"{exc} (gave up after {model.max_retries + 1} attempts)"
            ) from exc
