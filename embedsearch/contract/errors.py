"""Typed errors shared by services and SDK, and the one table mapping them to status codes.

Each class has a stable ``reason`` (UPPER_SNAKE): it travels in a ``google.rpc.ErrorInfo`` of
domain :data:`ERROR_DOMAIN`, and the SDK rebuilds the class from it, never from the message's
wording. ``protos/embedsearch/v1/common.proto`` lists the reasons, their status codes and their
metadata keys (``tests/test_errors.py`` keeps that list equal to :data:`STATUS_CODES`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Self

# ErrorInfo.domain of every error our services return.
ERROR_DOMAIN = "embedsearch.v1"


class EmbedsearchError(Exception):
    """Base of every error embedsearch raises on purpose.

    Services raise these from their cores; the gRPC layer turns them into a status code (with
    :data:`STATUS_CODES`) and a ``google.rpc.Status`` carrying the class's ``reason``, the
    ``metadata``, the ``field_violations`` (``BadRequest``) and ``retry_after_s``
    (``RetryInfo``). The SDK turns them back into the same class with the same details.
    """

    # The stable name of this kind of error (ErrorInfo.reason). An instance rebuilt from a
    # reason this version does not know keeps that reason, so it survives being passed on.
    reason: str = "INTERNAL"
    # The ErrorInfo metadata keys this kind of error sets (documented in common.proto).
    metadata_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        message: str = "",
        *,
        metadata: Mapping[str, str] | None = None,
        field_violations: Iterable[tuple[str, str]] = (),
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.metadata: dict[str, str] = dict(metadata or {})
        # (field path, what is wrong with it): google.rpc.BadRequest.FieldViolation.
        self.field_violations: list[tuple[str, str]] = list(field_violations)
        # How long to wait before retrying (google.rpc.RetryInfo), when the server said so.
        self.retry_after_s = retry_after_s

    def reworded(self, message: str) -> Self:
        """The same error, class, reason and details with another message (say with context in
        front), for re-raising without losing what the status will carry."""
        error = copy.copy(self)
        error.args = (message,)
        error.metadata = dict(self.metadata)
        error.field_violations = list(self.field_violations)
        return error


class InvalidArgument(EmbedsearchError, ValueError):
    """The request is malformed: fix the input and retry. Metadata ``setting`` names the
    server setting whose bound the request went over, when one did."""

    reason = "INVALID_ARGUMENT"
    metadata_keys = ("setting",)


class InvalidSchema(InvalidArgument):
    """Rows or a schema do not fit the table."""

    reason = "INVALID_SCHEMA"
    metadata_keys = ()


class BadVectors(InvalidArgument, RuntimeError):
    """Vectors with a NaN, a missing value or the wrong length, refused by
    ``on_bad_vectors="error"``. A ValueError and a RuntimeError: LanceDB raises the one on
    ``create_table`` and the other on ``add``, and code written for it catches either."""

    reason = "BAD_VECTORS"
    metadata_keys = ()


class NotFound(EmbedsearchError, LookupError):
    """A named thing does not exist."""

    reason = "NOT_FOUND"


class AlreadyExists(EmbedsearchError):
    """The thing being created exists already."""

    reason = "ALREADY_EXISTS"


class _AboutTable(EmbedsearchError):
    """An error about one table, whose name travels as metadata ``table``."""

    metadata_keys = ("table",)

    def __init__(self, message: str = "", *, table: str = "", **details: Any) -> None:
        super().__init__(message, **details)
        if table:
            self.metadata["table"] = table

    @property
    def table(self) -> str:
        """The table's name, when the server said it."""
        return self.metadata.get("table", "")


class TableNotFound(_AboutTable, NotFound):
    """The table does not exist."""

    reason = "TABLE_NOT_FOUND"


class TableAlreadyExists(_AboutTable, AlreadyExists):
    """A table of that name exists."""

    reason = "TABLE_ALREADY_EXISTS"


class FailedPrecondition(EmbedsearchError):
    """The system is not in a state to serve this request (missing weights, read-only root)."""

    reason = "FAILED_PRECONDITION"


class SchemaChanged(_AboutTable, FailedPrecondition):
    """A request was built from a description of the table that no longer holds (its columns,
    embedding functions or full-text indexes changed since): describe the table again and
    retry. The gateway does so once by itself."""

    reason = "SCHEMA_CHANGED"


class ResourceExhausted(EmbedsearchError):
    """A resource ran out: a queue (:class:`Overloaded`, retry later) or the disk
    (:class:`StorageFull`, retrying does not help until space is freed)."""

    reason = "RESOURCE_EXHAUSTED"


class StorageFull(ResourceExhausted):
    """The data root has no room for a write (disk full, quota, file-size limit): free space
    or grow the volume, then retry. Reads go on working."""

    reason = "STORAGE_FULL"


class Overloaded(ResourceExhausted):
    """A queue is full: back off for ``retry_after_s`` and retry.

    Servers send the delay as ``google.rpc.RetryInfo`` (and, for clients of the previous
    release, as ``retry-after-ms`` trailing metadata, :data:`RETRY_AFTER_KEY`).
    """

    reason = "OVERLOADED"
    retry_after_s: float

    def __init__(self, message: str = "", retry_after_s: float = 1.0, **details: Any) -> None:
        super().__init__(message, retry_after_s=retry_after_s, **details)


