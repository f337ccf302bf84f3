"""Embedding bindings and their home in the Arrow schema metadata, in LanceDB's JSON shape."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from embedsearch.contract.errors import InvalidSchema

METADATA_KEY = b"embedding_functions"


@dataclass(frozen=True)
class Binding:
    """source_column -> vector_column through the function (provider, args).

    A client-side binding names a function registered in the client's process; the server
    never calls it, and ``ndims`` comes from the client.
    """

    provider: str
    args: dict[str, Any]
    source_column: str
    vector_column: str
    client_side: bool = False
    ndims: int = field(default=0, compare=False)
    # The function gives several vectors per input (colbert); known once resolved, not saved.
    multi_vector: bool = field(default=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        # LanceDB's shape: name = provider, model = create() kwargs, then the two columns.
        # LanceDB ignores other keys, so "client_side" is added only where it is true.
        item = {
            "name": self.provider,
            "model": self.args,
            "source_column": self.source_column,
            "vector_column": self.vector_column,
        }
        return {**item, "client_side": True} if self.client_side else item


def bindings_from_schema(schema: pa.Schema) -> list[Binding]:
    """The bindings persisted in a schema's metadata (none if the key is absent)."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        return []
    try:
        bindings = [
            Binding(
                provider=item["name"],
                args=dict(item.get("model") or {}),
                source_column=item["source_column"],
                vector_column=item["vector_column"],
                client_side=bool(item.get("client_side", False)),
            )
            for item in json.loads(raw)
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidSchema(f"malformed embedding_functions metadata: {exc}") from exc
    return [_with_ndims(b, schema) for b in bindings]


def _with_ndims(binding: Binding, schema: pa.Schema) -> Binding:
    index = schema.get_field_index(binding.vector_column)
    dtype = schema.field(index).type if index >= 0 else None
    if dtype is not None and pa.types.is_list(dtype):  # a MultiVector: its vectors' length
        dtype = dtype.value_type
    ndims = dtype.list_size if dtype is not None and pa.types.is_fixed_size_list(dtype) else 0
    return Binding(**{**binding.__dict__, "ndims": ndims})


def schema_with_bindings(schema: pa.Schema, bindings: list[Binding]) -> pa.Schema:
    """``schema`` with the bindings written into its metadata (replacing any there)."""
    metadata = dict(schema.metadata or {})
    metadata[METADATA_KEY] = json.dumps([b.to_json() for b in bindings], indent=2).encode()
    return schema.with_metadata(metadata)


def pick_binding(bindings: list[Binding], vector_column: str, table: str) -> Binding | None:
    """The binding searched by a text query: the named vector column's, or the only one."""
    if vector_column:
        return next((b for b in bindings if b.vector_column == vector_column), None)
    if len({b.vector_column for b in bindings}) > 1:
        choices = sorted({b.vector_column for b in bindings})
        raise InvalidSchema(
            f"table {table!r} has several vector columns {choices}; name one in vector_column"
        )
    return bindings[0] if bindings else None


def client_side_error(binding: Binding, what: str) -> InvalidSchema:
    """The error for a server asked to run a function that lives in a client."""
    return InvalidSchema(
        f"{what}: vector column {binding.vector_column!r} is computed by the client-side "
        f"function {binding.provider!r}; register it with @register in your process (the SDK "
        "then embeds for you) or send vectors"
    )
