"""Built-in providers. Each module registers its classes in :data:`BUILTIN` when imported;
``embedder_service.server`` imports them all."""

from embedsearch.contract.registry import EmbeddingFunctionRegistry

BUILTIN = EmbeddingFunctionRegistry()
