"""Embedding-function base classes, as pydantic models with LanceDB's method names."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import cached_property
from typing import Any, ClassVar, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from embedsearch.contract.errors import InvalidArgument


class EmbeddingFunction(BaseModel, ABC):
    """An embedding function: turns source inputs and queries into vectors of ``ndims()``.

    Build one with :meth:`create`, which keeps the caller's arguments: they are what is
    persisted in a table's ``embedding_functions`` metadata, as LanceDB does.

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
    sensitive_keys: ClassVar[frozenset[str]] = frozenset({"api_key"})

    max_retries: int = Field(7, ge=0, description="Retries of failed API calls; 0 disables.")
    _original_args: dict[str, Any] = PrivateAttr(default_factory=dict)

    @classmethod
    def create(cls, **kwargs: Any) -> Self:
        """Instantiate with these arguments and remember them for persistence."""
        instance = cls(**kwargs)
        instance._original_args = dict(kwargs)
        return instance

    def safe_model_dump(self) -> dict[str, Any]:
        """The create() arguments with secrets left out: safe to write into table metadata."""
        return {
            key: value
            for key, value in self._original_args.items()
            if key not in self.sensitive_keys or _is_reference(value)
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
        return list(self.generate_embeddings(check_texts(inputs)))

    def compute_query_embeddings(self, query: Any) -> list[np.ndarray]:
        texts = [query] if isinstance(query, str) else list(query)
        return list(self.generate_embeddings(check_texts(texts)))

    @abstractmethod
    def generate_embeddings(self, texts: list[str]) -> list[list[float]] | np.ndarray:
        """Embed a list of texts."""


def check_texts(inputs: Sequence[Any]) -> list[str]:
    """Reject None and empty strings, naming the row: they must never become null vectors."""
    texts = list(inputs)
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidArgument(f"input {row} is {type(text).__name__}, expected a string")
        if not text.strip():
            raise InvalidArgument(f"input {row} is an empty string; embed only non-empty text")
    return texts


def _is_reference(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("$var:", "$env:"))
