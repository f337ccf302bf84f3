"""Secret references in create() arguments: ``$env:NAME`` and ``$var:name[:default]``.

A literal secret is accepted for the call but never persisted or logged; what a table stores is
the reference, resolved here, on the embedder, when a spec is first seen (EmbedderCore keeps the
result while the spec stays in its cache, and says when a changed value is read).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from embedsearch.contract.errors import FailedPrecondition, InvalidArgument
from embedsearch.contract.text import brief

# A Kubernetes Secret key, not starting with a dot: no "..", no "/", so no way out of the dir.
_SECRET_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


def resolve(value: Any, secrets_dir: str = "") -> Any:
    """The value a reference points to; anything that is not a reference is returned as is.

    ``$env:NAME`` reads the environment variable NAME. ``$var:name`` reads the file
    ``<secrets_dir>/name`` (a mounted Kubernetes Secret) or else the environment variable NAME
    upper-cased; ``$var:name:default`` falls back to the default.
    """
    if not isinstance(value, str):
        return value
    if value.startswith("$env:"):
        name = value[5:]
        if name not in os.environ:
            raise FailedPrecondition(
                f"environment variable {brief(name)} is not set on the embedder"
            )
        return os.environ[name]
    if value.startswith("$var:"):
        name, _, default = value[5:].partition(":")
        if _SECRET_NAME.fullmatch(name) is None:
            raise InvalidArgument(
                f"$var: name {brief(name)} must be letters, digits, '_', '-' and '.', not "
                "starting with '.'"
            )
        path = Path(secrets_dir, name) if secrets_dir else None
        if path is not None and path.is_file():
            return path.read_text().strip()
        if name.upper() in os.environ:
            return os.environ[name.upper()]
        if default:
            return default
        where = "a file of that name under --secrets-dir or " if path else ""
        raise FailedPrecondition(f"variable {name!r} is not set: provide {where}env {name.upper()}")
    return value


def resolve_all(args: dict[str, Any], keys: Iterable[str], secrets_dir: str = "") -> dict[str, Any]:
    """``args`` with the references in the secret ``keys`` resolved.

    Other arguments are taken literally: a name or a device read from the embedder's
    environment would come back in error messages, and the variable's value with it.
    """
    secret = frozenset(keys)
    return {
        key: resolve(value, secrets_dir) if key in secret else value for key, value in args.items()
    }
