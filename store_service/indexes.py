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
from embedsearch.contract.schema import is_multivector, is_vector, vector_dims
from embedsearch.contract.values import STEM_LANGUAGES, IndexInfo, IndexParams, IndexStats

log = logging.getLogger("store_service.indexes")

VECTOR_TYPES = (
    "IVF_PQ",
    "IVF_HNSW_SQ",
    "IVF_FLAT",
    "IVF_HNSW_PQ",
    "IVF_SQ",
    "IVF_HNSW_FLAT",
    "IVF_RQ",
)
SCALAR_TYPES = ("BTREE", "BITMAP", "LABEL_LIST", "INVERTED")
# Lance's names for scalar index kinds (describe_indices, index_stats), by ours.
_LANCE_SCALAR_NAMES = {
    "BTREE": "BTREE",
    "BITMAP": "BITMAP",
    "LABELLIST": "LABEL_LIST",
    "INVERTED": "INVERTED",
    "FTS": "INVERTED",
}
# Far above any useful value, far below what fails an allocation: ef_construction=4294967295
# made Lance ask for 34 GB and abort the process.
_PARAMETER_BOUNDS = {
    "num_partitions": 65_536,
    "num_sub_vectors": 4_096,
    "num_bits": 8,
    "m": 256,
    "ef_construction": 10_000,
    "max_iterations": 10_000,
    "sample_rate": 1_000_000,
    "target_partition_size": 1 << 32,
    "ngram_min_length": 64,
    "ngram_max_length": 64,
}
# Languages Lance's tokenizer stems and removes stop words for (LanceDB's lang_mapping).
LANGUAGES = tuple(STEM_LANGUAGES.values())
TOKENIZERS = ("simple", "whitespace", "raw", "ngram", "icu", "icu/split")
# Model-backed tokenizers: "jieba/<model>", "lindera/<model>", loaded from Lance's model home.
_MODEL_TOKENIZERS = ("jieba/", "lindera/")
# Full-text options, and the value meaning "not set" for each.
_TEXT_OPTIONS = {
    "with_position": False,
    "base_tokenizer": "",
    "language": "",
    "max_token_length": None,
    "lower_case": None,
    "stem": None,
    "remove_stop_words": None,
    "ascii_folding": None,
    "custom_stop_words": [],
    "use_custom_stop_words": False,
    "ngram_min_length": 0,
    "ngram_max_length": 0,
    "prefix_only": False,
    "block_size": 0,
}


@dataclass
class IndexSpec:
    """What to build: an index named ``name`` of ``index_type`` on ``column``, with ``params``
    (zero numbers and None mean "choose as LanceDB would")."""

    table: str
    column: str
    index_type: str
    name: str = ""
    params: IndexParams = field(default_factory=lambda: IndexParams(metric="l2"))

    def __post_init__(self) -> None:
        self.index_type = self.index_type.upper()
        self.name = self.name or f"{self.column}_idx"


def index_type_name(lance_type: str) -> str:
    """Our name (``IVF_PQ``, ``BTREE``, ``LABEL_LIST``, ``INVERTED``, ...) of the kind Lance
    reports (``IVF_PQ``, ``BTree``, ``LabelList``, ``Inverted``, ...)."""
    upper = str(lance_type).upper()
    return _LANCE_SCALAR_NAMES.get(upper.replace("_", ""), upper)


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
    vector = is_vector(field_) or is_multivector(field_)
    multi = is_multivector(field_)
    if spec.index_type in VECTOR_TYPES and multi and spec.params.metric != "cosine":
        raise InvalidArgument(
            f"{spec.index_type} on the MultiVector column {spec.column!r} needs "
            f"metric='cosine' (Lance indexes multi-vectors by cosine only), got "
            f"{spec.params.metric!r}"
        )
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
    listed = pa.types.is_list(field_.type) or pa.types.is_large_list(field_.type)
    if spec.index_type == "LABEL_LIST" and not listed:
        raise InvalidArgument(f"LABEL_LIST needs a list column; {spec.column!r} is {field_.type}")
    if spec.index_type in ("BTREE", "BITMAP") and pa.types.is_nested(field_.type):
        raise InvalidArgument(
            f"{spec.index_type} needs a scalar column; {spec.column!r} is {field_.type} "
            "(use LABEL_LIST for a list column)"
        )
    for name, most in _PARAMETER_BOUNDS.items():
        if getattr(spec.params, name) > most:
            raise InvalidArgument(
                f"{name} may be at most {most}, not {getattr(spec.params, name)}: Lance "
                "allocates for it up front"
            )
    if spec.params.metric not in ("l2", "cosine", "dot"):
        raise InvalidArgument(f"unknown metric {spec.params.metric!r}; use l2, cosine or dot")
    _check_text_options(spec.index_type, spec.params)
    if spec.name in existing and not spec.params.replace:
        raise AlreadyExists(
            f"index {spec.name!r} exists on table {spec.table!r}; set replace to rebuild it"
        )


def _check_text_options(index_type: str, params: IndexParams) -> None:
    given = sorted(n for n, unset in _TEXT_OPTIONS.items() if getattr(params, n) != unset)
    if index_type != "INVERTED":
        if given:
            raise InvalidArgument(
                f"{given} are full-text tokenizer options; {index_type} takes none"
            )
        return
    tokenizer = params.base_tokenizer
    if tokenizer and tokenizer not in TOKENIZERS and not tokenizer.startswith(_MODEL_TOKENIZERS):
        raise InvalidArgument(
            f"unknown base_tokenizer {tokenizer!r}; use one of {list(TOKENIZERS)}, "
            "'jieba/<model>' or 'lindera/<model>'"
        )
    if params.language and params.language not in LANGUAGES:
        raise InvalidArgument(f"unknown language {params.language!r}; use one of {list(LANGUAGES)}")
    if params.block_size not in (0, 128, 256):
        raise InvalidArgument(f"block_size must be 128 or 256, not {params.block_size}")
    shortest, longest = params.ngram_min_length or 3, params.ngram_max_length or 3
    if shortest > longest:
        raise InvalidArgument(
            f"ngram_min_length ({shortest}) may not exceed ngram_max_length ({longest})"
        )
    if params.custom_stop_words and not params.use_custom_stop_words:
        raise InvalidArgument("custom_stop_words are used only with use_custom_stop_words set")


