"""The ``voyageai`` provider: Voyage AI's embeddings API, with the voyageai client."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, PrivateAttr, field_validator

from embedder_service.providers import BUILTIN
from embedder_service.providers.api import ApiEmbeddingFunction, provider_error
from embedder_service.providers.vendor import api_key, vendor_import

INPUT_TYPES = {"source": "document", "query": "query"}
# Voyage's documented total tokens per request, by model (LanceDB's table); 120k otherwise.
TOKEN_LIMITS = {
    "voyage-4": 320_000,
    "voyage-4-lite": 1_000_000,
    "voyage-4-large": 120_000,
    "voyage-3.5-lite": 1_000_000,
    "voyage-3.5": 320_000,
    "voyage-3-lite": 120_000,
    "voyage-3": 120_000,
    "voyage-multimodal-3": 120_000,
    "voyage-finance-2": 120_000,
    "voyage-multilingual-2": 120_000,
    "voyage-law-2": 120_000,
    "voyage-code-2": 120_000,
}


def _text_model(name: str) -> str:
    if "multimodal" in name or "context" in name:
        raise ValueError(
            f"{name} is a multimodal or contextualized Voyage model; this embedder serves "
            "Voyage's text models (voyage-4, voyage-3.5, voyage-code-2, ...)"
        )
    return name


@BUILTIN.register("voyageai")
class VoyageAIEmbeddings(ApiEmbeddingFunction):
    """Text embeddings from Voyage AI; documents and queries go with their input type.

    ``name`` is required, as in LanceDB. The key is ``api_key`` or ``VOYAGE_API_KEY`` in the
    embedder's environment.
    """

    default_model: ClassVar[str] = ""
    provider_name: ClassVar[str] = "voyageai"
    # Voyage's documented limit: 1000 texts per request, and a total of tokens per model.
    max_inputs_per_request: ClassVar[int] = 1000
    known_ndims: ClassVar[dict[str, int]] = {
        **dict.fromkeys(TOKEN_LIMITS, 1024),
        "voyage-3-lite": 512,
        "voyage-code-2": 1536,
    }

    name: str = Field(description="Model name (voyage-3.5, voyage-code-2, ...).")
    output_dimension: int | None = Field(None, ge=1, description="For flexible-size models.")
    batch_size: int = Field(1000, ge=1, le=1000, description="Most inputs in one request.")

    _client: Any = PrivateAttr(default=None)

    _name_is_text_model = field_validator("name")(_text_model)

    @property
    def max_tokens_per_request(self) -> int:  # type: ignore[override]
        return TOKEN_LIMITS.get(self.name, 120_000)

    def ndims(self) -> int:
        if self.output_dimension:
            return self.output_dimension
        return super().ndims()

    def client(self) -> Any:
        if self._client is None:
            voyageai = vendor_import("voyageai", "voyageai", "voyageai")
            key = api_key("voyageai", self.secret(), "VOYAGE_API_KEY")
            # max_retries=0: one attempt; retries are ours.
            self._client = voyageai.Client(
                api_key=key, max_retries=0, timeout=self.timeout, base_url=self.base_url
            )
        return self._client

    def _request(self, texts: list[str], mode: str, timeout: float) -> list[list[float]]:
        from voyageai import error

        client = self.client()
        try:
            reply = client.embed(
                texts,
                model=self.name,
                input_type=INPUT_TYPES[mode],
                output_dimension=self.output_dimension,
            )
        except error.VoyageError as exc:
            raise provider_error("voyageai", exc.http_status, exc.user_message or str(exc)) from exc
        return [list(vector) for vector in reply.embeddings]
