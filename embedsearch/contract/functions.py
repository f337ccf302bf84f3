"""Embedding-function base classes, as pydantic models with LanceDB's method names."""

from __future__ import annotations

import copy
import logging
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cached_property
from typing import Any, ClassVar, Self, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from embedsearch.contract.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    Unimplemented,
)

log = logging.getLogger("embedsearch")

R = TypeVar("R")


class SensitiveKeys(frozenset[str]):
    """Names of create() arguments that hold secrets.

    A set (``key in cls.sensitive_keys``) that can also be called as LanceDB's
    ``sensitive_keys()`` static method is; a subclass may override either way.
    """

    def __call__(self) -> list[str]:
        return sorted(self)


def sensitive_keys_of(cls: type[EmbeddingFunction] | EmbeddingFunction) -> frozenset[str]:
    """The secret argument names of a function class, declared as a set or as LanceDB's
    ``@staticmethod def sensitive_keys() -> list[str]``."""
    keys = cls.sensitive_keys
    return frozenset(keys() if callable(keys) else keys)


class EmbeddingFunction(BaseModel, ABC):
    """An embedding function: turns source inputs and queries into vectors of ``ndims()``.

    Build one with :meth:`create`, which keeps the caller's arguments: they are what is
    persisted in a table's ``embedding_functions`` metadata, as LanceDB does. ``$var:name``
    and ``$var:name:default`` in them are read from the registry's variables
    (``get_registry().set_var(name, value)``) for this instance, and stay references in what
    is persisted.

    Examples
    --------
    >>> func = get_registry().get("sentence-transformers").create()  # doctest: +SKIP
    >>> func.ndims()  # doctest: +SKIP
    384
    """

    model_config = ConfigDict(
        arbitrary_types_allowed=True,
        ignored_types=(cached_property,),
        protected_namespaces=(),
        extra="forbid",
    )

    #: Keyword arguments that hold secrets: accepted for the call, never persisted or echoed.
    sensitive_keys: ClassVar[frozenset[str]] = SensitiveKeys({"api_key"})
    #: Backoff of :meth:`compute_source_embeddings_with_retry`: the first wait, in seconds,
    #: doubled (with jitter) after each failure and capped at ``retry_max_delay_s``.
    retry_initial_delay_s: ClassVar[float] = 1.0
    retry_max_delay_s: ClassVar[float] = 30.0

    max_retries: int = Field(7, ge=0, description="Retries of failed API calls; 0 disables.")
    _original_args: dict[str, Any] = PrivateAttr(default_factory=dict)

    @classmethod
    def create(cls, **kwargs: Any) -> Self:
        """Instantiate with these arguments (``$var:`` references resolved) and remember them,
        references kept, for persistence. A secret argument must be a reference, as in
        LanceDB: the function runs in this process and its arguments go into table metadata.
        (Server-hosted functions, ``RemoteProvider.create``, also take a literal key, used for
        the call and never stored.)"""
        for key in sensitive_keys_of(cls) & kwargs.keys():
            value = kwargs[key]
            if isinstance(value, str) and not is_reference(value):
                error = InvalidArgument(f"Sensitive key '{key}' cannot be set to a hardcoded value")
                error.add_note("Help: Use $var: to set sensitive keys to variables")
                raise error
        instance = cls(**resolve_variables(kwargs, PROCESS_VARIABLES))
        instance._original_args = dict(kwargs)
        return instance

    def safe_model_dump(self) -> dict[str, Any]:
        """The create() arguments with secrets left out: safe to write into table metadata."""
        secret = sensitive_keys_of(self)
        return {
            key: value
            for key, value in self._original_args.items()
            if key not in secret or is_reference(value)
        }

    @abstractmethod
    def ndims(self) -> int:
        """Length of the vectors this function returns."""

    @abstractmethod
    def compute_source_embeddings(self, inputs: Sequence[Any]) -> list[np.ndarray]:
        """Vectors for source values (documents) being stored."""

    @abstractmethod
    def compute_query_embeddings(self, query: Any) -> list[np.ndarray]:
        """Vectors for a query being searched for."""

    def compute_source_embeddings_with_retry(self, *args: Any, **kwargs: Any) -> list[Any]:
        """:meth:`compute_source_embeddings`, retried up to ``max_retries`` times on failures
        that may pass (see :func:`retryable`)."""
        return self._with_retry(self.compute_source_embeddings)(*args, **kwargs)

    def compute_query_embeddings_with_retry(self, *args: Any, **kwargs: Any) -> list[Any]:
        """:meth:`compute_query_embeddings`, retried as the source embeddings are."""
        return self._with_retry(self.compute_query_embeddings)(*args, **kwargs)

    def _with_retry(self, call: Callable[..., R]) -> Callable[..., R]:
        return retry_with_exponential_backoff(
            call,
            initial_delay=self.retry_initial_delay_s,
            max_retries=self.max_retries,
            max_delay=self.retry_max_delay_s,
        )

    def sanitize_input(self, texts: Any) -> list[Any] | np.ndarray:
        """Inputs as a list: one string becomes a list of one; Arrow arrays become lists."""
        if isinstance(texts, str):
            return [texts]
        if hasattr(texts, "combine_chunks"):
            texts = texts.combine_chunks()
        if hasattr(texts, "to_pylist"):
            return texts.to_pylist()
        return texts if isinstance(texts, np.ndarray) else list(texts)

    def SourceField(self, **kwargs: Any) -> Any:
        """A pydantic field marking the column this function embeds."""
        return Field(json_schema_extra={"source_column_for": self}, **kwargs)

    def VectorField(self, **kwargs: Any) -> Any:
        """A pydantic field marking the column that receives this function's vectors."""
        return Field(json_schema_extra={"vector_column_for": self}, **kwargs)

    def __hash__(self) -> int:
        return id(self)


