"""Issue 14, group 7: indexes (configs, listings, statistics, full-text options, drop, wait).

Each case runs on LanceDB itself and on our SDK (embedded and over gRPC) and compares."""

from __future__ import annotations

import warnings
from datetime import timedelta
from typing import Any

import lancedb.index as theirs_index
import numpy as np
import pytest

import embedsearch.index as ours_index
from embedsearch.contract.errors import (
    AlreadyExists,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
)

DIMS = 16
STATS_FIELDS = ("num_indexed_rows", "num_unindexed_rows", "index_type", "distance_type")
STATS_FIELDS += ("num_indices",)
TEXTS = [
    "The runners were running fast",
    "A runner runs every morning",
    "the cat sat on the mat",
    "Cats and dogs play together",
    "a café serves coffee",
    "the cafe opens early",
    "RUNNING is healthy",
    "nothing relevant here",
]


def rows(n: int = 300) -> list[dict[str, Any]]:
    rng = np.random.default_rng(7)
    vectors = rng.random((n, DIMS), dtype=np.float32)
    return [
        {
            "id": i,
            "cat": f"c{i % 3}",
            "tags": [f"t{i % 4}", f"t{i % 5}"],
            "text": TEXTS[i % len(TEXTS)],
            "body": "hello world" if i % 2 else "goodbye moon",
            "vector": vectors[i].tolist(),
        }
        for i in range(n)
    ]


def module(db: Any) -> Any:
    """The index-config module that goes with ``db``: lancedb's or ours."""
    return ours_index if type(db).__module__.startswith("embedsearch") else theirs_index


def listing(table: Any) -> list[tuple[str, str, list[str]]]:
    return sorted((i.name, i.index_type, list(i.columns)) for i in table.list_indices())


def stats(table: Any, name: str) -> dict[str, Any] | None:
    found = table.index_stats(name)
    return None if found is None else {f: getattr(found, f) for f in STATS_FIELDS}


@pytest.fixture(autouse=True)
def _quiet() -> Any:
    with warnings.catch_warnings():  # lancedb's deprecation warnings for the legacy forms
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def test_every_kind_of_index_is_listed_and_described_as_in_lancedb(fresh_db, lance_db):
    def build(db: Any) -> tuple[Any, ...]:
        index = module(db)
        table = db.create_table("t", data=rows())
        table.create_index("vector", config=index.IvfPq(num_partitions=2, num_sub_vectors=2))
        table.create_index("id", config=index.BTree())
        table.create_index("cat", config=index.Bitmap())
        table.create_index("tags", config=index.LabelList())
        table.create_index("text", config=index.FTS())
        names = [i.name for i in table.list_indices()]
        return listing(table), {n: stats(table, n) for n in names}, table.index_stats("nope")

    ours, theirs = build(fresh_db), build(lance_db)
    assert ours == theirs
    assert {t for _, t, _ in ours[0]} == {"IvfPq", "BTree", "Bitmap", "LabelList", "FTS"}
    assert ours[1]["vector_idx"]["distance_type"] == "l2"
    assert ours[2] is None


def test_vector_index_configs_match_lancedb(fresh_db, lance_db):
    def build(db: Any) -> list[Any]:
        index = module(db)
        table = db.create_table("t", data=rows())
        seen = []
        for config in (
            index.IvfFlat(num_partitions=2, distance_type="cosine"),
            index.IvfSq(num_partitions=2),
            index.HnswSq(num_partitions=2, m=8, ef_construction=50),
            index.HnswPq(num_partitions=2, num_sub_vectors=2, distance_type="dot"),
            index.HnswFlat(num_partitions=2),
        ):
            table.create_index("vector", config=config, name="v")
            seen.append((listing(table), stats(table, "v")))
            hits = table.search(np.full(DIMS, 0.5)).limit(3).to_list()
            seen.append(len(hits))
        return seen

    ours, theirs = build(fresh_db), build(lance_db)
    assert ours == theirs
    assert [s[0][0][1] for s in ours[::2]] == [
        "IvfFlat",
        "IvfSq",
        "IvfHnswSq",
        "IvfHnswPq",
        "IvfHnswFlat",
    ]


def test_lancedb_config_objects_are_accepted(fresh_db):
    table = fresh_db.create_table("t", data=rows())
    table.create_index("cat", config=theirs_index.Bitmap())
    table.create_index("text", config=theirs_index.FTS(stem=False))
    assert listing(table) == [("cat_idx", "Bitmap", ["cat"]), ("text_idx", "FTS", ["text"])]


