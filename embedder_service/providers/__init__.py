"""Built-in providers, registered in :data:`BUILTIN` when this package is imported."""

from embedsearch.embeddings.registry import EmbeddingFunctionRegistry

BUILTIN = EmbeddingFunctionRegistry()

from embedder_service.providers import sentence_transformers  # noqa: E402, F401
