"""The store against an attacker and a busy operator: expressions that would crash or widen a
write, cleanup racing readers and writers, drops racing maintenance. Nothing changes on a
refusal, and the store process survives every expression."""

from __future__ import annotations

import random
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import lance
import pyarrow as pa
import pytest
from helpers import expect_code
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedsearch.contract.errors import NotFound, TableNotFound
from embedsearch.contract.wire import ipc_to_table, pack_vectors, schema_to_ipc, table_to_ipc
from embedsearch.v1 import common_pb2, store_pb2, store_pb2_grpc
from service_kit.launch import service_process
from store_service.catalog import TableCatalog
from store_service.settings import StoreSettings

INVALID = grpc.StatusCode.INVALID_ARGUMENT
LIMITS = StoreSettings()  # the defaults: what a deployed store enforces
SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64()),
        pa.field("s", pa.string()),
        pa.field("vector", pa.list_(pa.float32(), 4)),
    ]
)


def rows(ids: range | list[int]) -> bytes:
    ids = list(ids)
    return table_to_ipc(
        pa.table(
            {
                "id": ids,
                "s": [f"row {i}" for i in ids],
                "vector": [[float(i), 1.0, 0.0, 0.0] for i in ids],
            },
            schema=SCHEMA,
        )
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Iterator[tuple[store_pb2_grpc.StoreStub, object]]:
    """A store process with its default limits: a crash shows as the process gone."""
    root = tmp_path_factory.mktemp("hardened")
    flags = ["--data-root", str(root), "--maintenance-interval-s", "0"]
    with (
        service_process("store_service", *flags) as (address, proc),
        grpc.insecure_channel(address) as channel,
    ):
        yield store_pb2_grpc.StoreStub(channel), proc


@pytest.fixture(scope="module")
def table(store) -> str:
    stub, _ = store
    stub.CreateTable(
        store_pb2.StoreCreateTableRequest(
            name="thirty", arrow_schema=schema_to_ipc(SCHEMA), arrow_ipc=rows(range(30))
        )
    )
    return "thirty"


def state(stub: store_pb2_grpc.StoreStub, name: str) -> tuple[int, int]:
    info = stub.DescribeTable(store_pb2.StoreDescribeTableRequest(name=name))
    return info.version, info.num_rows


# -- every expression passes one checker ------------------------------------------------------


def merge(stub: store_pb2_grpc.StoreStub, table: str, **clauses: object) -> object:
    request = store_pb2.StoreMergeInsertRequest(
        name=table, on=["id"], arrow_ipc=rows([1, 2]), **clauses
    )
    return stub.MergeInsert(request, timeout=20)


# Each expression a caller may send, by where it goes: a bad one is refused the same way on
# every RPC, reads and writes alike.
PLACES: dict[str, Callable[[store_pb2_grpc.StoreStub, str, str], object]] = {
    "CountRows": lambda stub, t, sql: stub.CountRows(
        store_pb2.StoreCountRowsRequest(name=t, filter=sql), timeout=20
    ),
    "Search": lambda stub, t, sql: stub.Search(
        store_pb2.StoreSearchRequest(
            name=t, vector_column="vector", vector=pack_vectors([1, 0, 0, 0]), k=3, filter=sql
        )
    ),
    "Scan": lambda stub, t, sql: stub.Scan(store_pb2.StoreScanRequest(name=t, filter=sql)),
    "Delete": lambda stub, t, sql: stub.Delete(store_pb2.StoreDeleteRequest(name=t, filter=sql)),
    "Update.filter": lambda stub, t, sql: stub.Update(
        store_pb2.StoreUpdateRequest(name=t, filter=sql, updates={"s": "'x'"}), timeout=20
    ),
    "Update.value": lambda stub, t, sql: stub.Update(
        store_pb2.StoreUpdateRequest(name=t, filter="id = 1", updates={"s": sql}), timeout=20
    ),
    "MergeInsert.when_matched_update_condition": lambda stub, t, sql: merge(
        stub, t, when_matched_update_all=True, when_matched_update_condition=sql
    ),
    "MergeInsert.when_not_matched_by_source_condition": lambda stub, t, sql: merge(
        stub, t, when_not_matched_by_source_delete=True, when_not_matched_by_source_condition=sql
    ),
}
CHAIN = 5_000
BAD_EXPRESSIONS = {
    "statement after ;": ("true; DELETE", "no ';'"),
    "drop after ;": ("1=1; DROP TABLE x", "no ';'"),
    "trailing clause": ("id > 0 ORDER BY s", "no ORDER clause"),
    "trailing limit": ("true LIMIT 0", "no LIMIT clause"),
    "line comment": ("id = 1 -- and the rest", "comments"),
    "block comment": ("id = 1 /* x */ OR true", "comments"),
    "closing bracket first": ("id = 1) OR (true", "without its opening bracket"),
    "open bracket": ("(id = 1", "not closed"),
    "open quote": ("s = 'abc", "unterminated"),
    "long arithmetic chain": (
        "id = " + " + ".join(["1"] * CHAIN),
        "--max-expression-operators (STORE_MAX_EXPRESSION_OPERATORS)",
    ),
    "500 KB of OR": (
        " OR ".join(f"id = {i}" for i in range(50_000)),
        "--max-expression-bytes (STORE_MAX_EXPRESSION_BYTES)",
    ),
    "prefix operators": (
        "NOT +" * 25 + "true",
        "--max-expression-run (STORE_MAX_EXPRESSION_RUN)",
    ),
    "prefix operators over brackets": (
        "NOT +(" * 24 + "true" + ")" * 24,
        "--max-expression-run (STORE_MAX_EXPRESSION_RUN)",
    ),
    "deep nesting": (
        "(id > 0 AND " * 5_000 + "true" + ")" * 5_000,
        "--max-expression-depth (STORE_MAX_EXPRESSION_DEPTH)",
    ),
}


@pytest.mark.parametrize("place", list(PLACES))
@pytest.mark.parametrize("case", list(BAD_EXPRESSIONS))
def test_bad_expressions_are_refused_everywhere_and_change_nothing(store, table, place, case):
    stub, proc = store
    sql, fragment = BAD_EXPRESSIONS[case]
    before = state(stub, table)
    details = expect_code(INVALID, lambda: PLACES[place](stub, table, sql), fragment)
    assert len(details) < 500, "the message quotes a short prefix, not the whole input"
    assert state(stub, table) == before
    assert proc.poll() is None


def test_merge_condition_is_not_cut_to_its_first_statement(store, table):
    """Seen: `true; DELETE` ran as `true` and deleted 28 of 30 rows."""
    stub, _ = store
    before = state(stub, table)
    expect_code(
        INVALID,
        lambda: PLACES["MergeInsert.when_not_matched_by_source_condition"](
            stub, table, "true; DELETE"
        ),
    )
    assert state(stub, table) == before == (before[0], 30)


def test_a_condition_without_its_clause_is_refused(store, table):
    stub, _ = store
    before = state(stub, table)
    expect_code(
        INVALID,
        lambda: stub.MergeInsert(
            store_pb2.StoreMergeInsertRequest(
                name=table,
                on=["id"],
                arrow_ipc=rows([1]),
                when_not_matched_insert_all=True,
                when_not_matched_by_source_condition="id > 3",
            )
        ),
        "needs when_not_matched_by_source_delete",
    )
    assert state(stub, table) == before


@pytest.mark.parametrize(
    "request_,fragment",
    [
        (store_pb2.StoreCreateIndexRequest(name="thirty", column="id", index_name="../x"), "index"),
        (
            store_pb2.StoreCreateIndexRequest(
                name="thirty", column="id; DROP", index_type=common_pb2.INDEX_TYPE_BTREE
            ),
            "unknown column",
        ),
    ],
)
def test_index_and_column_names_are_checked(store, table, request_, fragment):
    stub, _ = store
    if not request_.index_type:
        request_.index_type = common_pb2.INDEX_TYPE_BTREE
    before = state(stub, table)
    expect_code(INVALID, lambda: stub.CreateIndex(request_), fragment)
    assert state(stub, table) == before
    assert not stub.ListIndexes(store_pb2.StoreListIndexesRequest(name=table)).indexes


@pytest.mark.parametrize("parameter", ["ef_construction", "m", "num_partitions", "num_bits"])
def test_index_parameters_are_bounded(store, table, parameter):
    """Seen: ef_construction=4294967295 made Lance allocate 34 GB and abort the process."""
    stub, proc = store
    params = common_pb2.IndexParams(**{parameter: 2**32 - 1})
    request = store_pb2.StoreCreateIndexRequest(
        name=table,
        column="vector",
        index_type=common_pb2.INDEX_TYPE_IVF_HNSW_SQ,
        index_name="hnsw",
        wait=True,
        params=params,
    )
    expect_code(INVALID, lambda: stub.CreateIndex(request), f"{parameter} may be at most")
    names = [
        i.name for i in stub.ListIndexes(store_pb2.StoreListIndexesRequest(name=table)).indexes
    ]
    assert "hnsw" not in names and proc.poll() is None


@pytest.mark.parametrize(
    "fields,fragment",
    [
        ({"refine_factor": 2**32 - 1}, "--max-search-candidates (STORE_MAX_SEARCH_CANDIDATES)"),
        ({"ef": 2**32 - 1}, "--max-search-candidates"),
        ({"offset": 2**32 - 1}, "--max-search-window (STORE_MAX_SEARCH_WINDOW)"),
        ({"k": 10_000, "offset": 95_000}, "--max-search-window"),
    ],
)
def test_searches_gather_a_bounded_number_of_rows(store, table, fields, fragment):
    """Seen: refine_factor=4294967295 on an indexed column made Lance allocate 687 GB, and
    the store process aborted."""
    stub, proc = store
    stub.CreateIndex(
        store_pb2.StoreCreateIndexRequest(
            name=table,
            column="vector",
            index_type=common_pb2.INDEX_TYPE_IVF_FLAT,
            index_name="vector_idx",
            wait=True,
            params=common_pb2.IndexParams(num_partitions=2, replace=True),
        )
    )
    before = state(stub, table)
    request = store_pb2.StoreSearchRequest(
        name=table, vector_column="vector", vector=pack_vectors([1, 0, 0, 0]), k=3
    )
    for field_name, value in fields.items():
        setattr(request, field_name, value)
    expect_code(INVALID, lambda: stub.Search(request), fragment)
    assert state(stub, table) == before and proc.poll() is None


def test_text_queries_are_bounded(store, table):
    """A 600 KB full-text query took Lance 1.3 s; a message may carry 64 MiB of it."""
    stub, proc = store
    stub.CreateIndex(
        store_pb2.StoreCreateIndexRequest(
            name=table, column="s", index_type=common_pb2.INDEX_TYPE_INVERTED, wait=True
        )
    )
    request = store_pb2.StoreTextSearchRequest(name=table, query="row " * 20_000, k=3)
    expect_code(INVALID, lambda: stub.TextSearch(request), "--max-expression-bytes")
    request.query = "row 7"
    assert stub.TextSearch(request).arrow_ipc and proc.poll() is None


def test_schemas_have_bounds(store):
    stub, _ = store
    wide = pa.schema([pa.field(f"c{i}", pa.int8()) for i in range(LIMITS.max_columns + 1)])
    expect_code(
        INVALID,
        lambda: stub.CreateTable(
            store_pb2.StoreCreateTableRequest(name="wide", arrow_schema=schema_to_ipc(wide))
        ),
        "--max-columns (STORE_MAX_COLUMNS)",
    )
    deep = pa.int64()
    for _ in range(100):
        deep = pa.struct([pa.field("a", deep)])
    expect_code(
        INVALID,
        lambda: stub.CreateTable(
            store_pb2.StoreCreateTableRequest(
                name="deep", arrow_schema=schema_to_ipc(pa.schema([pa.field("x", deep)]))
            )
        ),
        "nest more than",
    )
    odd = pa.schema([pa.field("a\nb", pa.int8())])
    expect_code(
        INVALID,
        lambda: stub.CreateTable(
            store_pb2.StoreCreateTableRequest(name="odd", arrow_schema=schema_to_ipc(odd))
        ),
        "column name",
    )
    names = stub.ListTables(store_pb2.StoreListTablesRequest()).names
    assert not {"wide", "odd", "deep"} & set(names)


# Shapes of expressions, each grown from one term to far past the bounds: the store answers
# OK or INVALID_ARGUMENT for every one, and its process stays up.
SHAPES: dict[str, Callable[[int], str]] = {
    "plus": lambda n: "id = " + " + ".join(["1"] * n),
    "times": lambda n: "id > " + " * ".join(["id"] * n),
    "or": lambda n: " OR ".join(f"id = {i}" for i in range(n)),
    "and": lambda n: " AND ".join(f"id <> {i}" for i in range(n)),
    "brackets": lambda n: "(" * n + "id = 1" + ")" * n,
    "functions": lambda n: "abs(" * n + "id" + ")" * n + " >= 0",
    "not": lambda n: "NOT " * n + "(id = 1)",
    "minus": lambda n: "id = " + "-" * n + "1",
    "in": lambda n: f"id IN ({', '.join(str(i) for i in range(n))})",
    "case": lambda n: (
        "CASE " + " ".join(f"WHEN id = {i} THEN {i}" for i in range(n)) + " ELSE 0 END >= 0"
    ),
    "like": lambda n: " OR ".join(f"s LIKE '%{i}%'" for i in range(n)),
    "literal": lambda n: "s = '" + "a''b" * n + "'",
    "nested or": lambda n: "(" * n + " OR ".join(["id = 1)"] * n),
    "prefix": lambda n: "NOT +" * n + "true",
    "prefix brackets": lambda n: "NOT +(" * n + "true" + ")" * n,
    "negations": lambda n: " AND ".join(["NOT -id < 0"] * n),
}
SIZES = sorted(
    {1, 2, 8, 31, 32, 33, 64, 200, 511, 512, 513, 1_000, 5_000, 20_000}
    | {LIMITS.max_expression_operators, LIMITS.max_expression_depth}
)


@pytest.mark.slow
def test_the_store_survives_every_shape_of_filter(store, table):
    stub, proc = store
    before = state(stub, table)
    for shape, grow in SHAPES.items():
        for size in SIZES:
            sql = grow(size)
            try:
                stub.CountRows(store_pb2.StoreCountRowsRequest(name=table, filter=sql), timeout=60)
            except grpc.RpcError as exc:
                assert exc.code() == INVALID, (shape, size, exc.code(), exc.details()[:200])
            assert proc.poll() is None, f"the store died on {shape} x {size}"
    assert state(stub, table) == before


TOKENS = st.sampled_from(
    ["id", "s", "1", "-", "+", "*", "/", "%", "=", "<", ">=", "<>", "(", ")", "AND", "OR", "NOT",
     "IS", "NULL", "IN", "LIKE", "'x'", "''", "'", '"', "`", ",", "abs(", "CASE", "WHEN", "THEN",
     "ELSE", "END", "true", ";", "--", "/*", "ORDER", "BY", "[", "]", "::", "1e308", "é", "\\"]
)  # fmt: skip


@pytest.mark.slow
@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,  # the same examples every run: a failure reproduces
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    parts=st.lists(TOKENS, max_size=40),
    repeat=st.integers(1, 2_000),
    shape=st.sampled_from(list(SHAPES)),
    size=st.integers(1, 1_500),
)
def test_random_expressions_never_crash_the_store(store, table, parts, repeat, shape, size):
    stub, proc = store
    candidates = [" ".join(parts) * min(repeat, 50), SHAPES[shape](size) + " ".join(parts)]
    for sql in candidates:
        for place in ("CountRows", "Update.value", "MergeInsert.when_matched_update_condition"):
            try:
                PLACES[place](stub, table, sql)
            except grpc.RpcError as exc:
                assert exc.code() == INVALID, (place, sql[:200], exc.code(), exc.details()[:300])
    assert proc.poll() is None


