"""The seed's first example, end to end through the real services."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import embedsearch
from embedsearch.embeddings import get_registry
from embedsearch.pydantic import LanceModel, Vector

TEXTS = ["This is a test.", "Another example."]


def make_schema() -> type[LanceModel]:
    func = get_registry().get("sentence-transformers").create()

    class MySchema(LanceModel):
        text: str = func.SourceField()
        vector: Vector(func.ndims()) = func.VectorField()

    return MySchema


def test_quickstart_over_grpc(stack, table_name):
    db = embedsearch.connect(f"grpc://{stack.gateway}")
    schema = make_schema()
    table = db.create_table(table_name, schema=schema)
    table.add([{"text": t} for t in TEXTS])

    results = table.search("test example").limit(5).to_pandas()

    assert list(results.columns) == ["text", "vector", "_distance"]
    assert sorted(results["text"]) == sorted(TEXTS)
    assert results["_distance"].is_monotonic_increasing
    assert len(results["vector"][0]) == 384
    assert table_name in db
    assert table.count_rows() == 2


def test_query_embedding_is_the_query_vector(stack, table_name):
    """Searching by text equals searching by the vector generate_embeddings gives (seed's cloud
    example), so the gateway really embeds the query with the bound function."""
    db = embedsearch.connect(f"grpc://{stack.gateway}")
    func = get_registry().get("sentence-transformers").create()
    table = db.create_table(table_name, schema=make_schema())
    table.add([{"text": t} for t in [*TEXTS, "Something unrelated about cooking pasta."]])

    by_text = table.search("test example").limit(3).to_list()
    query_vector = func.generate_embeddings(["test example"])[0]
    by_vector = table.search(query_vector).limit(3).to_list()

    assert [r["text"] for r in by_text] == [r["text"] for r in by_vector]
    np.testing.assert_allclose(
        [r["_distance"] for r in by_text], [r["_distance"] for r in by_vector], atol=1e-5
    )


@pytest.mark.slow
def test_quickstart_script_in_process(tmp_path: Path):
    """examples/quickstart.py with a local path runs the whole stack inside one process."""
    source = Path(__file__).parent.parent / "examples" / "quickstart.py"
    script = source.read_text()
    assert 'embedsearch.connect("grpc://127.0.0.1:50050")' in script
    local = tmp_path / "quickstart_local.py"
    local.write_text(script.replace("grpc://127.0.0.1:50050", "./mydb"))

    out = subprocess.run(
        [sys.executable, str(local)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )

    assert out.returncode == 0, out.stderr[-3000:]
    assert "This is a test." in out.stdout and "Another example." in out.stdout
    assert "_distance" in out.stdout
    assert (tmp_path / "mydb" / "mytable.lance").is_dir()
