"""What a caller may ask of the embedder: bounded requests, and model paths under --model-roots."""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from embedsearch.contract.errors import InvalidArgument, PermissionDenied
from embedsearch.contract.text import brief
from service_kit.paths import real_path_within

# A Hugging Face hub id: "name" or "org/name", no "..", nothing a loader reads as a path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
MAX_PROVIDER_NAME = 100  # characters; registry names are short ("sentence-transformers")


class RequestLimits(BaseModel):
    """Bounds on one request, each named by its flag when refused.

    Held by EmbedderSettings, whose flags (``--max-text-bytes``, ...) these fields are.
    """

    model_config = ConfigDict(extra="forbid")

    max_inputs_per_request: int = Field(
        2048, ge=1, description="Most inputs (texts or blobs) in one Embed request."
    )
    max_text_bytes: int = Field(
        1 << 20, ge=1, description="Longest text accepted as one input, in UTF-8 bytes."
    )
    max_blob_bytes: int = Field(
        16 << 20, ge=1, description="Largest binary input (an image, ...) accepted, in bytes."
    )
    max_function_args: int = Field(
        64, ge=1, description="Most create() arguments in one function spec."
    )
    max_function_args_bytes: int = Field(
        64 << 10, ge=2, description="Largest function spec arguments, in bytes of JSON."
    )
    max_function_args_depth: int = Field(
        8, ge=0, description="Deepest nesting of lists and objects in one argument value."
    )


