"""Parity with the anchor: LanceDB with its own sentence-transformers registry, same model."""

from __future__ import annotations

import lancedb
import numpy as np
from lancedb.embeddings import get_registry as lancedb_registry
from lancedb.pydantic import LanceModel as LanceDBModel
from lancedb.pydantic import Vector as LanceDBVector

import embedsearch
from embedsearch.embeddings import get_registry
from embedsearch.pydantic import LanceModel, Vector

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A fast auburn fox leaps above a sleepy hound.",
    "Vector databases index embeddings for similarity search.",
    "gRPC uses HTTP/2 and protocol buffers.",
    "Paris is the capital of France.",
    "The Eiffel Tower is in Paris.",
    "Bananas are rich in potassium.",
    "Kubernetes schedules containers onto nodes.",
    "Prometheus scrapes metrics over HTTP.",
    "Lance is a columnar format for machine learning data.",
]
QUERIES = ["fox and dog", "where is the Eiffel tower", "how are metrics collected", "fruit"]


def test_top_k_and_distances_match_lancedb(stack, table_name, tmp_path, model_path):
    db = embedsearch.connect(f"grpc://{stack.gateway}")
    func = get_registry().get("sentence-transformers").create()

    class Ours(LanceModel):
        text: str = func.SourceField()
        vector: Vector(func.ndims()) = func.VectorField()

    ours = db.create_table(table_name, schema=Ours)
    ours.add([{"text": t} for t in CORPUS])

    lfunc = lancedb_registry().get("sentence-transformers").create(name=model_path, device="cpu")

    class Theirs(LanceDBModel):
        text: str = lfunc.SourceField()
        vector: LanceDBVector(lfunc.ndims()) = lfunc.VectorField()

    theirs = lancedb.connect(tmp_path / "anchor").create_table("anchor", schema=Theirs)
    theirs.add([{"text": t} for t in CORPUS])

    for query in QUERIES:
        mine = ours.search(query).limit(5).to_list()
        anchor = theirs.search(query).limit(5).to_list()
        assert [r["text"] for r in mine] == [r["text"] for r in anchor], query
        np.testing.assert_allclose(
            [r["_distance"] for r in mine], [r["_distance"] for r in anchor], atol=1e-4
        )


def test_lancedb_opens_our_table_and_searches_by_text(stack, table_name):
    db = embedsearch.connect(f"grpc://{stack.gateway}")
    func = get_registry().get("sentence-transformers").create()

    class Doc(LanceModel):
        text: str = func.SourceField()
        vector: Vector(func.ndims()) = func.VectorField()

    ours = db.create_table(table_name, schema=Doc)
    ours.add([{"text": t} for t in CORPUS])

    table = lancedb.connect(stack.data_root).open_table(table_name)
    # LanceDB rebuilt the embedding function from the metadata we wrote.
    assert table.embedding_functions["vector"].source_column == "text"
    theirs = table.search("Eiffel tower location").limit(3).to_list()
    mine = ours.search("Eiffel tower location").limit(3).to_list()

    assert [r["text"] for r in theirs] == [r["text"] for r in mine]
    assert theirs[0]["text"] in {"The Eiffel Tower is in Paris.", "Paris is the capital of France."}
    np.testing.assert_allclose(
        [r["_distance"] for r in theirs], [r["_distance"] for r in mine], atol=1e-4
    )


def test_our_gateway_opens_a_lancedb_table_adds_and_searches(stack, table_name, model_path):
    lfunc = lancedb_registry().get("sentence-transformers").create(name=model_path, device="cpu")

    class Theirs(LanceDBModel):
        text: str = lfunc.SourceField()
        vector: LanceDBVector(lfunc.ndims()) = lfunc.VectorField()

    theirs = lancedb.connect(stack.data_root).create_table(table_name, schema=Theirs)
    theirs.add([{"text": t} for t in CORPUS[:5]])

    ours = embedsearch.connect(f"grpc://{stack.gateway}").open_table(table_name)
    ours.add([{"text": t} for t in CORPUS[5:]])  # embedded by our embedder, from their metadata

    assert ours.count_rows() == len(CORPUS)
    mine = ours.search("Kubernetes containers").limit(3).to_list()
    assert mine[0]["text"] == "Kubernetes schedules containers onto nodes."
    theirs.checkout_latest()
    anchor = theirs.search("Kubernetes containers").limit(3).to_list()
    assert [r["text"] for r in anchor] == [r["text"] for r in mine]
    np.testing.assert_allclose(
        [r["_distance"] for r in anchor], [r["_distance"] for r in mine], atol=1e-4
    )
