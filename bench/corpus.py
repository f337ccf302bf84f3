"""A real text corpus available offline: paragraphs of the Python standard library's docstrings."""

from __future__ import annotations

import importlib
import inspect

MODULES = (
    "argparse",
    "asyncio",
    "collections",
    "concurrent.futures",
    "contextlib",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "email",
    "enum",
    "fractions",
    "functools",
    "gzip",
    "hashlib",
    "heapq",
    "http.client",
    "http.server",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "logging",
    "math",
    "multiprocessing",
    "os",
    "pathlib",
    "pickle",
    "platform",
    "pprint",
    "queue",
    "random",
    "re",
    "shutil",
    "socket",
    "sqlite3",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "time",
    "tkinter",
    "typing",
    "unittest",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "xml.dom",
    "xml.etree.ElementTree",
    "zipfile",
    "zlib",
    "",
)


def docstring_paragraphs(limit: int) -> list[str]:
    """Up to ``limit`` distinct paragraphs of 30-600 characters, in a fixed order."""
    seen: dict[str, None] = {}
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        objects = [module, *(obj for _, obj in inspect.getmembers(module))]
        for obj in objects:
            doc = inspect.getdoc(obj) if not isinstance(obj, (str, int, float, bytes)) else None
            for paragraph in (doc or "").split("\n\n"):
                text = " ".join(paragraph.split())
                if 30 <= len(text) <= 600:
                    seen.setdefault(text)
                    if len(seen) >= limit:
                        return list(seen)
    return list(seen)
