"""Index builds off the request path: a small thread pool, with status and progress per index."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import lance
import pyarrow as pa

from embedsearch.contract.errors import AlreadyExists, InvalidArgument
from embedsearch.contract.schema import is_vector
from embedsearch.contract.values import IndexInfo

log = logging.getLogger("store_service.indexes")

VECTOR_TYPES = ("IVF_PQ", "IVF_HNSW_SQ", "IVF_FLAT")
SCALAR_TYPES = ("BTREE", "BITMAP", "INVERTED")
# Far above any useful value, far below what fails an allocation: ef_construction=4294967295
# made Lance ask for 34 GB and abort the process.
_PARAMETER_BOUNDS = {
    "num_partitions": 65_536,
    "num_sub_vectors": 4_096,
    "num_bits": 8,
    "m": 256,
    "ef_construction": 10_000,
}


@dataclass
class IndexSpec:
    """What to build. Zero numbers mean "choose as LanceDB would"."""

    table: str
    column: str
    index_type: str
    name: str = ""
    metric: str = "l2"
    num_partitions: int = 0
    num_sub_vectors: int = 0
    num_bits: int = 0
    m: int = 0
    ef_construction: int = 0
    replace: bool = False

    def __post_init__(self) -> None:
        self.index_type = self.index_type.upper()
        self.name = self.name or f"{self.column}_idx"


@dataclass
class _Build:
    spec: IndexSpec
    status: str = "building"
    stage: str = "queued"
    progress: float = 0.0
    future: Future[None] = field(default_factory=Future)

    def info(self) -> IndexInfo:
        return IndexInfo(
            name=self.spec.name,
            columns=[self.spec.column],
            index_type=self.spec.index_type,
            status=self.status,
            progress=self.progress,
            stage=self.stage,
        )


def check_spec(spec: IndexSpec, schema: pa.Schema, existing: list[str]) -> None:
    """Reject, before any work starts, an index that cannot be built on this schema."""
    if spec.index_type not in VECTOR_TYPES + SCALAR_TYPES:
        raise InvalidArgument(
            f"unknown index type {spec.index_type!r}; use one of {VECTOR_TYPES + SCALAR_TYPES}"
        )
    if spec.column not in schema.names:
        raise InvalidArgument(f"unknown column {spec.column!r}; the table has {schema.names}")
    field_ = schema.field(spec.column)
    vector = is_vector(field_)
    if spec.index_type in VECTOR_TYPES and not vector:
        raise InvalidArgument(
            f"{spec.index_type} needs a vector column; {spec.column!r} is {field_.type}"
        )
    if spec.index_type in SCALAR_TYPES and vector:
        raise InvalidArgument(f"{spec.index_type} cannot index the vector column {spec.column!r}")
    if spec.index_type == "INVERTED" and not (
        pa.types.is_string(field_.type) or pa.types.is_large_string(field_.type)
    ):
        raise InvalidArgument(f"INVERTED needs a text column; {spec.column!r} is {field_.type}")
    for name, most in _PARAMETER_BOUNDS.items():
        if getattr(spec, name) > most:
            raise InvalidArgument(
                f"{name} may be at most {most}, not {getattr(spec, name)}: Lance allocates for "
                "it up front"
            )
    if spec.metric not in ("l2", "cosine", "dot"):
        raise InvalidArgument(f"unknown metric {spec.metric!r}; use l2, cosine or dot")
    if spec.name in existing and not spec.replace:
        raise AlreadyExists(
            f"index {spec.name!r} exists on table {spec.table!r}; set replace to rebuild it"
        )


def lance_arguments(spec: IndexSpec, num_rows: int, dims: int) -> dict[str, Any]:
    """Keyword arguments of ``create_index`` for a vector index, LanceDB's defaults filled in."""
    arguments: dict[str, Any] = {
        "metric": spec.metric,
        "num_partitions": spec.num_partitions or max(1, int(math.sqrt(max(num_rows, 1)))),
    }
    if spec.index_type == "IVF_PQ":
        suggested = dims // 16 if dims % 16 == 0 else (dims // 8 if dims % 8 == 0 else 1)
        arguments["num_sub_vectors"] = spec.num_sub_vectors or suggested
        if spec.num_bits:
            arguments["num_bits"] = spec.num_bits
    if spec.index_type == "IVF_HNSW_SQ":
        if spec.m:
            arguments["m"] = spec.m
        if spec.ef_construction:
            arguments["ef_construction"] = spec.ef_construction
    return arguments


def build(dataset: lance.LanceDataset, spec: IndexSpec, on_progress: Callable[..., None]) -> None:
    """Build ``spec`` on ``dataset`` (a private handle) and commit it."""
    common = {"name": spec.name, "replace": spec.replace, "progress_callback": on_progress}
    if spec.index_type in SCALAR_TYPES:
        dataset.create_scalar_index(spec.column, spec.index_type, **common)
        return
    dims = dataset.schema.field(spec.column).type.list_size
    arguments = lance_arguments(spec, dataset.count_rows(), dims)
    dataset.create_index(spec.column, spec.index_type, **common, **arguments)


class IndexBuilder:
    """Runs builds on ``threads`` worker threads and remembers how each one is going.

    ``run(table, action)`` is the catalog's retrying commit: a build whose commit loses a race
    with a writer is built again on the new version.
    """

    def __init__(
        self,
        threads: int,
        run: Callable[[str, str, Callable[[lance.LanceDataset], Any]], Any],
    ) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="index-build")
        self._run = run
        self._builds: dict[tuple[str, str], _Build] = {}
        self._lock = threading.Lock()

    def submit(self, spec: IndexSpec) -> _Build:
        key = (spec.table, spec.name)
        with self._lock:
            running = self._builds.get(key)
            if running is not None and running.status == "building":
                raise AlreadyExists(f"index {spec.name!r} on {spec.table!r} is being built")
            state = _Build(spec)
            self._builds[key] = state
        self._pool.submit(self._build, state)
        return state

    def _build(self, state: _Build) -> None:
        spec = state.spec

        def on_progress(event: lance.IndexProgress) -> None:
            state.stage = event.stage
            state.progress = event.fraction or 0.0

        try:
            self._run(spec.table, "create_index", lambda ds: build(ds, spec, on_progress))
        except Exception as exc:
            log.warning("index %s on %s failed: %s", spec.name, spec.table, exc)
            state.status = f"failed: {exc}"
            state.future.set_exception(exc)
            return
        state.status, state.stage, state.progress = "ready", "", 1.0
        state.future.set_result(None)
        log.info("index %s on %s is ready", spec.name, spec.table)

    def pending(self, table: str) -> list[IndexInfo]:
        """Builds of ``table`` that are running or failed (ready ones are in the manifest)."""
        with self._lock:
            return [
                b.info() for (t, _), b in self._builds.items() if t == table and b.status != "ready"
            ]

    def forget(self, table: str, name: str | None = None) -> None:
        with self._lock:
            for key in [k for k in self._builds if k[0] == table and name in (None, k[1])]:
                if self._builds[key].status != "building":
                    del self._builds[key]
