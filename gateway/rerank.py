"""Reranked and hybrid searches: candidates fetched from the store, reordered by LanceDB's
rerankers (embedsearch/contract/rerank.py), model scores asked of the embedder."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable

import numpy as np
import pyarrow as pa

from embedsearch.contract.errors import InvalidArgument
from embedsearch.contract.rerank import (
    ALL,
    DEFAULT_HYBRID_LIMIT,
    ORDERING_ARGS,
    ModelReranker,
    Reranker,
    RRFReranker,
    check_reranker_result,
    combine_hybrid,
    from_spec,
    implements,
)
from gateway.values import FTS, HYBRID, RerankCall, RerankSpec, Search

#: Fetches a search's rows from the store: (search, with_row_id) -> rows.
Fetch = Callable[[Search, bool], Awaitable[pa.Table]]
#: Scores documents with a model-backed reranker (the embedder's Rerank).
Score = Callable[[RerankCall], Awaitable[np.ndarray]]


def reranker_of(spec: RerankSpec | None, score: Score) -> Reranker:
    """The reranker a spec names (RRF without one, as LanceDB's hybrid default); a
    model-backed one scores through ``score`` from the thread it runs on."""
    if spec is None:
        return RRFReranker()
    reranker = from_spec(spec.kind, dict(spec.args), spec.column, spec.return_score)
    if isinstance(reranker, ModelReranker):
        loop = asyncio.get_running_loop()
        args = {k: v for k, v in spec.args.items() if k not in ORDERING_ARGS}

        def scorer(query: str, documents: list[str]) -> list[float]:
            call = RerankCall(spec.kind, args, query, documents)
            return asyncio.run_coroutine_threadsafe(score(call), loop).result().tolist()

        reranker.scorer = scorer
    return reranker


async def reranked_search(
    search: Search, query_type: str, fetch_vector: Fetch, fetch_text: Fetch, score: Score
) -> pa.Table:
    """A vector or full-text search reranked, or a hybrid search combined, as LanceDB's query
    builders do: a hybrid search fetches ``offset + k`` rows of each kind with row ids,
    normalises their scores, reranks, and cuts the window; a vector or full-text search
    reranks its ``k`` results."""
    spec = search.reranker
    reranker = reranker_of(spec, score)
    keep_row_id = search.with_row_id or reranker.score == ALL
    text = search.query if isinstance(search.query, str) else ""
    query = (spec.query if spec else "") or text
    if query_type == HYBRID:
        if not text:
            raise InvalidArgument("hybrid search needs a text query")
        limit = search.k or DEFAULT_HYBRID_LIMIT
        window = dataclasses.replace(search, k=limit + search.offset, offset=0)
        vector_rows, text_rows = await asyncio.gather(
            fetch_vector(window, True), fetch_text(window, True)
        )
        norm = spec.normalize if spec else None
        return await asyncio.to_thread(
            combine_hybrid,
            text_rows,
            vector_rows,
            norm,
            query,
            reranker,
            limit,
            keep_row_id,
            search.offset,
        )
    method = "rerank_fts" if query_type == FTS else "rerank_vector"
    if not implements(reranker, method):
        raise InvalidArgument(
            f"{reranker} does not implement {method}: it fuses the two lists of a hybrid "
            "search (query_type hybrid)"
        )
    if not query:
        raise InvalidArgument(
            "reranking a vector or image query needs the text to score against: set "
            "reranker.query (LanceDB's rerank(query_string=...))"
        )
    rows = await (fetch_text if query_type == FTS else fetch_vector)(search, keep_row_id)
    results = await asyncio.to_thread(getattr(reranker, method), query, rows)
    check_reranker_result(results)
    return results
