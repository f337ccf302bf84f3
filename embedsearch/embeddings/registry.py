"""``lancedb.embeddings.registry``'s names, for code that imports them from there."""

from embedsearch.contract.registry import EmbeddingFunctionRegistry
from embedsearch.embeddings import get_registry, register

__all__ = ["EmbeddingFunctionRegistry", "get_registry", "register"]
