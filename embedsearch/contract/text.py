"""Short, safe renderings of user input for error messages and logs (no grpc here)."""

from __future__ import annotations

ELLIPSIS = "…"


def brief(text: str | bytes, limit: int = 80) -> str:
    """The repr of at most the first ``limit`` characters of ``text``, and how long it was.

    Messages quote what the caller sent so that they can find it, but never all of it: a
    5,000-character filter echoed back would swamp logs and overflow gRPC's metadata limit.

    >>> brief("price > 10")
    "'price > 10'"
    >>> brief("(" * 5000, limit=4)
    "'(((('… (5000 characters)"
    """
    if len(text) <= limit:
        return repr(text)
    unit = "bytes" if isinstance(text, bytes) else "characters"
    return f"{text[:limit]!r}{ELLIPSIS} ({len(text)} {unit})"


def clip_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, on a character boundary, with "…" at
    the end when it was cut.

    >>> clip_utf8("héllo", 4)
    'h…'
    """
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= max_bytes:
        return text
    room = max(0, max_bytes - len(ELLIPSIS.encode()))
    return encoded[:room].decode("utf-8", "ignore") + ELLIPSIS
