"""Issue 14, group 6 (maintenance): optimize, compact_files, cleanup_old_versions, tags, stats
and uri as in LanceDB, and bad input refused with nothing changed.

Each comparison runs on LanceDB itself and on our SDK (embedded and over gRPC)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from embedsearch import EmbedsearchError
from embedsearch.contract.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)

ROWS = [{"id": i, "vector": [float(i), 1.0]} for i in range(5)]
NOW = datetime.timedelta(0)


def fragmented(db):
    """A table of four small fragments, one row of them deleted: version 5."""
    table = db.create_table("t", data=ROWS)
    for start in (10, 20, 30):
        table.add([{"id": start + i, "vector": [1.0, 2.0]} for i in range(3)])
    table.delete("id = 0")
    return table


def test_stats_match_lancedb(fresh_db, lance_db):
    ours, theirs = fragmented(fresh_db).stats(), fragmented(lance_db).stats()
    assert set(ours) == set(theirs)
    assert ours["total_bytes"] > 0
    assert {k: v for k, v in ours.items() if k != "total_bytes"} == {
        k: v for k, v in theirs.items() if k != "total_bytes"
    }
    empty = fresh_db.create_table("e", schema=fresh_db.open_table("t").schema)
    assert empty.stats() == lance_db.create_table("e", schema=empty.schema).stats()


def test_compact_files_matches_lancedb(fresh_db, lance_db):
    def compact(db) -> tuple[dict[str, int], int, int]:
        table = fragmented(db)
        metrics = table.compact_files(target_rows_per_fragment=1000)
        fields = ("fragments_removed", "fragments_added", "files_removed", "files_added")
        stats = table.stats()
        return {f: getattr(metrics, f) for f in fields}, table.count_rows(), stats["num_rows"]

    assert compact(fresh_db) == compact(lance_db)


def test_optimize_and_cleanup_match_lancedb(fresh_db, lance_db):
    def run(db) -> tuple[object, int, int, int]:
        table = fragmented(db)
        returned = table.optimize()
        fragments = table.stats()["fragment_stats"]["num_fragments"]
        cleaned = table.cleanup_old_versions(NOW, delete_unverified=True)
        assert cleaned.bytes_removed > 0
        return returned, fragments, cleaned.old_versions, len(table.list_versions())

    assert run(fresh_db) == run(lance_db)
    table = fresh_db.open_table("t")
    assert table.count_rows() == 13
    assert table.cleanup_old_versions(NOW, delete_unverified=True).old_versions == 0


def test_optimize_cleans_up_old_versions(fresh_db):
    table = fragmented(fresh_db)
    table.optimize(cleanup_older_than=NOW, delete_unverified=True)
    assert [v["version"] for v in table.list_versions()] == [table.version]
    assert table.count_rows() == 13


def test_tags_match_lancedb(fresh_db, lance_db):
    def tagging(db) -> list[object]:
        table = db.create_table("t", data=ROWS)
        table.add(ROWS)
        table.tags.create("first", 1)
        table.tags.create("second", 2)
        listed = table.tags.list()
        seen = [sorted(listed), {t: sorted(ref) for t, ref in listed.items()}]
        seen += [listed["first"]["version"], table.tags.get_version("second")]
        assert all(ref["manifest_size"] > 0 for ref in listed.values())
        table.tags.update("first", 2)
        table.tags.delete("second")
        seen.append({t: ref["version"] for t, ref in table.tags.list().items()})
        table.checkout("first")
        seen += [table.version, table.count_rows()]
        table.checkout_latest()
        return seen

    assert tagging(fresh_db) == tagging(lance_db)


BAD_TAGS = {
    "create an existing tag": (lambda t: t.tags.create("v1", 1), AlreadyExists),
    "tag a missing version": (lambda t: t.tags.create("v9", 99), NotFound),
    "delete a missing tag": (lambda t: t.tags.delete("nope"), NotFound),
    "update a missing tag": (lambda t: t.tags.update("nope", 1), NotFound),
    "move a tag to a missing version": (lambda t: t.tags.update("v1", 99), NotFound),
    "get a missing tag": (lambda t: t.tags.get_version("nope"), NotFound),
    "check out a missing tag": (lambda t: t.checkout("nope"), NotFound),
    "a name with a space": (lambda t: t.tags.create("bad name", 1), InvalidArgument),
}


@pytest.mark.parametrize("case", sorted(BAD_TAGS))
def test_bad_tags_are_refused_like_lancedb_and_change_nothing(fresh_db, lance_db, case):
    action, error = BAD_TAGS[case]
    reference = lance_db.create_table("t", data=ROWS)
    reference.tags.create("v1", 1)
    with pytest.raises((RuntimeError, ValueError, OSError)):  # LanceDB refuses it too
        action(reference)
    table = fresh_db.create_table("t", data=ROWS)
    table.tags.create("v1", 1)
    with pytest.raises(error):
        action(table)
    fresh = fresh_db.open_table("t")
    assert fresh.tags.list() == table.tags.list()
    assert {t: r["version"] for t, r in fresh.tags.list().items()} == {"v1": 1}
    assert fresh.version == 1


def test_a_tagged_old_version_refuses_cleanup_like_lancedb(fresh_db, lance_db):
    def refused(db) -> list[int]:
        table = db.create_table("t", data=ROWS)
        table.add(ROWS)
        table.add(ROWS)
        table.tags.create("keep", 1)
        for cleanup in (
            lambda: table.cleanup_old_versions(NOW, delete_unverified=True),
            lambda: table.optimize(cleanup_older_than=NOW, delete_unverified=True),
        ):
            with pytest.raises((FailedPrecondition, RuntimeError, OSError)):
                cleanup()
        return [v["version"] for v in table.list_versions()]

    assert refused(fresh_db)[:3] == refused(lance_db)[:3] == [1, 2, 3]
    table = fresh_db.open_table("t")
    table.tags.delete("keep")
    assert table.cleanup_old_versions(NOW, delete_unverified=True).old_versions >= 2


BAD_MAINTENANCE = {
    "negative age": lambda t: t.cleanup_old_versions(datetime.timedelta(seconds=-1)),
    "age not a timedelta": lambda t: t.optimize(cleanup_older_than=5),
    "unknown compaction option": lambda t: t.compact_files(target_rows=5),
    "positional compaction option": lambda t: t.compact_files(5),
    "zero target rows": lambda t: t.compact_files(target_rows_per_fragment=0),
}


@pytest.mark.parametrize("case", sorted(BAD_MAINTENANCE))
def test_bad_maintenance_input_is_invalid_argument_and_changes_nothing(fresh_db, case):
    table = fragmented(fresh_db)
    before = (table.version, table.stats())
    with pytest.raises(InvalidArgument):
        BAD_MAINTENANCE[case](table)
    fresh = fresh_db.open_table("t")
    assert (fresh.version, fresh.stats()) == before


def test_maintenance_of_a_missing_table(fresh_db):
    table = fresh_db.create_table("t", data=ROWS)
    fresh_db.drop_table("t")
    for action in (table.stats, table.optimize, table.tags.list, table.compact_files):
        with pytest.raises(EmbedsearchError) as raised:
            action()
        assert raised.value.reason == "TABLE_NOT_FOUND"


def test_uri_names_the_table_data(fresh_db, lance_db):
    ours = fresh_db.create_table("t", data=ROWS).uri
    theirs = lance_db.create_table("t", data=ROWS).uri
    assert Path(ours).name == Path(theirs).name == "t.lance"
    assert Path(ours).is_dir()
    assert fresh_db.open_table("t").uri == ours
