"""Where tables live: one root URI (a directory or s3://bucket/prefix) and its store options."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Mapping

import pyarrow.fs as pafs

from embedsearch.errors import EmbedsearchError, FailedPrecondition, StorageFull

SUFFIX = ".lance"  # LanceDB's layout: <root>/<name>.lance, so either can open the other's tables

# The AWS variables Lance's object store understands, under the option names it takes; read
# here so that the listing (pyarrow) and the datasets (Lance) reach the same endpoint.
_AWS_ENV = {
    "aws_endpoint": ("AWS_ENDPOINT_URL", "AWS_ENDPOINT"),
    "aws_access_key_id": ("AWS_ACCESS_KEY_ID",),
    "aws_secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
    "aws_session_token": ("AWS_SESSION_TOKEN",),
    "aws_region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
    "allow_http": ("AWS_ALLOW_HTTP",),
}


def storage_options_from_env(
    env: Mapping[str, str], overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Lance storage options from AWS_* variables, then ``overrides`` (the settings' JSON)."""
    options: dict[str, str] = {}
    for option, names in _AWS_ENV.items():
        value = next((env[n] for n in names if env.get(n)), None)
        if value:
            options[option] = value
    if options.get("aws_endpoint", "").startswith("http://"):
        options.setdefault("allow_http", "true")
    options.update(overrides or {})
    return options


# Lance reports an OS error as "... (os error 28)", pyarrow as "[Errno 28] ...".
_ERRNO = re.compile(r"\(os error (\d+)\)|\[Errno (\d+)\]")
_FULL = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
_NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def os_error_number(exc: OSError) -> int | None:
    """The errno behind an OS error, also when Lance or pyarrow only put it in the message."""
    if exc.errno:
        return exc.errno
    found = _ERRNO.search(str(exc))
    return int(found.group(1) or found.group(2)) if found else None


class Root:
    """The root URI of the tables: names to URIs, and listing, existence and removal."""

    def __init__(self, uri: str, storage_options: Mapping[str, str] | None = None) -> None:
        self.uri = uri.rstrip("/") if "://" in uri else os.path.abspath(uri)
        self.storage_options = dict(storage_options or {})
        self._fs, self._path = self._filesystem()
        self._fs.create_dir(self._path, recursive=True)

    def _filesystem(self) -> tuple[pafs.FileSystem, str]:
        if not self.uri.startswith("s3://"):
            return pafs.FileSystem.from_uri(self.uri)
        opts = self.storage_options
        endpoint = opts.get("aws_endpoint", "")
        fs = pafs.S3FileSystem(
            access_key=opts.get("aws_access_key_id"),
            secret_key=opts.get("aws_secret_access_key"),
            session_token=opts.get("aws_session_token"),
            region=opts.get("aws_region", "us-east-1"),
            endpoint_override=endpoint.split("://", 1)[-1] or None,
            scheme="http" if endpoint.startswith("http://") else "https",
        )
        return fs, self.uri.removeprefix("s3://")

    def write_error(self, exc: OSError, what: str) -> EmbedsearchError | None:
        """The typed error for a write the data root refused: full (RESOURCE_EXHAUSTED) or not
        writable (FAILED_PRECONDITION); None for other OS errors."""
        number = os_error_number(exc)
        if number in _FULL:
            return StorageFull(
                f"{what} failed: the data root {self.uri} is full ({os.strerror(number)}); "
                "free space or grow the volume, then retry. Reads still work"
            )
        if number in _NOT_WRITABLE:
            return FailedPrecondition(
                f"{what} failed: the data root {self.uri} is not writable "
                f"({os.strerror(number)}); mount it read-write or fix its permissions. "
                "Reads still work"
            )
        return None

    def table_uri(self, name: str) -> str:
        return f"{self.uri}/{name}{SUFFIX}"

    def _path_of(self, name: str) -> str:
        return f"{self._path}/{name}{SUFFIX}"

    def exists(self, name: str) -> bool:
        # On object stores a "directory" exists while any object lies under its prefix.
        return self._fs.get_file_info(self._path_of(name)).type == pafs.FileType.Directory

    def names(self) -> list[str]:
        """Table names under the root, sorted."""
        selector = pafs.FileSelector(self._path, allow_not_found=True)
        return sorted(
            info.base_name[: -len(SUFFIX)]
            for info in self._fs.get_file_info(selector)
            if info.type == pafs.FileType.Directory and info.base_name.endswith(SUFFIX)
        )

    def remove(self, name: str) -> None:
        self._fs.delete_dir(self._path_of(name))
