"""Handles on providers served by embedsearch: the model runs on the server, not in this process."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field, PrivateAttr

from embedsearch.contract.functions import EmbeddingFunction, check_texts

if TYPE_CHECKING:
    from embedsearch.db import Connection


class RemoteEmbeddingFunction(EmbeddingFunction):
    """A function created from the registry: a handle on the server's provider.

    ``ndims()`` and ``generate_embeddings()`` go through a gateway: the connection this function
    was used with, else the process's latest :func:`embedsearch.connect`, else
    ``$EMBEDSEARCH_URI``, else a gateway on 127.0.0.1:50050, else an in-process embedder.
    """

    provider: str
    args: dict[str, Any] = Field(default_factory=dict)
    _ndims: int = PrivateAttr(default=0)
    _connection: Connection | None = PrivateAttr(default=None)

    def bind(self, connection: Connection) -> None:
        """Send this function's calls through ``connection`` from now on."""
        self._connection = connection

    def connection(self) -> Connection:
        from embedsearch.db import default_connection

        return self._connection or default_connection()

    def ndims(self) -> int:
        if not self._ndims:
            self._ndims = self.connection().resolve_function(self.provider, self.args).ndims
        return self._ndims

    def generate_embeddings(self, texts: Sequence[str], mode: str = "source") -> list[np.ndarray]:
        """Embed texts on the server; ``mode`` is "source" (documents) or "query"."""
        batch = check_texts([texts] if isinstance(texts, str) else texts)
        return list(self.connection().generate_embeddings(self.provider, self.args, batch, mode))

    def compute_source_embeddings(self, inputs: Sequence[Any]) -> list[np.ndarray]:
        return self.generate_embeddings(list(inputs), "source")

    def compute_query_embeddings(self, query: Any) -> list[np.ndarray]:
        return self.generate_embeddings([query] if isinstance(query, str) else list(query), "query")

    def safe_model_dump(self) -> dict[str, Any]:
        return {
            key: value
            for key, value in self.args.items()
            if key not in self.sensitive_keys or str(value).startswith(("$var:", "$env:"))
        }


class RemoteProvider:
    """What ``get_registry().get(name)`` returns for a provider the server hosts."""

    def __init__(self, name: str) -> None:
        self.name = name

    def create(self, **kwargs: Any) -> RemoteEmbeddingFunction:
        """A handle on the server's ``name`` provider with these create() arguments."""
        function = RemoteEmbeddingFunction(provider=self.name, args=kwargs)
        function._original_args = dict(kwargs)
        return function

    def __repr__(self) -> str:
        return f"RemoteProvider({self.name!r})"
