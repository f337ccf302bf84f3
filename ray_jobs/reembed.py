"""``embedsearch reembed``: a new vector column backfilled under another function (lance-ray's
``add_columns``, one embedding model per Ray worker), then the binding switched to it in one
commit. Restoring the version before the switch brings back the old binding and vectors."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import ray

from embedsearch.contract.errors import InvalidArgument, InvalidSchema
from embedsearch.contract.schema import multivector_type, vector_type
from gateway.clients import EMBED_REQUEST_INPUTS
from gateway.mapping import METADATA_KEY, Binding, bindings_from_schema, schema_with_bindings
from gateway.values import NULL, BadVectors
from ray_jobs.cluster import Workers
from ray_jobs.embed import Embedding, RowEmbedder
from ray_jobs.ingest import JobResult
from ray_jobs.progress import Progress, Reporting
from ray_jobs.tables import TableRef


@dataclass
class ReembedJob:
    """Embed ``source_column`` of ``table`` with ``function`` into ``column`` and bind it.

    ``function`` is a binding's function in LanceDB's shape: ``{"name": provider, "model":
    {create() arguments}}``. ``source_column`` may be left empty where the table has one
    binding; ``column`` defaults to the replaced vector column's name and the version read.
    """

    table: TableRef
    function: dict[str, Any]
    column: str = ""
    source_column: str = ""
    # A backfill meets rows whose source is null or empty (added with on_bad_vectors null or
    # fill): their new vector is null, unless another policy is asked for.
    bad: BadVectors = field(default_factory=lambda: BadVectors(NULL))
    batch_rows: int = EMBED_REQUEST_INPUTS


def parse_function(text: str) -> dict[str, Any]:
    """``--function``: JSON of ``{"name": provider, "model": {arguments}}`` (LanceDB's shape)."""
    try:
        function = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"--function is not JSON: {exc}") from exc
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidArgument(
            '--function must be {"name": provider, "model": {arguments}}, e.g. '
            '{"name": "sentence-transformers", "model": {"normalize": false}}'
        )
    if not isinstance(function.get("model", {}), dict):
        raise InvalidArgument("--function's model must be an object of arguments")
    return {"name": function["name"], "model": dict(function.get("model") or {})}


def _replaced(bindings: list[Binding], source_column: str, table: str) -> Binding | None:
    """The binding the new one replaces: the one of ``source_column`` (None: a new binding),
    or the table's only one."""
    if source_column:
        return next((b for b in bindings if b.source_column == source_column), None)
    if len(bindings) != 1:
        found = sorted(b.source_column for b in bindings)
        raise InvalidArgument(
            f"table {table!r} has {len(bindings)} embedding bindings (sources {found}): "
            "name the source column to re-embed with --source-column"
        )
    return bindings[0]


def _resolve(spec: Embedding, wanted: Binding) -> Binding:
    """``wanted`` resolved by the embedder as the gateway binds it (run in a Ray task: the
    model loads on a worker, not on the driver)."""
    rows = RowEmbedder(spec)
    try:
        return rows.loop.run_until_complete(rows.bind(wanted))
    finally:
        rows.close()


# One embedder per worker process and function: the backfill's transform is unpickled for
# each fragment, and a model loaded for the first fragment serves the next ones.
_EMBEDDERS: dict[str, RowEmbedder] = {}


class Backfill:
    """lance's ``merge_columns`` transform: the source column's batch in, the new vector
    column's batch out, embedded as the gateway embeds an added row."""

    def __init__(self, spec: Embedding, counter: Any) -> None:
        self.spec, self.counter = spec, counter
        (self.binding,) = spec.bindings

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        spec = self.spec
        key = json.dumps([self.binding.to_json(), str(spec.schema), repr(spec.bad)])
        rows = _EMBEDDERS.get(key)
        if rows is None:
            rows = _EMBEDDERS[key] = RowEmbedder(spec)
        source = pa.Table.from_batches([batch]).select([self.binding.source_column])
        embedded = rows.embed(source).select([self.binding.vector_column])
        self.counter.add.remote(batch.num_rows)
        return embedded.combine_chunks().to_batches()[0]


def reembed(job: ReembedJob, workers: Workers, reporting: Reporting) -> JobResult:
    """Backfill, then switch the binding: two commits, the second of which alone changes what
    searches and adds use."""
    import lance_ray

    started = time.monotonic()
    base = job.table.open()
    schema = base.schema
    bindings = bindings_from_schema(schema)
    old = _replaced(bindings, job.source_column, job.table.name)
    source_column = job.source_column or (old.source_column if old else "")
    column = job.column or f"{old.vector_column if old else source_column}_v{base.version}"
    if column in schema.names:
        raise InvalidSchema(
            f"column {column!r} exists in table {job.table.name!r}: name a new vector column "
            "with --column (the old one stays, so that rolling back restores it)"
        )
    wanted = Binding(job.function["name"], job.function["model"], source_column, column)
    resolve = ray.remote(_resolve).options(**workers.actor_args())
    binding = ray.get(resolve.remote(Embedding(schema, []), wanted))
    make = multivector_type if binding.multi_vector else vector_type
    target = pa.field(column, make(binding.ndims), nullable=True)
    total = base.count_rows()
    progress = Progress("reembed", job.table.name, total, reporting)
    committed = False
    try:
        written = pa.schema([schema.field(source_column), target])
        backfill = Backfill(Embedding(written, [binding], job.bad), progress.counter)
        lance_ray.add_columns(
            job.table.uri,
            transform=backfill,
            read_columns=[source_column],
            read_version=base.version,
            storage_options=job.table.storage_options or None,
            batch_size=job.batch_rows,
            concurrency=workers.count,
            ray_remote_args=workers.actor_args(),
        )
        switched = [binding if b == old else b for b in bindings] if old else [*bindings, binding]
        metadata = schema_with_bindings(schema, switched).metadata[METADATA_KEY]
        backfilled = job.table.open()
        backfilled.update_schema_metadata({METADATA_KEY.decode(): metadata.decode()})
        committed = True
    finally:
        progress.close(committed)
    after = job.table.open()
    return JobResult(
        rows=total,
        read_version=base.version,
        version=after.version,
        seconds=time.monotonic() - started,
    )
