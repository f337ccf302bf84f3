"""Issue 14, group 4: connections as LanceDB users use them.

Each case runs on LanceDB itself and on our SDK (embedded and over gRPC) and compares."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

import embedsearch
from embedsearch import errors

ROWS = [{"vector": [1.0, 2.0], "n": 1}]


def fill(db, names: list[str]) -> None:
    for name in names:
        db.create_table(name, data=ROWS)


def pages(db, limit: int) -> list[list[str]]:
    """list_tables() page by page, following page_token."""
    found, token = [], None
    while True:
        page = db.list_tables(page_token=token, limit=limit)
        found.append(list(page.tables))
        token = page.page_token
        if not token:
            return found


def test_list_tables_pages_like_lancedb(fresh_db, lance_db):
    names = [f"t{i}" for i in range(5)]
    for db in (fresh_db, lance_db):
        fill(db, reversed(names))
    assert list(fresh_db.list_tables().tables) == list(lance_db.list_tables().tables) == names
    assert fresh_db.list_tables().page_token is lance_db.list_tables().page_token is None
    ours = [name for page in pages(fresh_db, 2) for name in page]
    theirs = [name for page in pages(lance_db, 2) for name in page]
    assert ours == theirs == names


def test_table_names_keeps_lancedb_defaults(fresh_db, lance_db):
    names = [f"t{i:02d}" for i in range(12)]
    for db in (fresh_db, lance_db):
        fill(db, names)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = [fresh_db.table_names(), fresh_db.table_names("t05", limit=3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # LanceDB's own, as ours above
        theirs = [lance_db.table_names(), lance_db.table_names("t05", limit=3)]
    assert ours == theirs
    assert len(ours[0]) == 10  # LanceDB's default page
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)


def test_membership_length_and_drop_all(fresh_db, lance_db):
    for db in (fresh_db, lance_db):
        fill(db, ["a", "b"])
    assert ("a" in fresh_db, "z" in fresh_db, len(fresh_db)) == (
        "a" in lance_db,
        "z" in lance_db,
        len(lance_db),
    )
    for db in (fresh_db, lance_db):
        db.drop_all_tables()
    assert len(fresh_db) == len(lance_db) == 0


def test_open_table_at_a_version_reads_that_version(fresh_db, lance_db):
    def versions(db) -> tuple[int, int, int]:
        table = db.create_table("t", data=ROWS)
        first = table.version
        table.add(ROWS)
        old = db.open_table("t", version=first)
        return old.count_rows(), db.open_table("t").count_rows(), old.version - first

    assert versions(fresh_db) == versions(lance_db) == (1, 2, 0)


def test_an_old_version_is_read_only(fresh_db):
    table = fresh_db.create_table("t", data=ROWS)
    first = table.version
    table.add(ROWS)
    old = fresh_db.open_table("t", version=first)
    with pytest.raises(errors.FailedPrecondition) as refused:
        old.add(ROWS)
    assert refused.value.reason == "FAILED_PRECONDITION"
    assert fresh_db.open_table("t").count_rows() == 2


def test_create_modes_as_lancedb(fresh_db, lance_db):
    def modes(db) -> tuple[int, int]:
        db.create_table("t", data=ROWS)
        kept = db.create_table("t", data=ROWS + ROWS, exist_ok=True).count_rows()
        replaced = db.create_table("t", data=ROWS + ROWS, mode="overwrite").count_rows()
        return kept, replaced

    assert modes(fresh_db) == modes(lance_db) == (1, 2)
    with pytest.raises(errors.TableAlreadyExists) as exists:
        fresh_db.create_table("t", data=ROWS)
    assert exists.value.reason == "TABLE_ALREADY_EXISTS" and exists.value.table == "t"


def test_namespaces_other_than_the_root_are_refused(fresh_db):
    with pytest.raises(errors.InvalidArgument, match="namespace"):
        fresh_db.list_tables(namespace_path=["team"])
    assert list(fresh_db.list_tables(namespace_path=[]).tables) == []


def test_connect_takes_a_path_and_memory(tmp_path):
    """connect(pathlib.Path) and connect("memory://"), each in a fresh process."""
    code = (
        "import pathlib, sys, embedsearch\n"
        "db = embedsearch.connect(pathlib.Path(sys.argv[1]))\n"
        "db.create_table('t', data=[{'vector': [1.0, 2.0]}])\n"
        "mem = embedsearch.connect('memory://')\n"
        "mem.create_table('m', data=[{'vector': [1.0, 2.0]}])\n"
        "print(sorted(db.list_tables().tables), sorted(mem.list_tables().tables))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "db")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "['t'] ['m']"
    assert (tmp_path / "db" / "t.lance").is_dir()


def test_an_unknown_scheme_names_the_ones_it_takes():
    with pytest.raises(errors.InvalidArgument, match="grpc://") as refused:
        embedsearch.connect("s3x://bucket/db")
    assert refused.value.reason == "INVALID_ARGUMENT"


def test_rename_table_moves_rows_versions_and_functions(fresh_db):
    from embedsearch.embeddings import get_registry
    from embedsearch.pydantic import LanceModel, Vector

    func = get_registry().get("sentence-transformers").create()

    class Doc(LanceModel):
        text: str = func.SourceField()
        vector: Vector(func.ndims()) = func.VectorField()

    old = fresh_db.create_table("old", schema=Doc)
    old.add([{"text": "a cat"}, {"text": "a car"}])
    fresh_db.rename_table("old", "new")
    assert list(fresh_db.list_tables().tables) == ["new"]
    moved = fresh_db.open_table("new")
    assert moved.count_rows() == 2 and len(moved.list_versions()) == 2
    assert moved.search("kitten").limit(1).to_list()[0]["text"] == "a cat"
    with pytest.raises(errors.TableNotFound):
        old.count_rows()
    fresh_db.create_table("other", data=ROWS)
    with pytest.raises(errors.TableAlreadyExists):
        fresh_db.rename_table("new", "other")
    with pytest.raises(errors.TableNotFound):
        fresh_db.rename_table("missing", "x")
    with pytest.raises(errors.InvalidArgument):
        fresh_db.rename_table("new", "bad/name")
    assert list(fresh_db.list_tables().tables) == ["new", "other"]


def test_embedding_functions_bind_columns_as_lancedb(fresh_db, lance_db, model_path):
    import pyarrow as pa

    def search(db, func) -> tuple[list[str], str]:
        from importlib import import_module

        config = import_module(f"{type(db).__module__.split('.')[0]}.embeddings")
        schema = pa.schema([("text", pa.string()), ("vector", pa.list_(pa.float32(), 384))])
        table = db.create_table(
            "t",
            schema=schema,
            embedding_functions=[
                config.EmbeddingFunctionConfig(
                    source_column="text", vector_column="vector", function=func
                )
            ],
        )
        table.add([{"text": "a cat sleeps"}, {"text": "stock markets fell"}])
        found = table.search("kitten").limit(2).to_list()
        return [row["text"] for row in found], table.schema.field("vector").type

    from lancedb.embeddings import get_registry as lance_registry

    from embedsearch.embeddings import get_registry

    theirs = search(lance_db, lance_registry().get("sentence-transformers").create(name=model_path))
    ours = search(fresh_db, get_registry().get("sentence-transformers").create())
    assert ours == theirs


def test_per_table_storage_options_are_refused_not_ignored(fresh_db):
    with pytest.raises(errors.InvalidArgument, match="STORE_STORAGE_OPTIONS"):
        fresh_db.create_table("t", data=ROWS, storage_options={"timeout": "30s"})
    assert "t" not in fresh_db
    fresh_db.create_table("t", data=ROWS, storage_options={})
    assert "t" in fresh_db