class CommitConflict(_AboutTable):
    """A write kept losing commit races with concurrent writers: retry it."""

    reason = "COMMIT_CONFLICT"


class Unavailable(EmbedsearchError):
    """A service this one depends on cannot be reached."""

    reason = "UNAVAILABLE"


class DeadlineExceeded(EmbedsearchError, TimeoutError):
    """The caller's deadline passed before the work finished."""

    reason = "DEADLINE_EXCEEDED"


class Unauthenticated(EmbedsearchError):
    """No valid credentials were presented."""

    reason = "UNAUTHENTICATED"


class PermissionDenied(EmbedsearchError):
    """The credentials do not allow this operation."""

    reason = "PERMISSION_DENIED"


class Internal(EmbedsearchError):
    """A bug or an unexpected failure on the server; metadata ``error_id`` names the server
    log's entry when the server did not expect the failure."""

    reason = "INTERNAL"
    metadata_keys = ("error_id",)


class Unimplemented(EmbedsearchError, NotImplementedError):
    """The server does not offer this operation."""

    reason = "UNIMPLEMENTED"


class Cancelled(EmbedsearchError):
    """The caller cancelled the request."""

    reason = "CANCELLED"


# Trailing-metadata key that carried Overloaded.retry_after_s, in whole milliseconds, before
# RetryInfo did. Servers still send it for clients of the previous release; nothing reads it.
RETRY_AFTER_KEY = "retry-after-ms"

# The single error <-> gRPC status table, by status-code name so that cores need not import grpc.
# Every class is listed, so its reason can be rebuilt. Order matters for errors that come
# without a reason (from grpc itself, or an older server): the first class listed for a code is
# the one rebuilt.
STATUS_CODES: dict[type[EmbedsearchError], str] = {
    InvalidArgument: "INVALID_ARGUMENT",
    InvalidSchema: "INVALID_ARGUMENT",
    BadVectors: "INVALID_ARGUMENT",
    NotFound: "NOT_FOUND",
    TableNotFound: "NOT_FOUND",
    AlreadyExists: "ALREADY_EXISTS",
    TableAlreadyExists: "ALREADY_EXISTS",
    FailedPrecondition: "FAILED_PRECONDITION",
    SchemaChanged: "FAILED_PRECONDITION",
    CommitConflict: "ABORTED",
    ResourceExhausted: "RESOURCE_EXHAUSTED",
    Overloaded: "RESOURCE_EXHAUSTED",
    StorageFull: "RESOURCE_EXHAUSTED",
    Unavailable: "UNAVAILABLE",
    DeadlineExceeded: "DEADLINE_EXCEEDED",
    Unauthenticated: "UNAUTHENTICATED",
    PermissionDenied: "PERMISSION_DENIED",
    Unimplemented: "UNIMPLEMENTED",
    Cancelled: "CANCELLED",
    Internal: "INTERNAL",
}

ERRORS_BY_REASON: dict[str, type[EmbedsearchError]] = {cls.reason: cls for cls in STATUS_CODES}
_ERRORS_BY_CODE: dict[str, type[EmbedsearchError]] = {}
for _cls, _code in STATUS_CODES.items():
    _ERRORS_BY_CODE.setdefault(_code, _cls)


def status_code_name(exc: EmbedsearchError) -> str:
    """Status-code name for an error, walking up its class hierarchy.

    >>> status_code_name(TableNotFound("t"))
    'NOT_FOUND'
    """
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return "INTERNAL"


def error_for(code_name: str, message: str, reason: str = "", **details: Any) -> EmbedsearchError:
    """Rebuild the typed error of a failed call: the class named by ``reason`` when it is one of
    ours for that code, else the first class listed for the code (``UNKNOWN`` and codes we do
    not list become Internal). ``details`` are the constructor's ``metadata``,
    ``field_violations`` and ``retry_after_s``.

    >>> type(error_for("NOT_FOUND", "table 'a' does not exist", "TABLE_NOT_FOUND")).__name__
    'TableNotFound'
    """
    cls = ERRORS_BY_REASON.get(reason)
    if cls is None or STATUS_CODES[cls] != code_name:
        cls = _ERRORS_BY_CODE.get(code_name, Internal)
    if details.get("retry_after_s") is None:
        details.pop("retry_after_s", None)  # Overloaded keeps its default delay
    error = cls(message, **details)
    if reason and reason not in ERRORS_BY_REASON:  # a newer peer's reason: keep it to pass on
        error.reason = reason
    return error


__all__ = [
    "ERRORS_BY_REASON",
    "ERROR_DOMAIN",
    "RETRY_AFTER_KEY",
    "STATUS_CODES",
    "AlreadyExists",
    "BadVectors",
    "Cancelled",
    "CommitConflict",
    "DeadlineExceeded",
    "EmbedsearchError",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "InvalidSchema",
    "NotFound",
    "Overloaded",
    "PermissionDenied",
    "ResourceExhausted",
    "SchemaChanged",
    "StorageFull",
    "TableAlreadyExists",
    "TableNotFound",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "error_for",
    "status_code_name",
]
