"""Index methods of :class:`embedsearch.table.Table`, with LanceDB's names and arguments."""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from embedsearch.contract.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    TableNotFound,
)
from embedsearch.contract.values import STEM_LANGUAGES
from embedsearch.index import (
    FTS,
    LEGACY_VECTOR_CONFIGS,
    SCALAR_CONFIGS,
    BTree,
    DocumentGranularity,
    IndexConfig,
    IndexStatistics,
    IvfPq,
    config_to_pb,
)
from embedsearch.v1 import common_pb2, gateway_pb2

if TYPE_CHECKING:
    from embedsearch.db import Connection

# A first argument of create_index naming a metric marks LanceDB's legacy call.
_LEGACY_METRICS = ("l2", "cosine", "dot", "hamming")
_POLL_S = 0.2


class IndexMethods:
    """create_index, create_scalar_index, create_fts_index, list_indices, index_stats,
    drop_index and wait_for_index. Builds run on the store; ``wait=False`` returns as soon as
    one starts, and :meth:`wait_for_index` waits on its status."""

    name: str
    _conn: Connection

    if TYPE_CHECKING:

        @property
        def schema(self) -> pa.Schema: ...

        def _writable(self) -> None: ...

        def _refresh(self) -> None: ...

    def create_index(
        self,
        metric: str = "l2",
        num_partitions: int | None = None,
        num_sub_vectors: int | None = None,
        vector_column_name: str | None = None,
        replace: bool = True,
        accelerator: str | None = None,
        index_cache_size: int | None = None,
        num_bits: int = 8,
        index_type: str = "IVF_PQ",
        max_iterations: int = 50,
        sample_rate: int = 256,
        m: int = 20,
        ef_construction: int = 300,
        *,
        config: Any = None,
        wait_timeout: timedelta | None = None,
        name: str | None = None,
        train: bool = True,
        target_partition_size: int | None = None,
        wait: bool = True,
    ) -> IndexConfig:
        """Build an index, as LanceDB's ``create_index`` does.

        The current form names the column and passes a config from :mod:`embedsearch.index`
        (or lancedb's): ``create_index("vector", config=IvfPq(distance_type="cosine"))``,
        ``create_index("id", config=BTree())``, ``create_index("text", config=FTS())``. Without
        a config, a vector column gets IvfPq and any other column a BTree. The legacy form
        starts with a metric: ``create_index("l2", vector_column_name="vector",
        index_type="IVF_HNSW_SQ")``.

        ``wait=False`` (ours) returns as soon as the build starts; ``wait_timeout`` waits at
        most that long for it (DeadlineExceeded after). Returns the index as
        :meth:`list_indices` describes it (LanceDB returns None).
        """
        if not train:
            raise InvalidArgument("train=False is not supported: the store trains every index")
        if accelerator is not None:
            raise InvalidArgument("accelerator is not supported: the store builds indexes itself")
        del index_cache_size  # a reader-side cache size in LanceDB; the store sizes its own
        legacy = config is None and (
            metric.lower() in _LEGACY_METRICS
            or vector_column_name is not None
            or num_partitions is not None
            or num_sub_vectors is not None
        )
        if legacy:
            column = vector_column_name or self._only_vector_column()
            config = _legacy_config(
                index_type,
                distance_type=metric.lower(),
                num_partitions=num_partitions,
                num_sub_vectors=num_sub_vectors,
                num_bits=num_bits,
                max_iterations=max_iterations,
                sample_rate=sample_rate,
                m=m,
                ef_construction=ef_construction,
                target_partition_size=target_partition_size,
            )
        else:
            column = metric
            if config is None:
                vector = column in self.schema.names and pa.types.is_fixed_size_list(
                    self.schema.field(column).type
                )
                config = IvfPq() if vector else BTree()
        kind, params = config_to_pb(config, replace)
        return self._index(column, kind, params, wait, name, wait_timeout)

    def create_scalar_index(
        self,
        column: str,
        *,
        replace: bool = True,
        index_type: str = "BTREE",
        name: str | None = None,
        wait: bool = True,
    ) -> IndexConfig:
        """Build a BTREE, BITMAP or LABEL_LIST index that speeds up filters on ``column``."""
        if index_type not in SCALAR_CONFIGS:
            raise InvalidArgument(
                f"unknown scalar index type {index_type!r}; use one of {sorted(SCALAR_CONFIGS)}"
            )
        kind, params = config_to_pb(SCALAR_CONFIGS[index_type](), replace)
        return self._index(column, kind, params, wait, name)

    def create_fts_index(
        self,
        field_names: str | list[str],
        *,
        ordering_field_names: str | list[str] | None = None,
        replace: bool = False,
        writer_heap_size: int | None = 1024 * 1024 * 1024,
        use_tantivy: bool = False,
        tokenizer_name: str | None = None,
        with_position: bool = False,
        base_tokenizer: str = "simple",
        language: str = "English",
        max_token_length: int | None = 40,
        lower_case: bool = True,
        stem: bool = True,
        remove_stop_words: bool = True,
        custom_stop_words: list[str] | None = None,
        ascii_folding: bool = True,
        ngram_min_length: int = 3,
        ngram_max_length: int = 3,
        prefix_only: bool = False,
        block_size: int = 128,
        document_granularity: DocumentGranularity | str = DocumentGranularity.ROW,
        name: str | None = None,
        wait: bool = True,
    ) -> IndexConfig:
        """Build a full-text (BM25) index on one string column, with LanceDB's tokenizer
        options; it enables "fts" and "hybrid" searches. As in LanceDB, several columns need
        one index each: a search then covers every indexed column.

        >>> table.create_fts_index("text", stem=False, remove_stop_words=False)  # doctest: +SKIP
        """
        if use_tantivy:
            raise InvalidArgument("use_tantivy is not supported: indexes are Lance's native FTS")
        if ordering_field_names is not None or writer_heap_size != 1024 * 1024 * 1024:
            raise InvalidArgument(
                "ordering_field_names and writer_heap_size belonged to the Tantivy-based FTS; "
                "leave them unset"
            )
        if not isinstance(field_names, str):
            raise InvalidArgument(
                "a full-text index covers one column; create one index per column (each "
                "create_fts_index call names one), and searches cover them all"
            )
        options: dict[str, Any] = {
            "with_position": with_position,
            "base_tokenizer": base_tokenizer,
            "language": language,
            "max_token_length": max_token_length,
            "lower_case": lower_case,
            "stem": stem,
            "remove_stop_words": remove_stop_words,
            "ascii_folding": ascii_folding,
            "ngram_min_length": ngram_min_length,
            "ngram_max_length": ngram_max_length,
            "prefix_only": prefix_only,
        }
        if tokenizer_name is not None:
            options.update(_named_tokenizer(tokenizer_name))
        config = FTS(
            **options,
            custom_stop_words=custom_stop_words,
            block_size=block_size,
            document_granularity=document_granularity,
        )
        kind, params = config_to_pb(config, replace)
        return self._index(field_names, kind, params, wait, name)

    def _index(
        self,
        column: str,
        kind: str,
        params: common_pb2.IndexParams,
        wait: bool,
        name: str | None = None,
        wait_timeout: timedelta | None = None,
    ) -> IndexConfig:
        self._writable()
        if wait_timeout is not None:  # start, then wait at most that long
            info = self._index(column, kind, params, False, name)
            self.wait_for_index([info.name], wait_timeout)
            return self._listed(info.name) or info
        watch = wait and sys.stderr.isatty()  # on a terminal, show the build's progress
        request = gateway_pb2.CreateIndexRequest(
            table=self.name,
            column=column,
            index_type=common_pb2.IndexType.Value(f"INDEX_TYPE_{kind}"),
            params=params,
            wait=wait and not watch,
            index_name=name or "",
        )
        info = IndexConfig.from_pb(self._conn.call("CreateIndex", request))
        info = self._watch(info) if watch else info
        self._refresh()  # a built index is a new version
        return info

    def _watch(self, info: IndexConfig) -> IndexConfig:
        """Poll a building index, drawing its progress, until it is ready or failed."""
        from tqdm import tqdm

        with tqdm(total=1.0, desc=f"index {info.name}", bar_format="{l_bar}{bar}") as bar:
            while info.status == "building":
                time.sleep(0.5)
                info = self._listed(info.name) or info
                bar.set_postfix_str(info.stage)
                bar.n = info.progress
                bar.refresh()
        if info.status.startswith("failed"):
            raise FailedPrecondition(f"index {info.name!r} on table {self.name!r} {info.status}")
        return info

    def _listed(self, index_name: str) -> IndexConfig | None:
        return next((i for i in self.list_indices() if i.name == index_name), None)

    def list_indices(self) -> list[IndexConfig]:
        """The table's indexes, by name: LanceDB's ``name``, ``index_type`` ("IvfPq", "BTree",
        "FTS", ...) and ``columns``, with their build ``status``, ``progress`` and coverage."""
        reply = self._conn.call("ListIndexes", gateway_pb2.ListIndexesRequest(table=self.name))
        return [IndexConfig.from_pb(i) for i in reply.indexes]

    def index_stats(self, index_name: str) -> IndexStatistics | None:
        """Statistics of an index (coverage, kind, metric, segments); None when the table has
        no index of that name (yet: one still building has none)."""
        request = gateway_pb2.IndexStatsRequest(table=self.name, index_name=index_name)
        try:
            return IndexStatistics.from_pb(self._conn.call("IndexStats", request))
        except TableNotFound:
            raise
        except NotFound:
            return None

    def drop_index(self, name: str) -> None:
        """Remove the index ``name``; NotFound when the table has none so named."""
        self._writable()
        self._conn.call("DropIndex", gateway_pb2.DropIndexRequest(table=self.name, index_name=name))
        self._refresh()  # dropping an index is a new version

    def wait_for_index(
        self,
        index_names: list[str] | tuple[str, ...] | str,
        timeout: timedelta = timedelta(seconds=300),
    ) -> None:
        """Wait until every named index is built and covers every row, as LanceDB does.

        Raises DeadlineExceeded (a TimeoutError) after ``timeout``, and FailedPrecondition
        when a build failed.
        """
        names = [index_names] if isinstance(index_names, str) else list(index_names)
        deadline = time.monotonic() + timeout.total_seconds()
        while True:
            listed = {i.name: i for i in self.list_indices()}
            waiting = []
            for name in names:
                info = listed.get(name)
                if info is not None and info.status.startswith("failed"):
                    raise FailedPrecondition(f"index {name!r} on table {self.name!r} {info.status}")
                if info is None or info.status != "ready" or info.num_unindexed_rows:
                    waiting.append(name)
            if not waiting:
                self._refresh()
                return
            if time.monotonic() >= deadline:
                raise DeadlineExceeded(
                    f"timed out after {timeout} waiting for indices {waiting} on table "
                    f"{self.name!r} (a missing index, or one with unindexed rows, never "
                    "finishes: see list_indices() and optimize())"
                )
            time.sleep(min(_POLL_S, max(deadline - time.monotonic(), 0.0)))

    def _only_vector_column(self) -> str:
        vectors = [f.name for f in self.schema if pa.types.is_fixed_size_list(f.type)]
        if len(vectors) != 1:
            raise InvalidArgument(f"name the vector column: the table has {vectors}")
        return vectors[0]


