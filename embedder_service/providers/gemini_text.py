"""The ``gemini-text`` provider: Gemini's embedContent API, with the google-genai client."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, PrivateAttr

from embedder_service.providers import BUILTIN
from embedder_service.providers.api import ApiEmbeddingFunction, provider_error
from embedder_service.providers.vendor import api_key, vendor_import

# LanceDB sends this title part before each document embedded for retrieval.
DOCUMENT_TITLE = "Embedding of a document"


@BUILTIN.register("gemini-text")
class GeminiTextEmbeddings(ApiEmbeddingFunction):
    """Text embeddings from Google's Gemini API, with LanceDB's task types and request shape.

    Queries go with ``query_task_type``, documents with ``source_task_type``; every request
    asks for ``ndims()`` dimensions (768 unless ``dim`` says otherwise), as LanceDB does. The
    key is ``api_key`` or ``GOOGLE_API_KEY`` in the embedder's environment.
    """

    default_model: ClassVar[str] = "gemini-embedding-001"
    provider_name: ClassVar[str] = "gemini-text"
    # Gemini's batchEmbedContents takes at most 100 requests; each input at most 2048 tokens.
    max_inputs_per_request: ClassVar[int] = 100
    max_tokens_per_request: ClassVar[int] = 100 * 2048

    name: str = Field("gemini-embedding-001", description="Model name.")
    dim: int | None = Field(None, ge=1, description="output_dimensionality (default 768).")
    query_task_type: str = Field("retrieval_query", description="Task type of queries.")
    source_task_type: str = Field("retrieval_document", description="Task type of documents.")
    batch_size: int = Field(100, ge=1, le=4096, description="Most inputs in one request.")

    _client: Any = PrivateAttr(default=None)

    def ndims(self) -> int:
        return self.dim or 768  # what LanceDB asks every request for

    def client(self) -> Any:
        if self._client is None:
            vendor_import("google.genai", "google-genai", "gemini-text")
            from google import genai
            from google.genai import types

            options = types.HttpOptions(
                base_url=self.base_url,
                timeout=int(self.timeout * 1000),
                retry_options=types.HttpRetryOptions(attempts=1),  # retries are ours
            )
            key = api_key("gemini-text", self.secret(), "GOOGLE_API_KEY")
            self._client = genai.Client(api_key=key, http_options=options)
        return self._client

    def _request(self, texts: list[str], mode: str, timeout: float) -> list[list[float]]:
        import httpx
        from google.genai import errors, types

        task_type = self.query_task_type if mode == "query" else self.source_task_type
        contents: list[Any] = [
            {"parts": [{"text": DOCUMENT_TITLE}, {"text": text}]}
            if task_type == "retrieval_document"
            else {"parts": [{"text": text}]}
            for text in texts
        ]
        config = types.EmbedContentConfig(
            output_dimensionality=self.ndims(),
            task_type=task_type.upper(),
            http_options=types.HttpOptions(timeout=max(1, int(timeout * 1000))),
        )
        client = self.client()
        try:
            reply = client.models.embed_content(model=self.name, contents=contents, config=config)
        except errors.APIError as exc:
            raise provider_error("gemini-text", exc.code, exc.message or str(exc)) from exc
        except httpx.TransportError as exc:
            raise provider_error("gemini-text", None, str(exc)) from exc
        return [list(item.values or []) for item in reply.embeddings or []]
