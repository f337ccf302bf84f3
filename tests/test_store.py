"""store_service over a real channel: tables, writes, versions and search on Lance datasets."""

from __future__ import annotations

import grpc
import numpy as np
import pyarrow as pa
import pytest
from helpers import expect_code

from embedsearch.contract.wire import (
    ipc_to_schema,
    ipc_to_table,
    pack_vectors,
    schema_to_ipc,
    table_to_ipc,
)
from embedsearch.v1 import common_pb2, store_pb2

SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("tag", pa.string()),
        pa.field("vector", pa.list_(pa.float32(), 4)),
    ],
    metadata={"owner": "tests"},
)
RNG = np.random.default_rng(7)


def rows(ids, tags=None, vectors=None) -> bytes:
    vectors = vectors if vectors is not None else RNG.normal(size=(len(ids), 4)).astype("f4")
    return table_to_ipc(
        pa.table(
            {"id": ids, "tag": tags or ["x"] * len(ids), "vector": list(vectors)},
            schema=SCHEMA,
        )
    )


@pytest.fixture
def table(store_stub, table_name):
    store_stub.CreateTable(
        store_pb2.StoreCreateTableRequest(name=table_name, arrow_schema=schema_to_ipc(SCHEMA))
    )
    return table_name


def describe(stub, name):
    return stub.DescribeTable(store_pb2.StoreDescribeTableRequest(name=name))


def test_create_describe_list_drop(store_stub, table):
    info = describe(store_stub, table)
    schema = ipc_to_schema(info.arrow_schema)
    assert schema.names == ["id", "tag", "vector"]
    assert schema.metadata == {b"owner": b"tests"}
    assert info.num_rows == 0
    assert table in store_stub.ListTables(store_pb2.StoreListTablesRequest()).names
    store_stub.DropTable(store_pb2.StoreDropTableRequest(name=table))
    assert table not in store_stub.ListTables(store_pb2.StoreListTablesRequest()).names
    expect_code(
        grpc.StatusCode.NOT_FOUND, lambda: describe(store_stub, table), reason="TABLE_NOT_FOUND"
    )
    store_stub.DropTable(store_pb2.StoreDropTableRequest(name=table, ignore_missing=True))


def test_create_modes(store_stub, table):
    request = store_pb2.StoreCreateTableRequest(name=table, arrow_schema=schema_to_ipc(SCHEMA))
    expect_code(
        grpc.StatusCode.ALREADY_EXISTS,
        lambda: store_stub.CreateTable(request),
        reason="TABLE_ALREADY_EXISTS",
    )
    store_stub.Add(store_pb2.StoreAddRequest(name=table, arrow_ipc=rows([1, 2])))
    request.mode = common_pb2.CREATE_MODE_EXIST_OK
    assert store_stub.CreateTable(request).num_rows == 2
    request.mode = common_pb2.CREATE_MODE_OVERWRITE
    assert store_stub.CreateTable(request).num_rows == 0


def test_add_search_count_and_versions(store_stub, table):
    vectors = np.eye(4, dtype="f4")
    result = store_stub.Add(
        store_pb2.StoreAddRequest(
            name=table, arrow_ipc=rows([1, 2, 3, 4], ["a", "b", "a", "b"], vectors)
        )
    )
    assert result.rows_inserted == 4
    assert store_stub.CountRows(store_pb2.StoreCountRowsRequest(name=table)).count == 4
    assert (
        store_stub.CountRows(store_pb2.StoreCountRowsRequest(name=table, filter="tag = 'a'")).count
        == 2
    )

    reply = store_stub.Search(
        store_pb2.StoreSearchRequest(
            name=table, vector_column="vector", vector=pack_vectors(vectors[2]), k=2
        )
    )
    found = ipc_to_table(reply.arrow_ipc)
    assert found.column("id").to_pylist()[0] == 3
    assert found.column("_distance").to_pylist() == pytest.approx([0.0, 2.0])

    filtered = ipc_to_table(
        store_stub.Search(
            store_pb2.StoreSearchRequest(
                name=table,
                vector_column="vector",
                vector=pack_vectors(vectors[2]),
                k=4,
                filter="tag = 'b'",
                columns=["id"],
                with_row_id=True,
            )
        ).arrow_ipc
    )
    assert sorted(filtered.column("id").to_pylist()) == [2, 4]
    assert filtered.column_names == ["id", "_distance", "_rowid"]

    versions = store_stub.ListVersions(store_pb2.StoreListVersionsRequest(name=table)).versions
    assert [v.version for v in versions] == [1, 2]
    old = store_stub.CountRows(store_pb2.StoreCountRowsRequest(name=table, version=1)).count
    assert old == 0  # time travel to the empty first version