def test_legacy_keyword_arguments_match_lancedb(fresh_db, lance_db):
    def build(db: Any) -> list[Any]:
        table = db.create_table("t", data=rows())
        table.create_index(
            metric="cosine",
            vector_column_name="vector",
            num_partitions=2,
            index_type="IVF_HNSW_SQ",
        )
        table.create_scalar_index("cat", index_type="BITMAP")
        table.create_scalar_index("tags", index_type="LABEL_LIST", name="labels")
        table.create_index("id")  # no config: a scalar column gets a BTree
        return [listing(table), stats(table, "vector_idx"), stats(table, "labels")]

    ours, theirs = build(fresh_db), build(lance_db)
    assert ours == theirs
    assert ours[1]["distance_type"] == "cosine"


# (options of create_fts_index, queries): each option changes what some query finds.
FTS_CASES = [
    ({}, ["run", "the", "cafe", "Cats"]),
    ({"stem": False}, ["run", "running", "cats"]),
    ({"remove_stop_words": False}, ["the", "a"]),
    ({"lower_case": False, "stem": False}, ["RUNNING", "running", "The"]),
    ({"ascii_folding": False}, ["cafe", "café"]),
    ({"custom_stop_words": ["runner"], "stem": False}, ["runner", "the"]),
    ({"base_tokenizer": "whitespace", "stem": False}, ["fast", "café"]),
    ({"tokenizer_name": "en_stem"}, ["the", "run"]),
    ({"with_position": True, "max_token_length": 4}, ["cat", "coffee"]),
]


def fts_hits(db: Any, options: dict[str, Any], queries: list[str]) -> list[list[int]]:
    table = db.create_table("t", data=rows(40), mode="overwrite")
    table.create_fts_index("text", **options)
    return [
        sorted(r["id"] for r in table.search(q, query_type="fts").limit(100).to_list())
        for q in queries
    ]


@pytest.mark.parametrize(("options", "queries"), FTS_CASES)
def test_full_text_tokenizer_options_find_what_lancedb_finds(fresh_db, lance_db, options, queries):
    ours = fts_hits(fresh_db, options, queries)
    assert ours == fts_hits(lance_db, options, queries)
    assert any(ours), "no query found anything: the case checks nothing"


def test_tokenizer_options_change_results(fresh_db):
    assert fts_hits(fresh_db, {}, ["running"]) != fts_hits(fresh_db, {"stem": False}, ["running"])
    assert fts_hits(fresh_db, {}, ["the"]) != fts_hits(
        fresh_db, {"remove_stop_words": False}, ["the"]
    )


def test_full_text_over_several_columns(fresh_db, lance_db):
    def build(db: Any) -> list[Any]:
        table = db.create_table("t", data=rows(40))
        with pytest.raises(ValueError):  # one index per column, as in LanceDB
            table.create_fts_index(["text", "body"])
        unchanged = listing(table)
        table.create_fts_index("text")
        table.create_fts_index("body")
        return [
            unchanged,
            listing(table),
            sorted(r["id"] for r in table.search("hello", query_type="fts").limit(100).to_list()),
            sorted(r["id"] for r in table.search("cat", query_type="fts").limit(100).to_list()),
        ]

    ours, theirs = build(fresh_db), build(lance_db)
    assert ours == theirs
    assert ours[0] == [] and ours[2] and ours[3]


def test_drop_index_matches_lancedb(fresh_db, lance_db):
    def build(db: Any) -> list[Any]:
        index = module(db)
        table = db.create_table("t", data=rows(40))
        table.create_index("id", config=index.BTree())
        table.create_index("text", config=index.FTS())
        before = listing(table)
        table.drop_index("id_idx")
        table.drop_index("text_idx")
        return [before, listing(table), table.index_stats("id_idx")]

    ours, theirs = build(fresh_db), build(lance_db)
    assert ours == theirs
    assert ours[0] and ours[1] == [] and ours[2] is None


def test_dropping_the_text_index_ends_full_text_search(fresh_db):
    table = fresh_db.create_table("t", data=rows(40))
    table.create_fts_index("text")
    assert table.search("cat", query_type="fts").limit(5).to_list()
    table.drop_index("text_idx")
    with pytest.raises(InvalidArgument):
        table.search("cat", query_type="fts").limit(5).to_list()


