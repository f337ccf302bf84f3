"""Every example of the seed page, through grpc:// and through an in-process ./dir."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from functools import cached_property

import numpy as np
import pytest

import embedsearch
from embedsearch.embeddings import TextEmbeddingFunction, get_registry, register
from embedsearch.pydantic import LanceModel, Vector


class MyEmbeddingModel:
    """The seed's stand-in model: here a deterministic bag of hashed words."""

    def __init__(self, name: str) -> None:
        self.name = name

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 32), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().strip(".").split():
                out[row, hashlib.sha256(word.encode()).digest()[0] % 32] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


@register("my-embedder")
class MyTextEmbedder(TextEmbeddingFunction):
    model_name: str = "my-model"

    def generate_embeddings(self, texts: list[str]) -> list[list[float]]:
        # Your embedding logic here
        return self._model.encode(texts).tolist()

    def ndims(self) -> int:
        # Return the dimensionality of the embeddings
        return len(self.generate_embeddings(["test"])[0])

    @cached_property
    def _model(self):
        # Initialize your model once
        return MyEmbeddingModel(self.model_name)


@pytest.fixture(params=["grpc", "local"])
def db(request, stack, tmp_path):
    if request.param == "grpc":
        return embedsearch.connect(f"grpc://{stack.gateway}")
    return embedsearch.connect(str(tmp_path / "mydb"))


def test_registry_quickstart(db, table_name):
    func = get_registry().get("sentence-transformers").create()

    class MySchema(LanceModel):
        text: str = func.SourceField()
        vector: Vector(func.ndims()) = func.VectorField()

    table = db.create_table(table_name, schema=MySchema)
    table.add([{"text": "This is a test."}, {"text": "Another example."}])
    results = table.search("test example").limit(5).to_pandas()

    assert list(results.columns) == ["text", "vector", "_distance"]
    assert set(results["text"]) == {"This is a test.", "Another example."}
    assert results["_distance"].is_monotonic_increasing


def test_cloud_example_manual_query_vector(db, table_name):
    func = get_registry().get("sentence-transformers").create()

    class MySchema(LanceModel):
        text: str = func.SourceField()
        vector: Vector(func.ndims()) = func.VectorField()

    table = db.create_table(table_name, schema=MySchema)
    table.add([{"text": "This is a test."}, {"text": "Another example."}])
    query_vector = func.generate_embeddings(["test example"])[0]
    results = table.search(query_vector).limit(5).to_pandas()

    assert len(query_vector) == 384
    by_text = table.search("test example").limit(5).to_pandas()
    assert list(results["text"]) == list(by_text["text"])
    np.testing.assert_allclose(results["_distance"], by_text["_distance"], atol=1e-5)


def test_custom_registered_embedder_runs_on_the_client(db, table_name):
    func = get_registry().get("my-embedder").create()

    class Words(LanceModel):
        text: str = func.SourceField()
        vector: Vector(func.ndims()) = func.VectorField()

    table = db.create_table(table_name, schema=Words)
    table.add([{"text": "red apples"}, {"text": "green pears"}, {"text": "blue skies"}])

    best = table.search("apples").limit(1).to_list()[0]
    assert best["text"] == "red apples"
    np.testing.assert_allclose(best["vector"], MyEmbeddingModel("x").encode(["red apples"])[0])
    conf = table.embedding_functions["vector"]
    assert isinstance(conf.function, MyTextEmbedder) and conf.source_column == "text"


def test_client_side_table_without_the_function_fails_clearly(stack, table_name):
    """Another process that never registered my-embedder gets a clear error, not FTS."""
    db = embedsearch.connect(f"grpc://{stack.gateway}")
    func = get_registry().get("my-embedder").create()

    class Words(LanceModel):
        text: str = func.SourceField()
        vector: Vector(func.ndims()) = func.VectorField()

    table = db.create_table(table_name, schema=Words)
    table.add([{"text": "red apples"}])
    table.create_fts_index("text")  # a text query must still not turn into full-text search
    script = (
        "import embedsearch, sys\n"
        f"t = embedsearch.connect('grpc://{stack.gateway}').open_table('{table_name}')\n"
        "for call in (lambda: t.search('apples').to_list(), lambda: t.add([{'text': 'x'}])):\n"
        "    try:\n"
        "        call()\n"
        "    except embedsearch.EmbedsearchError as exc:\n"
        "        print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2, out.stderr[-2000:]
    for line in lines:
        assert line.startswith("FailedPrecondition"), line
        assert "my-embedder" in line and "@register" in line
