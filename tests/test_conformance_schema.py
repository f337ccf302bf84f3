"""Issue 14, group 6 (schema): add_columns, alter_columns and drop_columns as in LanceDB, with
embedding bindings kept consistent, and bad input refused with nothing changed.

Each comparison runs on LanceDB itself and on our SDK (embedded and over gRPC)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from embedsearch import EmbedsearchError
from embedsearch.contract.errors import FailedPrecondition, InvalidArgument
from embedsearch.embeddings import TextEmbeddingFunction, get_registry, register
from embedsearch.pydantic import LanceModel, Vector

ROWS = [{"id": i, "text": f"row {i}", "vector": [float(i), 1.0]} for i in range(5)]


@register("schema-test-embedder")
class LengthEmbedder(TextEmbeddingFunction):
    """A client-side function: a text's length and its count of spaces."""

    def generate_embeddings(self, texts: list[str]) -> list[list[float]]:
        return [[float(len(t)), float(t.count(" "))] for t in texts]

    def ndims(self) -> int:
        return 2


def evolve(db) -> tuple[list[object], pa.Schema, list[dict]]:
    table = db.create_table("t", data=ROWS)
    results = [
        table.add_columns({"doubled": "id * 2", "label": "concat(text, '!')"}),
        table.add_columns(pa.field("note", pa.string())),
        table.add_columns(pa.schema([pa.field("score", pa.float32()), ("rank", pa.int32())])),
        table.alter_columns(
            {"path": "doubled", "rename": "twice"}, {"path": "rank", "data_type": pa.int64()}
        ),
        table.drop_columns(["score"]),
    ]
    rows = sorted(table.to_arrow().to_pylist(), key=lambda row: row["id"])
    return results, table.schema, rows


def test_column_changes_match_lancedb(fresh_db, lance_db):
    ours, schema, rows = evolve(fresh_db)
    theirs, lance_schema, lance_rows = evolve(lance_db)
    assert [type(r).__name__ for r in ours] == [type(r).__name__ for r in theirs]
    assert [r.version for r in ours] == [r.version for r in theirs]
    assert schema.remove_metadata() == lance_schema.remove_metadata()
    assert rows == lance_rows
    assert rows[1]["twice"] == 2 and rows[1]["label"] == "row 1!" and rows[1]["note"] is None


def test_a_renamed_column_is_read_and_written_under_its_new_name(fresh_db):
    table = fresh_db.create_table("t", data=ROWS)
    table.alter_columns({"path": "text", "rename": "body"}, {"path": "id", "nullable": True})
    table.add([{"id": 9, "body": "new", "vector": [9.0, 1.0]}])
    assert table.schema.names == ["id", "body", "vector"]
    assert table.search().where("id = 9").to_list()[0]["body"] == "new"
    assert fresh_db.open_table("t").schema.names == ["id", "body", "vector"]


BAD_CHANGES = {
    "expression on an unknown column": lambda t: t.add_columns({"z": "nosuch + 1"}),
    "malformed expression": lambda t: t.add_columns({"z": "id +"}),
    "new column that exists": lambda t: t.add_columns({"id": "1"}),
    "null column that exists": lambda t: t.add_columns(pa.field("text", pa.string())),
    "drop an unknown column": lambda t: t.drop_columns(["nope"]),
    "alter an unknown column": lambda t: t.alter_columns({"path": "nope", "rename": "x"}),
    "cast text to int": lambda t: t.alter_columns({"path": "text", "data_type": pa.int64()}),
}


@pytest.mark.parametrize("case", sorted(BAD_CHANGES))
def test_bad_column_changes_are_refused_like_lancedb_and_change_nothing(fresh_db, lance_db, case):
    change = BAD_CHANGES[case]
    with pytest.raises(ValueError):  # LanceDB refuses it too
        change(lance_db.create_table("t", data=ROWS))
    table = fresh_db.create_table("t", data=ROWS)
    before = (table.version, table.schema, table.to_arrow())
    with pytest.raises(InvalidArgument) as raised:
        change(table)
    assert raised.value.reason in ("INVALID_ARGUMENT", "INVALID_SCHEMA")
    fresh = fresh_db.open_table("t")
    assert (fresh.version, fresh.schema, fresh.to_arrow()) == before