def lance_arguments(spec: IndexSpec, num_rows: int, dims: int) -> dict[str, Any]:
    """Keyword arguments of ``create_index`` for a vector index, LanceDB's defaults filled in."""
    params = spec.params
    arguments: dict[str, Any] = {"metric": params.metric}
    if params.num_partitions or not params.target_partition_size:
        arguments["num_partitions"] = params.num_partitions or max(
            1, int(math.sqrt(max(num_rows, 1)))
        )
    for name in ("max_iterations", "sample_rate", "target_partition_size"):
        if getattr(params, name):
            arguments[name] = getattr(params, name)
    if spec.index_type in ("IVF_PQ", "IVF_HNSW_PQ"):
        suggested = dims // 16 if dims % 16 == 0 else (dims // 8 if dims % 8 == 0 else 1)
        arguments["num_sub_vectors"] = params.num_sub_vectors or suggested
    if spec.index_type in ("IVF_PQ", "IVF_HNSW_PQ", "IVF_RQ") and params.num_bits:
        arguments["num_bits"] = params.num_bits
    if spec.index_type.startswith("IVF_HNSW"):
        if params.m:
            arguments["m"] = params.m
        if params.ef_construction:
            arguments["ef_construction"] = params.ef_construction
    return arguments


def text_arguments(spec: IndexSpec) -> dict[str, Any]:
    """Keyword arguments of ``create_scalar_index(column, "INVERTED")``: LanceDB's tokenizer
    options, unset ones left to Lance's defaults (which are LanceDB's)."""
    params = spec.params
    arguments: dict[str, Any] = {
        "with_position": params.with_position,
        "prefix_only": params.prefix_only,
    }
    if params.base_tokenizer:
        arguments["base_tokenizer"] = params.base_tokenizer
    if params.language:
        arguments["language"] = params.language
    if params.max_token_length is not None:
        arguments["max_token_length"] = params.max_token_length or None
    for name in ("lower_case", "stem", "remove_stop_words", "ascii_folding"):
        if getattr(params, name) is not None:
            arguments[name] = getattr(params, name)
    if params.use_custom_stop_words:
        arguments["custom_stop_words"] = list(params.custom_stop_words)
    if params.ngram_min_length:
        arguments["min_ngram_length"] = params.ngram_min_length
    if params.ngram_max_length:
        arguments["max_ngram_length"] = params.ngram_max_length
    if params.block_size:
        arguments["block_size"] = params.block_size
    return arguments


def statistics(dataset: lance.LanceDataset, index_name: str) -> IndexStats | None:
    """LanceDB's ``index_stats`` of a committed index; None when the dataset has none so named."""
    found = next((d for d in dataset.describe_indices() if d.name == index_name), None)
    if found is None:
        return None
    try:
        stats = dataset.stats.index_stats(index_name)
    except (ValueError, OSError, RuntimeError):
        stats = {}
    segments = stats.get("indices") or []
    losses = [s["loss"] for s in segments if isinstance(s, dict) and s.get("loss") is not None]
    metric = next((s.get("metric_type") for s in segments if isinstance(s, dict)), None)
    kind = index_type_name(found.index_type)
    return IndexStats(
        name=index_name,
        index_type=kind,
        num_indexed_rows=int(stats.get("num_indexed_rows", 0) or 0),
        num_unindexed_rows=int(stats.get("num_unindexed_rows", 0) or 0),
        distance_type=str(metric).lower() if kind in VECTOR_TYPES and metric else "",
        num_indices=int(stats.get("num_indices", len(found.segments)) or 0),
        loss=float(sum(losses)) if losses else None,
    )


def build(dataset: lance.LanceDataset, spec: IndexSpec, on_progress: Callable[..., None]) -> None:
    """Build ``spec`` on ``dataset`` (a private handle) and commit it."""
    common = {"name": spec.name, "replace": spec.params.replace, "progress_callback": on_progress}
    if spec.index_type == "INVERTED":
        dataset.create_scalar_index(spec.column, "INVERTED", **common, **text_arguments(spec))
        return
    if spec.index_type in SCALAR_TYPES:
        dataset.create_scalar_index(spec.column, spec.index_type, **common)
        return
    dims = vector_dims(dataset.schema.field(spec.column))
    arguments = lance_arguments(spec, dataset.count_rows(), dims)
    dataset.create_index(spec.column, spec.index_type, **common, **arguments)


class IndexBuilder:
    """Runs builds on ``threads`` worker threads and remembers how each one is going.

    ``run(table, action)`` is the catalog's retrying commit: a build whose commit loses a race
    with a writer is built again on the new version. ``on_built(spec)`` runs on the worker
    after a build is ready (the catalog calibrates vector indexes there).
    """

    def __init__(
        self,
        threads: int,
        run: Callable[[str, str, Callable[[lance.LanceDataset], Any]], Any],
        on_built: Callable[[IndexSpec], None] | None = None,
    ) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="index-build")
        self._run = run
        self._on_built = on_built
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
        if self._on_built is not None:
            self._on_built(spec)  # the index serves meanwhile; a build queued after waits

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
