"""A real text corpus available offline: the docstrings of the standard library and of the big
libraries installed beside it (numpy, pandas, pyarrow, torch), as paragraphs or sentences."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import re
import sys
import warnings
from collections.abc import Iterator

# Modules that do something on import (open a browser, print, need a display) or hold tests.
SKIP = {"antigravity", "this", "idlelib", "turtle", "turtledemo", "tkinter", "lib2to3", "test"}
LIBRARIES = ("numpy", "pandas", "pyarrow", "torch")


def _docstrings() -> Iterator[str]:
    names = [n for n in sorted(sys.stdlib_module_names) if n not in SKIP and not n.startswith("_")]
    for name in [*names, *LIBRARIES]:
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
                members = [module, *(obj for _, obj in inspect.getmembers(module))]
        except Exception:  # a module that cannot load here is simply left out
            continue
        for obj in members:
            if isinstance(obj, str | int | float | bytes):
                continue
            try:
                doc = inspect.getdoc(obj)
            except Exception:  # some objects raise on attribute access
                continue
            if doc:
                yield doc


def docstring_paragraphs(limit: int) -> list[str]:
    """Up to ``limit`` distinct paragraphs of 30-600 characters, in a fixed order."""
    seen: dict[str, None] = {}
    for doc in _docstrings():
        for paragraph in doc.split("\n\n"):
            text = " ".join(paragraph.split())
            if 30 <= len(text) <= 600:
                seen.setdefault(text)
                if len(seen) >= limit:
                    return list(seen)
    return list(seen)


def short_texts(limit: int) -> list[str]:
    """Up to ``limit`` distinct sentences of 20-200 characters, in a fixed order."""
    seen: dict[str, None] = {}
    for doc in _docstrings():
        for paragraph in doc.split("\n\n"):
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join(paragraph.split())):
                if 20 <= len(sentence) <= 200:
                    seen.setdefault(sentence)
                    if len(seen) >= limit:
                        return list(seen)
    return list(seen)