OUR_BAD_INPUT = {
    "rename onto another column": lambda t: t.alter_columns({"path": "id", "rename": "text"}),
    "unknown alteration key": lambda t: t.alter_columns({"path": "id", "name": "x"}),
    "not a transform": lambda t: t.add_columns(42),
    "no columns to drop": lambda t: t.drop_columns([]),
    "drop every column": lambda t: t.drop_columns(["id", "text", "vector"]),
    "non-nullable null column": lambda t: t.add_columns(pa.field("z", pa.int64(), False)),
}


@pytest.mark.parametrize("case", sorted(OUR_BAD_INPUT))
def test_more_bad_input_is_invalid_argument_and_changes_nothing(fresh_db, case):
    table = fresh_db.create_table("t", data=ROWS)
    version, schema = table.version, table.schema
    with pytest.raises(InvalidArgument):
        OUR_BAD_INPUT[case](table)
    fresh = fresh_db.open_table("t")
    assert (fresh.version, fresh.schema) == (version, schema)


def bound_table(db):
    func = get_registry().get("schema-test-embedder").create()

    class Doc(LanceModel):
        id: int
        text: str = func.SourceField()
        vector: Vector(2) = func.VectorField()

    table = db.create_table("docs", schema=Doc)
    table.add([{"id": 1, "text": "a b"}])
    return table


def bindings_in(schema: pa.Schema) -> list[tuple[str, str]]:
    raw = (schema.metadata or {}).get(b"embedding_functions")
    return [(b["source_column"], b["vector_column"]) for b in json.loads(raw)] if raw else []


def test_renaming_bound_columns_renames_them_in_the_binding(fresh_db):
    table = bound_table(fresh_db)
    table.alter_columns({"path": "text", "rename": "body"}, {"path": "vector", "rename": "emb"})
    assert bindings_in(table.schema) == [("body", "emb")]
    assert [(b.source_column, b.vector_column) for b in table.embedding_functions.values()] == [
        ("body", "emb")
    ]
    table.add([{"id": 2, "body": "c d e"}])  # embedded from the renamed source
    rows = {r["id"]: r["emb"] for r in table.to_arrow().to_pylist()}
    assert rows[2] == [5.0, 2.0]
    assert bindings_in(fresh_db.open_table("docs").schema) == [("body", "emb")]


def test_dropping_a_bound_vector_column_drops_its_binding(fresh_db):
    table = bound_table(fresh_db)
    table.drop_columns(["vector"])
    assert bindings_in(table.schema) == []
    assert table.embedding_functions == {}
    table.add([{"id": 2, "text": "no vector now"}])
    assert table.count_rows() == 2


def test_dropping_a_bound_source_column_alone_is_refused(fresh_db):
    table = bound_table(fresh_db)
    version = table.version
    with pytest.raises(FailedPrecondition):
        table.drop_columns(["text"])
    with pytest.raises(FailedPrecondition):
        table.alter_columns({"path": "vector", "data_type": pa.list_(pa.float32(), 2)})
    assert fresh_db.open_table("docs").version == version
    table.drop_columns(["text", "vector"])  # both together: the binding goes too
    assert table.schema.names == ["id"] and bindings_in(table.schema) == []


def test_schema_changes_on_a_checked_out_version_are_refused(fresh_db):
    table = fresh_db.create_table("t", data=ROWS)
    table.add(ROWS)
    table.checkout(1)
    with pytest.raises(EmbedsearchError):
        table.add_columns({"z": "id"})
    table.checkout_latest()
    assert "z" not in fresh_db.open_table("t").schema.names


def test_missing_table(fresh_db):
    table = fresh_db.create_table("t", data=ROWS)
    fresh_db.drop_table("t")
    with pytest.raises(EmbedsearchError) as raised:
        table.drop_columns(["text"])
    assert raised.value.reason == "TABLE_NOT_FOUND"
