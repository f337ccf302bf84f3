"""What the vendor API providers share: importing their client libraries, and their API keys."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from embedsearch.contract.errors import FailedPrecondition, Unauthenticated


def vendor_import(module: str, package: str, provider: str, extra: str = "apis") -> ModuleType:
    """Import a vendor's client library, or say which package the embedder lacks.

    >>> vendor_import("json", "json", "test").__name__
    'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise FailedPrecondition(
            f"the {provider} provider needs the {package} package in the embedder's environment "
            f"(pip install 'embedsearch[{extra}]'): {exc}"
        ) from exc


def api_key(provider: str, given: str | None, env: str) -> str:
    """The key to send: the caller's (a resolved ``$env:``/``$var:`` reference or their own
    literal), else the variable the vendor's own client reads, as LanceDB does."""
    key = given or os.environ.get(env)
    if not key:
        raise Unauthenticated(
            f"{provider} needs an API key: pass api_key='$env:NAME' naming a variable set in "
            f"the embedder's environment, or set {env} there"
        )
    return key
