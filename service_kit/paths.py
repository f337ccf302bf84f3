"""Comma-separated settings, and local paths checked against the directories an operator lists
(the embedder's --model-roots, the gateway's --media-roots)."""

from __future__ import annotations

import os


def comma_list(value: str) -> list[str]:
    """``"a, b,,c"`` as ``["a", "b", "c"]``: how a list setting is written in one flag."""
    return [item.strip() for item in value.split(",") if item.strip()]


def real_dirs(value: str) -> list[str]:
    """Comma-separated directories as real paths (``~`` expanded, symlinks resolved)."""
    return [os.path.realpath(os.path.expanduser(root)) for root in comma_list(value)]


def is_within(path: str, root: str) -> bool:
    """Whether the real path ``path`` is ``root`` or lies under it (both already real)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def real_path_within(value: str, roots: list[str] | tuple[str, ...]) -> str | None:
    """``value``'s real path (symlinks and ``..`` resolved) if it lies under one of ``roots``,
    else None; also None for a path the OS cannot resolve (a NUL byte, a symlink loop)."""
    try:
        real = os.path.realpath(value)
    except (OSError, ValueError):
        return None
    return real if any(is_within(real, root) for root in roots) else None
