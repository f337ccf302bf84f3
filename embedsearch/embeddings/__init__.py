"""The embedding-function registry API, as in ``lancedb.embeddings``.

``get_registry().get(name)`` gives a class registered in this process with :func:`register`
(it runs on the client), or else a handle on the provider the server hosts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from embedsearch.contract.functions import EmbeddingFunction, TextEmbeddingFunction
from embedsearch.contract.registry import PROCESS_FUNCTIONS, EmbeddingFunctionRegistry
from embedsearch.embeddings.remote import RemoteEmbeddingFunction, RemoteProvider

F = TypeVar("F", bound=type[EmbeddingFunction])


class ClientRegistry(EmbeddingFunctionRegistry):
    """The SDK's registry: local classes first, server-hosted providers otherwise.

    It shares its entries with :data:`PROCESS_FUNCTIONS`, where an embedder finds the plugin
    classes its modules registered."""

    def get(self, name: str) -> Any:
        if name in self:
            return super().get(name)
        return RemoteProvider(name)


class EmbeddingFunctionConfig(BaseModel):
    """A function bound to a source and a vector column, for ``create_table(...,
    embedding_functions=[...])`` (LanceDB's ``EmbeddingFunctionConfig``)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    vector_column: str
    source_column: str
    function: EmbeddingFunction


_REGISTRY = ClientRegistry(PROCESS_FUNCTIONS._functions)


def get_registry() -> ClientRegistry:
    """The process-wide registry.

    >>> func = get_registry().get("sentence-transformers").create()  # doctest: +SKIP
    """
    return _REGISTRY


def register(name: str | None = None) -> Callable[[F], F]:
    """Register an :class:`EmbeddingFunction` subclass that runs in this process."""
    return _REGISTRY.register(name)


__all__ = [
    "ClientRegistry",
    "EmbeddingFunction",
    "EmbeddingFunctionConfig",
    "EmbeddingFunctionRegistry",
    "RemoteEmbeddingFunction",
    "RemoteProvider",
    "TextEmbeddingFunction",
    "get_registry",
    "register",
]