# -- cleanup leaves what is read alone ----------------------------------------------------------


def catalog_with_versions(tmp_path, adds: int, **settings_) -> TableCatalog:
    catalog = TableCatalog(
        str(tmp_path),
        settings=StoreSettings(data_root=str(tmp_path), **{"cleanup_min_age_s": 0, **settings_}),
    )
    catalog.create_table("t", SCHEMA)
    for i in range(adds):
        catalog.add("t", lance_rows([i]))
    return catalog


def lance_rows(ids: list[int]) -> pa.Table:
    return ipc_to_table(rows(ids))


def kept(catalog: TableCatalog) -> list[int]:
    return [v["version"] for v in catalog.list_versions("t")]


def test_cleanup_keeps_every_version_a_request_holds(tmp_path):
    catalog = catalog_with_versions(tmp_path, 3)
    held = catalog.dataset("t").version
    with catalog.holding("t"):
        reader = catalog.dataset("t")
        for i in range(3, 6):
            catalog.add("t", lance_rows([i]))
        catalog.cleanup("t", 0)
        assert min(kept(catalog)) == held
        assert reader.count_rows() == 3  # the snapshot still reads
        assert catalog.count_rows("t", version=held) == 3
    catalog.cleanup("t", 0)
    assert kept(catalog) == [catalog.dataset("t").version]


