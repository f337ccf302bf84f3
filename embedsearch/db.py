"""Connections: ``connect("grpc://host:port")`` reaches a gateway; ``connect("./dir")`` runs one."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import pyarrow as pa

from embedsearch.contract.channels import channel_credentials, channel_options, typed_errors
from embedsearch.contract.convert import CREATE_MODE_TO_PB, MODE_TO_PB, spec_to_pb
from embedsearch.contract.errors import InvalidArgument, Unavailable
from embedsearch.contract.registry import alias_of
from embedsearch.contract.wire import schema_to_ipc, table_to_ipc, unpack_vectors
from embedsearch.embeddings import (
    EmbeddingFunction,
    EmbeddingFunctionConfig,
    RemoteEmbeddingFunction,
)
from embedsearch.v1 import common_pb2, embedder_pb2, gateway_pb2, gateway_pb2_grpc
from embedsearch.vectors import infer_vector_columns

if TYPE_CHECKING:
    from embedsearch.table import Table

DEFAULT_GATEWAY = "127.0.0.1:50050"


class Connection:
    """A connection to an embedsearch gateway; the table API starts here.

    Examples
    --------
    >>> db = embedsearch.connect("grpc://127.0.0.1:50050")  # doctest: +SKIP
    >>> db.list_tables().tables  # doctest: +SKIP
    ['mytable']
    """

    def __init__(
        self,
        target: str,
        uri: str,
        api_key: str | None = None,
        timeout: float | None = 300.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.uri = uri
        self.timeout = timeout
        self._peer = f"gateway at {uri}"
        self._channel = (
            grpc.secure_channel(target, credentials, options=channel_options())
            if credentials
            else grpc.insecure_channel(target, options=channel_options())
        )
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()

    def call(self, method: str, request: Any, timeout: float | None = -1.0) -> Any:
        """Invoke a Gateway RPC; failures raise the typed errors of :mod:`embedsearch.errors`.

        ``timeout`` defaults to the connection's; ``None`` waits as long as the call runs.
        """
        with typed_errors(self._peer):
            return getattr(self._stub, method)(
                request,
                timeout=self.timeout if timeout == -1.0 else timeout,
                metadata=self._metadata,
            )

    def stream(self, method: str, request: Any) -> Iterator[Any]:
        """The replies of a server-streaming Gateway RPC, as they arrive; failures raise the
        typed errors of :mod:`embedsearch.errors`. No deadline: the caller reads at its pace."""
        with typed_errors(self._peer):
            yield from getattr(self._stub, method)(request, metadata=self._metadata)

    # -- tables ------------------------------------------------------------------------------

    def _names(self, start_after: str | None, limit: int | None) -> list[str]:
        """Sorted names after ``start_after``, at most ``limit`` of them (None: all)."""
        return list(self.call("ListTables", list_tables_request(start_after, limit)).names)

    def list_tables(
        self,
        namespace_path: list[str] | None = None,
        page_token: str | None = None,
        limit: int | None = None,
    ) -> ListTablesResponse:
        """A page of table names, sorted: the first ``limit`` (all when None) after
        ``page_token``, with the token of the next page when there may be one."""
        _root_namespace(namespace_path)
        names = self._names(page_token, limit)
        return ListTablesResponse(names, names[-1] if limit and len(names) == limit else None)

    def table_names(
        self,
        page_token: str | None = None,
        limit: int = 10,
        *,
        namespace_path: list[str] | None = None,
    ) -> list[str]:
        """Up to ``limit`` table names after ``page_token``, sorted (deprecated in LanceDB for
        :meth:`list_tables`; ``name in db`` tests for one table)."""
        warnings.warn(
            "table_names() is deprecated, use list_tables() instead",
            DeprecationWarning,
            stacklevel=2,
        )
        _root_namespace(namespace_path)
        return self._names(page_token, limit)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._names(None, None)

    def __len__(self) -> int:
        return len(self._names(None, None))

    def open_table(
        self,
        name: str,
        *,
        namespace_path: list[str] | None = None,
        storage_options: dict[str, str] | None = None,
        index_cache_size: int | None = None,
        version: int | None = None,
    ) -> Table:
        """Open an existing table: its latest version, or ``version`` (read-only, as after
        ``checkout(version)``). Storage options and cache sizes are the store's settings."""
        from embedsearch.table import Table

        _root_namespace(namespace_path)
        request = gateway_pb2.DescribeTableRequest(name=name, version=version or 0)
        return Table(self, self.call("DescribeTable", request), version or 0)

    def drop_all_tables(self, namespace_path: list[str] | None = None) -> None:
        """Drop every table."""
        _root_namespace(namespace_path)
        for name in self._names(None, None):
            self.drop_table(name, ignore_missing=True)

    def rename_table(
        self,
        cur_name: str,
        new_name: str,
        cur_namespace_path: list[str] | None = None,
        new_namespace_path: list[str] | None = None,
    ) -> None:
        """Rename a table; its versions, indexes and embedding functions go with it. (LanceDB
        OSS refuses this; LanceDB Cloud and embedsearch do it.)"""
        _root_namespace(cur_namespace_path)
        _root_namespace(new_namespace_path)
        request = gateway_pb2.RenameTableRequest(name=cur_name, new_name=new_name)
        self.call("RenameTable", request)

    def drop_table(self, name: str, ignore_missing: bool = False) -> None:
        """Delete a table and all its versions."""
        self.call(
            "DropTable", gateway_pb2.DropTableRequest(name=name, ignore_missing=ignore_missing)
        )

    def create_table(
        self,
        name: str,
        data: Any = None,
        schema: Any = None,
        mode: str = "create",
        exist_ok: bool = False,
        on_bad_vectors: str = "error",
        fill_value: float = 0.0,
        embedding_functions: list[EmbeddingFunctionConfig] | None = None,
        *,
        namespace_path: list[str] | None = None,
        storage_options: dict[str, str] | None = None,
    ) -> Table:
        """Create a table from a schema (a ``LanceModel`` or an Arrow schema) and/or data.

        Functions from the registry are applied by the server: rows are embedded on insert,
        text queries on search. Functions registered in this process with ``@register`` run
        here, and the server stores what they produce. ``embedding_functions`` binds columns
        of an Arrow schema (or of the data) the way a ``LanceModel``'s fields do.

        Storage is the store service's to configure, for every table alike
        (``STORE_STORAGE_OPTIONS``): per-table ``storage_options`` are refused rather than
        ignored.
        """
        from embedsearch.table import Table

        request = self._create_request(
            name,
            data,
            schema,
            mode,
            exist_ok,
            on_bad_vectors,
            fill_value,
            embedding_functions or [],
            namespace_path,
            storage_options,
        )
        return Table(self, self.call("CreateTable", request))

    def _create_request(
        self,
        name: str,
        data: Any,
        schema: Any,
        mode: str,
        exist_ok: bool,
        on_bad_vectors: str,
        fill_value: float,
        configs: list[EmbeddingFunctionConfig],
        namespace_path: list[str] | None,
        storage_options: dict[str, str] | None,
    ) -> gateway_pb2.CreateTableRequest:
        """The CreateTable request of :meth:`create_table`: rows converted to Arrow, vector
        columns inferred, and embedded here for the functions this process runs. No call."""
        from embedsearch.table import bad_vectors_to_pb, embed_locally, to_arrow

        _root_namespace(namespace_path)
        if storage_options:
            raise InvalidArgument(
                "storage_options are configured on the store service for every table "
                "(STORE_STORAGE_OPTIONS, or --storage-options); create_table takes none"
            )
        if mode not in CREATE_MODE_TO_PB:
            raise InvalidArgument(f"mode must be one of {sorted(CREATE_MODE_TO_PB)}, got {mode!r}")
        arrow_schema, bindings = self._schema_and_bindings(schema, configs)
        request = gateway_pb2.CreateTableRequest(
            name=name,
            bindings=[binding for binding, _ in bindings],
            mode=CREATE_MODE_TO_PB["exist_ok" if exist_ok else mode],
            on_bad_vectors=bad_vectors_to_pb(on_bad_vectors),
            fill_value=fill_value,
        )
        if data is not None:
            rows = to_arrow(data)
            if arrow_schema is None:
                rows = infer_vector_columns(rows, on_bad_vectors, fill_value)
            local = {
                b.vector_column: (b, func)
                for b, func in bindings
                if b.client_side or _client_variables(func)
            }
            if local and arrow_schema is not None:
                rows = embed_locally(rows, arrow_schema, local)
            request.rows.arrow_ipc = table_to_ipc(rows)
            arrow_schema = arrow_schema if arrow_schema is not None else rows.schema
        if arrow_schema is None:
            raise InvalidArgument("create_table needs data or a schema")
        request.arrow_schema = schema_to_ipc(arrow_schema)
        return request

    def _schema_and_bindings(
        self, schema: Any, configs: list[EmbeddingFunctionConfig]
    ) -> tuple[pa.Schema | None, list[tuple[common_pb2.EmbeddingBinding, EmbeddingFunction]]]:
        from embedsearch.pydantic import LanceModel

        triples = [(c.function, c.source_column, c.vector_column) for c in configs]
        if isinstance(schema, type) and issubclass(schema, LanceModel):
            triples = schema.embedding_bindings() + triples
            schema = schema.to_arrow_schema()
        elif schema is not None and not isinstance(schema, pa.Schema):
            raise InvalidArgument("schema must be a LanceModel subclass or a pyarrow.Schema")
        bindings = []
        for func, source, vector in triples:
            binding = common_pb2.EmbeddingBinding(source_column=source, vector_column=vector)
            if isinstance(func, RemoteEmbeddingFunction):
                func.bind(self)
                binding.function.CopyFrom(spec_to_pb(func.provider, func.args))
                if func.uses_client_variables():
                    # Values only this process holds: the server could not resolve the function,
                    # so the SDK embeds through it (sending the values) and the server stores the
                    # vectors, as for a function registered here.
                    binding.client_side = True
                    binding.ndims = func.ndims()
            else:  # registered in this process: it runs here
                binding.function.CopyFrom(spec_to_pb(alias_of(func), func.safe_model_dump()))
                binding.client_side = True
                binding.ndims = func.ndims()
            bindings.append((binding, func))
        return schema, bindings

    # -- functions ---------------------------------------------------------------------------

    def resolve_function(
        self, provider: str, args: dict[str, Any]
    ) -> embedder_pb2.ResolveFunctionResponse:
        """Canonical arguments, ndims and modalities of a provider with these arguments."""
        request = embedder_pb2.ResolveFunctionRequest(function=spec_to_pb(provider, args))
        return self.call("ResolveFunction", request)

    def generate_embeddings(
        self, provider: str, args: dict[str, Any], texts: Iterable[str], mode: str = "source"
    ) -> np.ndarray:
        """Embed texts on the server; returns a float32 (len(texts), ndims) array."""
        request = embedder_pb2.EmbedRequest(
            function=spec_to_pb(provider, args), mode=MODE_TO_PB[mode], texts=list(texts)
        )
        reply = self.call("GenerateEmbeddings", request)
        return unpack_vectors(reply.vectors, reply.ndims).reshape(reply.count, reply.ndims)

    def close(self) -> None:
        self._channel.close()

    def __repr__(self) -> str:
        return f"Connection({self.uri!r})"


