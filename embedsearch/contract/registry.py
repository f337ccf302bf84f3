"""The embedding-function registry: provider names to classes, with LanceDB's ``register`` API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from embedsearch.contract.errors import NotFound
from embedsearch.contract.functions import EmbeddingFunction

F = TypeVar("F", bound=type[EmbeddingFunction])


class EmbeddingFunctionRegistry:
    """Maps provider names to :class:`EmbeddingFunction` classes.

    The embedder service keeps one of these for its providers; the SDK keeps another (see
    :func:`get_registry`) for functions that run on the client.
    """

    def __init__(self, functions: dict[str, type[EmbeddingFunction]] | None = None) -> None:
        self._functions: dict[str, type[EmbeddingFunction]] = {} if functions is None else functions

    def register(self, name: str | None = None) -> Callable[[F], F]:
        """Class decorator registering a provider under ``name`` (default: the class name)."""

        def decorator(cls: F) -> F:
            alias = name or cls.__name__
            cls.__embedding_function_registry_alias__ = alias  # type: ignore[attr-defined]
            self._functions[alias] = cls
            return cls

        return decorator

    def get(self, name: str) -> Any:
        """The class registered under ``name``; call ``.create(**kwargs)`` on it."""
        try:
            return self._functions[name]
        except KeyError:
            known = ", ".join(sorted(self._functions)) or "none"
            raise NotFound(f"no embedding provider {name!r}; registered: {known}") from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._functions)

    def items(self) -> list[tuple[str, type[EmbeddingFunction]]]:
        """(name, class) pairs, sorted by name."""
        return sorted(self._functions.items())

    def copy(self) -> EmbeddingFunctionRegistry:
        """A registry with the same entries, to extend without touching this one."""
        other = type(self)()
        other._functions = dict(self._functions)
        return other

    def __contains__(self, name: object) -> bool:
        return name in self._functions


def alias_of(func: EmbeddingFunction) -> str:
    """The registry name a function's class was registered under."""
    return getattr(type(func), "__embedding_function_registry_alias__", type(func).__name__)


# Classes registered in this process with ``embedsearch.embeddings.register``: functions that run
# on the client in the SDK, plugin providers in the embedder (``embedder_service.plugins``).
PROCESS_FUNCTIONS = EmbeddingFunctionRegistry()
