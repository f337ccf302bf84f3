"""Typed errors shared by services and SDK, and the one table mapping them to status codes."""

from __future__ import annotations


class EmbedsearchError(Exception):
    """Base of every error embedsearch raises on purpose.

    Services raise these from their cores; the gRPC layer turns them into status codes with
    :data:`STATUS_CODES`, and the SDK turns status codes back into the same classes.
    """


class InvalidArgument(EmbedsearchError, ValueError):
    """The request is malformed: fix the input and retry."""


class InvalidSchema(InvalidArgument):
    """Rows or a schema do not fit the table."""


class NotFound(EmbedsearchError, LookupError):
    """A named thing does not exist."""


class TableNotFound(NotFound):
    """The table does not exist."""


class AlreadyExists(EmbedsearchError):
    """The thing being created exists already."""


class TableAlreadyExists(AlreadyExists):
    """A table of that name exists."""


class FailedPrecondition(EmbedsearchError):
    """The system is not in a state to serve this request (missing weights, read-only root)."""


class ResourceExhausted(EmbedsearchError):
    """A resource ran out: a queue (:class:`Overloaded`, retry later) or the disk
    (:class:`StorageFull`, retrying does not help until space is freed)."""


class StorageFull(ResourceExhausted):
    """The data root has no room for a write (disk full, quota, file-size limit): free space
    or grow the volume, then retry. Reads go on working."""


class CommitConflict(EmbedsearchError):
    """A write kept losing commit races with concurrent writers: retry it."""


class Overloaded(ResourceExhausted):
    """A queue is full: back off for ``retry_after_s`` and retry.

    Servers send the delay as ``retry-after-ms`` trailing metadata (see :data:`RETRY_AFTER_KEY`),
    and the SDK and the gateway read it back into this attribute.
    """

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(EmbedsearchError):
    """A service this one depends on cannot be reached."""


class DeadlineExceeded(EmbedsearchError, TimeoutError):
    """The caller's deadline passed before the work finished."""


class Unauthenticated(EmbedsearchError):
    """No valid credentials were presented."""


class PermissionDenied(EmbedsearchError):
    """The credentials do not allow this operation."""


class Internal(EmbedsearchError):
    """A bug or an unexpected failure on the server."""


class Unimplemented(EmbedsearchError, NotImplementedError):
    """The server does not offer this operation."""


class Cancelled(EmbedsearchError):
    """The caller cancelled the request."""


# Trailing-metadata key carrying Overloaded.retry_after_s, in whole milliseconds.
RETRY_AFTER_KEY = "retry-after-ms"

# The single error <-> gRPC status table, by status-code name so that cores need not import grpc.
# Order matters for the reverse lookup: the first class listed for a code is the one rebuilt.
STATUS_CODES: dict[type[EmbedsearchError], str] = {
    InvalidArgument: "INVALID_ARGUMENT",
    NotFound: "NOT_FOUND",
    AlreadyExists: "ALREADY_EXISTS",
    FailedPrecondition: "FAILED_PRECONDITION",
    CommitConflict: "ABORTED",
    ResourceExhausted: "RESOURCE_EXHAUSTED",
    Unavailable: "UNAVAILABLE",
    DeadlineExceeded: "DEADLINE_EXCEEDED",
    Unauthenticated: "UNAUTHENTICATED",
    PermissionDenied: "PERMISSION_DENIED",
    Unimplemented: "UNIMPLEMENTED",
    Cancelled: "CANCELLED",
    Internal: "INTERNAL",
}

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


def error_for_code(
    code_name: str, message: str, retry_after_s: float | None = None
) -> EmbedsearchError:
    """Rebuild the typed error for a status-code name (``UNKNOWN`` and others become Internal).

    RESOURCE_EXHAUSTED is :class:`Overloaded` only when the server said when to retry; a full
    disk sends no retry-after, and comes back as the plain :class:`ResourceExhausted`."""
    if code_name == "RESOURCE_EXHAUSTED" and retry_after_s is not None:
        return Overloaded(message, retry_after_s)
    if code_name == "NOT_FOUND" and message.startswith("table "):
        return TableNotFound(message)
    if code_name == "ALREADY_EXISTS" and message.startswith("table "):
        return TableAlreadyExists(message)
    return _ERRORS_BY_CODE.get(code_name, Internal)(message)


__all__ = [
    "RETRY_AFTER_KEY",
    "STATUS_CODES",
    "AlreadyExists",
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
    "StorageFull",
    "TableAlreadyExists",
    "TableNotFound",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "error_for_code",
    "status_code_name",
]