def _legacy_config(index_type: str, **fields: Any) -> Any:
    """The config of a legacy ``create_index(metric, ..., index_type=...)`` call."""
    cls = LEGACY_VECTOR_CONFIGS.get(index_type.upper())
    if cls is None:
        raise InvalidArgument(
            f"unknown index type {index_type!r}; use one of {sorted(LEGACY_VECTOR_CONFIGS)}"
        )
    known = cls.__dataclass_fields__
    return cls(**{k: v for k, v in fields.items() if k in known})


def _named_tokenizer(tokenizer_name: str) -> dict[str, Any]:
    """LanceDB's ``tokenizer_name`` shorthands: "default", "raw", "whitespace", "<lang>_stem"."""
    plain = {
        "language": "English",
        "lower_case": False,
        "stem": False,
        "remove_stop_words": False,
        "ascii_folding": False,
        "ngram_min_length": 3,
        "ngram_max_length": 3,
        "prefix_only": False,
    }
    if tokenizer_name == "default":
        return {**plain, "base_tokenizer": "simple", "max_token_length": 40, "lower_case": True}
    if tokenizer_name in ("raw", "whitespace"):
        return {**plain, "base_tokenizer": tokenizer_name, "max_token_length": None}
    code, _, suffix = tokenizer_name.partition("_")
    if suffix != "stem" or code not in STEM_LANGUAGES:
        raise InvalidArgument(
            f"unknown tokenizer_name {tokenizer_name!r}; use 'default', 'raw', 'whitespace' or "
            f"'<code>_stem' with a code in {sorted(STEM_LANGUAGES)}"
        )
    return {
        **plain,
        "base_tokenizer": "simple",
        "language": STEM_LANGUAGES[code],
        "max_token_length": 40,
        "lower_case": True,
        "stem": True,
    }