def test_merge_insert_delete_update(store_stub, table):
    store_stub.Add(store_pb2.StoreAddRequest(name=table, arrow_ipc=rows([1, 2, 3])))
    merged = store_stub.MergeInsert(
        store_pb2.StoreMergeInsertRequest(
            name=table,
            on=["id"],
            arrow_ipc=rows([3, 4], ["new", "new"]),
            when_matched_update_all=True,
            when_not_matched_insert_all=True,
        )
    )
    assert (merged.rows_inserted, merged.rows_updated) == (1, 1)
    assert (
        store_stub.CountRows(
            store_pb2.StoreCountRowsRequest(name=table, filter="tag = 'new'")
        ).count
        == 2
    )

    deleted = store_stub.Delete(store_pb2.StoreDeleteRequest(name=table, filter="id <= 2"))
    assert deleted.rows_deleted == 2
    updated = store_stub.Update(
        store_pb2.StoreUpdateRequest(name=table, filter="id = 4", updates={"tag": "'four'"})
    )
    assert updated.rows_updated == 1
    assert (
        store_stub.CountRows(
            store_pb2.StoreCountRowsRequest(name=table, filter="tag = 'four'")
        ).count
        == 1
    )


def test_bad_writes_change_nothing(store_stub, table):
    store_stub.Add(store_pb2.StoreAddRequest(name=table, arrow_ipc=rows([1])))
    before = describe(store_stub, table).version
    bad_dim = table_to_ipc(pa.table({"id": [2], "vector": [[1.0, 2.0]]}))
    null_key = table_to_ipc(pa.table({"id": pa.array([None], pa.int64())}))
    unknown = table_to_ipc(pa.table({"id": [3], "colour": ["red"]}))
    nan = table_to_ipc(pa.table({"id": [4], "vector": [[float("nan")] * 4]}))
    for payload, fragment in [
        (bad_dim, "4-dimensional"),
        (null_key, "not nullable"),
        (unknown, "colour"),
        (nan, "NaN"),
        (b"junk", "Arrow IPC"),
    ]:
        expect_code(
            grpc.StatusCode.INVALID_ARGUMENT,
            lambda p=payload: store_stub.Add(store_pb2.StoreAddRequest(name=table, arrow_ipc=p)),
            fragment,
        )
    expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: store_stub.Update(store_pb2.StoreUpdateRequest(name=table, updates={"nope": "1"})),
        "nope",
    )
    empty = store_stub.Add(store_pb2.StoreAddRequest(name=table, arrow_ipc=rows([])))
    assert empty.version == before and empty.rows_inserted == 0
    assert describe(store_stub, table).version == before
    assert store_stub.CountRows(store_pb2.StoreCountRowsRequest(name=table)).count == 1


def test_search_validation(store_stub, table):
    store_stub.Add(store_pb2.StoreAddRequest(name=table, arrow_ipc=rows([1])))
    base = dict(name=table, vector_column="vector", vector=pack_vectors(np.ones(4)))
    for overrides, fragment in [
        ({"vector_column": "tag"}, "not a vector column"),
        ({"vector": pack_vectors(np.ones(3))}, "3 dimensions"),
        ({"k": 100_000}, "k must be"),
        ({"columns": ["nope"]}, "nope"),
        ({"filter": "tag = = 1"}, "filter"),
    ]:
        request = store_pb2.StoreSearchRequest(**{**base, **overrides})
        expect_code(
            grpc.StatusCode.INVALID_ARGUMENT, lambda r=request: store_stub.Search(r), fragment
        )


def versions_of(stub, name):
    return stub.ListVersions(store_pb2.StoreListVersionsRequest(name=name)).versions


def count(stub, name, **options):
    return stub.CountRows(store_pb2.StoreCountRowsRequest(name=name, **options)).count


