"""LanceDB's rerankers and its hybrid combination, one implementation for gateway and SDK.

The formulas, the merge of the vector and full-text lists, the score columns kept and the
ordering follow ``lancedb.rerankers`` and ``LanceHybridQueryBuilder._combine_hybrid_results``
(LanceDB 0.40, Apache-2.0) step by step, so results match LanceDB's row for row. A
model-backed reranker (cross-encoder, Cohere) gets its scores from a ``scorer``: the gateway
sets one that asks the embedder; the SDK's classes score in-process when called directly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedsearch.contract.errors import FailedPrecondition, InvalidArgument

#: Scores ``documents`` against ``query``, one float per document, higher is more relevant.
Scorer = Callable[[str, list[str]], Sequence[float]]

RELEVANCE, ALL = "relevance", "all"
SCORE, RANK = "score", "rank"
DEFAULT_HYBRID_LIMIT = 10
_CONCAT = {"promote_options": "default"}


class Reranker(ABC):
    """Base of every reranker (LanceDB's ``lancedb.rerankers.Reranker``).

    ``return_score`` is "relevance" (results keep only ``_relevance_score``) or "all" (they
    keep ``_distance`` and ``_score`` too). A subclass the user writes runs in the client;
    the built-in ones (``kind`` set) run in the gateway.
    """

    #: Name of a built-in reranker in ``RerankerSpec.function.provider``; "" for a user's own.
    kind: ClassVar[str] = ""

    def __init__(self, return_score: str = RELEVANCE) -> None:
        if return_score not in (RELEVANCE, ALL):
            raise InvalidArgument("score must be either 'relevance' or 'all'")
        self.score = return_score
        self._concat_tables_args = dict(_CONCAT)

    def __str__(self) -> str:
        return self.__class__.__name__

    def spec_args(self) -> dict[str, Any]:
        """The constructor arguments a server needs to build this reranker (not column,
        return_score: the spec carries those apart)."""
        return {}

    def rerank_vector(self, query: str, vector_results: pa.Table) -> pa.Table:
        """Rerank the results of a vector search (optional)."""
        raise NotImplementedError(f"{self.__class__.__name__} does not implement rerank_vector")

    def rerank_fts(self, query: str, fts_results: pa.Table) -> pa.Table:
        """Rerank the results of a full-text search (optional)."""
        raise NotImplementedError(f"{self.__class__.__name__} does not implement rerank_fts")

    @abstractmethod
    def rerank_hybrid(
        self, query: str, vector_results: pa.Table, fts_results: pa.Table
    ) -> pa.Table:
        """Combine the vector and full-text results into one list with ``_relevance_score``."""

    def _handle_empty_results(self, results: pa.Table) -> pa.Table:
        if len(results) > 0:
            return results
        return results.append_column("_relevance_score", pa.array([], type=pa.float32()))

    def merge_results(self, vector_results: pa.Table, fts_results: pa.Table) -> pa.Table:
        """Both lists concatenated, the first copy of each ``_rowid`` kept."""
        combined = pa.concat_tables([vector_results, fts_results], **self._concat_tables_args)
        return self._deduplicate(combined)

    def rerank_multivector(
        self,
        vector_results: list[pa.Table] | list[Any],
        query: str | None,
        deduplicate: bool = False,
    ) -> pa.Table:
        """Rerank the results of several vector searches (tables or queries) as one list."""
        tables = _tables(vector_results)
        combined = pa.concat_tables(tables, **self._concat_tables_args)
        reranked = self.rerank_vector(query or "", combined)
        if deduplicate:
            _need_row_ids(combined)
            reranked = self._deduplicate(reranked)
        return reranked

    def _deduplicate(self, table: pa.Table) -> pa.Table:
        row_id = table.column("_rowid")
        mask = np.full((table.shape[0]), False)
        _, first = np.unique(np.array(row_id), return_index=True)
        mask[first] = True
        return table.filter(mask=mask)

    def _merge_and_keep_scores(self, vector_results: pa.Table, fts_results: pa.Table) -> pa.Table:
        """Both lists merged by ``_rowid``, keeping ``_distance`` and ``_score`` (null where a
        row came from the other list only)."""
        if "_distance" not in fts_results.column_names:
            fts_results = fts_results.append_column(
                "_distance", pa.array([None] * len(fts_results), type=pa.float32())
            )
        if "_score" not in vector_results.column_names:
            vector_results = vector_results.append_column(
                "_score", pa.array([None] * len(vector_results), type=pa.float32())
            )
        vector_rows = {row["_rowid"]: row for row in vector_results.to_pylist()}
        for key, value in {row["_rowid"]: row for row in fts_results.to_pylist()}.items():
            if key in vector_rows:
                vector_rows[key]["_score"] = value["_score"]
            else:
                vector_rows[key] = value
        return pa.Table.from_pylist(list(vector_rows.values()))

    def _scored(self, combined: pa.Table, scores: dict[Any, float]) -> pa.Table:
        """``combined`` with each row's score from ``scores`` (by ``_rowid``) as
        ``_relevance_score``, best first."""
        relevance = [scores[row_id] for row_id in combined["_rowid"].to_pylist()]
        combined = combined.append_column(
            "_relevance_score", pa.array(relevance, type=pa.float32())
        )
        combined = combined.sort_by([("_relevance_score", "descending")])
        return self._keep_relevance_score(combined)

    def _keep_relevance_score(self, combined_results: pa.Table) -> pa.Table:
        if self.score == RELEVANCE:
            for name in ("_score", "_distance"):
                if name in combined_results.column_names:
                    combined_results = combined_results.drop_columns([name])
        return combined_results


class RRFReranker(Reranker):
    """Reciprocal rank fusion: each list adds ``1 / (rank + K)`` (rank from 1)."""

    kind = "rrf"

    def __init__(self, K: int = 60, return_score: str = RELEVANCE) -> None:
        if K <= 0:
            raise InvalidArgument("K must be greater than 0")
        super().__init__(return_score)
        self.K = K

    def __str__(self) -> str:
        return f"RRFReranker(K={self.K})"

    def spec_args(self) -> dict[str, Any]:
        return {"K": self.K}

    def rerank_hybrid(
        self, query: str, vector_results: pa.Table, fts_results: pa.Table
    ) -> pa.Table:
        scores: defaultdict[Any, float] = defaultdict(float)
        for rows in (vector_results, fts_results):
            for rank, row_id in enumerate(_row_ids(rows), 1):
                scores[row_id] += 1 / (rank + self.K)
        return self._scored(self.merge_results(vector_results, fts_results), scores)

    def rerank_multivector(
        self,
        vector_results: list[pa.Table] | list[Any],
        query: str | None = None,
        deduplicate: bool = True,
    ) -> pa.Table:
        """RRF over several vector searches, each list ranked on its own."""
        tables = _tables(vector_results)
        for table in tables:
            _need_row_ids(table)
        scores: defaultdict[Any, float] = defaultdict(float)
        for table in tables:
            for rank, row_id in enumerate(table["_rowid"].to_pylist(), 1):
                scores[row_id] += 1 / (rank + self.K)
        combined = self._deduplicate(pa.concat_tables(tables, **self._concat_tables_args))
        return self._scored(combined, scores)


class LinearCombinationReranker(Reranker):
    """``weight * (1 - distance) + (1 - weight) * score``; a row missing from one list gets
    ``fill`` as its distance or ``1 - fill`` as its score."""

    kind = "linear"

    def __init__(
        self, weight: float = 0.7, fill: float = 1.0, return_score: str = RELEVANCE
    ) -> None:
        if weight < 0 or weight > 1:
            raise InvalidArgument("weight must be between 0 and 1.")
        super().__init__(return_score)
        self.weight = weight
        self.fill = fill

    def __str__(self) -> str:
        return f"LinearCombinationReranker(weight={self.weight}, fill={self.fill})"

    def spec_args(self) -> dict[str, Any]:
        return {"weight": self.weight, "fill": self.fill}

    def rerank_hybrid(
        self, query: str, vector_results: pa.Table, fts_results: pa.Table
    ) -> pa.Table:
        return self.merge_results(vector_results, fts_results, self.fill)

    def merge_results(  # type: ignore[override]
        self, vector_results: pa.Table, fts_results: pa.Table, fill: float = 1.0
    ) -> pa.Table:
        if len(vector_results) == 0:
            results = fts_results.append_column(
                "_relevance_score", pa.array(fts_results["_score"], type=pa.float32())
            )
            if self.score == RELEVANCE:
                return self._keep_relevance_score(results)
            return results.append_column(
                "_distance", pa.array([np.nan] * len(fts_results), type=pa.float32())
            )
        if len(fts_results) == 0:
            inverted = [self._invert_score(d) for d in vector_results["_distance"].to_pylist()]
            results = vector_results.append_column(
                "_relevance_score", pa.array(inverted, type=pa.float32())
            )
            if self.score == RELEVANCE:
                return self._keep_relevance_score(results)
            return results.append_column(
                "_score", pa.array([np.nan] * len(vector_results), type=pa.float32())
            )
        merged: dict[Any, dict[str, Any]] = {}
        for row in vector_results.to_pylist():
            merged[row["_rowid"]] = row
        for row in fts_results.to_pylist():
            if row["_rowid"] in merged:
                merged[row["_rowid"]]["_score"] = row["_score"]
            else:
                merged[row["_rowid"]] = row
        combined = []
        for row in merged.values():
            vector_score = self._invert_score(row.get("_distance", fill))
            fts_score = row.get("_score", 1 - fill)
            row["_relevance_score"] = self._combine_score(vector_score, fts_score)
            combined.append(row)
        schema = pa.unify_schemas(
            [
                vector_results.schema,
                fts_results.schema,
                pa.schema([pa.field("_relevance_score", pa.float32())]),
            ]
        )
        table = pa.Table.from_pylist(combined, schema=schema).sort_by(
            [("_relevance_score", "descending")]
        )
        return self._keep_relevance_score(table)

    def _combine_score(self, vector_score: float, fts_score: float) -> float:
        return self.weight * vector_score + (1 - self.weight) * fts_score

    def _invert_score(self, dist: float) -> float:
        return 1 - dist


class MRRReranker(Reranker):
    """Weighted mean reciprocal rank: ``weight_vector / rank_v + weight_fts / rank_f``."""

    kind = "mrr"

    def __init__(
        self, weight_vector: float = 0.5, weight_fts: float = 0.5, return_score: str = RELEVANCE
    ) -> None:
        if not 0.0 <= weight_vector <= 1.0:
            raise InvalidArgument("weight_vector must be between 0.0 and 1.0")
        if not 0.0 <= weight_fts <= 1.0:
            raise InvalidArgument("weight_fts must be between 0.0 and 1.0")
        if abs(weight_vector + weight_fts - 1.0) > 1e-6:
            raise InvalidArgument("weight_vector + weight_fts must equal 1.0")
        super().__init__(return_score)
        self.weight_vector = weight_vector
        self.weight_fts = weight_fts

    def __str__(self) -> str:
        return f"MRRReranker(weight_vector={self.weight_vector}, weight_fts={self.weight_fts})"

    def spec_args(self) -> dict[str, Any]:
        return {"weight_vector": self.weight_vector, "weight_fts": self.weight_fts}

    def rerank_hybrid(
        self, query: str, vector_results: pa.Table, fts_results: pa.Table
    ) -> pa.Table:
        vector_rr = {r: 1.0 / rank for rank, r in enumerate(_row_ids(vector_results), 1)}
        fts_rr = {r: 1.0 / rank for rank, r in enumerate(_row_ids(fts_results), 1)}
        combined = self.merge_results(vector_results, fts_results)
        scores = {
            r: self.weight_vector * vector_rr.get(r, 0.0) + self.weight_fts * fts_rr.get(r, 0.0)
            for r in combined["_rowid"].to_pylist()
        }
        return self._scored(combined, scores)

    def rerank_multivector(
        self,
        vector_results: list[pa.Table] | list[Any],
        query: str | None = None,
        deduplicate: bool = True,
    ) -> pa.Table:
        """MRR over several vector searches: a list a row is missing from counts 0."""
        tables = _tables(vector_results)
        for table in tables:
            _need_row_ids(table)
        ranks: defaultdict[Any, list[float]] = defaultdict(list)
        for table in tables:
            for rank, row_id in enumerate(table["_rowid"].to_pylist(), 1):
                ranks[row_id].append(1.0 / rank)
        combined = self._deduplicate(pa.concat_tables(tables, **self._concat_tables_args))
        scores = {row_id: float(np.sum(found)) / len(tables) for row_id, found in ranks.items()}
        return self._scored(combined, scores)


class ModelReranker(Reranker):
    """A reranker whose scores come from a model reading each result's ``column``."""

    def __init__(self, column: str = "text", return_score: str = RELEVANCE) -> None:
        super().__init__(return_score)
        self.column = column
        #: Where scores come from; None: :meth:`_local_scores` (in this process).
        self.scorer: Scorer | None = None

    def _scores(self, query: str, documents: list[str]) -> list[float]:
        score = self.scorer or self._local_scores
        scores = [float(s) for s in score(query, documents)]
        if len(scores) != len(documents):
            raise FailedPrecondition(f"{len(documents)} documents got {len(scores)} scores")
        return scores

    def _local_scores(self, query: str, documents: list[str]) -> Sequence[float]:
        raise FailedPrecondition(f"{self} scores through a server; search with .rerank() on it")

    def _documents(self, results: pa.Table) -> list[str]:
        if self.column not in results.column_names:
            raise InvalidArgument(
                f"{self} reads column {self.column!r}, which the results lack: select it, or "
                "pass column= to the reranker"
            )
        return ["" if v is None else str(v) for v in results[self.column].to_pylist()]

    def _rerank(self, result_set: pa.Table, query: str) -> pa.Table:
        raise NotImplementedError

    def rerank_hybrid(
        self, query: str, vector_results: pa.Table, fts_results: pa.Table
    ) -> pa.Table:
        if self.score == ALL:
            combined = self._merge_and_keep_scores(vector_results, fts_results)
        else:
            combined = self.merge_results(vector_results, fts_results)
        return self._keep_relevance_score(self._rerank(combined, query))

    def rerank_vector(self, query: str, vector_results: pa.Table) -> pa.Table:
        results = self._rerank(vector_results, query)
        return results.drop_columns(["_distance"]) if self.score == RELEVANCE else results

    def rerank_fts(self, query: str, fts_results: pa.Table) -> pa.Table:
        results = self._rerank(fts_results, query)
        return results.drop_columns(["_score"]) if self.score == RELEVANCE else results


class CrossEncoderReranker(ModelReranker):
    """Scores (query, text) pairs with a sentence-transformers ``CrossEncoder``; best first."""

    kind = "cross-encoder"

    def __init__(
        self,
        model_name: str = "cross-encoder/ms-marco-TinyBERT-L-6",
        column: str = "text",
        device: str | None = None,
        return_score: str = RELEVANCE,
        trust_remote_code: bool = True,
        batch_size: int = 32,
        **kwargs: Any,
    ) -> None:
        super().__init__(column, return_score)
        self.model_name = model_name
        self.device = device
        self.trust_remote_code = trust_remote_code
        self.batch_size = batch_size
        self.kwargs = kwargs

    def __str__(self) -> str:
        return f"CrossEncoderReranker(model_name={self.model_name})"

    def spec_args(self) -> dict[str, Any]:
        args = {
            "model_name": self.model_name,
            "trust_remote_code": self.trust_remote_code,
            "batch_size": self.batch_size,
            **self.kwargs,
        }
        if self.device is not None:
            args["device"] = self.device
        return args

    def _rerank(self, result_set: pa.Table, query: str) -> pa.Table:
        result_set = self._handle_empty_results(result_set)
        if len(result_set) == 0:
            return result_set
        scores = self._scores(query, self._documents(result_set))
        result_set = result_set.append_column(
            "_relevance_score", pa.array(scores, type=pa.float32())
        )
        return result_set.sort_by([("_relevance_score", "descending")])


class CohereReranker(ModelReranker):
    """Cohere's rerank API; the best ``top_n`` results (all when None), best first.

    ``api_key`` is best a ``$env:``/``$var:`` reference the embedder resolves; by default
    ``$env:COHERE_API_KEY``, the variable LanceDB reads. ``base_url`` (not in LanceDB) points
    it at a compatible endpoint.
    """

    kind = "cohere"

    def __init__(
        self,
        model_name: str = "rerank-english-v3.0",
        column: str = "text",
        top_n: int | None = None,
        return_score: str = RELEVANCE,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
    ) -> None:
        super().__init__(column, return_score)
        if top_n is not None and top_n < 1:
            raise InvalidArgument("top_n must be at least 1")
        self.model_name = model_name
        self.top_n = top_n
        self.api_key = api_key
        self.base_url = base_url

    def __str__(self) -> str:
        return f"CohereReranker(model_name={self.model_name})"

    def spec_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "model_name": self.model_name,
            "api_key": self.api_key or "$env:COHERE_API_KEY",
        }
        if self.top_n is not None:
            args["top_n"] = self.top_n
        if self.base_url is not None:
            args["base_url"] = self.base_url
        return args

    def _rerank(self, result_set: pa.Table, query: str) -> pa.Table:
        result_set = self._handle_empty_results(result_set)
        if len(result_set) == 0:
            return result_set
        scores = self._scores(query, self._documents(result_set))
        # The API answers the best top_n, best first; a stable sort keeps ties in input order.
        order = sorted(range(len(scores)), key=lambda i: -scores[i])[: self.top_n]
        result_set = result_set.take(order)
        return result_set.append_column(
            "_relevance_score", pa.array([scores[i] for i in order], type=pa.float32())
        )


