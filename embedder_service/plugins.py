"""Custom providers: EMBEDDER_PLUGINS modules and ``embedsearch.providers`` entry points."""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points

from embedsearch.contract.errors import FailedPrecondition
from embedsearch.contract.registry import PROCESS_FUNCTIONS, EmbeddingFunctionRegistry

log = logging.getLogger("embedder_service")

ENTRY_POINT_GROUP = "embedsearch.providers"


def load_plugins(registry: EmbeddingFunctionRegistry, modules: list[str]) -> list[str]:
    """Import plugin modules and entry points; add what they register. Returns the new names.

    A plugin module registers its classes with ``embedsearch.embeddings.register``; an entry point
    in the ``embedsearch.providers`` group names a class (``name = "pkg.mod:Class"``).
    """
    added: list[str] = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise FailedPrecondition(f"plugin module {module!r} cannot be imported: {exc}") from exc
    for name, cls in PROCESS_FUNCTIONS.items():
        if name not in registry:
            registry.register(name)(cls)
            added.append(name)
    for point in entry_points(group=ENTRY_POINT_GROUP):
        registry.register(point.name)(point.load())
        added.append(point.name)
    if added:
        log.info("plugin providers: %s", ", ".join(added))
    return added