def check_function(provider: str, args: dict[str, Any], limits: RequestLimits) -> None:
    """Refuse a provider name or create() arguments too big to be a real function spec."""
    if len(provider) > MAX_PROVIDER_NAME:
        raise InvalidArgument(
            f"function.provider {brief(provider)} is longer than {MAX_PROVIDER_NAME} characters"
        )
    if len(args) > limits.max_function_args:
        raise InvalidArgument(
            f"function has {len(args)} arguments, over the limit of {limits.max_function_args} "
            "(--max-function-args)"
        )
    for key, value in args.items():
        depth = nesting_depth(value)
        if depth > limits.max_function_args_depth:
            raise InvalidArgument(
                f"function argument {brief(key)} is nested {depth} levels deep, over the limit "
                f"of {limits.max_function_args_depth} (--max-function-args-depth)"
            )
    size = len(json.dumps(args, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass"))
    if size > limits.max_function_args_bytes:
        raise InvalidArgument(
            f"function arguments are {size} bytes as JSON, over the limit of "
            f"{limits.max_function_args_bytes} (--max-function-args-bytes)"
        )


def nesting_depth(value: Any) -> int:
    """How deep lists and objects nest in ``value``: 0 for a scalar, 1 for a flat list.

    Iterative, so that a deep value cannot exhaust the interpreter's stack.
    """
    deepest, pending = 0, [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth + 1)
        pending.extend((child, depth + 1) for child in children)
    return deepest


def check_inputs(inputs: Sequence[Any], limits: RequestLimits) -> None:
    """Refuse, naming the row and the flag, requests with too many or too large inputs and
    empty ones: what needs no model to judge is judged before any model is loaded."""
    if len(inputs) > limits.max_inputs_per_request:
        raise InvalidArgument(
            f"{len(inputs)} inputs in one request is over the limit of "
            f"{limits.max_inputs_per_request} (--max-inputs-per-request): split the request"
        )
    for row, value in enumerate(inputs):
        if isinstance(value, str):
            _check_text(row, value, limits.max_text_bytes)
            continue
        size = len(value[0] if isinstance(value, tuple) else value)
        if not size:
            raise InvalidArgument(f"input {row} is empty bytes")
        if size > limits.max_blob_bytes:
            raise InvalidArgument(
                f"input {row} is {size} bytes, over the limit of {limits.max_blob_bytes} "
                "(--max-blob-bytes): send a smaller file"
            )


def _check_text(row: int, value: str, max_text_bytes: int) -> None:
    if not value.strip():
        raise InvalidArgument(f"input {row} is an empty string; embed only non-empty text")
    if len(value) * 4 > max_text_bytes:  # UTF-8 takes at most 4 bytes a character
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > max_text_bytes:
            raise InvalidArgument(
                f"input {row} is {size} bytes of text, over the limit of {max_text_bytes} "
                "(--max-text-bytes): shorten or split it"
            )


def looks_like_path(value: str) -> bool:
    """Whether a loader would read ``value`` as a filesystem path, not a hub id or a tag.

    >>> [looks_like_path(v) for v in ("all-MiniLM-L6-v2", "org/model", "/etc", "a/../b", "~x")]
    [False, False, True, True, True]
    """
    return (
        os.path.isabs(value)
        or value.startswith((".", "~"))
        or "\\" in value
        or (os.sep in value and (".." in value or not _HUB_ID.fullmatch(value)))
    )


def check_model_path(arg: str, value: str, roots: Sequence[str]) -> None:
    """Refuse a path-like ``value`` unless, symlinks and ``..`` resolved, it lies under a root.

    The message is the same whether or not the path exists, and names no server path: a
    caller must not be able to probe the embedder's filesystem. ``roots`` are real paths.
    """
    if not looks_like_path(value):
        return
    if real_path_within(value, roots) is not None:
        return
    raise PermissionDenied(
        f"{arg}={brief(value)} is a local path, and this embedder opens model files only "
        "under the directories its operator lists in --model-roots (EMBEDDER_MODEL_ROOTS): "
        "put the model there, or name the bundled model or a model in the server's cache"
    )


def check_path_args(path_keys: Iterable[str], args: dict[str, Any], roots: Sequence[str]) -> None:
    """:func:`check_model_path` on every argument a provider declares may name a local path."""
    for key in path_keys:
        value = args.get(key)
        if isinstance(value, str):
            check_model_path(key, value, roots)


# create() arguments that name where a provider sends its requests, and so its credentials:
# base_url (openai, cohere, gemini-text, jina, voyageai), host (ollama), url and auth_url
# (watsonx), endpoint_url (bedrock-text, signed with the embedder's AWS credentials).
ENDPOINT_KEYS = ("base_url", "host", "url", "auth_url", "endpoint_url")


def check_endpoint(args: dict[str, Any], allowed: Sequence[str]) -> None:
    """Refuse to send a key this embedder holds to an endpoint its operator did not allow.

    An API provider's key comes from a ``$env:``/``$var:`` reference, or, with none given,
    from the environment the client library reads (``OPENAI_API_KEY``). A caller naming their
    own ``base_url`` (or ``host``, ``url``, ...: :data:`ENDPOINT_KEYS`) would otherwise receive
    that key, or any variable of the embedder's, in the request's authorization header. Their
    own literal ``api_key`` may go anywhere; the provider's own endpoint (no ``base_url``) and
    ``allowed`` ones (``--allowed-base-urls``: scheme and host, a port if given, a path prefix
    if given; ``*`` for any) get held keys.
    """
    key = args.get("api_key")
    if isinstance(key, str) and key and not key.startswith(("$env:", "$var:")):
        return
    for name in ENDPOINT_KEYS:
        url = args.get(name)
        if not url or not isinstance(url, str) or _allowed(url, allowed):
            continue
        raise PermissionDenied(
            f"{name}={brief(url)} is not among the embedder's --allowed-base-urls "
            "(EMBEDDER_ALLOWED_BASE_URLS): keys the embedder holds go only to the provider's "
            "own endpoint or an allowed one; pass your own api_key to use this endpoint"
        )


def _allowed(url: str, allowed: Sequence[str]) -> bool:
    target = urllib.parse.urlsplit(url)
    for entry in allowed:
        if entry == "*":
            return True
        rule = urllib.parse.urlsplit(entry)
        if (
            (rule.scheme, rule.hostname) == (target.scheme, target.hostname)
            and (rule.port is None or rule.port == target.port)
            and target.path.startswith(rule.path)
        ):
            return True
    return False
