"""Issue 14, group 1: vector columns inferred from data without a schema, as LanceDB does.

Each case runs on LanceDB itself and on our SDK (embedded and over gRPC) and compares."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from embedsearch import errors

QUICKSTART = [
    {"vector": [3.1, 4.1], "item": "foo", "price": 10.0},
    {"vector": [5.9, 26.5], "item": "bar", "price": 20.0},
]
BAD = [
    {"id": 0, "vector": [1.0, 2.0]},
    {"id": 1, "vector": [1.0]},
    {"id": 2, "vector": [math.nan, 1.0]},
    {"id": 3, "vector": None},
    {"id": 4, "vector": [3.0, 4.0]},
]


def quickstart(db) -> tuple[str, list[str]]:
    """LanceDB's own quickstart: create from rows, add, search by a vector."""
    table = db.create_table("t", data=QUICKSTART)
    table.add([{"vector": [1.3, 1.4], "item": "fizz", "price": 100.0}])
    found = table.search([100, 100]).limit(2).to_list()
    return str(table.schema.field("vector").type), [row["item"] for row in found]


def test_the_lancedb_quickstart_finds_its_vector_column(fresh_db, lance_db):
    theirs = quickstart(lance_db)
    assert theirs[0] == "fixed_size_list<item: float>[2]"
    assert quickstart(fresh_db) == theirs


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(lambda: [{"vector": np.array([1.0, 2.0, 3.0]), "n": 1}], id="numpy"),
        pytest.param(lambda: pd.DataFrame({"vector": [[1.0, 2.0, 3.0]], "n": [1]}), id="pandas"),
        pytest.param(
            lambda: pa.table({"vector": pa.array([[1.0, 2.0, 3.0]]), "n": [1]}), id="arrow"
        ),
        pytest.param(lambda: [{"text_embedding": [1, 2, 3], "n": 1}], id="bytes"),
        pytest.param(lambda: [{"Embedding": [1, -2, 3], "n": 1}], id="signed"),
        pytest.param(lambda: [{"values": [1.0, 2.0], "n": 1}], id="not-a-vector-name"),
    ],
)
def test_every_input_kind_types_vectors_as_lancedb_does(fresh_db, lance_db, data):
    ours = fresh_db.create_table("t", data=data()).schema
    theirs = lance_db.create_table("t", data=data()).schema
    assert [(f.name, str(f.type)) for f in ours] == [(f.name, str(f.type)) for f in theirs]


@pytest.mark.parametrize("policy", ["drop", "fill", "null"])
def test_bad_vectors_follow_on_bad_vectors(fresh_db, lance_db, policy):
    def written(db) -> list[tuple[int, list[float] | None]]:
        table = db.create_table("t", data=BAD, on_bad_vectors=policy, fill_value=7.0)
        return sorted((row["id"], row["vector"]) for row in table.to_arrow().to_pylist())

    assert written(fresh_db) == written(lance_db)


def test_a_bad_vector_is_refused_as_lancedb_refuses_it(fresh_db, lance_db):
    with pytest.raises(ValueError) as theirs:
        lance_db.create_table("t", data=BAD)
    with pytest.raises(errors.InvalidArgument) as ours:
        fresh_db.create_table("t", data=BAD)
    assert str(ours.value).endswith(str(theirs.value))
    assert ours.value.reason == "BAD_VECTORS"
    assert "t" not in fresh_db
