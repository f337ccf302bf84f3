"""Who may call the gateway: bearer tokens, each read-write or read-only.

Tokens come from ``--auth-tokens`` (``GATEWAY_AUTH_TOKENS``, comma-separated) and from
``--auth-tokens-file`` (``GATEWAY_AUTH_TOKENS_FILE``, one per line, ``#`` comments). A token
ending in ``:ro`` may only call read-only RPCs; ``:rw`` or no suffix may call everything.
The file is re-read when it changes, so a rotated Kubernetes Secret takes effect without a
restart. With no token configured at all, the gateway is open: that is the embedded and
``embedsearch up`` default, and the start-up log says so.

Only SHA-256 digests of the tokens are held, and a presented token is compared with every
digest by :func:`hmac.compare_digest`, so neither timing nor a memory dump gives a token away.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from embedsearch.errors import FailedPrecondition, PermissionDenied, Unauthenticated

RELOAD_EVERY_S = 2.0
BEARER = "bearer "


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_tokens(entries: Iterable[str]) -> dict[bytes, bool]:
    """Digest → may-write for entries ``token``, ``token:rw`` or ``token:ro``."""
    tokens: dict[bytes, bool] = {}
    for raw in entries:
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        token, _, access = entry.rpartition(":")
        if access not in ("ro", "rw"):
            token, access = entry, "rw"
        if not token:
            raise FailedPrecondition(f"an auth token entry {entry!r} has no token before ':'")
        tokens[_digest(token)] = access == "rw"
    return tokens


@dataclass
class TokenAuth:
    """Checks the ``authorization`` metadata of each call against the configured tokens."""

    inline: dict[bytes, bool]
    path: str = ""
    _from_file: dict[bytes, bool] | None = None
    _file_stamp: tuple[float, int] | None = None
    _checked_at: float = 0.0

    @classmethod
    def configure(cls, tokens: str, tokens_file: str) -> TokenAuth | None:
        """The checker for these settings, or None when no token is configured (open gateway)."""
        auth = cls(parse_tokens(tokens.split(",")), tokens_file)
        if tokens_file:
            auth._reload(force=True)
        return auth if auth._tokens() else None

    def authorize(self, metadata: Sequence[tuple[str, str | bytes]], writes: bool) -> None:
        """Raise Unauthenticated without a known token, PermissionDenied for a read-only token
        on a write; return quietly otherwise."""
        header = next((str(v) for k, v in metadata if k == "authorization"), "")
        if not header.lower().startswith(BEARER):
            raise Unauthenticated(
                "this gateway needs a token: send metadata 'authorization: Bearer <token>' "
                "(embedsearch.connect(uri, api_key=...))"
            )
        presented = _digest(header[len(BEARER) :].strip())
        may_write: bool | None = None
        for digest, rw in self._tokens().items():  # no early exit: every digest is compared
            if hmac.compare_digest(presented, digest):
                may_write = rw
        if may_write is None:
            raise Unauthenticated("the bearer token is not valid for this gateway")
        if writes and not may_write:
            raise PermissionDenied("this token is read-only: use a read-write token to write")

    def _tokens(self) -> dict[bytes, bool]:
        if self.path and time.monotonic() - self._checked_at >= RELOAD_EVERY_S:
            self._reload()
        return {**self.inline, **(self._from_file or {})}

    def _reload(self, force: bool = False) -> None:
        self._checked_at = time.monotonic()
        try:
            info = os.stat(self.path)
            stamp = (info.st_mtime, info.st_size)
            if force or stamp != self._file_stamp:
                with open(self.path, encoding="utf-8") as handle:
                    self._from_file = parse_tokens(handle)
                self._file_stamp = stamp
        except OSError as exc:
            if force:
                raise FailedPrecondition(
                    f"cannot read --auth-tokens-file {self.path!r}: {exc.strerror}"
                ) from exc
            # A Secret being swapped in place: keep the last tokens read.
