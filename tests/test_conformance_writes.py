"""Issue 14, groups 5 and 9 (part): what writes return, and version listings, as in LanceDB.

Each case runs on LanceDB itself and on our SDK (embedded and over gRPC) and compares."""

from __future__ import annotations

import datetime
import math

import numpy as np
import pytest

from embedsearch import errors

ROWS = [{"vector": [float(i), 1.0], "n": i} for i in range(5)]


def results(db) -> list[object]:
    table = db.create_table("t", data=ROWS)
    return [
        table.add([{"vector": [9.0, 1.0], "n": 9}]),
        table.update(where="n = 1", values={"n": 10}),
        table.delete("n = 2"),
        table.merge_insert("n")
        .when_matched_update_all()
        .when_not_matched_insert_all()
        .execute([{"vector": [1.0, 1.0], "n": 3}, {"vector": [1.0, 1.0], "n": 30}]),
        table.restore(2),
    ]


def test_write_results_have_lancedb_fields(fresh_db, lance_db):
    ours, theirs = results(fresh_db), results(lance_db)
    assert [type(r).__name__ for r in ours] == [type(r).__name__ for r in theirs]
    for mine, reference in zip(ours, theirs, strict=True):
        if reference is not None:
            fields = [f for f in dir(reference) if not f.startswith("_")]
            assert {f: getattr(mine, f) for f in fields} == {
                f: getattr(reference, f) for f in fields
            }


def test_version_listings_look_like_lancedb(fresh_db, lance_db):
    def listing(db) -> list[tuple[int, type, list[str]]]:
        table = db.create_table("t", data=ROWS)
        table.add(ROWS)
        return [(v["version"], type(v["timestamp"]), sorted(v)) for v in table.list_versions()]

    ours, theirs = listing(fresh_db), listing(lance_db)
    assert ours == theirs
    assert ours[0][1] is datetime.datetime


BAD_BATCH = [
    {"vector": [math.nan, 1.0], "n": 10},
    {"vector": [1.0, 2.0, 3.0], "n": 11},
    {"vector": [5.0, 5.0], "n": 12},
]


@pytest.mark.parametrize("policy", ["drop", "fill", "null"])
def test_bad_vectors_on_add_follow_the_policy_as_lancedb(fresh_db, lance_db, policy):
    def added(db) -> list[dict]:
        table = db.create_table("t", data=ROWS)
        table.add(BAD_BATCH, on_bad_vectors=policy, fill_value=7.0)
        return table.search().where("n >= 10").to_arrow().to_pylist()

    assert added(fresh_db) == added(lance_db)


def test_bad_vectors_on_add_are_refused_by_default(fresh_db):
    table = fresh_db.create_table("t", data=ROWS)
    with pytest.raises(errors.InvalidArgument, match="on_bad_vectors"):
        table.add(BAD_BATCH)
    assert table.count_rows() == len(ROWS) and table.version == 1


def test_add_overwrite_replaces_the_rows_and_keeps_history(fresh_db, lance_db):
    def overwritten(db) -> tuple[list[dict], int, list[str]]:
        table = db.create_table("t", data=ROWS)
        table.add([{"vector": [0.5, 0.5], "n": 100}], mode="overwrite")
        table.add([{"vector": [0.5, 0.5], "n": 101}])
        table.checkout(1)
        return table.to_arrow().to_pylist(), len(table.to_arrow()), table.schema.names

    ours, theirs = overwritten(fresh_db), overwritten(lance_db)
    assert ours == theirs
    latest = fresh_db.open_table("t")
    assert latest.to_arrow()["n"].to_pylist() == [100, 101]


def test_add_overwrite_streams_in_chunks(fresh_db):
    table = fresh_db.create_table("t", data=ROWS)
    many = [{"vector": [float(i), 0.0], "n": i} for i in range(5000)]
    table.add(iter([many[:2500], many[2500:]]), mode="overwrite")
    assert table.count_rows() == 5000 and table.count_rows("n >= 5000") == 0
    with pytest.raises(errors.InvalidArgument, match="mode"):
        table.add(ROWS, mode="replace")


def test_update_sets_vectors_and_lists_as_lancedb(fresh_db, lance_db):
    def updated(db) -> list[dict]:
        table = db.create_table("t", data=ROWS)
        table.update(where="n = 1", values={"vector": [9.0, 9.0]})
        table.update(where="n = 2", values={"vector": np.array([8.0, 8.0])})
        return table.search().where("n < 3").to_arrow().to_pylist()

    assert updated(fresh_db) == updated(lance_db)


def test_a_model_without_vectors_is_embedded(fresh_db):
    from embedsearch.embeddings import get_registry
    from embedsearch.pydantic import LanceModel, Vector

    func = get_registry().get("sentence-transformers").create()

    class Doc(LanceModel):
        text: str = func.SourceField()
        vector: Vector(func.ndims()) = func.VectorField(default=None)

    table = fresh_db.create_table("docs", schema=Doc)
    table.add([Doc(text="hello"), Doc(text="world", vector=None)])
    vectors = table.to_arrow()["vector"]
    assert vectors.null_count == 0 and len(vectors) == 2
