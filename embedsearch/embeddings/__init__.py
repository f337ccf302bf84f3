"""The embedding-function registry API, as in ``lancedb.embeddings``.

``get_registry().get(name)`` gives a class registered in this process with :func:`register`
(it runs on the client), or else a handle on the provider the server hosts; a name neither
knows is a ``KeyError``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from embedsearch.contract.functions import (
    EmbeddingFunction,
    EmbeddingFunctionConfig,
    TextEmbeddingFunction,
)
from embedsearch.contract.registry import (
    PROCESS_FUNCTIONS,
    EmbeddingFunctionRegistry,
    UnknownProvider,
    install_process_registry,
)
from embedsearch.embeddings.remote import (
    RemoteEmbeddingFunction,
    RemoteProvider,
    RemoteTextEmbeddingFunction,
    providers_of,
)
from embedsearch.embeddings.utils import RateLimiter, retry, with_embeddings

if TYPE_CHECKING:
    from embedsearch.db import Connection

F = TypeVar("F", bound=type[EmbeddingFunction])


class ClientRegistry(EmbeddingFunctionRegistry):
    """The SDK's registry: local classes first, server-hosted providers otherwise.

    It shares its entries with :data:`PROCESS_FUNCTIONS`, where an embedder finds the plugin
    classes its modules registered. The providers a gateway serves are asked for once per
    connection (``ListProviders``), so an unknown name fails at ``get()``."""

    def get(self, name: str) -> Any:
        from embedsearch.db import default_connection

        return self.provider(name, default_connection())

    def provider(self, name: str, connection: Connection) -> Any:
        """``name``'s class if registered here, else the provider ``connection`` serves."""
        if name in self:
            return super().get(name)
        served = providers_of(connection)
        if name not in served:
            raise self.unknown(name, [*self.names(), *served])
        return RemoteProvider(name, served[name])


_REGISTRY = ClientRegistry(PROCESS_FUNCTIONS._functions, PROCESS_FUNCTIONS._variables)
install_process_registry(_REGISTRY)


def get_registry() -> ClientRegistry:
    """The process-wide registry (``EmbeddingFunctionRegistry.get_instance()``).

    >>> func = get_registry().get("sentence-transformers").create()  # doctest: +SKIP
    """
    return _REGISTRY


def register(name: str | None = None) -> Callable[[F], F]:
    """Register an :class:`EmbeddingFunction` subclass that runs in this process."""
    return _REGISTRY.register(name)


def functions_of_bindings(
    bindings: Iterable[tuple[str, dict[str, Any], str, str, bool]], connection: Connection
) -> dict[str, EmbeddingFunctionConfig]:
    """A table's functions by vector column, as LanceDB's ``parse_functions`` gives them,
    from (provider, args, source column, vector column, client side) tuples: server-hosted
    ones bound to ``connection``, client-side ones from this process's registry (a
    ``KeyError`` for one it has not registered, as in LanceDB)."""
    found = {}
    for provider, args, source, vector, client_side in bindings:
        if client_side:
            func = EmbeddingFunctionRegistry.get(_REGISTRY, provider).create(**args)
        else:
            info = providers_of(connection).get(provider)
            func = RemoteProvider(provider, info).create(**args)
            func.bind(connection)
        found[vector] = EmbeddingFunctionConfig(
            vector_column=vector, source_column=source, function=func
        )
    return found


__all__ = [
    "ClientRegistry",
    "EmbeddingFunction",
    "EmbeddingFunctionConfig",
    "EmbeddingFunctionRegistry",
    "RateLimiter",
    "RemoteEmbeddingFunction",
    "RemoteProvider",
    "RemoteTextEmbeddingFunction",
    "TextEmbeddingFunction",
    "UnknownProvider",
    "functions_of_bindings",
    "get_registry",
    "register",
    "retry",
    "with_embeddings",
]
