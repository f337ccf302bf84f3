"""LanceDB's rerankers: ``table.search(...).rerank(reranker)``, server-side where built in.

The built-in classes run in the gateway (``CrossEncoderReranker`` and ``CohereReranker`` score
in the embedder, batched with other callers); a ``Reranker`` subclass of your own runs here, on
the candidates the server returns, as LanceDB runs it.

>>> from embedsearch.rerankers import RRFReranker
>>> str(RRFReranker(K=30))
'RRFReranker(K=30)'
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from embedsearch.contract import rerank as _contract
from embedsearch.contract.convert import spec_to_pb
from embedsearch.contract.errors import FailedPrecondition
from embedsearch.contract.rerank import (
    LinearCombinationReranker,
    MRRReranker,
    Reranker,
    RRFReranker,
)
from embedsearch.contract.wire import ipc_to_table
from embedsearch.v1 import gateway_pb2

__all__ = [
    "CohereReranker",
    "CrossEncoderReranker",
    "LinearCombinationReranker",
    "MRRReranker",
    "RRFReranker",
    "Reranker",
]


class CrossEncoderReranker(_contract.CrossEncoderReranker):
    """Scores (query, text) pairs with a sentence-transformers ``CrossEncoder``.

    In a search (``.rerank(CrossEncoderReranker(model_name=...))``) the embedder loads the
    model: ``model_name`` is a hub name in its model cache or a directory under its
    ``--model-roots``. Called directly (``rerank_hybrid(...)``), it loads the model here.
    """

    _model: Any = None

    def _local_scores(self, query: str, documents: list[str]) -> Sequence[float]:
        if self._model is None:
            try:
                from sentence_transformers import CrossEncoder
            except ImportError as exc:
                raise FailedPrecondition(
                    "scoring in this process needs sentence-transformers; rerank a search "
                    "instead, and the server scores"
                ) from exc
            device = self.device or "cpu"
            self._model = CrossEncoder(
                self.model_name,
                device=device,
                trust_remote_code=self.trust_remote_code,
                **self.kwargs,
            )
        pairs = [[query, d] for d in documents]
        return list(self._model.predict(pairs, batch_size=self.batch_size))


class CohereReranker(_contract.CohereReranker):
    """Cohere's rerank API. In a search the embedder calls it, with the key that ``api_key``
    references (``$env:NAME``/``$var:name``; default ``$env:COHERE_API_KEY``, resolved on the
    embedder). Called directly, it calls the API from here."""

    def _local_scores(self, query: str, documents: list[str]) -> Sequence[float]:
        import cohere

        key = self.api_key or "$env:COHERE_API_KEY"
        if key.startswith("$env:"):
            key = os.environ.get(key[5:], "")
        client = cohere.ClientV2(api_key=key, base_url=self.base_url)
        reply = client.rerank(model=self.model_name, query=query, documents=documents)
        scores = [0.0] * len(documents)
        for result in reply.results:
            scores[result.index] = float(result.relevance_score)
        return scores


#: Classes whose instances the server runs (a subclass of one runs here: it may override).
SERVER_SIDE: frozenset[type[Reranker]] = frozenset(
    {
        RRFReranker,
        LinearCombinationReranker,
        MRRReranker,
        CrossEncoderReranker,
        CohereReranker,
        *_contract.KINDS.values(),
    }
)


def runs_on_server(reranker: Reranker) -> bool:
    """Whether the gateway can run ``reranker`` itself (a built-in class, not a subclass)."""
    return type(reranker) in SERVER_SIDE


def reranker_to_pb(
    reranker: Reranker,
    request: gateway_pb2.SearchRequest,
    query: str | None,
    normalize: str,
) -> gateway_pb2.RerankerSpec:
    """The spec of a built-in reranker for ``request``; NotImplementedError, as LanceDB
    raises it, for a fusion reranker on a vector or full-text search."""
    _check_implements(reranker, request.query_type)
    column = reranker.column if isinstance(reranker, _contract.ModelReranker) else ""
    return gateway_pb2.RerankerSpec(
        function=spec_to_pb(reranker.kind, reranker.spec_args()),
        column=column,
        return_score=RETURN_SCORE_TO_PB[reranker.score],
        normalize=NORMALIZE_TO_PB[normalize],
        query=query or "",
    )


def rerank_here(query: Any, reranker: Reranker) -> pa.Table:
    """Run ``query`` (an ``embedsearch.table.Query``) and rerank its results in this process
    with a reranker of the user's own, as LanceDB's query builders do: a hybrid search fetches
    both lists (``offset + limit`` rows each, with row ids) and combines them."""
    base = gateway_pb2.SearchRequest()
    base.CopyFrom(query._request)
    base.ClearField("reranker")
    base.k = query._limit or 0
    keep_row_id = base.with_row_id or reranker.score == _contract.ALL

    def search(request: gateway_pb2.SearchRequest) -> pa.Table:
        reply = query._conn.call("Search", request)
        return ipc_to_table(reply.rows.arrow_ipc, "search results")

    if base.query_type == gateway_pb2.QUERY_TYPE_HYBRID:
        limit = base.k or _contract.DEFAULT_HYBRID_LIMIT
        legs = []
        for query_type in (gateway_pb2.QUERY_TYPE_VECTOR, gateway_pb2.QUERY_TYPE_FTS):
            leg = gateway_pb2.SearchRequest()
            leg.CopyFrom(base)
            leg.query_type, leg.k, leg.offset, leg.with_row_id = (
                query_type,
                limit + base.offset,
                0,
                True,
            )
            legs.append(search(leg))
        return _contract.combine_hybrid(
            legs[1],
            legs[0],
            query._normalize,
            query._str_query or base.text,
            reranker,
            limit,
            keep_row_id,
            base.offset,
        )
    _check_implements(reranker, base.query_type)
    base.with_row_id = keep_row_id
    rows = search(base)
    if base.query_type == gateway_pb2.QUERY_TYPE_FTS:
        results = reranker.rerank_fts(query._str_query or base.text, rows)
    else:
        results = reranker.rerank_vector(query._str_query or "", rows)
    _contract.check_reranker_result(results)
    return results


def _check_implements(reranker: Reranker, query_type: int) -> None:
    if query_type == gateway_pb2.QUERY_TYPE_HYBRID:
        return
    method = "rerank_fts" if query_type == gateway_pb2.QUERY_TYPE_FTS else "rerank_vector"
    if not _contract.implements(reranker, method):
        raise NotImplementedError(f"{reranker.__class__.__name__} does not implement {method}")


RETURN_SCORE_TO_PB = {
    _contract.RELEVANCE: gateway_pb2.RERANK_SCORE_RELEVANCE,
    _contract.ALL: gateway_pb2.RERANK_SCORE_ALL,
}
NORMALIZE_TO_PB = {
    _contract.SCORE: gateway_pb2.RERANK_NORMALIZE_SCORE,
    _contract.RANK: gateway_pb2.RERANK_NORMALIZE_RANK,
}
