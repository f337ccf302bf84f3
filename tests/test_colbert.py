"""ColBERT: several vectors per row (LanceDB's MultiVector), late-interaction search in the store,
and the ``colbert`` provider on a tiny BERT built here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pytest
from conftest import Servers
from helpers import expect_code, tiny_bert

import embedsearch
from embedsearch.contract.convert import spec_to_pb
from embedsearch.errors import InvalidArgument
from embedsearch.v1 import embedder_pb2, embedder_pb2_grpc

WORDS = ["the", "cat", "dog", "sat", "on", "mat", "fish", "swims", "bird", "flies", "sky"]
DOCS = ["the cat sat on the mat", "the fish swims", "the bird flies in the sky", "dog"]
DIMS = 4


@pytest.fixture(scope="module")
def tiny_colbert(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 1-layer BERT with random (seeded) weights and a word-level vocabulary. A large
    initializer range makes token vectors differ by token, not only by position."""
    directory = tmp_path_factory.mktemp("models") / "tiny-colbert"
    return tiny_bert(
        directory, WORDS, hidden_size=16, max_position_embeddings=32, initializer_range=0.5
    )


@pytest.fixture(scope="module")
def colbert_stack(servers: Servers, tmp_path_factory: pytest.TempPathFactory, tiny_colbert: str):
    """An embedder whose --model-roots hold the tiny model, with a store and a gateway."""
    roots = str(Path(tiny_colbert).parent)
    return servers.with_model_roots(roots, tmp_path_factory.mktemp("colbert"))


def token_vectors(model_dir: str, text: str) -> np.ndarray:
    """What the model gives for every token of ``text``: its last hidden states."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = (
        AutoTokenizer.from_pretrained(model_dir),
        AutoModel.from_pretrained(model_dir),
    )
    encoded = tokenizer([text], return_tensors="pt")
    return model(**encoded).last_hidden_state[0].detach().numpy()


# -- the provider ----------------------------------------------------------------------------


def test_colbert_embeds_one_vector_per_token(colbert_stack, tiny_colbert):
    stub = embedder_pb2_grpc.EmbedderStub(grpc.insecure_channel(colbert_stack[0]))
    spec = spec_to_pb("colbert", {"name": tiny_colbert})
    resolved = stub.ResolveFunction(embedder_pb2.ResolveFunctionRequest(function=spec))
    assert (resolved.ndims, resolved.multi_vector) == (16, True)
    providers = {
        p.name: p for p in stub.ListProviders(embedder_pb2.ListProvidersRequest()).providers
    }
    assert providers["colbert"].multi_vector and not providers["huggingface"].multi_vector
    assert {"name", "device", "trust_remote_code"} <= set(providers["colbert"].arguments)

    reply = stub.Embed(embedder_pb2.EmbedRequest(function=spec, texts=DOCS))
    expected = [token_vectors(tiny_colbert, text) for text in DOCS]
    assert list(reply.vectors_per_input) == [len(e) for e in expected]  # [CLS] ... [SEP]
    assert reply.count == sum(reply.vectors_per_input)
    packed = np.frombuffer(reply.vectors, "<f4").reshape(reply.count, reply.ndims)
    # Batched with padding, the vectors are each text's own: padding is left out.
    np.testing.assert_allclose(packed, np.concatenate(expected), atol=1e-4)


def test_colbert_model_path_outside_the_model_roots_is_refused(embedder_stub, tiny_colbert):
    """The shared stack's embedder has no --model-roots: the guards apply to colbert too."""
    spec = spec_to_pb("colbert", {"name": tiny_colbert})
    expect_code(
        grpc.StatusCode.PERMISSION_DENIED,
        lambda: embedder_stub.Embed(embedder_pb2.EmbedRequest(function=spec, texts=["x"])),
        "--model-roots",
    )


# -- a MultiVector table, against LanceDB -----------------------------------------------------


def multivector_rows() -> list[dict[str, Any]]:
    rng = np.random.default_rng(7)
    return [
        {"id": i, "mv": rng.normal(size=(1 + i % 4, DIMS)).astype(np.float32).tolist()}
        for i in range(24)
    ]


def test_pydantic_multivector_matches_lancedb():
    import lancedb.pydantic

    from embedsearch.pydantic import LanceModel, MultiVector

    class Ours(LanceModel):
        id: int
        mv: MultiVector(DIMS)  # type: ignore[valid-type]

    class Theirs(lancedb.pydantic.LanceModel):
        id: int
        mv: lancedb.pydantic.MultiVector(DIMS)  # type: ignore[valid-type]

    assert Ours.to_arrow_schema().field("mv").type == Theirs.to_arrow_schema().field("mv").type
    assert Ours(id=1, mv=[[0.0] * DIMS, [1.0] * DIMS]).mv == [[0.0] * DIMS, [1.0] * DIMS]
    with pytest.raises(ValueError):
        Ours(id=1, mv=[[0.0] * (DIMS + 1)])


