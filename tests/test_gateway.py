"""The gateway's schema mapping over real channels: bindings, bad vectors, JSON, versions."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pyarrow as pa
import pytest
from helpers import expect_code

import embedsearch
from embedsearch import errors
from embedsearch.contract.convert import spec_to_pb
from embedsearch.contract.wire import schema_to_ipc
from embedsearch.embeddings import get_registry
from embedsearch.pydantic import LanceModel, Vector
from embedsearch.v1 import common_pb2, gateway_pb2


@pytest.fixture
def db(stack):
    return embedsearch.connect(f"grpc://{stack.gateway}")


def two_vector_schema():
    plain = get_registry().get("sentence-transformers").create()
    small = get_registry().get("sentence-transformers").create(batch_size=4)

    class Doc(LanceModel):
        text: str = plain.SourceField()
        title: str = small.SourceField()
        body_vector: Vector(384) = plain.VectorField()
        title_vector: Vector(384) = small.VectorField()

    return Doc


def test_several_vector_columns(db, table_name):
    table = db.create_table(table_name, schema=two_vector_schema())
    table.add(
        [
            {"text": "cats purr and sleep", "title": "Finance report"},
            {"text": "stock markets fell", "title": "Pets at home"},
        ]
    )
    assert set(table.embedding_functions) == {"body_vector", "title_vector"}
    with pytest.raises(embedsearch.InvalidArgument, match=r"body_vector.*title_vector") as which:
        table.search("kitten").to_list()
    assert which.value.reason == "INVALID_SCHEMA"
    by_body = table.search("kitten", vector_column_name="body_vector").limit(1).to_list()
    by_title = table.search("kitten", vector_column_name="title_vector").limit(1).to_list()
    assert by_body[0]["text"] == "cats purr and sleep"
    assert by_title[0]["title"] == "Pets at home"


def test_one_source_feeding_two_functions(db, table_name):
    first = get_registry().get("sentence-transformers").create()
    second = get_registry().get("sentence-transformers").create(normalize=False)

    class Doc(LanceModel):
        text: str = first.SourceField()
        v1: Vector(384) = first.VectorField()

    schema = Doc.to_arrow_schema()
    bindings = [
        common_pb2.EmbeddingBinding(
            function=spec_to_pb(f.provider, f.args), source_column="text", vector_column=v
        )
        for f, v in ((first, "v1"), (second, "v2"))
    ]
    db.call(
        "CreateTable",
        gateway_pb2.CreateTableRequest(
            name=table_name, arrow_schema=schema_to_ipc(schema), bindings=bindings
        ),
    )
    table = db.open_table(table_name)
    table.add([{"text": "one source, two vectors"}])
    row = table.search("source", vector_column_name="v2").limit(1).to_list()[0]
    assert len(row["v1"]) == len(row["v2"]) == 384


def test_given_vectors_are_kept_and_missing_ones_embedded(db, table_name):
    func = get_registry().get("sentence-transformers").create()

    class Doc(LanceModel):
        text: str = func.SourceField()
        vector: Vector(384) = func.VectorField()

    table = db.create_table(table_name, schema=Doc)
    mine = np.full(384, 0.05, dtype=np.float32)
    table.add(
        pa.table(
            {
                "text": ["keep my vector", "embed me"],
                "vector": pa.array([mine.tolist(), None], pa.list_(pa.float32(), 384)),
            }
        )
    )
    rows = {r["text"]: r for r in table.search(mine).limit(2).to_list()}
    np.testing.assert_allclose(rows["keep my vector"]["vector"], mine)
    assert rows["keep my vector"]["_distance"] == pytest.approx(0.0, abs=1e-6)
    assert abs(np.linalg.norm(rows["embed me"]["vector"]) - 1) < 1e-4


@pytest.mark.parametrize("policy", ["drop", "fill", "null"])
def test_on_bad_vectors(db, table_name, policy):
    func = get_registry().get("sentence-transformers").create()

    class Doc(LanceModel):
        text: str | None = func.SourceField()
        vector: Vector(384) = func.VectorField()

    table = db.create_table(table_name, schema=Doc)
    table.add(
        [{"text": "good"}, {"text": None}, {"text": "  "}], on_bad_vectors=policy, fill_value=0.5
    )
    if policy == "drop":
        assert table.count_rows() == 1
        return
    assert table.count_rows() == 3
    if policy == "fill":
        rows = table.search(np.full(384, 0.5, dtype=np.float32)).limit(3).to_list()
        assert sum(r["_distance"] < 1e-6 for r in rows) == 2
    else:
        assert table.count_rows("vector IS NULL") == 2


def test_json_rows_and_column_specs_for_clients_without_arrow(stack, gateway_stub, table_name):
    binding = common_pb2.EmbeddingBinding(
        function=spec_to_pb("sentence-transformers", {}),
        source_column="text",
        vector_column="vector",
    )
    info = gateway_stub.CreateTable(
        gateway_pb2.CreateTableRequest(
            name=table_name,
            columns=[
                gateway_pb2.ColumnSpec(name="id", type="int64"),
                gateway_pb2.ColumnSpec(name="text", type="string"),
            ],
            bindings=[binding],
        )
    )
    assert [(c.name, c.type) for c in info.columns] == [
        ("id", "int64"),
        ("text", "string"),
        ("vector", "vector(384)"),
    ]
    rows = json.dumps([{"id": 1, "text": "hello json"}, {"id": 2, "text": "goodbye arrow"}])
    result = gateway_stub.Add(
        gateway_pb2.AddRequest(table=table_name, rows=common_pb2.RowData(json=rows))
    )
    assert result.rows_inserted == 2
    reply = gateway_stub.Search(
        gateway_pb2.SearchRequest(
            table=table_name,
            text="hi json",
            k=1,
            columns=["id", "text"],
            result_format=common_pb2.ROW_FORMAT_JSON,
        )
    )
    found = json.loads(reply.rows.json)
    assert found[0]["id"] == 1 and found[0]["text"] == "hello json" and "_distance" in found[0]
    bad = json.dumps([{"id": "one", "text": "x"}])
    expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: gateway_stub.Add(
            gateway_pb2.AddRequest(table=table_name, rows=common_pb2.RowData(json=bad))
        ),
        "JSON column 'id'",
        reason="INVALID_SCHEMA",
    )


def test_checkout_and_count_by_version(db, table_name):
    func = get_registry().get("sentence-transformers").create()

    class Doc(LanceModel):
        text: str = func.SourceField()
        vector: Vector(384) = func.VectorField()

    table = db.create_table(table_name, schema=Doc)
    table.add([{"text": "first"}])
    version = table.version
    table.add([{"text": "second"}])
    table.checkout(version)
    assert table.count_rows() == 1
    assert [r["text"] for r in table.search("second").limit(5).to_list()] == ["first"]
    with pytest.raises(errors.FailedPrecondition, match="checkout_latest") as read_only:
        table.add([{"text": "third"}])
    assert read_only.value.reason == "FAILED_PRECONDITION"
    table.checkout_latest()
    assert table.count_rows() == 2


def test_merge_insert_builder(db, table_name):
    func = get_registry().get("sentence-transformers").create()

    class Doc(LanceModel):
        id: int
        text: str = func.SourceField()
        vector: Vector(384) = func.VectorField()

    table = db.create_table(table_name, schema=Doc)
    table.add([{"id": 1, "text": "old one"}, {"id": 2, "text": "two"}])
    result = (
        table.merge_insert("id")
        .when_matched_update_all()
        .when_not_matched_insert_all()
        .execute([{"id": 1, "text": "new one"}, {"id": 3, "text": "three"}])
    )
    assert (result.num_updated_rows, result.num_inserted_rows) == (1, 1)
    assert table.count_rows() == 3
    best = table.search("new one").limit(1).to_list()[0]
    assert (best["id"], best["text"]) == (1, "new one")


def text_table(db, name):
    func = get_registry().get("sentence-transformers").create()

    class Doc(LanceModel):
        id: int
        text: str | None = func.SourceField()
        vector: Vector(384) = func.VectorField()

    return db.create_table(name, schema=Doc)


def batches(count, size, bad_in=None):
    for b in range(count):
        rows = [{"id": b * size + i, "text": f"chunk {b} row {i}"} for i in range(size)]
        if b == bad_in:
            rows[3]["text"] = None
        yield rows


def test_streamed_add_commits_once(db, table_name):
    table = text_table(db, table_name)
    before = table.version
    result = table.add(batches(3, 40))
    assert result.version == table.version == before + 1
    assert table.count_rows() == 120
    assert table.search("chunk 2 row 7").limit(1).to_list()[0]["id"] == 87


def test_streamed_add_failing_part_way_commits_nothing(db, table_name):
    table = text_table(db, table_name)
    before = table.version
    with pytest.raises(embedsearch.InvalidArgument, match="row 3") as bad:
        table.add(batches(4, 30, bad_in=2))
    assert bad.value.reason == "BAD_VECTORS"  # a blank source, refused by on_bad_vectors
    assert (table.version, table.count_rows()) == (before, 0)


def test_streamed_add_per_chunk_keeps_earlier_chunks(db, table_name):
    table = text_table(db, table_name)
    before = table.version
    with pytest.raises(embedsearch.InvalidArgument):
        table.add(batches(4, 30, bad_in=2), commit_per_chunk=True)
    assert table.count_rows() == 60
    assert table.version == before + 2  # the handle reads its descriptor after a failed write


def test_streamed_add_reports_a_client_side_failure(db, table_name):
    table = text_table(db, table_name)

    def broken():
        yield [{"id": 1, "text": "fine"}]
        raise ValueError("the source of rows broke")

    with pytest.raises(ValueError, match="source of rows broke"):
        table.add(broken())
    assert table.count_rows() == 0


def test_merge_insert_embeds_only_rows_it_writes(db, table_name):
    """A blank source fails embedding (on_bad_vectors=error), so a blank row that is not
    written proves it was not embedded."""
    table = text_table(db, table_name)
    table.add([{"id": 1, "text": "one"}, {"id": 2, "text": "two"}])

    inserted = (
        table.merge_insert("id")
        .when_not_matched_insert_all()
        .execute([{"id": 1, "text": " "}, {"id": 3, "text": "three"}])
    )
    assert inserted.num_inserted_rows == 1 and table.count_rows() == 3

    updated = (
        table.merge_insert("id")
        .when_matched_update_all()
        .execute([{"id": 2, "text": "two, updated"}, {"id": 9, "text": ""}])
    )
    assert (updated.num_updated_rows, updated.num_inserted_rows) == (1, 0)
    assert table.search("two updated").limit(1).to_list()[0]["text"] == "two, updated"

    with pytest.raises(embedsearch.InvalidArgument, match="row 0") as bad:
        table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(
            [{"id": 4, "text": ""}]
        )
    assert bad.value.reason == "BAD_VECTORS"  # a blank source, refused by on_bad_vectors
    assert table.count_rows() == 3


def test_hybrid_search_with_a_full_text_index(db, table_name):
    table = text_table(db, table_name)
    table.add(
        [
            {"id": 1, "text": "Cats are small furry pets that purr."},
            {"id": 2, "text": "Dogs are loyal pets that bark."},
            {"id": 3, "text": "Error code QX-7731 means the disk is full."},
            {"id": 4, "text": "The stock market rose sharply today."},
        ]
    )
    info = table.create_fts_index("text")
    assert info.status == "ready"

    auto = table.search("QX-7731 kitten").limit(3).to_list()  # LanceDB 0.40: a vector search
    assert "_distance" in auto[0] and "_relevance_score" not in auto[0]
    hybrid = table.search("QX-7731 kitten", query_type="hybrid").limit(3).to_list()
    assert "_relevance_score" in hybrid[0]
    assert {r["id"] for r in hybrid[:2]} == {1, 3}  # one from each side of the fusion
    scores = [r["_relevance_score"] for r in hybrid]
    assert scores == sorted(scores, reverse=True)

    fts = table.search("QX-7731", query_type="fts").limit(2).to_list()
    assert fts[0]["id"] == 3 and "_score" in fts[0]
    vector = table.search("kitten", query_type="vector").limit(1).to_list()
    assert vector[0]["id"] == 1 and "_distance" in vector[0]
