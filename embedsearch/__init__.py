"""embedsearch: LanceDB's embedding-function API, served over gRPC.

>>> import embedsearch  # doctest: +SKIP
>>> db = embedsearch.connect("grpc://127.0.0.1:50050")  # doctest: +SKIP
"""

from embedsearch.db import Connection, connect
from embedsearch.errors import (
    AlreadyExists,
    EmbedsearchError,
    InvalidArgument,
    NotFound,
    TableAlreadyExists,
    TableNotFound,
    Unavailable,
)

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "Connection",
    "EmbedsearchError",
    "InvalidArgument",
    "NotFound",
    "TableAlreadyExists",
    "TableNotFound",
    "Unavailable",
    "__version__",
    "connect",
]
