"""Issue 14, groups 2 and 3: reading a table, and queries without a vector, as in LanceDB.

Each case runs on LanceDB itself and on our SDK (embedded and over gRPC) and compares."""

from __future__ import annotations

import pyarrow as pa
import pytest

from embedsearch import errors

ROWS = [{"vector": [float(i), 1.0], "n": i, "s": f"row {i}"} for i in range(20)]


def table_in(db):
    return db.create_table("t", data=ROWS)


READS = {
    "to_arrow": lambda t: t.to_arrow().to_pylist(),
    "to_pandas": lambda t: t.to_pandas().to_dict("records"),
    "head": lambda t: t.head(3).to_pylist(),
    "len": lambda t: len(t),
    "search()": lambda t: t.search().to_list(),
    "search(None).where": lambda t: t.search(None).where("n > 5").to_list(),
    "where.limit": lambda t: t.search().where("n > 5").limit(3).to_list(),
    "limit(None)": lambda t: len(t.search().limit(None).to_list()),
    "limit.offset": lambda t: t.search().limit(2).offset(3).to_list(),
    "select": lambda t: t.search().select(["n"]).limit(2).to_list(),
    "with_row_id": lambda t: t.search().with_row_id(True).limit(1).to_arrow().schema.names,
    "nothing matches": lambda t: t.search().where("n > 100").to_arrow().schema.names,
    "to_batches rows": lambda t: sum(b.num_rows for b in t.search().to_batches()),
}


def plain(value):
    """numpy arrays (pandas' vector cells) as lists, so results compare."""
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value.tolist() if hasattr(value, "tolist") else value


@pytest.mark.parametrize("read", sorted(READS))
def test_reads_match_lancedb(fresh_db, lance_db, read):
    assert plain(READS[read](table_in(fresh_db))) == plain(READS[read](table_in(lance_db)))


def test_an_old_version_reads_as_it_was(fresh_db, lance_db):
    def old_rows(db) -> list[int]:
        table = table_in(db)
        first = table.version
        table.delete("n < 10")
        table.checkout(first)
        return [row["n"] for row in table.to_arrow().to_pylist()]

    assert old_rows(fresh_db) == old_rows(lance_db) == list(range(20))


def test_a_big_table_streams_in_several_batches(fresh_db):
    """20,000 rows come as several record batches, in order, none of them the whole table."""
    rows = pa.table({"id": pa.array(range(20_000)), "s": pa.array(["x" * 100] * 20_000)})
    table = fresh_db.create_table("big", data=rows)
    sizes, ids = [], []
    for batch in table.to_batches():
        sizes.append(batch.num_rows)
        ids.extend(batch.column("id").to_pylist())
    assert ids == list(range(20_000))
    assert len(sizes) > 1 and max(sizes) < 20_000


def test_read_errors_name_what_to_fix(fresh_db):
    table = table_in(fresh_db)
    with pytest.raises(errors.InvalidArgument) as unknown:
        table.search().select(["nope"]).to_list()
    assert unknown.value.reason == "INVALID_ARGUMENT" and "nope" in str(unknown.value)
    with pytest.raises(errors.InvalidArgument) as bad_filter:
        table.search().where("n >").to_list()
    assert bad_filter.value.reason == "INVALID_ARGUMENT"
    with pytest.raises(errors.InvalidArgument, match="limit"):
        table.search([1.0, 1.0]).limit(None)
    fresh_db.drop_table("t")
    with pytest.raises(errors.TableNotFound) as gone:
        table.to_arrow()
    assert gone.value.reason == "TABLE_NOT_FOUND" and gone.value.table == "t"