#: The built-in rerankers by kind, as ``RerankerSpec.function.provider`` names them.
KINDS: dict[str, type[Reranker]] = {
    cls.kind: cls
    for cls in (
        RRFReranker,
        LinearCombinationReranker,
        MRRReranker,
        CrossEncoderReranker,
        CohereReranker,
    )
}
#: Arguments of a model-backed reranker used where results are ordered, not by the model.
ORDERING_ARGS = frozenset({"top_n"})


def from_spec(kind: str, args: dict[str, Any], column: str, return_score: str) -> Reranker:
    """The reranker a spec names; InvalidArgument for an unknown kind or bad arguments."""
    cls = KINDS.get(kind)
    if cls is None:
        raise InvalidArgument(f"unknown reranker {kind!r}; use one of {sorted(KINDS)}")
    extra: dict[str, Any] = {"return_score": return_score or RELEVANCE}
    if issubclass(cls, ModelReranker):
        extra["column"] = column or "text"
    elif column:
        raise InvalidArgument(f"the {kind} reranker fuses ranks and reads no column")
    try:
        return cls(**args, **extra)
    except TypeError as exc:
        raise InvalidArgument(f"bad arguments for the {kind} reranker: {exc}") from exc


def implements(reranker: Reranker, method: str) -> bool:
    """Whether ``reranker`` overrides the base's ``rerank_vector``/``rerank_fts``."""
    return getattr(type(reranker), method) is not getattr(Reranker, method)