class TextEmbeddingFunction(EmbeddingFunction):
    """A function over text whose source and query embeddings are the same computation."""

    def compute_source_embeddings(self, inputs: Sequence[Any]) -> list[np.ndarray]:
        return list(self.generate_embeddings(check_texts(self.sanitize_input(inputs))))

    def compute_query_embeddings(self, query: Any) -> list[np.ndarray]:
        return list(self.generate_embeddings(check_texts(self.sanitize_input(query))))

    @abstractmethod
    def generate_embeddings(self, texts: list[str]) -> list[list[float]] | np.ndarray:
        """Embed a list of texts."""


class EmbeddingFunctionConfig(BaseModel):
    """A function bound to a source and a vector column (LanceDB's ``EmbeddingFunctionConfig``):
    for ``create_table(..., embedding_functions=[...])``, and what ``Table.embedding_functions``
    and ``registry.parse_functions`` return, by vector column."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    vector_column: str
    source_column: str
    function: EmbeddingFunction


def check_texts(inputs: Iterable[Any]) -> list[str]:
    """Reject None and empty strings, naming the row: they must never become null vectors."""
    texts = list(inputs)
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidArgument(f"input {row} is {type(text).__name__}, expected a string")
        if not text.strip():
            raise InvalidArgument(f"input {row} is an empty string; embed only non-empty text")
    return texts


# What ``$var:`` references read in create(): the variables of the process's registry
# (``set_var`` on ``get_registry()`` or ``EmbeddingFunctionRegistry.get_instance()``).
PROCESS_VARIABLES: dict[str, str] = {}


def resolve_variables(
    args: Mapping[str, Any], variables: Mapping[str, str], keep_unset: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """``args`` with each ``$var:name[:default]`` value replaced by the variable, else by its
    default (as LanceDB's ``create()`` does). An unset variable without a default is a
    ``ValueError``, except under the ``keep_unset`` keys, where the reference is kept (for a
    server that has variables of its own to resolve it)."""
    resolved = copy.deepcopy(dict(args))
    for key, value in resolved.items():
        if not (isinstance(value, str) and value.startswith("$var:")):
            continue
        name, colon, default = value[5:].partition(":")
        if name in variables:
            resolved[key] = variables[name]
        elif colon:
            resolved[key] = default
        elif key not in keep_unset:
            error = InvalidArgument(f"Variable {name!r} not found in registry")
            error.add_note(
                "Help: Variables are reset in new Python sessions. "
                "Use `registry.set_var` to set variables."
            )
            raise error
    return resolved


def is_reference(value: Any) -> bool:
    """A ``$var:`` or ``$env:`` reference, which may be persisted where its value may not."""
    return isinstance(value, str) and value.startswith(("$var:", "$env:"))


# Errors of the caller's or the function's own making: another try fails the same way.
_PERMANENT: tuple[type[BaseException], ...] = (
    ValueError,  # InvalidArgument and InvalidSchema among them
    TypeError,
    AttributeError,
    LookupError,
    NameError,
    NotImplementedError,
    AssertionError,
    ArithmeticError,
    ImportError,
    FailedPrecondition,
    PermissionDenied,
    Unauthenticated,
    Unimplemented,
)


def retryable(error: BaseException) -> bool:
    """Whether another try may succeed: not a programming or input error (ValueError,
    TypeError, ...), and not a refused key (an ``AuthenticationError`` or an HTTP 401/403, as
    LanceDB's ``retry_with_exponential_backoff`` leaves alone)."""
    if not isinstance(error, Exception) or isinstance(error, _PERMANENT):
        return False
    if type(error).__name__ in ("AuthenticationError", "PermissionDeniedError"):
        return False
    return getattr(error, "status_code", None) not in (401, 403)


def retry_with_exponential_backoff(
    func: Callable[..., R],
    initial_delay: float = 1.0,
    exponential_base: float = 2.0,
    jitter: bool = True,
    max_retries: int = 7,
    max_delay: float = 30.0,
) -> Callable[..., R]:
    """``func``, called again after a failure that :func:`retryable` accepts, up to
    ``max_retries`` times (LanceDB's helper of the same name). The n-th wait is
    ``initial_delay * exponential_base**n``, times a random factor in [1, 2) with ``jitter``,
    capped at ``max_delay`` seconds. The last failure is raised as it was, with a note saying
    how many tries were made.

    >>> retry_with_exponential_backoff(lambda: 1, max_retries=3)()
    1
    """

    def wrapper(*args: Any, **kwargs: Any) -> R:
        delay = initial_delay
        for attempt in range(max_retries + 1):
            try:
                return func(*args, **kwargs)
            except Exception as exc:
                if not retryable(exc):
                    raise
                if attempt == max_retries:
                    exc.add_note(f"gave up after {max_retries + 1} tries (max_retries)")
                    raise
                wait = min(delay * (1 + jitter * random.random()), max_delay)
                log.warning(
                    "embedding failed (%s); retry %d of %d in %.2fs",
                    exc,
                    attempt + 1,
                    max_retries,
                    wait,
                )
                time.sleep(wait)
                delay *= exponential_base
        raise AssertionError("unreachable")

    return wrapper
