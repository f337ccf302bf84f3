"""Proto ⇄ value conversions of rerankers: a search's RerankerSpec, and Rerank calls."""

from __future__ import annotations

import numpy as np

from embedsearch.contract.convert import spec_from_pb, spec_to_pb
from embedsearch.contract.errors import InvalidArgument
from embedsearch.v1 import embedder_pb2, gateway_pb2
from gateway.values import RerankCall, RerankSpec

RETURN_SCORES = {
    gateway_pb2.RERANK_SCORE_UNSPECIFIED: "relevance",
    gateway_pb2.RERANK_SCORE_RELEVANCE: "relevance",
    gateway_pb2.RERANK_SCORE_ALL: "all",
}
NORMALIZE = {
    gateway_pb2.RERANK_NORMALIZE_UNSPECIFIED: "score",
    gateway_pb2.RERANK_NORMALIZE_SCORE: "score",
    gateway_pb2.RERANK_NORMALIZE_RANK: "rank",
}


def reranker_from_pb(request: gateway_pb2.SearchRequest) -> RerankSpec | None:
    """The search's reranker; None when the request sets none."""
    if not request.HasField("reranker"):
        return None
    spec = request.reranker
    if not spec.function.provider:
        raise InvalidArgument(
            "reranker.function.provider names the reranker: rrf, linear, mrr, cross-encoder "
            "or cohere"
        )
    kind, args = spec_from_pb(spec.function)
    return RerankSpec(
        kind=kind,
        args=args,
        column=spec.column,
        return_score=_known(RETURN_SCORES, spec.return_score, "reranker.return_score"),
        normalize=_known(NORMALIZE, spec.normalize, "reranker.normalize"),
        query=spec.query,
    )


def rerank_call_from_pb(request: embedder_pb2.RerankRequest) -> RerankCall:
    kind, args = spec_from_pb(request.reranker)
    return RerankCall(kind, args, request.query, list(request.documents))


def rerank_call_to_pb(call: RerankCall) -> embedder_pb2.RerankRequest:
    return embedder_pb2.RerankRequest(
        reranker=spec_to_pb(call.kind, call.args), query=call.query, documents=call.documents
    )


def scores_to_pb(scores: np.ndarray) -> embedder_pb2.RerankResponse:
    return embedder_pb2.RerankResponse(scores=np.asarray(scores, dtype=np.float32).tolist())


def scores_from_pb(reply: embedder_pb2.RerankResponse, count: int) -> np.ndarray:
    scores = np.asarray(reply.scores, dtype=np.float32)
    if len(scores) != count:
        raise InvalidArgument(f"the embedder scored {len(scores)} of {count} documents")
    return scores


def _known(table: dict[int, str], value: int, what: str) -> str:
    if value not in table:
        raise InvalidArgument(f"unknown {what} {value}")
    return table[value]