def combine_hybrid(
    fts_results: pa.Table,
    vector_results: pa.Table,
    norm: str | None,
    fts_query: str,
    reranker: Reranker,
    limit: int,
    with_row_ids: bool,
    offset: int | None = None,
) -> pa.Table:
    """LanceDB's hybrid step: normalise both lists' scores, rerank, restore the original
    ``_distance``/``_score``, and cut the window; each list fetched ``offset + limit`` rows
    with ``_rowid``."""
    if norm == RANK:
        vector_results = _rank(vector_results, "_distance")
        fts_results = _rank(fts_results, "_score")
    if vector_results.num_rows == 0 and fts_results.num_rows == 0:
        schema = pa.unify_schemas([vector_results.schema, fts_results.schema])
        empty = pa.table({c: pa.array([], type=schema.field(c).type) for c in schema.names})
        empty = empty.append_column("_relevance_score", pa.array([], type=pa.float32()))
        if not with_row_ids and "_rowid" in empty.column_names:
            empty = empty.drop(["_rowid"])
        return empty
    original_distances = original_scores = None
    distance_ids = score_ids = None
    if vector_results.num_rows > 0:
        i = vector_results.column_names.index("_distance")
        original_distances = vector_results.column(i)
        distance_ids = vector_results.column("_rowid")
        vector_results = vector_results.set_column(
            i, vector_results.field(i), _normalize_scores(original_distances)
        )
    if fts_results.num_rows > 0:
        i = fts_results.column_names.index("_score")
        original_scores = fts_results.column(i)
        score_ids = fts_results.column("_rowid")
        fts_results = fts_results.set_column(
            i, fts_results.field(i), _normalize_scores(original_scores)
        )
    results = reranker.rerank_hybrid(fts_query, vector_results, fts_results)
    check_reranker_result(results)
    if "_distance" in results.column_names and original_distances is not None:
        indices = pc.index_in(results["_rowid"], distance_ids, skip_nulls=True)
        i = results.column_names.index("_distance")
        results = results.set_column(i, "_distance", pc.take(original_distances, indices))
    if "_score" in results.column_names and original_scores is not None:
        indices = pc.index_in(results["_rowid"], score_ids, skip_nulls=True)
        i = results.column_names.index("_score")
        results = results.set_column(i, "_score", pc.take(original_scores, indices))
    results = results.slice(offset=offset or 0, length=limit)
    if not with_row_ids:
        results = results.drop(["_rowid"])
    return results