def test_time_travel_holds_the_version_it_asked_for(tmp_path):
    catalog = catalog_with_versions(tmp_path, 4)
    with catalog.holding("t", version=2):
        catalog.cleanup("t", 0)
        assert min(kept(catalog)) == 2
        assert catalog.count_rows("t", version=2) == 1


def test_the_retention_floor_bounds_optimize_too(tmp_path):
    """A store sharing the root may still read a version this one no longer holds: a version
    goes only once its successor is cleanup_min_age_s old, whatever Optimize asks."""
    catalog = catalog_with_versions(tmp_path, 3, cleanup_min_age_s=3600)
    before = kept(catalog)
    assert catalog.cleanup("t", 0) == (0, 0)
    assert kept(catalog) == before


def test_files_removed_under_a_reader_are_not_found_not_a_bad_filter(tmp_path):
    """Seen: a read whose files cleanup had removed answered INVALID_ARGUMENT "bad filter"."""
    catalog = catalog_with_versions(tmp_path, 3)
    stale = catalog.dataset("t")
    # What another store sharing the root may do past the floor: the files go.
    shutil.rmtree(tmp_path / "t.lance" / "data")
    with pytest.raises(OSError) as failure:
        stale.count_rows("id > 0")
    error = catalog.lance_error("t", "counting rows", failure.value)
    assert isinstance(error, NotFound) and str(tmp_path) not in str(error)
    catalog.drop_table("t")
    assert isinstance(catalog.lance_error("t", "counting rows", failure.value), TableNotFound)