@dataclass
class ListTablesResponse:
    """A page of table names, as LanceDB's ``list_tables`` returns it."""

    tables: list[str]
    page_token: str | None = None


def list_tables_request(
    start_after: str | None, limit: int | None
) -> gateway_pb2.ListTablesRequest:
    """Sorted names after ``start_after``, at most ``limit`` of them (None: all)."""
    if limit is not None and limit < 0:
        raise InvalidArgument(f"limit must be positive or None, got {limit}")
    return gateway_pb2.ListTablesRequest(start_after=start_after or "", limit=limit or 0)


def _client_variables(func: EmbeddingFunction) -> bool:
    """A server-hosted function whose ``$var:`` values this process holds: the SDK embeds."""
    return isinstance(func, RemoteEmbeddingFunction) and func.uses_client_variables()


def _root_namespace(namespace_path: list[str] | None) -> None:
    """Tables live in one flat namespace: name no other."""
    if namespace_path:
        raise InvalidArgument(
            f"namespaces are not supported: tables live in the root namespace, got "
            f"{namespace_path!r}"
        )


MEMORY_URI = "memory://"
_LATEST: list[Connection] = []
_LATEST_LOCK = threading.Lock()


def local_stack(data_dir: str) -> Any:
    """The in-process stack for ``data_dir`` (embedded mode loads the services here only)."""
    from embedsearch.local import local_stack as start

    return start(data_dir)


