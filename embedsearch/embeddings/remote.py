"""Handles on providers served by embedsearch: the model runs on the server, not in this process.

``$var:`` references in a server-hosted function's arguments
-------------------------------------------------------------
``registry.set_var(name, value)`` sets a variable in this process only. A function created
with ``$var:name`` (or ``$var:name:default``) keeps the reference in what it persists (the
table's ``embedding_functions`` metadata never holds the value) and sends the value with
each call it makes itself (``ndims``, ``generate_embeddings``, ``compute_*_embeddings``).
A table whose function refers to a variable set here is embedded by this SDK through that
function, rows and text queries alike, as it does for ``@register`` functions, so the value
never leaves the call. A reference to a variable not set here is left to the embedder: for a
secret argument (``api_key``) it reads the file ``<--secrets-dir>/name`` or the environment
variable ``NAME``; for any other argument an unset variable without a default is a
``ValueError`` at ``create()``, as in LanceDB.

A pickled function carries its provider, its arguments (references kept), the values its
references had when it was created and its connection's URI: unpickled in another process
(multiprocessing, Ray, Spark), it connects to that URI on first use. The gateway API key is
not pickled; a worker that needs one connects first (its latest ``connect()`` is used).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from pydantic import Field, PrivateAttr

from embedsearch.contract.convert import args_from_pb
from embedsearch.contract.functions import (
    EmbeddingFunction,
    TextEmbeddingFunction,
    check_texts,
    is_reference,
    sensitive_keys_of,
)
from embedsearch.contract.registry import EmbeddingFunctionRegistry
from embedsearch.v1 import common_pb2, embedder_pb2

if TYPE_CHECKING:
    from embedsearch.db import Connection

# Providers each connection's gateway serves, asked once per connection.
_PROVIDERS: weakref.WeakKeyDictionary[Connection, dict[str, embedder_pb2.ProviderInfo]] = (
    weakref.WeakKeyDictionary()
)
# Connections opened by unpickled functions, by URI: one per URI in a worker process.
_BY_URI: dict[str, Connection] = {}
_LOCK = threading.Lock()
R = TypeVar("R")


def providers_of(connection: Connection) -> dict[str, embedder_pb2.ProviderInfo]:
    """The providers ``connection``'s gateway serves, by name (one ListProviders per
    connection)."""
    with _LOCK:
        known = _PROVIDERS.get(connection)
    if known is None:
        reply = connection.call("ListProviders", embedder_pb2.ListProvidersRequest())
        known = {info.name: info for info in reply.providers}
        with _LOCK:
            _PROVIDERS[connection] = known
    return known


def connection_for(uri: str) -> Connection:
    """A connection to ``uri`` shared by the functions of this process that name it."""
    from embedsearch.db import connect

    with _LOCK:
        if uri not in _BY_URI:
            _BY_URI[uri] = connect(uri)
        return _BY_URI[uri]


class RemoteEmbeddingFunction(EmbeddingFunction):
    """A function created from the registry: a handle on the server's provider.

    ``ndims()`` and ``generate_embeddings()`` go through a gateway: the connection this function
    was used with, else the process's latest :func:`embedsearch.connect`, else
    ``$EMBEDSEARCH_URI``, else a gateway on 127.0.0.1:50050, else an in-process embedder.
    Its create() arguments read as attributes (``func.name``, ``func.device``); one the
    provider takes but was not given reads as the server's canonical value (``name``: the
    model it loads), else None: the provider's own default applies.
    """

    provider: str
    args: dict[str, Any] = Field(default_factory=dict)
    _ndims: int = PrivateAttr(default=0)
    _connection: Connection | None = PrivateAttr(default=None)
    _uri: str | None = PrivateAttr(default=None)
    _call_args: dict[str, Any] | None = PrivateAttr(default=None)
    _info: embedder_pb2.ProviderInfo | None = PrivateAttr(default=None)
    _canonical: dict[str, Any] | None = PrivateAttr(default=None)

    def registry_name(self) -> str:
        """The provider's name: what table metadata records for this function."""
        return self.provider

    def bind(self, connection: Connection) -> None:
        """Send this function's calls through ``connection`` from now on."""
        self._connection = connection

    def connection(self) -> Connection:
        from embedsearch.db import default_connection

        if self._connection is None and self._uri:
            self._connection = connection_for(self._uri)
        return self._connection or default_connection()

    def call_args(self) -> dict[str, Any]:
        """The arguments sent to the server: ``$var:`` references to variables set in this
        process replaced by their values (see the module's docstring)."""
        if self._call_args is None:
            registry = EmbeddingFunctionRegistry.get_instance()
            keep = sensitive_keys_of(self)
            self._call_args = registry.resolve_variables(self.args, keep_unset=keep)
        return self._call_args

    def uses_client_variables(self) -> bool:
        """Whether a call sends values this process holds (its ``$var:`` references resolved
        here): the server cannot embed for this function on its own then."""
        call = self.call_args()
        return any(is_reference(v) and call.get(k) != v for k, v in self.args.items())

    def ndims(self) -> int:
        if not self._ndims:
            self._resolve()
        return self._ndims

    def _resolve(self) -> None:
        reply = self.connection().resolve_function(self.provider, self.call_args())
        self._ndims = reply.ndims
        self._canonical = args_from_pb(reply.canonical.args)

    def _canonical_args(self) -> dict[str, Any]:
        """The server's canonical arguments (the model's name filled in), asked once."""
        if self._canonical is None:
            self._resolve()
        return self._canonical or {}

    def generate_embeddings(self, texts: Sequence[str], mode: str = "source") -> list[np.ndarray]:
        """Embed texts on the server; ``mode`` is "source" (documents) or "query"."""
        batch = check_texts(self.sanitize_input(texts))
        call = self.call_args()
        return list(self.connection().generate_embeddings(self.provider, call, batch, mode))

    def compute_source_embeddings(self, inputs: Sequence[Any]) -> list[np.ndarray]:
        return self.generate_embeddings(self.sanitize_input(inputs), "source")

    def compute_query_embeddings(self, query: Any) -> list[np.ndarray]:
        return self.generate_embeddings(self.sanitize_input(query), "query")

    def _with_retry(self, call: Callable[..., R]) -> Callable[..., R]:
        return call  # the embedder retries the provider's API calls (max_retries) itself

    def safe_model_dump(self) -> dict[str, Any]:
        secret = sensitive_keys_of(self)
        return {
            key: value
            for key, value in self.args.items()
            if key not in secret or is_reference(value)
        }

    def __getattr__(self, item: str) -> Any:
        if item.startswith("_"):
            return super().__getattr__(item)  # type: ignore[misc]
        args = self.__dict__.get("args")
        if args is None:
            raise AttributeError(item)
        call = self.call_args()
        if item in call:
            return call[item]
        info = self._info
        if info is not None and item in info.defaults:
            # The provider's default: known from the provider list, with no call.
            return args_from_pb(info.defaults)[item]
        if info is not None and item in info.arguments:
            return self._canonical_args().get(item)
        raise AttributeError(f"{type(self).__name__!r} for {self.provider!r} has no {item!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as (provider, arguments, resolved values, connection URI): the other side
        connects lazily."""
        from embedsearch.db import latest_connection

        connection = self._connection or latest_connection()
        uri = connection.uri if connection is not None else self._uri
        info = self._info.SerializeToString() if self._info is not None else None
        state = (self.provider, dict(self.args), self.max_retries, self.call_args(), uri, info)
        return (_restore, (type(self), *state))


class RemoteTextEmbeddingFunction(RemoteEmbeddingFunction, TextEmbeddingFunction):
    """A handle on a server provider that embeds text only (``isinstance(func,
    TextEmbeddingFunction)`` holds, as for LanceDB's text functions)."""


def _restore(
    cls: type[RemoteEmbeddingFunction],
    provider: str,
    args: dict[str, Any],
    max_retries: int,
    call_args: dict[str, Any],
    uri: str | None,
    info: bytes | None,
) -> RemoteEmbeddingFunction:
    function = cls(provider=provider, args=args, max_retries=max_retries)
    function._original_args = dict(args)
    function._call_args = call_args
    function._uri = uri
    function._info = embedder_pb2.ProviderInfo.FromString(info) if info is not None else None
    return function


class RemoteProvider:
    """What ``get_registry().get(name)`` returns for a provider the server hosts."""

    def __init__(self, name: str, info: embedder_pb2.ProviderInfo | None = None) -> None:
        self.name = name
        self.info = info

    def create(self, **kwargs: Any) -> RemoteEmbeddingFunction:
        """A handle on the server's ``name`` provider with these create() arguments; a
        ``$var:`` reference to an unset variable without a default is a ValueError, except
        for secret arguments, which the server may resolve."""
        text_only = self.info is not None and list(self.info.modalities) == [
            common_pb2.MODALITY_TEXT
        ]
        cls = RemoteTextEmbeddingFunction if text_only else RemoteEmbeddingFunction
        function = cls(provider=self.name, args=kwargs)
        function._original_args = dict(kwargs)
        function._info = self.info
        call = function.call_args()  # unset variables fail here, as in LanceDB
        if isinstance(call.get("max_retries"), int):
            function.max_retries = call["max_retries"]
        return function

    def __repr__(self) -> str:
        return f"RemoteProvider({self.name!r})"
