"""Embedding bindings and their home in the Arrow schema metadata, in LanceDB's JSON shape."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from embedsearch.errors import InvalidSchema

METADATA_KEY = b"embedding_functions"


@dataclass(frozen=True)
class Binding:
    """source_column -> vector_column through the function (provider, args)."""

    provider: str
    args: dict[str, Any]
    source_column: str
    vector_column: str

    def to_json(self) -> dict[str, Any]:
        # LanceDB's shape: name = provider, model = create() kwargs, then the two columns.
        return {
            "name": self.provider,
            "model": self.args,
            "source_column": self.source_column,
            "vector_column": self.vector_column,
        }


def bindings_from_schema(schema: pa.Schema) -> list[Binding]:
    """The bindings persisted in a schema's metadata (none if the key is absent)."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        return []
    try:
        return [
            Binding(
                provider=item["name"],
                args=dict(item.get("model") or {}),
                source_column=item["source_column"],
                vector_column=item["vector_column"],
            )
            for item in json.loads(raw)
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidSchema(f"malformed embedding_functions metadata: {exc}") from exc


def schema_with_bindings(schema: pa.Schema, bindings: list[Binding]) -> pa.Schema:
    """``schema`` with the bindings written into its metadata (replacing any there)."""
    metadata = dict(schema.metadata or {})
    metadata[METADATA_KEY] = json.dumps([b.to_json() for b in bindings], indent=2).encode()
    return schema.with_metadata(metadata)


def pick_binding(bindings: list[Binding], vector_column: str, table: str) -> Binding | None:
    """The binding searched by a text query: the named vector column's, or the only one."""
    if vector_column:
        return next((b for b in bindings if b.vector_column == vector_column), None)
    if len(bindings) > 1:
        choices = [b.vector_column for b in bindings]
        raise InvalidSchema(
            f"table {table!r} has several vector columns {choices}; name one in vector_column"
        )
    return bindings[0] if bindings else None
