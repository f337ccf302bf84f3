"""Connections: ``connect("grpc://host:port")`` reaches a gateway; ``connect("./dir")`` runs one."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import pyarrow as pa

from embedsearch.contract.channels import channel_credentials, channel_options, typed_errors
from embedsearch.contract.convert import CREATE_MODE_TO_PB, MODE_TO_PB, spec_to_pb
from embedsearch.contract.errors import InvalidArgument, Unavailable
from embedsearch.contract.registry import alias_of
from embedsearch.contract.wire import schema_to_ipc, table_to_ipc, unpack_vectors
from embedsearch.embeddings import EmbeddingFunction, RemoteEmbeddingFunction
from embedsearch.v1 import common_pb2, embedder_pb2, gateway_pb2, gateway_pb2_grpc

if TYPE_CHECKING:
    from embedsearch.table import Table

DEFAULT_GATEWAY = "127.0.0.1:50050"


class Connection:
    """A connection to an embedsearch gateway; the table API starts here.

    Examples
    --------
    >>> db = embedsearch.connect("grpc://127.0.0.1:50050")  # doctest: +SKIP
    >>> db.table_names()  # doctest: +SKIP
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

    # -- tables ------------------------------------------------------------------------------

    def table_names(self) -> list[str]:
        """Names of all tables, sorted."""
        return list(self.call("ListTables", gateway_pb2.ListTablesRequest()).names)

    def open_table(self, name: str) -> Table:
        """Open an existing table."""
        from embedsearch.table import Table

        return Table(self, self.call("DescribeTable", gateway_pb2.DescribeTableRequest(name=name)))

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
    ) -> Table:
        """Create a table from a schema (a ``LanceModel`` or an Arrow schema) and/or data.

        Functions from the registry are applied by the server: rows are embedded on insert,
        text queries on search. Functions registered in this process with ``@register`` run
        here, and the server stores what they produce.
        """
        from embedsearch.table import Table, bad_vectors_to_pb, embed_locally, to_arrow

        if mode not in CREATE_MODE_TO_PB:
            raise InvalidArgument(f"mode must be one of {sorted(CREATE_MODE_TO_PB)}, got {mode!r}")
        arrow_schema, bindings = self._schema_and_bindings(schema)
        request = gateway_pb2.CreateTableRequest(
            name=name,
            bindings=[binding for binding, _ in bindings],
            mode=CREATE_MODE_TO_PB["exist_ok" if exist_ok else mode],
            on_bad_vectors=bad_vectors_to_pb(on_bad_vectors),
            fill_value=fill_value,
        )
        if data is not None:
            rows = to_arrow(data)
            local = {b.vector_column: (b, func) for b, func in bindings if b.client_side}
            if local and arrow_schema is not None:
                rows = embed_locally(rows, arrow_schema, local)
            request.rows.arrow_ipc = table_to_ipc(rows)
            arrow_schema = arrow_schema if arrow_schema is not None else rows.schema
        if arrow_schema is None:
            raise InvalidArgument("create_table needs data or a schema")
        request.arrow_schema = schema_to_ipc(arrow_schema)
        return Table(self, self.call("CreateTable", request))

    def _schema_and_bindings(
        self, schema: Any
    ) -> tuple[pa.Schema | None, list[tuple[common_pb2.EmbeddingBinding, EmbeddingFunction]]]:
        from embedsearch.pydantic import LanceModel

        if schema is None or isinstance(schema, pa.Schema):
            return schema, []
        if not (isinstance(schema, type) and issubclass(schema, LanceModel)):
            raise InvalidArgument("schema must be a LanceModel subclass or a pyarrow.Schema")
        bindings = []
        for func, source, vector in schema.embedding_bindings():
            binding = common_pb2.EmbeddingBinding(source_column=source, vector_column=vector)
            if isinstance(func, RemoteEmbeddingFunction):
                func.bind(self)
                binding.function.CopyFrom(spec_to_pb(func.provider, func.args))
            else:  # registered in this process: it runs here
                binding.function.CopyFrom(spec_to_pb(alias_of(func), func.safe_model_dump()))
                binding.client_side = True
                binding.ndims = func.ndims()
            bindings.append((binding, func))
        return schema.to_arrow_schema(), bindings

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


_LATEST: list[Connection] = []
_LATEST_LOCK = threading.Lock()


def connect(
    uri: str,
    api_key: str | None = None,
    timeout: float | None = 300.0,
    tls_ca_file: str | None = None,
) -> Connection:
    """Connect to embedsearch.

    ``grpc://host:port`` reaches a running gateway, ``grpcs://host:port`` one serving TLS
    (verified against the system's roots, or against ``tls_ca_file``). ``api_key`` is sent as
    a bearer token. A local path runs embedder, store and gateway inside this process, with
    the tables stored under that directory.

    >>> db = connect("./mydb")  # doctest: +SKIP
    """
    scheme, _, address = uri.partition("://")
    if scheme in ("grpc", "grpcs") and address:
        credentials = channel_credentials(tls_ca_file or "", use_tls=scheme == "grpcs")
        connection = Connection(address, uri, api_key, timeout, credentials)
    elif "://" in uri:
        raise InvalidArgument(
            f"unsupported URI {uri!r}: use grpc://host:port, grpcs://host:port or a local path"
        )
    else:
        from embedsearch.local import local_stack

        connection = Connection(local_stack(uri).gateway_target, uri, api_key, timeout)
    with _LATEST_LOCK:
        _LATEST[:] = [connection]
    return connection


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
