"""The ``openai`` provider: OpenAI's embeddings API, or any server that speaks it (``base_url``)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, PrivateAttr

from embedder_service.providers import BUILTIN
from embedder_service.providers.api import ApiEmbeddingFunction, provider_error


@BUILTIN.register("openai")
class OpenAIEmbeddings(ApiEmbeddingFunction):
    """Text embeddings from OpenAI (text-embedding-ada-002, -3-small, -3-large)."""

    default_model: ClassVar[str] = "text-embedding-ada-002"
    provider_name: ClassVar[str] = "openai"
    # OpenAI's documented limits per request: 2048 inputs, 300k tokens.
    max_inputs_per_request: ClassVar[int] = 2048
    max_tokens_per_request: ClassVar[int] = 300_000
    known_ndims: ClassVar[dict[str, int]] = {
        "text-embedding-ada-002": 1536,
        "text-embedding-3-small": 1536,
        "text-embedding-3-large": 3072,
    }

    name: str = Field("text-embedding-ada-002", description="Model name.")
    dim: int | None = Field(None, ge=1, description="Output dimensions (text-embedding-3-*).")
    batch_size: int = Field(512, ge=1, le=2048, description="Most inputs in one request.")

    _client: Any = PrivateAttr(default=None)

    def client(self) -> Any:
        if self._client is None:
            import openai

            # Retries are ours (jittered backoff, counted in metrics), so the client makes none.
            self._client = openai.OpenAI(
                api_key=self.secret(), base_url=self.base_url, timeout=self.timeout, max_retries=0
            )
        return self._client

    def _request(self, texts: list[str], mode: str, timeout: float) -> list[list[float]]:
        import openai

        kwargs: dict[str, Any] = {"input": texts, "model": self.name, "timeout": timeout}
        if self.dim:
            kwargs["dimensions"] = self.dim
        try:
            reply = self.client().embeddings.create(**kwargs)
        except openai.APIStatusError as exc:
            raise provider_error("openai", exc.status_code, _message(exc)) from exc
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            raise provider_error("openai", None, str(exc)) from exc
        return [item.embedding for item in sorted(reply.data, key=lambda item: item.index)]


def _message(exc: Any) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body)
    return str(error.get("message") if isinstance(error, dict) else error) or exc.message