def test_a_version_cleanup_removed_is_not_found(store, table):
    stub, _ = store
    expect_code(
        grpc.StatusCode.NOT_FOUND,
        lambda: stub.CountRows(
            store_pb2.StoreCountRowsRequest(name=table, version=999_999, filter="id > 0")
        ),
        "version 999999",
    )


# -- writers, cleanup, compaction and drops, all at once ----------------------------------------


@pytest.fixture
def busy(tmp_path) -> Iterator[tuple[store_pb2_grpc.StoreStub, str]]:
    """A store whose maintenance is as aggressive as its settings allow."""
    flags = [
        "--data-root", str(tmp_path), "--maintenance-interval-s", "0.05",
        "--compact-min-fragments", "2", "--compact-target-rows", "1024",
        "--retention-s", "0", "--cleanup-min-age-s", "0", "--compact-deleted-fraction", "0",
    ]  # fmt: skip
    with (
        open(tmp_path / "store.log", "w") as log,  # the tracebacks behind any INTERNAL
        service_process("store_service", *flags, output=log) as (address, proc),
    ):
        with grpc.insecure_channel(address) as channel:
            yield store_pb2_grpc.StoreStub(channel), str(tmp_path)
        assert proc.poll() is None


def create(stub: store_pb2_grpc.StoreStub, name: str, ids: list[int]) -> None:
    stub.CreateTable(
        store_pb2.StoreCreateTableRequest(
            name=name, arrow_schema=schema_to_ipc(SCHEMA), arrow_ipc=rows(ids)
        )
    )


