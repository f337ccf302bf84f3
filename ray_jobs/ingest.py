"""``embedsearch ingest``: a corpus embedded by Ray actors and written as Lance fragments by
Ray tasks (lance-ray), then committed to the table once, by the driver."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import ray
import ray.data

from gateway.clients import EMBED_REQUEST_INPUTS
from gateway.mapping import bindings_from_schema
from gateway.values import BadVectors
from ray_jobs.cluster import Workers
from ray_jobs.embed import Embedding, RowEmbedder
from ray_jobs.progress import Progress, Reporting
from ray_jobs.sources import read_source, source_format
from ray_jobs.tables import TableRef

# Rows a write task gathers into one fragment (at most): 128 Ki rows of 384 float32
# dimensions are about 200 MB in a worker.
ROWS_PER_FRAGMENT = 128 * 1024


@dataclass
class IngestJob:
    """Append the rows of ``source`` to ``table``, embedding its bound columns."""

    source: str
    table: TableRef
    format: str = ""
    bad: BadVectors = field(default_factory=BadVectors)
    # Rows per batch handed to an actor: the gateway's inputs per Embed request.
    batch_rows: int = EMBED_REQUEST_INPUTS
    rows_per_fragment: int = ROWS_PER_FRAGMENT


@dataclass
class JobResult:
    """What a job committed: rows, the version it read and the one it made, wall time."""

    rows: int
    read_version: int
    version: int
    seconds: float


class EmbedBatches:
    """Ray Data's callable class for the embedding stage: one per actor, one model each."""

    def __init__(self, spec: Embedding, counter: Any) -> None:
        self.rows = RowEmbedder(spec)
        self.counter = counter

    def __call__(self, batch: pa.Table) -> pa.Table:
        embedded = self.rows.embed(batch)
        self.counter.add.remote(batch.num_rows)
        return embedded


def ingest(job: IngestJob, workers: Workers, reporting: Reporting) -> JobResult:
    """Run ``job`` on the connected cluster (ray_jobs.cluster.connect) and commit it once."""
    import lance_ray

    started = time.monotonic()
    base = job.table.open()
    schema = base.schema
    source = read_source(
        job.source, source_format(job.source, job.format), schema, job.table.storage_options
    )
    total = source.count()
    # Blocks of one batch each, so that every actor gets work however the files are cut.
    source = source.repartition(target_num_rows_per_block=job.batch_rows)
    progress = Progress("ingest", job.table.name, total, reporting)
    committed = False
    try:
        embedded = source.map_batches(
            EmbedBatches,
            fn_constructor_kwargs={
                "spec": Embedding(schema, bindings_from_schema(schema), job.bad),
                "counter": progress.counter,
            },
            batch_size=job.batch_rows,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers.count),
            **workers.actor_args(),
        )
        lance_ray.write_lance(
            embedded,
            job.table.uri,
            schema=schema,
            mode="append",
            min_rows_per_file=job.rows_per_fragment,
            max_rows_per_file=job.rows_per_fragment,
            storage_options=job.table.storage_options or None,
        )
        committed = True
    finally:
        progress.close(committed)
    after = job.table.open()
    return JobResult(
        rows=after.count_rows() - base.count_rows(),
        read_version=base.version,
        version=after.version,
        seconds=time.monotonic() - started,
    )
