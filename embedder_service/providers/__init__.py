"""Built-in providers, registered in :data:`BUILTIN` when this package is imported."""

from embedsearch.embeddings.registry import EmbeddingFunctionRegistry

BUILTIN = EmbeddingFunctionRegistry()

from embedder_service.providers import (  # noqa: E402, F401 - registers them
    cohere,
    huggingface,
    open_clip,
    openai,
    sentence_transformers,
)
