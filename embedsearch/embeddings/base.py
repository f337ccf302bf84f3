"""``lancedb.embeddings.base``'s names, for code that imports them from there."""

from embedsearch.contract.functions import (
    EmbeddingFunction,
    EmbeddingFunctionConfig,
    TextEmbeddingFunction,
)

__all__ = ["EmbeddingFunction", "EmbeddingFunctionConfig", "TextEmbeddingFunction"]