def _scratch_dir() -> str:
    """A directory of this process's own for ``memory://``, removed when the process exits."""
    path = tempfile.mkdtemp(prefix="embedsearch-memory-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def gateway_of(
    uri: str, tls_ca_file: str | None = None
) -> tuple[str, grpc.ChannelCredentials | None]:
    """The gateway target of a connect URI, and the channel's credentials (None: plaintext).
    A local path or ``memory://`` starts the in-process stack, which can take a while."""
    scheme, _, address = uri.partition("://")
    if uri == MEMORY_URI:
        return local_stack(_scratch_dir()).gateway_target, None
    if scheme in ("grpc", "grpcs") and address:
        return address, channel_credentials(tls_ca_file or "", use_tls=scheme == "grpcs")
    if "://" in uri:
        raise InvalidArgument(
            f"unsupported URI {uri!r}: use grpc://host:port, grpcs://host:port or a local path"
        )
    return local_stack(uri).gateway_target, None


def connect(
    uri: str | os.PathLike[str],
    api_key: str | None = None,
    timeout: float | None = 300.0,
    tls_ca_file: str | None = None,
) -> Connection:
    """Connect to embedsearch.

    ``grpc://host:port`` reaches a running gateway, ``grpcs://host:port`` one serving TLS
    (verified against the system's roots, or against ``tls_ca_file``). ``api_key`` is sent as
    a bearer token. A local path (a string or a ``pathlib.Path``) runs embedder, store and
    gateway inside this process, with the tables stored under that directory; ``memory://``
    does the same in a temporary directory that goes when the process exits.

    >>> db = connect("./mydb")  # doctest: +SKIP
    """
    uri = os.fspath(uri)
    target, credentials = gateway_of(uri, tls_ca_file)
    connection = Connection(target, uri, api_key, timeout, credentials)
    with _LATEST_LOCK:
        _LATEST[:] = [connection]
    return connection


