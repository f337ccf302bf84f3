"""Who may call a service: bearer tokens, each read-write or read-only, on every service.

Tokens come from ``--auth-tokens`` (``<PREFIX>_AUTH_TOKENS``, comma-separated) and from
``--auth-tokens-file`` (``<PREFIX>_AUTH_TOKENS_FILE``, one per line, ``#`` comments). A token
ending in ``:ro`` may only call the RPCs the contract marks ``NO_SIDE_EFFECTS``; ``:rw`` or no
suffix may call everything. The file is re-read when it changes, so a rotated Kubernetes Secret
takes effect without a restart. With no token configured at all, the service is open: that is
the embedded default, and the start-up log says so. Health and reflection are always open.

Only SHA-256 digests of the tokens are held, and a presented token is compared with every
digest by :func:`hmac.compare_digest`, so neither timing nor a memory dump gives a token away.

The gateway presents its own token to the embedder and the store (:class:`PeerToken`, from
``--peer-token`` or ``--peer-token-file``): the first entry of the same kind of file, so one
Secret can be the internal services' tokens file and the gateway's peer token at once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.descriptor_pb2 import MethodOptions

from embedsearch.contract.errors import FailedPrecondition, PermissionDenied, Unauthenticated
from service_kit.settings import ServiceSettings

log = logging.getLogger("service_kit")

RELOAD_EVERY_S = 2.0
BEARER = "bearer "
AUTHORIZATION = "authorization"

T = TypeVar("T")

# Decides whether a call may proceed, from its full method name and its metadata; raises a
# typed error (Unauthenticated, PermissionDenied) to refuse it.
Guard = Callable[[str, Sequence[tuple[str, Any]]], None]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _entries(lines: Iterable[str]) -> Iterable[tuple[str, bool]]:
    """(token, may-write) for each entry ``token``, ``token:rw`` or ``token:ro``."""
    for raw in lines:
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        token, _, access = entry.rpartition(":")
        if access not in ("ro", "rw"):
            token, access = entry, "rw"
        if not token:
            raise FailedPrecondition("an auth token entry has no token before its ':ro' or ':rw'")
        yield token, access == "rw"


def parse_tokens(entries: Iterable[str]) -> dict[bytes, bool]:
    """Digest → may-write for entries ``token``, ``token:rw`` or ``token:ro``."""
    return {_digest(token): writes for token, writes in _entries(entries)}


def first_token(lines: Iterable[str]) -> str:
    """The token of the first entry (its ``:ro``/``:rw`` suffix dropped)."""
    for token, _ in _entries(lines):
        return token
    raise FailedPrecondition("the file holds no token")


@dataclass
class WatchedFile(Generic[T]):
    """A small file parsed at start-up and again, at most every RELOAD_EVERY_S, when its
    modification time or size changed. A failed re-read keeps the last value: a Kubernetes
    Secret is swapped in place, and may be missing for a moment."""

    path: str
    flag: str
    parse: Callable[[Iterable[str]], T]
    _value: T | None = None
    _stamp: tuple[float, int] | None = None
    _checked_at: float = field(default=0.0)

    def __post_init__(self) -> None:
        self._reload(force=True)

    def value(self) -> T:
        if time.monotonic() - self._checked_at >= RELOAD_EVERY_S:
            self._reload()
        return self._value  # type: ignore[return-value]  # set by the forced first read

    def _reload(self, force: bool = False) -> None:
        self._checked_at = time.monotonic()
        try:
            info = os.stat(self.path)
            stamp = (info.st_mtime, info.st_size)
            if force or stamp != self._stamp:
                with open(self.path, encoding="utf-8") as handle:
                    self._value = self.parse(handle)
                self._stamp = stamp
        except (OSError, FailedPrecondition) as exc:
            if force:
                why = exc.strerror if isinstance(exc, OSError) else str(exc)
                raise FailedPrecondition(f"cannot read {self.flag} {self.path!r}: {why}") from exc


@dataclass
class TokenAuth:
    """Checks the ``authorization`` metadata of each call against the configured tokens."""

    inline: dict[bytes, bool]
    file: WatchedFile[dict[bytes, bool]] | None = None
    service: str = "service"
    hint: str = ""

    @classmethod
    def configure(
        cls, tokens: str, tokens_file: str, service: str = "service", hint: str = ""
    ) -> TokenAuth | None:
        """The checker for these settings, or None when no token is configured (open)."""
        watched = (
            WatchedFile(tokens_file, "--auth-tokens-file", parse_tokens) if tokens_file else None
        )
        auth = cls(parse_tokens(tokens.split(",")), watched, service or "service", hint)
        return auth if auth._tokens() else None

    def authorize(self, metadata: Sequence[tuple[str, str | bytes]], writes: bool) -> None:
        """Raise Unauthenticated without a known token, PermissionDenied for a read-only token
        on a write; return quietly otherwise."""
        header = next((str(v) for k, v in metadata if k == AUTHORIZATION), "")
        if not header.lower().startswith(BEARER):
            hint = f" ({self.hint})" if self.hint else ""
            raise Unauthenticated(
                f"this {self.service} needs a token: send metadata "
                f"'authorization: Bearer <token>'{hint}"
            )
        presented = _digest(header[len(BEARER) :].strip())
        may_write: bool | None = None
        for digest, rw in self._tokens().items():  # no early exit: every digest is compared
            if hmac.compare_digest(presented, digest):
                may_write = rw
        if may_write is None:
            raise Unauthenticated(f"the bearer token is not valid for this {self.service}")
        if writes and not may_write:
            raise PermissionDenied("this token is read-only: use a read-write token to write")

    def _tokens(self) -> dict[bytes, bool]:
        return {**self.inline, **(self.file.value() if self.file else {})}


def read_only_methods(service: ServiceDescriptor) -> frozenset[str]:
    """Full method names (``/pkg.Service/Method``) the contract marks ``NO_SIDE_EFFECTS``."""
    return frozenset(
        f"/{service.full_name}/{method.name}"
        for method in service.methods
        if method.GetOptions().idempotency_level == MethodOptions.NO_SIDE_EFFECTS
    )


def token_guard(settings: ServiceSettings, services: Iterable[str]) -> Guard | None:
    """Bearer-token checks for every RPC of ``services`` (full names), read-only tokens limited
    to the RPCs the contract marks NO_SIDE_EFFECTS; None (open) when no token is configured."""
    name = settings.service_name
    auth = TokenAuth.configure(
        settings.auth_tokens, settings.auth_tokens_file, name, settings.auth_hint
    )
    if auth is None:
        log.info("%s auth is off: set --auth-tokens-file to require tokens", name)
        return None
    pool = descriptor_pool.Default()
    reads = frozenset().union(*(read_only_methods(pool.FindServiceByName(s)) for s in services))
    return lambda method, metadata: auth.authorize(metadata, writes=method not in reads)


@dataclass
class PeerToken:
    """The bearer token a service presents to its peers, from a setting or a watched file."""

    inline: str
    file: WatchedFile[str] | None = None

    @classmethod
    def configure(cls, token: str, token_file: str) -> PeerToken | None:
        """The credential for these settings, or None to call peers without one."""
        if token_file:
            return cls("", WatchedFile(token_file, "--peer-token-file", first_token))
        return cls(token.strip()) if token.strip() else None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying the token (the file's current one, when it is watched)."""
        token = self.file.value() if self.file else self.inline
        return ((AUTHORIZATION, f"Bearer {token}"),)
