"""embedsearch: LanceDB's embedding-function API, served over gRPC.

>>> import embedsearch  # doctest: +SKIP
>>> db = embedsearch.connect("grpc://127.0.0.1:50050")  # doctest: +SKIP

``connect``, ``connect_async`` and their classes load on first use, so that the services,
which stand on :mod:`embedsearch.contract` and :mod:`embedsearch.v1`, never load the client
side.
"""

from typing import TYPE_CHECKING, Any

from embedsearch.contract.errors import (
    AlreadyExists,
    EmbedsearchError,
    InvalidArgument,
    NotFound,
    TableAlreadyExists,
    TableNotFound,
    Unavailable,
)

if TYPE_CHECKING:
    from embedsearch.aio import AsyncConnection, AsyncTable, connect_async
    from embedsearch.db import Connection, connect

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "AsyncConnection",
    "AsyncTable",
    "Connection",
    "EmbedsearchError",
    "InvalidArgument",
    "NotFound",
    "TableAlreadyExists",
    "TableNotFound",
    "Unavailable",
    "__version__",
    "connect",
    "connect_async",
]


def __getattr__(name: str) -> Any:
    if name in ("connect", "Connection"):
        from embedsearch import db

        return getattr(db, name)
    if name in ("connect_async", "AsyncConnection", "AsyncTable"):
        from embedsearch import aio

        return getattr(aio, name)
    raise AttributeError(f"module 'embedsearch' has no attribute {name!r}")