@pytest.mark.parametrize("metric", [None, "cosine", "dot"])
def test_multivector_search_matches_lancedb(fresh_db, lance_db, metric):
    from embedsearch.pydantic import LanceModel, MultiVector

    class Doc(LanceModel):
        id: int
        mv: MultiVector(DIMS)  # type: ignore[valid-type]

    rows = multivector_rows()
    ours = fresh_db.create_table("mv", schema=Doc)
    ours.add(rows)
    schema = pa.schema([("id", pa.int64()), ("mv", pa.list_(pa.list_(pa.float32(), DIMS)))])
    theirs = lance_db.create_table("mv", rows, schema=schema)
    query = np.random.default_rng(1).normal(size=(3, DIMS)).astype(np.float32)

    def found(table: Any) -> tuple[list[int], list[float]]:
        search = table.search(query.tolist(), vector_column_name="mv")
        if metric:
            search = search.distance_type(metric)
        result = search.limit(5).to_arrow()
        return result["id"].to_pylist(), result["_distance"].to_pylist()

    (our_ids, our_distances), (their_ids, their_distances) = found(ours), found(theirs)
    assert our_ids == their_ids
    np.testing.assert_allclose(our_distances, their_distances, rtol=1e-5, atol=1e-5)
    # The row a query copies is nearest (cosine: distance 0 under MaxSim).
    copied = np.asarray(rows[5]["mv"])
    best = ours.search(copied, vector_column_name="mv").distance_type("cosine").limit(1)
    assert best.to_arrow()["id"].to_pylist() == [5]


def test_multivector_queries_are_checked(fresh_db):
    schema = pa.schema(
        [
            ("id", pa.int64()),
            ("mv", pa.list_(pa.list_(pa.float32(), DIMS))),
            ("v", pa.list_(pa.float32(), DIMS)),
        ]
    )
    rows = [{**row, "v": row["mv"][0]} for row in multivector_rows()]
    table = fresh_db.create_table("checked", rows, schema=schema)
    with pytest.raises(InvalidArgument, match="MultiVector column"):
        table.search(np.ones((2, DIMS)), vector_column_name="v").to_list()
    with pytest.raises(InvalidArgument, match="dimensions"):
        table.search(np.ones((2, DIMS + 1)), vector_column_name="mv").to_list()
    # One vector against a MultiVector column is a query of one vector.
    one = table.search(np.asarray(rows[3]["mv"][0]), vector_column_name="mv").limit(1)
    assert one.distance_type("cosine").to_arrow()["id"].to_pylist() == [3]


def test_multivector_index_is_cosine(fresh_db):
    rng = np.random.default_rng(3)
    rows = [{"id": i, "mv": rng.normal(size=(3, 8)).tolist()} for i in range(300)]
    schema = pa.schema([("id", pa.int64()), ("mv", pa.list_(pa.list_(pa.float32(), 8)))])
    table = fresh_db.create_table("indexed", rows, schema=schema)
    with pytest.raises(InvalidArgument, match="cosine"):
        table.create_index(metric="l2", vector_column_name="mv", num_partitions=2)
    table.create_index(
        metric="cosine", vector_column_name="mv", num_partitions=2, num_sub_vectors=2
    )
    query = np.asarray(rows[42]["mv"])
    found = table.search(query, vector_column_name="mv").distance_type("cosine").limit(3)
    assert 42 in found.to_arrow()["id"].to_pylist()


# -- a table bound to colbert, end to end ------------------------------------------------------


@pytest.fixture(params=["embedded", "grpc"])
def colbert_db(request: pytest.FixtureRequest, colbert_stack, tmp_path: Path) -> Any:
    if request.param == "embedded":
        return embedsearch.connect(tmp_path / "embedded")
    return embedsearch.connect(f"grpc://{colbert_stack[1]}")


def test_a_colbert_table_embeds_rows_and_queries(colbert_db, tiny_colbert, table_name):
    from embedsearch.embeddings import get_registry
    from embedsearch.pydantic import LanceModel, MultiVector

    func = get_registry().get("colbert").create(name=tiny_colbert)

    class Doc(LanceModel):
        id: int
        text: str = func.SourceField()
        vectors: MultiVector(func.ndims()) = func.VectorField()  # type: ignore[valid-type]

    table = colbert_db.create_table(table_name, schema=Doc)
    table.add([{"id": i, "text": text} for i, text in enumerate(DOCS)])
    stored = table.to_arrow().sort_by("id")
    for text, vectors in zip(DOCS, stored["vectors"].to_pylist(), strict=True):
        np.testing.assert_allclose(vectors, token_vectors(tiny_colbert, text), atol=1e-4)

    for i, text in enumerate(DOCS):
        best = table.search(text).distance_type("cosine").limit(2).to_arrow()
        assert best["id"][0].as_py() == i
        assert best["_distance"][0].as_py() == pytest.approx(0.0, abs=1e-4)
    near = table.search("the cat sat").distance_type("cosine").limit(1).to_arrow()
    assert near["id"].to_pylist() == [0]


def test_colbert_into_a_plain_vector_column_is_lancedbs_mean(colbert_db, tiny_colbert, table_name):
    """A LanceDB table binds colbert to a Vector column: LanceDB's colbert stores the mean of
    the last hidden states there, and so do we."""
    from lancedb.embeddings import get_registry as lancedb_registry

    from embedsearch.embeddings import get_registry
    from embedsearch.pydantic import LanceModel, Vector

    func = get_registry().get("colbert").create(name=tiny_colbert)

    class Doc(LanceModel):
        id: int
        text: str = func.SourceField()
        vector: Vector(func.ndims()) = func.VectorField()  # type: ignore[valid-type]

    table = colbert_db.create_table(table_name, schema=Doc)
    table.add([{"id": i, "text": text} for i, text in enumerate(DOCS)])
    theirs = lancedb_registry().get("colbert").create(name=tiny_colbert)
    expected = np.asarray(theirs.compute_source_embeddings(DOCS))
    stored = np.asarray(table.to_arrow().sort_by("id")["vector"].to_pylist())
    np.testing.assert_allclose(stored, expected, atol=1e-4)
    found = table.search(DOCS[2]).limit(1).to_arrow()
    assert found["id"].to_pylist() == [2]