def latest_connection() -> Connection | None:
    """The process's latest :func:`connect`, if any; none is made."""
    with _LATEST_LOCK:
        return _LATEST[0] if _LATEST else None


def default_connection() -> Connection:
    """The connection used by functions not yet tied to one (see RemoteEmbeddingFunction)."""
    with _LATEST_LOCK:
        if _LATEST:
            return _LATEST[0]
    uri = os.environ.get("EMBEDSEARCH_URI")
    if uri:
        return connect(uri)
    if _answers(DEFAULT_GATEWAY):
        return connect(f"grpc://{DEFAULT_GATEWAY}")
    import tempfile

    return connect(tempfile.mkdtemp(prefix="embedsearch-functions-"))


def _answers(target: str) -> bool:
    from embedsearch.contract.channels import wait_until_serving

    try:
        wait_until_serving(target, timeout=0.5)
    except Unavailable:
        return False
    return True


# LanceDB's names for the connection classes, for code that imports them from ``lancedb.db``.
DBConnection = Connection
LanceDBConnection = Connection


def __getattr__(name: str) -> Any:
    """``AsyncConnection`` lives in :mod:`embedsearch.aio`, which imports this module."""
    if name == "AsyncConnection":
        from embedsearch.aio import AsyncConnection

        return AsyncConnection
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
