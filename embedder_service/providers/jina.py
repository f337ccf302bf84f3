"""The ``jina`` provider: Jina AI's embeddings API, over HTTP as LanceDB calls it."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, PrivateAttr

from embedder_service.providers import BUILTIN
from embedder_service.providers.api import ApiEmbeddingFunction, provider_error
from embedder_service.providers.vendor import api_key

API_URL = "https://api.jina.ai/v1"


@BUILTIN.register("jina")
class JinaEmbeddings(ApiEmbeddingFunction):
    """Text embeddings from Jina AI (jina-clip-v1, jina-embeddings-v3, ...).

    LanceDB sends the model and the inputs only; ``query_task`` and ``source_task`` (unset
    by default) add Jina's ``task`` (``retrieval.query`` / ``retrieval.passage``) for models
    that take one. The key is ``api_key`` or ``JINA_API_KEY`` in the embedder's environment.
    Text only: images go to the open-clip provider.
    """

    default_model: ClassVar[str] = "jina-clip-v1"
    provider_name: ClassVar[str] = "jina"
    # Jina's embeddings API takes at most 2048 inputs per request.
    max_inputs_per_request: ClassVar[int] = 2048
    max_tokens_per_request: ClassVar[int] = 2048 * 8192
    known_ndims: ClassVar[dict[str, int]] = {
        "jina-clip-v1": 768,
        "jina-clip-v2": 1024,
        "jina-embeddings-v3": 1024,
        "jina-embeddings-v2-base-en": 768,
        "jina-embeddings-v2-small-en": 512,
    }

    name: str = Field("jina-clip-v1", description="Model name.")
    query_task: str | None = Field(None, description="Jina task for queries.")
    source_task: str | None = Field(None, description="Jina task for documents.")
    batch_size: int = Field(512, ge=1, le=2048, description="Most inputs in one request.")

    _client: Any = PrivateAttr(default=None)

    def client(self) -> Any:
        if self._client is None:
            import httpx

            key = api_key("jina", self.secret(), "JINA_API_KEY")
            self._client = httpx.Client(
                base_url=self.base_url or API_URL,
                headers={"Authorization": f"Bearer {key}", "Accept-Encoding": "identity"},
                timeout=self.timeout,
            )
        return self._client

    def _request(self, texts: list[str], mode: str, timeout: float) -> list[list[float]]:
        import httpx

        body: dict[str, Any] = {"model": self.name, "input": texts}
        task = self.query_task if mode == "query" else self.source_task
        if task:
            body["task"] = task
        client = self.client()
        try:
            reply = client.post("embeddings", json=body, timeout=timeout)
        except httpx.TransportError as exc:
            raise provider_error("jina", None, str(exc)) from exc
        if reply.status_code != 200:
            raise provider_error("jina", reply.status_code, _message(reply))
        data = reply.json()["data"]
        return [item["embedding"] for item in sorted(data, key=lambda item: item["index"])]


def _message(reply: Any) -> str:
    try:
        body = reply.json()
    except ValueError:
        return reply.text[:200]
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)
