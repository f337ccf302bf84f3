"""Issue 14, groups 5 and 9 (part): what writes return, and version listings, as in LanceDB.

Each case runs on LanceDB itself and on our SDK (embedded and over gRPC) and compares."""

from __future__ import annotations

import datetime

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