def check_reranker_result(result: Any) -> None:
    """A reranker must return an Arrow table with ``_relevance_score``."""
    if not isinstance(result, pa.Table):
        raise TypeError(f"rerank_hybrid must return a pyarrow.Table, got {type(result)}")
    if "_relevance_score" not in result.column_names:
        raise ValueError(
            "rerank_hybrid must return a pyarrow.Table with a column named `_relevance_score`"
        )


def _rank(results: pa.Table, column: str) -> pa.Table:
    if len(results) == 0:
        return results
    scores = results.column(column).to_numpy()
    order = np.argsort(scores)
    ranks = np.empty_like(order)
    ranks[order] = np.arange(len(scores)) + 1
    i = results.column_names.index(column)
    return results.set_column(i, column, pa.array(ranks, type=pa.float32()))


def _normalize_scores(scores: Any) -> Any:
    if len(scores) == 0:
        return scores
    low, high = pc.min_max(scores).values()
    spread = pc.subtract(high, low)
    if not pc.equal(spread, pa.scalar(0.0)).as_py():
        scores = pc.divide(pc.subtract(scores, low), spread)
    elif not pc.equal(high, pa.scalar(0.0)).as_py():
        scores = pc.subtract(scores, low)
    return scores


def _row_ids(results: pa.Table | None) -> list[Any]:
    return results["_rowid"].to_pylist() if results else []


def _tables(results: list[Any]) -> list[pa.Table]:
    if not results:
        raise InvalidArgument("vector_results must not be empty")
    results = results if isinstance(results, list) else [results]
    if not all(isinstance(r, type(results[0])) for r in results):
        raise InvalidArgument("All elements in vector_results should be of the same type")
    if isinstance(results[0], pa.Table):
        return results
    if hasattr(results[0], "to_arrow"):
        return [r.to_arrow() for r in results]
    raise InvalidArgument("vector_results should be a list of pa.Table or queries")


def _need_row_ids(table: pa.Table) -> None:
    if "_rowid" not in table.column_names:
        raise InvalidArgument(
            "'_rowid' is required for deduplication: add it with search().with_row_id(True)"
        )
