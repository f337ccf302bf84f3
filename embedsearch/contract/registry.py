"""The embedding-function registry: provider names to classes, with LanceDB's registry API."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from embedsearch.contract.errors import NotFound
from embedsearch.contract.functions import (
    PROCESS_VARIABLES,
    EmbeddingFunction,
    EmbeddingFunctionConfig,
    resolve_variables,
)

F = TypeVar("F", bound=type[EmbeddingFunction])

METADATA_KEY = "embedding_functions"


class UnknownProvider(NotFound, KeyError):
    """No provider of that name: a ``KeyError`` at ``get()``, as LanceDB raises."""

    def __str__(self) -> str:  # KeyError's would quote the message
        return NotFound.__str__(self)


class EmbeddingFunctionRegistry:
    """Maps provider names to :class:`EmbeddingFunction` classes, and holds the variables that
    ``$var:`` references in create() arguments read (LanceDB's ``EmbeddingFunctionRegistry``).

    The embedder service keeps one of these for its providers; the SDK keeps another (see
    ``embedsearch.embeddings.get_registry``) for functions that run on the client.

    Examples
    --------
    >>> registry = EmbeddingFunctionRegistry()
    >>> registry.set_var("device", "cpu")
    >>> registry.resolve_variables({"device": "$var:device", "n": "$var:n:3"})
    {'device': 'cpu', 'n': '3'}
    """

    # The process's registry (get_instance): PROCESS_FUNCTIONS, or the SDK's, which installs
    # itself when imported (see install_process_registry).
    _instance: ClassVar[EmbeddingFunctionRegistry | None] = None

    def __init__(
        self,
        functions: dict[str, type[EmbeddingFunction]] | None = None,
        variables: dict[str, str] | None = None,
    ) -> None:
        self._functions: dict[str, type[EmbeddingFunction]] = {} if functions is None else functions
        self._variables: dict[str, str] = {} if variables is None else variables

    @classmethod
    def get_instance(cls) -> EmbeddingFunctionRegistry:
        """The process-wide registry (what ``get_registry()`` returns)."""
        return EmbeddingFunctionRegistry._instance or PROCESS_FUNCTIONS

    def register(self, name: str | None = None) -> Callable[[F], F]:
        """Class decorator registering a provider under ``name`` (default: the class name)."""

        def decorator(cls: F) -> F:
            if not (isinstance(cls, type) and issubclass(cls, EmbeddingFunction)):
                raise TypeError("Must be a subclass of EmbeddingFunction")
            alias = name or cls.__name__
            cls.__embedding_function_registry_alias__ = alias  # type: ignore[attr-defined]
            self._functions[alias] = cls
            return cls

        return decorator

    def get(self, name: str) -> Any:
        """The class registered under ``name``; call ``.create(**kwargs)`` on it. An unknown
        name raises :class:`UnknownProvider`, a ``KeyError``."""
        try:
            return self._functions[name]
        except KeyError:
            raise self.unknown(name, self.names()) from None

    @staticmethod
    def unknown(name: str, known: list[str]) -> UnknownProvider:
        listed = ", ".join(sorted(known)) or "none"
        return UnknownProvider(f"no embedding provider {name!r}; registered: {listed}")

    def reset(self) -> None:
        """Forget every registered class (LanceDB's ``reset``)."""
        self._functions.clear()

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
        other._variables = dict(self._variables)
        return other

    def __contains__(self, name: object) -> bool:
        return name in self._functions

    # -- variables ---------------------------------------------------------------------------

    def set_var(self, name: str, value: str) -> None:
        """Set the variable that ``$var:name`` in create() arguments reads. A value is used
        when a function is created and never written into table metadata, which keeps the
        reference: a key can be given this way without being persisted. The name must not
        contain a colon; ``$var:name:default`` supplies a default (which may)."""
        if ":" in name:
            raise ValueError("Variable names cannot contain colons")
        self._variables[name] = value

    def get_var(self, name: str) -> str:
        """A variable's value; ``KeyError`` when it was never set."""
        return self._variables[name]

    def resolve_variables(
        self, args: Mapping[str, Any], keep_unset: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        """``args`` with ``$var:`` references read from this registry's variables (see
        :func:`embedsearch.contract.functions.resolve_variables`)."""
        return resolve_variables(args, self._variables, keep_unset)

    # -- table metadata ----------------------------------------------------------------------

    def parse_functions(
        self, metadata: Mapping[bytes, bytes] | Mapping[str, Any] | None
    ) -> dict[str, EmbeddingFunctionConfig]:
        """The functions in an Arrow schema's metadata, by vector column: each created anew
        from its stored name and arguments (LanceDB's ``parse_functions``). Empty when the
        metadata has no ``embedding_functions``."""
        if metadata is None:
            return {}
        serialized = metadata.get(METADATA_KEY.encode(), metadata.get(METADATA_KEY))  # type: ignore[call-overload]
        if serialized is None:
            return {}
        text = serialized.decode("utf-8") if isinstance(serialized, bytes) else serialized
        return {
            entry["vector_column"]: EmbeddingFunctionConfig(
                vector_column=entry["vector_column"],
                source_column=entry["source_column"],
                function=self.get(entry["name"]).create(**entry["model"]),
            )
            for entry in json.loads(text)
        }

    def function_to_metadata(self, conf: EmbeddingFunctionConfig) -> dict[str, Any]:
        """One entry of the ``embedding_functions`` metadata, in LanceDB's shape."""
        return {
            "name": alias_of(conf.function),
            "model": conf.function.safe_model_dump(),
            "source_column": conf.source_column,
            "vector_column": conf.vector_column,
        }

    def get_table_metadata(
        self, func_list: list[EmbeddingFunctionConfig] | None
    ) -> dict[str, bytes] | None:
        """Arrow schema metadata recording these functions (None for none), as LanceDB writes
        it: secrets are left out, ``$var:`` and ``$env:`` references kept."""
        if not func_list:
            return None
        entries = [self.function_to_metadata(conf) for conf in func_list]
        return {METADATA_KEY: json.dumps(entries, indent=2).encode("utf-8")}


def alias_of(func: EmbeddingFunction) -> str:
    """The registry name a function is created from: its provider's, or its class's alias."""
    registry_name = getattr(func, "registry_name", None)
    if callable(registry_name):
        return str(registry_name())
    return getattr(type(func), "__embedding_function_registry_alias__", type(func).__name__)


def install_process_registry(registry: EmbeddingFunctionRegistry) -> None:
    """Make ``registry`` what ``EmbeddingFunctionRegistry.get_instance()`` returns in this
    process (the SDK's registry, sharing its classes with :data:`PROCESS_FUNCTIONS`)."""
    EmbeddingFunctionRegistry._instance = registry


# Classes registered in this process with ``embedsearch.embeddings.register``: functions that run
# on the client in the SDK, plugin providers in the embedder (``embedder_service.plugins``).
PROCESS_FUNCTIONS = EmbeddingFunctionRegistry(variables=PROCESS_VARIABLES)