@pytest.mark.slow
def test_concurrent_writes_cleanup_and_drops_lose_nothing(busy):
    stub, root = busy
    create(stub, "main", list(range(100)))
    expected = set(range(100))
    lock = threading.Lock()
    errors: list[str] = []
    # Every status these may answer besides OK, by what they do: conflicts that kept losing
    # are ABORTED (retryable), a dropped table is NOT_FOUND and a re-created one ALREADY_EXISTS.
    allowed = {grpc.StatusCode.ABORTED}

    def call(what: str, fn: Callable[[], object], also: frozenset = frozenset()) -> bool:
        try:
            fn()
            return True
        except grpc.RpcError as exc:
            if exc.code() not in allowed | also:
                errors.append(f"{what}: {exc.code().name} {exc.details()[:300]}")
            return False

    def adder(worker: int) -> None:
        for n in range(15):
            ids = [10_000 * (worker + 1) + n * 10 + i for i in range(5)]
            add = store_pb2.StoreAddRequest(name="main", arrow_ipc=rows(ids))
            if call("add", lambda add=add: stub.Add(add)):
                with lock:
                    expected.update(ids)

    def merger() -> None:
        for n in range(15):
            ids = [n % 100, 900_000 + n]  # one update of an old row, one insert
            request = store_pb2.StoreMergeInsertRequest(
                name="main",
                on=["id"],
                arrow_ipc=rows(ids),
                when_matched_update_all=True,
                when_not_matched_insert_all=True,
            )
            if call("merge", lambda r=request: stub.MergeInsert(r)):
                with lock:
                    expected.update(ids)

    def deleter() -> None:
        for n in range(15):
            request = store_pb2.StoreDeleteRequest(name="main", filter=f"id = {50 + n}")
            with lock:  # deleted rows leave the expected set only once the delete is acked
                if call("delete", lambda r=request: stub.Delete(r)):
                    expected.discard(50 + n)

    def updater() -> None:
        for n in range(15):
            request = store_pb2.StoreUpdateRequest(
                name="main", filter=f"id = {n}", updates={"s": f"'updated {n}'"}
            )
            call("update", lambda r=request: stub.Update(r))

    def optimizer() -> None:
        for _ in range(15):
            request = store_pb2.StoreOptimizeRequest(name="main", cleanup_older_than_s=0)
            call("optimize", lambda r=request: stub.Optimize(r))

    def reader() -> None:
        for _ in range(30):
            versions = stub.ListVersions(store_pb2.StoreListVersionsRequest(name="main")).versions
            old = random.choice(versions).version
            # An old version may be removed by cleanup meanwhile: then NOT_FOUND, never worse.
            call(
                "count",
                lambda v=old: stub.CountRows(
                    store_pb2.StoreCountRowsRequest(name="main", version=v)
                ),
                frozenset({grpc.StatusCode.NOT_FOUND}),
            )
            call(
                "search",
                lambda: stub.Search(
                    store_pb2.StoreSearchRequest(
                        name="main",
                        vector_column="vector",
                        vector=pack_vectors([1, 1, 0, 0]),
                        k=5,
                        filter="id >= 0",
                    )
                ),
            )

    churn = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS})

    def dropper() -> None:
        for _ in range(12):
            call(
                "drop", lambda: stub.DropTable(store_pb2.StoreDropTableRequest(name="churn")), churn
            )
            call("create", lambda: create(stub, "churn", [1, 2, 3]), churn)

    def churn_writer() -> None:
        for n in range(40):
            request = store_pb2.StoreAddRequest(name="churn", arrow_ipc=rows([n]))
            call("churn add", lambda r=request: stub.Add(r), churn)

    jobs = [lambda w=w: adder(w) for w in range(2)]
    jobs += [merger, deleter, updater, optimizer, reader, dropper, churn_writer]
    with ThreadPoolExecutor(len(jobs)) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()

    assert not errors, (errors, (Path(root) / "store.log").read_text()[-6000:])
    stored = stub.Scan(store_pb2.StoreScanRequest(name="main", columns=["id"]))
    ids = ipc_to_table(stored.arrow_ipc).column("id").to_pylist()
    assert len(ids) == len(set(ids)), "duplicated rows"
    assert set(ids) == expected
    # No ghost: every listed table opens, with Lance itself, and the dropped one either is
    # a whole table or is gone.
    for name in stub.ListTables(store_pb2.StoreListTablesRequest()).names:
        lance.dataset(f"{root}/{name}.lance").count_rows()
        stub.DescribeTable(store_pb2.StoreDescribeTableRequest(name=name))
