"""Where tables live: one root URI (a directory or s3://bucket/prefix) and its store options."""

from __future__ import annotations

import errno
import logging
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress

import pyarrow.fs as pafs

from embedsearch.contract.errors import EmbedsearchError, FailedPrecondition, StorageFull

log = logging.getLogger("store_service.storage")

SUFFIX = ".lance"
# Dropped tables wait here to be deleted; not a table name (no suffix), so never listed.
TRASH = ".dropped"  # LanceDB's layout: <root>/<name>.lance, so either can open the other's tables

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
        # The data root's path is the operator's business, not the caller's: it is logged.
        if number in _FULL:
            log.warning("%s: the data root %s is full: %s", what, self.uri, exc)
            return StorageFull(
                f"{what} failed: the store's data root is full ({os.strerror(number)}); "
                "free space or grow the volume, then retry. Reads still work"
            )
        if number in _NOT_WRITABLE:
            log.warning("%s: the data root %s is not writable: %s", what, self.uri, exc)
            return FailedPrecondition(
                f"{what} failed: the store's data root is not writable "
                f"({os.strerror(number)}); mount it read-write or fix its permissions. "
                "Reads still work"
            )
        return None

    @contextmanager
    def refusals(self, what: str) -> Iterator[None]:
        """Around a write: the root refusing it becomes :meth:`write_error`'s typed error;
        other errors pass unchanged."""
        try:
            yield
        except OSError as exc:
            refused = self.write_error(exc, what)
            if refused is None:
                raise
            raise refused from exc

    def table_uri(self, name: str) -> str:
        return f"{self.uri}/{name}{SUFFIX}"

    def _path_of(self, name: str) -> str:
        return f"{self._path}/{name}{SUFFIX}"

    def read_beside(self, name: str, relative: str) -> bytes | None:
        """The file ``relative`` inside table ``name``'s directory, beside Lance's own (which
        Lance and LanceDB ignore); None when there is none."""
        try:
            with self._fs.open_input_stream(f"{self._path_of(name)}/{relative}") as stream:
                return stream.read()
        except FileNotFoundError:
            return None

    def write_beside(self, name: str, relative: str, data: bytes) -> None:
        """Replace the file ``relative`` inside table ``name``'s directory in one step (a
        local file is written aside and renamed; an object store's put is atomic)."""
        path = f"{self._path_of(name)}/{relative}"
        self._fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        staged = path if "://" in self.uri else f"{path}.{uuid.uuid4().hex}.partial"
        with self._fs.open_output_stream(staged) as stream:
            stream.write(data)
        if staged != path:
            self._fs.move(staged, path)

    def delete_beside(self, name: str, relative: str) -> None:
        """Remove the file ``relative`` inside table ``name``'s directory, if there is one."""
        with suppress(FileNotFoundError):
            self._fs.delete_file(f"{self._path_of(name)}/{relative}")

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

    def discard(self, name: str) -> str | None:
        """Take table ``name`` off the root at once. A local directory is renamed into the
        trash (atomic: the name is free, nothing half-deleted stays listed) and its path
        returned for :meth:`purge`; on object stores, where a rename is a copy, the objects
        are deleted now and None is returned."""
        if "://" in self.uri:
            self._fs.delete_dir(self._path_of(name))
            return None
        trash = f"{self._path}/{TRASH}"
        self._fs.create_dir(trash, recursive=True)
        discarded = f"{trash}/{name}.{uuid.uuid4().hex}"
        self._fs.move(self._path_of(name), discarded)
        return discarded

    def rename(self, name: str, new_name: str) -> None:
        """Move table ``name`` to ``new_name`` in one step (a directory rename; Lance's
        manifests hold paths relative to the table). Object stores have no atomic rename: a
        copy could be seen half done, so they refuse."""
        if "://" in self.uri:
            raise FailedPrecondition(
                f"renaming a table needs a filesystem data root; {self.uri.split('://')[0]}:// "
                "object stores have no atomic rename: create the table under the new name "
                "from the old one's rows instead"
            )
        self._fs.move(self._path_of(name), self._path_of(new_name))

    def purge(self, path: str | None = None) -> None:
        """Delete a discarded table, or (no path) everything left in the trash, say by a
        store that stopped before its purge; failures are logged and retried next start."""
        targets = [path] if path else self._trash_contents()
        for target in targets:
            try:
                self._fs.delete_dir(target)
            except OSError as exc:
                log.warning("could not purge dropped table files %s: %s", target, exc)

    def _trash_contents(self) -> list[str]:
        if "://" in self.uri:
            return []
        selector = pafs.FileSelector(f"{self._path}/{TRASH}", allow_not_found=True)
        return [info.path for info in self._fs.get_file_info(selector)]
