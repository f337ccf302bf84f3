"""``embedsearch index``: vector (IVF_PQ, IVF_HNSW_SQ, ...) and scalar or full-text indexes
built by Ray workers through lance-ray, with the store's own defaults and checks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from embedsearch.contract.errors import InvalidArgument
from embedsearch.contract.schema import vector_dims
from embedsearch.contract.values import IndexParams
from ray_jobs.cluster import Workers
from ray_jobs.ingest import JobResult
from ray_jobs.tables import TableRef
from store_service.indexes import (
    SCALAR_TYPES,
    IndexSpec,
    check_spec,
    lance_arguments,
    text_arguments,
)


@dataclass
class IndexJob:
    """Build an index of ``index_type`` on ``column`` of ``table``, named ``name`` (default
    ``<column>_idx``, the store's name), with the store's parameters."""

    table: TableRef
    column: str
    index_type: str
    name: str = ""
    params: IndexParams = field(default_factory=lambda: IndexParams(metric="l2"))


def build_index(job: IndexJob, workers: Workers) -> JobResult:
    """Build the index segment by segment on ``workers.count`` Ray workers (fragments shared
    out among them), and commit it once."""
    import lance_ray

    started = time.monotonic()
    base = job.table.open()
    if job.params.metric is None:
        job.params.metric = "l2"
    spec = IndexSpec(job.table.name, job.column, job.index_type, job.name, job.params)
    check_spec(spec, base.schema, [index.name for index in base.describe_indices()])
    # lance-ray shares fragments among workers: more workers than fragments would idle.
    count = max(1, min(workers.count, len(base.get_fragments())))
    common = {
        "name": spec.name,
        "replace": spec.params.replace,
        "num_workers": count,
        "storage_options": job.table.storage_options or None,
    }
    try:
        if spec.index_type in SCALAR_TYPES:
            extra = text_arguments(spec) if spec.index_type == "INVERTED" else {}
            lance_ray.create_scalar_index(
                job.table.uri, column=spec.column, index_type=spec.index_type, **common, **extra
            )
        else:
            dims = vector_dims(base.schema.field(spec.column))
            arguments = lance_arguments(spec, base.count_rows(), dims)
            if "target_partition_size" in arguments:
                raise InvalidArgument(
                    "lance-ray's distributed build takes num_partitions, not target_partition_size"
                )
            lance_ray.create_index(
                job.table.uri, spec.column, spec.index_type, **common, **arguments
            )
    except ValueError as exc:  # lance-ray's checks of the parameters against the table
        raise InvalidArgument(f"{spec.index_type} on {spec.column!r}: {exc}") from exc
    after = job.table.open()
    return JobResult(
        rows=after.count_rows(),
        read_version=base.version,
        version=after.version,
        seconds=time.monotonic() - started,
    )
