"""Issue 15, part 4: LanceDB's rerankers on vector, full-text and hybrid searches.

Each case runs on LanceDB itself and on our SDK (embedded and over gRPC) and compares rows,
columns and order. Model-backed rerankers score in the embedder: a tiny cross-encoder built
here, and Cohere's API played by a local double."""

import concurrent.futures
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from api_doubles import CohereDouble, rerank_score
from conftest import Servers, Stack
from helpers import tiny_bert

import embedsearch
from embedsearch import rerankers as ours
from embedsearch.contract.convert import spec_to_pb
from embedsearch.v1 import (
    common_pb2,
    embedder_pb2,
    embedder_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
)

DOCS = [
    "the cat sat",
    "a dog ran",
    "cat and dog",
    "birds fly",
    "the cat ran fast",
    "fish swim",
    "dog days",
    "cat nap",
    "small loyal pets bark",
    "kitten purr",
]
WORDS = sorted({w for d in DOCS for w in d.split()} | {"cats", "dogs", "nothing"})
QUERY_VECTOR = [1.0, 1.0]


def build_cross_encoder(path: Path) -> str:
    """A randomly initialised one-layer BERT cross-encoder (num_labels=1) with a word-level
    vocabulary, loadable by ``sentence_transformers.CrossEncoder(path)``."""
    return tiny_bert(
        path, WORDS, "BertForSequenceClassification", num_labels=1, initializer_range=0.2
    )


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_cross_encoder(tmp_path_factory.mktemp("models") / "tiny-ce")


@pytest.fixture(scope="module")
def rerank_gateway(
    servers: Servers, tmp_path_factory: pytest.TempPathFactory, cross_encoder: str
) -> str:
    """A gateway, store and embedder whose --model-roots hold the tiny cross-encoder."""
    roots = str(Path(cross_encoder).parent)
    return servers.with_model_roots(roots, tmp_path_factory.mktemp("rerank"))[1]


def make_table(db: Any, registry: Any, model: Any, vector_type: Any, model_path: str) -> Any:
    func = registry.get("sentence-transformers").create(name=model_path)
    embedding, pair = vector_type(func.ndims()), vector_type(2)

    class Doc(model):  # type: ignore[misc, valid-type]
        id: int
        text: str = func.SourceField()
        vector: embedding = func.VectorField()  # type: ignore[valid-type]
        point: pair  # type: ignore[valid-type]

    table = db.create_table("docs", schema=Doc)
    table.add([{"id": i, "text": d, "point": [float(i), float(i % 3)]} for i, d in enumerate(DOCS)])
    table.create_fts_index("text")
    return table


