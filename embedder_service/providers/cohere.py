"""The ``cohere`` provider: Cohere's embed API, with search_document / search_query input types."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, PrivateAttr

from embedder_service.providers import BUILTIN
from embedder_service.providers.api import ApiEmbeddingFunction, provider_error

INPUT_TYPES = {"source": "search_document", "query": "search_query"}


@BUILTIN.register("cohere")
class CohereEmbeddings(ApiEmbeddingFunction):
    """Text embeddings from Cohere; documents and queries are embedded with their input type."""

    default_model: ClassVar[str] = "embed-english-v3.0"
    provider_name: ClassVar[str] = "cohere"
    # Cohere's documented limit: 96 texts per embed request.
    max_inputs_per_request: ClassVar[int] = 96
    max_tokens_per_request: ClassVar[int] = 96 * 512
    known_ndims: ClassVar[dict[str, int]] = {
        "embed-english-v3.0": 1024,
        "embed-multilingual-v3.0": 1024,
        "embed-english-light-v3.0": 384,
        "embed-multilingual-light-v3.0": 384,
    }

    name: str = Field("embed-english-v3.0", description="Model name.")
    input_type: str | None = Field(
        None, description="Override the input type (default: search_document / search_query)."
    )
    dim: int | None = Field(None, ge=1, description="output_dimension, for models that take it.")

    _client: Any = PrivateAttr(default=None)

    def client(self) -> Any:
        if self._client is None:
            import cohere

            self._client = cohere.ClientV2(
                api_key=self.secret() or "", base_url=self.base_url, timeout=self.timeout
            )
        return self._client

    def _request(self, texts: list[str], mode: str, timeout: float) -> list[list[float]]:
        import httpx
        from cohere.core.api_error import ApiError

        kwargs: dict[str, Any] = {
            "model": self.name,
            "texts": texts,
            "input_type": self.input_type or INPUT_TYPES[mode],
            "embedding_types": ["float"],
            # Retries are ours; the timeout is what the batch's callers have left.
            "request_options": {"max_retries": 0, "timeout_in_seconds": timeout},
        }
        if self.dim:
            kwargs["output_dimension"] = self.dim
        try:
            reply = self.client().embed(**kwargs)
        except ApiError as exc:
            raise provider_error("cohere", exc.status_code, _message(exc.body)) from exc
        except httpx.TransportError as exc:
            raise provider_error("cohere", None, str(exc)) from exc
        return list(reply.embeddings.float_ or [])


def _message(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("message", body))
    return str(body)