def test_wait_for_index_waits_on_an_asynchronous_build(fresh_db):
    table = fresh_db.create_table("t", data=rows())
    started = table.create_index(
        "vector", config=ours_index.IvfPq(num_partitions=2, num_sub_vectors=2), wait=False
    )
    assert started.name == "vector_idx" and started.status in ("building", "ready")
    table.wait_for_index(["vector_idx"], timeout=timedelta(seconds=120))
    (listed,) = table.list_indices()
    assert (listed.status, listed.num_indexed_rows, listed.num_unindexed_rows) == ("ready", 300, 0)
    assert table.index_stats("vector_idx").num_indexed_rows == 300


def test_wait_for_index_times_out_as_lancedb_does(fresh_db, lance_db):
    def outcomes(db: Any, expected: type[Exception]) -> list[bool]:
        table = db.create_table("t", data=rows(40))
        table.create_index("id", config=module(db).BTree())
        table.wait_for_index(["id_idx"], timeout=timedelta(seconds=30))
        found = []
        for names in (["nope"], ["id_idx"]):
            if names == ["id_idx"]:
                table.add(rows(40)[:3])  # unindexed rows: the index is not caught up
            with pytest.raises(expected) as caught:
                table.wait_for_index(names, timeout=timedelta(seconds=0.5))
            found.append("timed out" in str(caught.value).lower())
        return found

    assert outcomes(fresh_db, DeadlineExceeded) == outcomes(lance_db, RuntimeError)
    with pytest.raises(TimeoutError):
        fresh_db.open_table("t").wait_for_index("nope", timeout=timedelta(seconds=0.1))


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda t: t.create_index("vector", config=ours_index.Fm()), InvalidArgument),
        (lambda t: t.create_index("nocol", config=ours_index.BTree()), InvalidArgument),
        (lambda t: t.create_index("id", config=ours_index.IvfPq()), InvalidArgument),
        (lambda t: t.create_index("tags", config=ours_index.BTree()), InvalidArgument),
        (lambda t: t.create_index("id", config=ours_index.LabelList()), InvalidArgument),
        (lambda t: t.create_scalar_index("id", index_type="FOO"), InvalidArgument),
        (lambda t: t.create_fts_index("text", language="Klingon"), InvalidArgument),
        (lambda t: t.create_fts_index("text", base_tokenizer="nope"), InvalidArgument),
        (lambda t: t.create_fts_index("text", block_size=100), InvalidArgument),
        (lambda t: t.create_fts_index("id"), InvalidArgument),
        (
            lambda t: t.create_fts_index("text", ngram_min_length=5, ngram_max_length=2),
            InvalidArgument,
        ),
        (lambda t: t.create_fts_index("text", use_tantivy=True), InvalidArgument),
        (
            lambda t: t.create_index("vector", config=ours_index.IvfPq(accelerator="cuda")),
            InvalidArgument,
        ),
        (
            lambda t: t.create_index("vector", config=ours_index.IvfFlat(distance_type="hamming")),
            InvalidArgument,
        ),
        (
            lambda t: t.create_index("vector", config=ours_index.IvfPq(num_partitions=-1)),
            InvalidArgument,
        ),
        (lambda t: t.create_index("l2", index_type="IVF_NOPE"), InvalidArgument),
        (lambda t: t.create_fts_index("body"), AlreadyExists),
        (lambda t: t.drop_index("nope"), NotFound),
    ],
)
def test_bad_index_requests_are_refused_and_change_nothing(fresh_db, make, error):
    table = fresh_db.create_table("t", data=rows(40))
    table.create_fts_index("body")
    before, version = listing(table), table.version
    with pytest.raises(error):
        make(table)
    assert listing(table) == before
    assert fresh_db.open_table("t").version == version


def test_lancedb_refuses_the_same_requests(lance_db):
    """The requests above that LanceDB refuses too: ours are not stricter than needed."""
    table = lance_db.create_table("t", data=rows(40))
    table.create_fts_index("body")
    for make in (
        lambda: table.create_index("nocol", config=theirs_index.BTree()),
        lambda: table.create_index("id", config=theirs_index.IvfPq()),
        lambda: table.create_scalar_index("id", index_type="FOO"),
        lambda: table.create_fts_index("text", language="Klingon"),
        lambda: table.create_fts_index("body"),
        lambda: table.drop_index("nope"),
    ):
        with pytest.raises((ValueError, RuntimeError)):
            make()
