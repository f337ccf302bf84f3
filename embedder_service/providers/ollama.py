"""The ``ollama`` provider: embeddings from an Ollama server's /api/embed, with its own client."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, PrivateAttr, field_validator

from embedder_service.providers import BUILTIN
from embedder_service.providers.api import ApiEmbeddingFunction, provider_error
from embedder_service.providers.vendor import vendor_import

# What ollama_client_kwargs may set on the client's httpx.Client: nothing that reroutes
# requests (a proxy, a transport) or reads the embedder's files (cert, verify paths).
_CLIENT_KWARGS = frozenset({"headers", "timeout", "follow_redirects"})


@BUILTIN.register("ollama")
class OllamaEmbeddings(ApiEmbeddingFunction):
    """Text embeddings from the models an Ollama server runs (``ollama pull nomic-embed-text``).

    ``host`` is the server (``base_url`` is a synonym). Ollama needs no key; one given as
    ``api_key`` (or ``OLLAMA_API_KEY`` in the embedder's environment, read by the client) goes
    as a bearer token, for a server behind an authenticating proxy or Ollama's cloud.
    """

    default_model: ClassVar[str] = "nomic-embed-text"
    provider_name: ClassVar[str] = "ollama"
    # Ollama documents no per-request limit: a request of 256 inputs keeps one call's memory
    # and time bounded; each input is truncated to the model's context by the server.
    max_inputs_per_request: ClassVar[int] = 256
    max_tokens_per_request: ClassVar[int] = 10**9

    name: str = Field("nomic-embed-text", description="Model name on the Ollama server.")
    host: str = Field("http://localhost:11434", description="Ollama server URL.")
    options: dict[str, Any] | None = Field(None, description="Model options (ollama.Options).")
    keep_alive: float | str | None = Field(None, description="How long the model stays loaded.")
    ollama_client_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="headers, timeout or follow_redirects for the client."
    )
    batch_size: int = Field(256, ge=1, le=4096, description="Most inputs in one request.")

    _client: Any = PrivateAttr(default=None)

    @field_validator("ollama_client_kwargs")
    @classmethod
    def _known_client_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - _CLIENT_KWARGS)
        if unknown:
            raise ValueError(
                f"ollama_client_kwargs may set {', '.join(sorted(_CLIENT_KWARGS))}; not {unknown}"
            )
        return value

    def client(self) -> Any:
        if self._client is None:
            ollama = vendor_import("ollama", "ollama", "ollama")
            kwargs: dict[str, Any] = {"timeout": self.timeout, **self.ollama_client_kwargs}
            key = self.secret()
            if key:
                kwargs["headers"] = {**kwargs.get("headers", {}), "authorization": f"Bearer {key}"}
            self._client = ollama.Client(host=self.base_url or self.host, **kwargs)
        return self._client

    def _request(self, texts: list[str], mode: str, timeout: float) -> list[list[float]]:
        import httpx
        import ollama

        client = self.client()
        try:
            reply = client.embed(
                model=self.name, input=texts, options=self.options, keep_alive=self.keep_alive
            )
        except ollama.ResponseError as exc:
            raise provider_error("ollama", exc.status_code, exc.error) from exc
        except (ConnectionError, httpx.TransportError) as exc:
            raise provider_error("ollama", None, str(exc)) from exc
        return [list(vector) for vector in reply.embeddings]