@pytest.fixture(scope="module", params=["embedded", "grpc"])
def table(
    request: pytest.FixtureRequest,
    rerank_gateway: str,
    model_path: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Any:
    from embedsearch.embeddings import get_registry
    from embedsearch.pydantic import LanceModel, Vector

    if request.param == "embedded":
        db = embedsearch.connect(tmp_path_factory.mktemp("embedded"))
    else:
        db = embedsearch.connect(f"grpc://{rerank_gateway}")
    return make_table(db, get_registry(), LanceModel, Vector, model_path)


@pytest.fixture(scope="module")
def lance_table(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    import lancedb
    from lancedb.embeddings import get_registry
    from lancedb.pydantic import LanceModel, Vector

    db = lancedb.connect(tmp_path_factory.mktemp("lancedb"))
    return make_table(db, get_registry(), LanceModel, Vector, model_path)


@pytest.fixture(scope="module")
def cohere_double() -> Iterator[CohereDouble]:
    double = CohereDouble()
    yield double
    double.close()


def rows(table: Any) -> list[dict[str, Any]]:
    """Rows with floats rounded (embeddings computed by two processes differ in the last
    bits) and vectors left out."""
    found = []
    for row in table.to_pylist():
        found.append(
            {
                k: round(v, 4) if isinstance(v, float) else v
                for k, v in row.items()
                if k not in ("vector", "point")
            }
        )
    return found


def same(ours_table: Any, theirs_table: Any) -> None:
    assert ours_table.schema.names == theirs_table.schema.names
    assert rows(ours_table) == rows(theirs_table)


# -- fusion: RRF, linear combination, MRR -----------------------------------------------------

FUSION = {
    "rrf": lambda lib: lib.RRFReranker(),
    "rrf K=5, all scores": lambda lib: lib.RRFReranker(K=5, return_score="all"),
    "linear": lambda lib: lib.LinearCombinationReranker(),
    "linear 0.3, all scores": lambda lib: lib.LinearCombinationReranker(
        weight=0.3, fill=0.5, return_score="all"
    ),
    "mrr": lambda lib: lib.MRRReranker(),
    "mrr 0.8/0.2, all scores": lambda lib: lib.MRRReranker(0.8, 0.2, return_score="all"),
}


@pytest.mark.parametrize("normalize", ["score", "rank"])
@pytest.mark.parametrize("name", FUSION)
def test_hybrid_fusion_matches_lancedb(table, lance_table, name, normalize):
    import lancedb.rerankers as theirs

    def run(t: Any, lib: Any) -> Any:
        query = t.search("cat dog", query_type="hybrid", vector_column_name="vector")
        return query.limit(5).rerank(FUSION[name](lib), normalize=normalize).to_arrow()

    same(run(table, ours), run(lance_table, theirs))


def hybrid(t: Any, text: str) -> Any:
    return t.search(text, query_type="hybrid", vector_column_name="vector")


HYBRID_QUERIES = {
    "default reranker": lambda t: hybrid(t, "cat").limit(4),
    "offset": lambda t: hybrid(t, "cat").limit(3).offset(2),
    "with row id": lambda t: hybrid(t, "dog").with_row_id(True).limit(3),
    "selected columns": lambda t: hybrid(t, "fly").select(["text"]).limit(3),
    "filtered to nothing": lambda t: hybrid(t, "cat").where("id > 100"),
    "no text match": lambda t: hybrid(t, "zebra").limit(3),
}


@pytest.mark.parametrize("query", HYBRID_QUERIES)
def test_hybrid_searches_match_lancedb(table, lance_table, query):
    same(HYBRID_QUERIES[query](table).to_arrow(), HYBRID_QUERIES[query](lance_table).to_arrow())


@pytest.mark.parametrize("query_type", ["vector", "fts"])
def test_a_fusion_reranker_reorders_no_single_list(table, lance_table, query_type):
    import lancedb.rerankers as theirs

    def run(t: Any, lib: Any) -> Any:
        if query_type == "fts":
            return t.search("cat", query_type="fts").rerank(lib.RRFReranker()).to_arrow()
        query = t.search(QUERY_VECTOR, vector_column_name="point")
        return query.rerank(lib.RRFReranker(), query_string="cat").to_arrow()

    with pytest.raises(NotImplementedError) as theirs_error:
        run(lance_table, theirs)
    with pytest.raises(NotImplementedError) as ours_error:
        run(table, ours)
    assert str(ours_error.value) == str(theirs_error.value)


# -- a cross-encoder, in the embedder ---------------------------------------------------------


def cross_encoder_queries() -> dict[str, Any]:
    return {
        "vector": lambda t, r: (
            t.search(QUERY_VECTOR, vector_column_name="point")
            .limit(6)
            .rerank(r, query_string="cat")
        ),
        "fts": lambda t, r: t.search("cat dog", query_type="fts").limit(6).rerank(r),
        "hybrid": lambda t, r: hybrid(t, "cat").limit(5).rerank(r),
    }


@pytest.mark.parametrize("return_score", ["relevance", "all"])
@pytest.mark.parametrize("query", ["vector", "fts", "hybrid"])
def test_cross_encoder_matches_lancedb(table, lance_table, cross_encoder, query, return_score):
    import lancedb.rerankers as theirs

    run = cross_encoder_queries()[query]
    found = run(
        table, ours.CrossEncoderReranker(model_name=cross_encoder, return_score=return_score)
    ).to_arrow()
    expected = run(
        lance_table,
        theirs.CrossEncoderReranker(
            model_name=cross_encoder, device="cpu", return_score=return_score
        ),
    ).to_arrow()
    same(found, expected)
    scores = found["_relevance_score"].to_pylist()
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 1


def test_cross_encoder_scores_are_the_models(table, cross_encoder):
    from sentence_transformers import CrossEncoder

    reranker = ours.CrossEncoderReranker(model_name=cross_encoder)
    found = table.search("cat", query_type="fts").limit(10).rerank(reranker).to_arrow()
    expected = CrossEncoder(cross_encoder, device="cpu").predict(
        [["cat", text] for text in found["text"].to_pylist()]
    )
    np.testing.assert_allclose(found["_relevance_score"].to_numpy(), expected, rtol=1e-5)
    # Called directly, as LanceDB users also do, it scores in this process, alike.
    direct = reranker.rerank_fts("cat", table.search("cat", query_type="fts").to_arrow())
    assert direct["text"].to_pylist() == found["text"].to_pylist()


def test_a_node_client_gets_reranked_results_and_scores(rerank_gateway, cross_encoder):
    """Through the public protos only: a search with a RerankerSpec, and Rerank's scores."""
    from sentence_transformers import CrossEncoder

    db = embedsearch.connect(f"grpc://{rerank_gateway}")
    db.create_table("plain", [{"text": d, "vector": [float(i), 0.0]} for i, d in enumerate(DOCS)])
    stub = gateway_pb2_grpc.GatewayStub(grpc.insecure_channel(rerank_gateway))
    spec = spec_to_pb("cross-encoder", {"model_name": cross_encoder})
    request = gateway_pb2.SearchRequest(
        table="plain",
        vector=np.asarray([0.0, 0.0], "<f4").tobytes(),
        k=5,
        result_format=common_pb2.ROW_FORMAT_JSON,
        reranker=gateway_pb2.RerankerSpec(function=spec, query="dog"),
    )
    found = json.loads(stub.Search(request).rows.json)
    assert [set(row) for row in found] == [{"text", "vector", "_relevance_score"}] * 5
    model = CrossEncoder(cross_encoder, device="cpu")
    expected = model.predict([["dog", d] for d in DOCS[:5]])
    assert [row["text"] for row in found] == [DOCS[i] for i in np.argsort(-expected, kind="stable")]

    scores = stub.Rerank(
        embedder_pb2.RerankRequest(reranker=spec, query="cat", documents=DOCS)
    ).scores
    np.testing.assert_allclose(scores, model.predict([["cat", d] for d in DOCS]), rtol=1e-5)


def test_concurrent_callers_share_the_batches(rerank_gateway, cross_encoder):
    """Many callers at once each get their own documents' scores, in their order."""
    from sentence_transformers import CrossEncoder

    stub = gateway_pb2_grpc.GatewayStub(grpc.insecure_channel(rerank_gateway))
    spec = spec_to_pb("cross-encoder", {"model_name": cross_encoder})
    model = CrossEncoder(cross_encoder, device="cpu")

    def one(i: int) -> tuple[list[float], Any]:
        documents = DOCS[i % 5 :] + DOCS[: i % 5]
        query = ["cat", "dog", "fish"][i % 3]
        reply = stub.Rerank(
            embedder_pb2.RerankRequest(reranker=spec, query=query, documents=documents)
        )
        return list(reply.scores), model.predict([[query, d] for d in documents])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for got, expected in pool.map(one, range(24)):
            np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_a_model_path_outside_the_model_roots_is_refused(stack: Stack, cross_encoder):
    """The shared test embedder lists no --model-roots: a caller's path may not load."""
    stub = embedder_pb2_grpc.EmbedderStub(grpc.insecure_channel(stack.embedder))
    request = embedder_pb2.RerankRequest(
        reranker=spec_to_pb("cross-encoder", {"model_name": cross_encoder}),
        query="cat",
        documents=["a cat"],
    )
    with pytest.raises(grpc.RpcError) as refused:
        stub.Rerank(request)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as unknown:
        stub.Rerank(embedder_pb2.RerankRequest(reranker=spec_to_pb("no-such", {}), documents=["a"]))
    assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- Cohere, against the local double ---------------------------------------------------------


@pytest.mark.parametrize("query", ["vector", "hybrid"])
def test_cohere_matches_lancedb(table, lance_table, cohere_double, monkeypatch, query):
    import cohere
    import lancedb.rerankers as theirs

    monkeypatch.setenv("RERANK_TEST_COHERE_KEY", "test-key-1")
    run = cross_encoder_queries()[query]
    reranker = ours.CohereReranker(
        top_n=3, api_key="$env:RERANK_TEST_COHERE_KEY", base_url=cohere_double.base_url
    )
    before = len(cohere_double.requests)
    found = run(table, reranker).to_arrow()
    assert cohere_double.auth_headers[-1] == "Bearer test-key-1"
    assert len(cohere_double.requests) > before
    lance_reranker = theirs.CohereReranker(top_n=3, api_key="test-key-1")
    lance_reranker._client = cohere.Client("test-key-1", base_url=cohere_double.base_url)
    expected = run(lance_table, lance_reranker).to_arrow()
    same(found, expected)
    assert found.num_rows == 3
    texts = found["text"].to_pylist()
    assert found["_relevance_score"].to_pylist() == pytest.approx(
        [rerank_score("cat", t) for t in texts], abs=1e-6
    )


# -- a reranker of the user's own runs in the client ------------------------------------------


def custom_reranker(lib: Any) -> Any:
    class Shortest(lib.Reranker):
        """Prefers short texts; a user's own reranker, run where the query runs."""

        def rerank_hybrid(self, query: str, vector_results: Any, fts_results: Any) -> Any:
            return self.rerank_vector(query, self.merge_results(vector_results, fts_results))

        def rerank_vector(self, query: str, vector_results: Any) -> Any:
            import pyarrow as pa

            score = [-len(t) for t in vector_results["text"].to_pylist()]
            results = vector_results.append_column(
                "_relevance_score", pa.array(score, type=pa.float32())
            )
            return self._keep_relevance_score(results.sort_by([("_relevance_score", "descending")]))

    return Shortest()


@pytest.mark.parametrize("query_type", ["vector", "hybrid"])
def test_a_users_own_reranker_matches_lancedb(table, lance_table, query_type):
    import lancedb.rerankers as theirs

    def run(t: Any, lib: Any) -> Any:
        if query_type == "hybrid":
            query = hybrid(t, "cat").limit(4)
            return query.rerank(custom_reranker(lib)).to_arrow()
        query = t.search(QUERY_VECTOR, vector_column_name="point").limit(4)
        return query.rerank(custom_reranker(lib), query_string="cat").to_arrow()

    same(run(table, ours), run(lance_table, theirs))
