"""Issue 14, groups 3 and 8 (rest): computed columns, distance ranges, exhaustive search, query
plans, reads by offset or row id, and searches for more rows than one reply carries.

Each case runs on LanceDB itself and on our SDK (embedded and over gRPC) and compares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from embedsearch import errors
from embedsearch.table import MAX_RANKED_K

ROWS = [{"vector": [float(i), 1.0], "n": i, "s": f"r{i}"} for i in range(20)]
QUERY = [1.0, 1.0]


def table(db: Any) -> Any:
    return db.create_table("t", data=ROWS)


QUERIES: dict[str, Callable[[Any], Any]] = {
    "select computed columns": lambda t: t.search(QUERY).select({"double": "n * 2", "s": "s"}),
    "select computed, no query": lambda t: t.search().select({"double": "n * 2"}).limit(3),
    "select computed, with row id": lambda t: (
        t.search(QUERY).select({"d": "n + 1"}).with_row_id(True).limit(3)
    ),
    "distance range": lambda t: t.search(QUERY).distance_range(0.5, 10.0),
    "distance upper bound": lambda t: t.search(QUERY).distance_range(upper_bound=5.0),
    "distance lower bound": lambda t: t.search(QUERY).distance_range(lower_bound=4.0).limit(3),
    "bypass the index": lambda t: t.search(QUERY).bypass_vector_index().limit(4),
    "k above the table": lambda t: t.search(QUERY).limit(500),
    "take offsets": lambda t: t.take_offsets([7, 3, 1]),
    "take offsets past the end": lambda t: t.take_offsets([19, 100]),
    "take no offsets": lambda t: t.take_offsets([]),
    "take row ids, selected": lambda t: t.take_row_ids([4, 2]).select(["n"]).with_row_id(),
    "take, computed": lambda t: t.take_offsets([2, 5]).select({"twice": "n * 2"}),
}


@pytest.mark.parametrize("query", QUERIES)
def test_queries_match_lancedb(fresh_db, lance_db, query):
    ours = QUERIES[query](table(fresh_db)).to_arrow()
    theirs = QUERIES[query](table(lance_db)).to_arrow()
    assert ours.schema.names == theirs.schema.names
    assert ours.to_pylist() == theirs.to_pylist()


def test_explain_plan_describes_the_search_it_would_run(fresh_db, lance_db):
    ours, theirs = table(fresh_db), table(lance_db)
    read_plan = ours.search().where("n > 3").explain_plan()
    assert "LanceRead" in read_plan and "n > Int64(3)" in read_plan
    assert "LanceRead" in theirs.search().where("n > 3").explain_plan()
    # No vector index: the store answers exactly from its in-memory matrix, and says so.
    search_plan = ours.search(QUERY).where("n > 3").limit(4).explain_plan(verbose=True)
    assert "k=4" in search_plan and "n > 3" in search_plan and "recall 1.0" in search_plan
    # Explaining runs nothing and writes nothing.
    assert ours.version == 1 and len(ours.list_versions()) == 1


def test_an_index_search_is_explained_by_lance(fresh_db):
    rows = [{"vector": [float(i % 17), float(i % 5)], "n": i} for i in range(512)]
    t = fresh_db.create_table("idx", data=rows)
    t.create_index(num_partitions=2, num_sub_vectors=1, index_type="IVF_PQ")
    plan = t.search(QUERY).nprobes(2).explain_plan()
    assert "ANN" in plan or "IVF" in plan.upper(), plan
    assert "<data root>" in plan or "uri=" not in plan  # the store's paths stay private


def test_a_search_past_one_reply_streams_every_row(fresh_db):
    rows = [{"vector": [float(i), 0.0], "n": i} for i in range(MAX_RANKED_K + 500)]
    t = fresh_db.create_table("big", data=rows)
    found = t.search([0.0, 0.0]).limit(MAX_RANKED_K + 100).to_arrow()
    assert found.num_rows == MAX_RANKED_K + 100
    assert found["n"].to_pylist() == list(range(MAX_RANKED_K + 100))  # nearest first
    batches = list(t.search([0.0, 0.0]).limit(MAX_RANKED_K + 1000).to_batches(4096))
    assert sum(b.num_rows for b in batches) == MAX_RANKED_K + 500  # all the table has
    assert max(b.num_rows for b in batches) <= 4096
    nothing = t.search([0.0, 0.0]).where("n < 0").limit(MAX_RANKED_K + 1).to_arrow()
    assert nothing.num_rows == 0 and "_distance" in nothing.schema.names


@pytest.mark.parametrize(
    "bad",
    [
        lambda t: t.search(QUERY).select({"x": "no_such_column + 1"}).to_arrow(),
        lambda t: t.search(QUERY).select({"x": "n +"}).to_arrow(),
        lambda t: t.search().select({"": "n"}).to_arrow(),
        lambda t: t.search(QUERY).select(["nope"]).to_arrow(),
        lambda t: t.take_offsets([-1]).to_arrow(),
        lambda t: t.take_offsets(["a"]).to_arrow(),
        lambda t: t.take_row_ids([10**12]).to_arrow(),
        lambda t: t.search(QUERY).where("n >").explain_plan(),
    ],
)
def test_bad_queries_name_what_to_fix_and_change_nothing(fresh_db, bad):
    t = table(fresh_db)
    with pytest.raises(errors.InvalidArgument):
        bad(t)
    assert t.count_rows() == 20 and len(t.list_versions()) == 1