def test_time_travel_tags_and_restore(store_stub, table):
    for ids in ([1, 2], [3], [4, 5, 6]):  # versions 2, 3, 4
        store_stub.Add(store_pb2.StoreAddRequest(name=table, arrow_ipc=rows(ids)))
    assert [count(store_stub, table, version=v) for v in (1, 2, 3, 4)] == [0, 2, 3, 6]
    old = store_stub.DescribeTable(store_pb2.StoreDescribeTableRequest(name=table, version=3))
    assert (old.version, old.num_rows) == (3, 3)

    tagged = store_stub.CreateTag(store_pb2.StoreCreateTagRequest(name=table, tag="v3", version=3))
    assert tagged.version == 3
    store_stub.CreateTag(store_pb2.StoreCreateTagRequest(name=table, tag="latest-at-4"))
    tags = store_stub.ListTags(store_pb2.StoreListTagsRequest(name=table)).tags
    assert [(t.tag, t.version) for t in tags] == [("latest-at-4", 4), ("v3", 3)]
    assert [list(v.tags) for v in versions_of(store_stub, table)] == [
        [],
        [],
        ["v3"],
        ["latest-at-4"],
    ]
    assert count(store_stub, table, tag="v3", filter="id > 1") == 2
    by_tag = store_stub.DescribeTable(store_pb2.StoreDescribeTableRequest(name=table, tag="v3"))
    assert by_tag.version == 3

    restored = store_stub.Restore(store_pb2.StoreRestoreRequest(name=table, version=2))
    assert restored.version == 5 and count(store_stub, table) == 2
    restored = store_stub.Restore(store_pb2.StoreRestoreRequest(name=table, tag="v3"))
    assert restored.version == 6 and count(store_stub, table) == 3
    assert count(store_stub, table, version=4) == 6  # nothing was lost

    store_stub.DeleteTag(store_pb2.StoreDeleteTagRequest(name=table, tag="v3"))
    store_stub.DeleteTag(store_pb2.StoreDeleteTagRequest(name=table, tag="v3"))  # idempotent
    assert [
        t.tag for t in store_stub.ListTags(store_pb2.StoreListTagsRequest(name=table)).tags
    ] == ["latest-at-4"]
    not_found, exists = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS
    for call, code, fragment in [
        (lambda: count(store_stub, table, version=99), not_found, "version 99"),
        (lambda: count(store_stub, table, tag="v3"), not_found, "tag 'v3'"),
        (
            lambda: store_stub.Restore(store_pb2.StoreRestoreRequest(name=table, version=99)),
            not_found,
            "version 99",
        ),
        (
            lambda: store_stub.CreateTag(
                store_pb2.StoreCreateTagRequest(name=table, tag="latest-at-4")
            ),
            exists,
            "latest-at-4",
        ),
        (
            lambda: store_stub.CreateTag(store_pb2.StoreCreateTagRequest(name=table, tag="a/b")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid tag name",
        ),
        (
            lambda: store_stub.CreateTag(
                store_pb2.StoreCreateTagRequest(name=table, tag="x", version=99)
            ),
            not_found,
            "version 99",
        ),
    ]:
        expect_code(code, call, fragment)
    assert describe(store_stub, table).version == 6


def test_merge_insert_deletes_rows_missing_from_source(store_stub, table):
    store_stub.Add(store_pb2.StoreAddRequest(name=table, arrow_ipc=rows([1, 2, 3, 4])))
    merged = store_stub.MergeInsert(
        store_pb2.StoreMergeInsertRequest(
            name=table,
            on=["id"],
            arrow_ipc=rows([2, 3, 9], ["new"] * 3),
            when_matched_update_all=True,
            when_not_matched_insert_all=True,
            when_not_matched_by_source_delete=True,
            when_not_matched_by_source_condition="id > 3",
        )
    )
    assert (merged.rows_inserted, merged.rows_updated, merged.rows_deleted) == (1, 2, 1)
    assert count(store_stub, table) == 4  # 1 kept (the condition spared it), 2 and 3, new 9
    assert count(store_stub, table, filter="id = 4") == 0


def test_optimize_compacts_and_cleans_up(store_stub, table):
    for i in range(6):
        store_stub.Add(store_pb2.StoreAddRequest(name=table, arrow_ipc=rows([i])))
    store_stub.Delete(store_pb2.StoreDeleteRequest(name=table, filter="id = 0"))
    store_stub.CreateTag(store_pb2.StoreCreateTagRequest(name=table, tag="keep", version=3))
    done = store_stub.Optimize(store_pb2.StoreOptimizeRequest(name=table, cleanup_older_than_s=0))
    # The delete emptied the first add's fragment, which Lance dropped at once.
    assert done.fragments_removed == 5 and done.fragments_added == 1
    assert [v.version for v in versions_of(store_stub, table)] == [3, done.version]
    assert done.versions_removed == done.version - 2  # all but the latest and the tagged one
    assert count(store_stub, table) == 5 and count(store_stub, table, tag="keep") == 2
    expect_code(
        grpc.StatusCode.NOT_FOUND, lambda: count(store_stub, table, version=4), reason="NOT_FOUND"
    )
    default = store_stub.Optimize(store_pb2.StoreOptimizeRequest(name=table))
    assert default.versions_removed == 0  # the default retention keeps recent versions


def test_more_bad_input_changes_nothing(store_stub, table):
    store_stub.Add(store_pb2.StoreAddRequest(name=table, arrow_ipc=rows([1, 2])))
    before = describe(store_stub, table).version
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    wrong_type = table_to_ipc(pa.table({"id": ["one"]}))
    expect_code(
        invalid,
        lambda: store_stub.Add(store_pb2.StoreAddRequest(name=table, arrow_ipc=wrong_type)),
        "cannot convert",
    )
    for call in [
        lambda: store_stub.Delete(store_pb2.StoreDeleteRequest(name=table, filter="id = = 1")),
        lambda: store_stub.Update(
            store_pb2.StoreUpdateRequest(name=table, filter="id >", updates={"tag": "'y'"})
        ),
        lambda: store_stub.Update(
            store_pb2.StoreUpdateRequest(name=table, updates={"id": "no_such_column + 1"})
        ),
        lambda: count(store_stub, table, filter="nope = 1"),
        lambda: store_stub.MergeInsert(
            store_pb2.StoreMergeInsertRequest(name=table, on=["tag"], arrow_ipc=rows([1]))
        ),
    ]:
        expect_code(invalid, call)
    assert describe(store_stub, table).version == before
    assert count(store_stub, table) == 2


def test_batch_over_the_message_limit(servers, tmp_path, table_name):
    from conftest import QUIET

    from embedsearch.contract.channels import wait_until_serving
    from embedsearch.v1 import store_pb2_grpc
    from store_service.server import create_server
    from store_service.settings import StoreSettings

    settings = StoreSettings(data_root=str(tmp_path), max_message_bytes=64 * 1024, **QUIET)
    address = servers.start(create_server, settings)
    wait_until_serving(address, 30)
    stub = store_pb2_grpc.StoreStub(grpc.insecure_channel(address))
    stub.CreateTable(
        store_pb2.StoreCreateTableRequest(name=table_name, arrow_schema=schema_to_ipc(SCHEMA))
    )
    big = rows(list(range(5000)))
    assert len(big) > 64 * 1024
    expect_code(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        lambda: stub.Add(store_pb2.StoreAddRequest(name=table_name, arrow_ipc=big)),
    )
    assert describe(stub, table_name).version == 1
    stub.Add(store_pb2.StoreAddRequest(name=table_name, arrow_ipc=rows(list(range(100)))))
    assert describe(stub, table_name).num_rows == 100


def test_add_stream_commits_only_a_stream_marked_complete(store_stub, table):
    """To a grpc aio server, a stream its client cancelled between two messages ends like one
    the client finished; so the store commits only after a message marked ``last``."""
    before = describe(store_stub, table).version
    chunks = [
        store_pb2.StoreAddRequest(name=table, arrow_ipc=rows([1, 2])),
        store_pb2.StoreAddRequest(name=table, arrow_ipc=rows([3])),
    ]
    expect_code(
        grpc.StatusCode.CANCELLED, lambda: store_stub.AddStream(iter(chunks)), "marked last"
    )
    assert describe(store_stub, table).version == before  # nothing committed
    done = store_stub.AddStream(iter([*chunks, store_pb2.StoreAddRequest(name=table, last=True)]))
    assert done.rows_inserted == 3
    after = describe(store_stub, table)
    assert (after.version, after.num_rows) == (before + 1, 3)
    late = [*chunks[:1], store_pb2.StoreAddRequest(name=table, last=True), chunks[1]]
    expect_code(grpc.StatusCode.INVALID_ARGUMENT, lambda: store_stub.AddStream(iter(late)), "after")
    assert describe(store_stub, table).version == after.version
