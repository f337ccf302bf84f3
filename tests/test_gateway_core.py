"""Every proto field the gateway receives is converted, and every field it sends is filled,
unless listed below with the reason: a renamed or added field cannot silently stop being
forwarded. Requests are filled by walking their descriptors, not by hand."""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from embedsearch.contract import convert as contract_convert
from embedsearch.contract.values import (
    CompactionResult,
    FragmentLengths,
    IndexCalibration,
    IndexStats,
    OptimizeResult,
    ReadParams,
    RecallLevel,
    TableStatistics,
    TagInfo,
    TakeParams,
)
from embedsearch.contract.wire import schema_to_ipc, table_to_ipc
from embedsearch.v1 import embedder_pb2, gateway_pb2, store_pb2
from gateway import clients, convert, convert_rerank
from gateway import convert_schema as schema_edge
from gateway.mapping import Binding
from gateway.schema import (
    Cleanup,
    CleanupResult,
    ColumnChange,
    Compaction,
    MetadataChange,
    NewColumns,
    Optimize,
)
from gateway.values import (
    BadVectors,
    CreateIndex,
    EmbedCall,
    Embedded,
    IndexInfo,
    IndexParams,
    MergeInsert,
    Provider,
    Read,
    RerankCall,
    Resolved,
    ResultRows,
    Scan,
    Search,
    StoreTable,
    TableInfo,
    TableVersion,
    Take,
    WriteResult,
)

GATEWAY = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"]
STORE = store_pb2.DESCRIPTOR.services_by_name["Store"]
SCHEMA = pa.schema([("id", pa.int64()), ("text", pa.string())])
ROWS = pa.table({"id": [1], "text": ["a"]})
FieldPath = tuple[str | int, ...]

# -- requests in: Gateway request -> the core's values ----------------------------------------

# The conversion each RPC's servicer applies to its request.
FROM_PB: dict[str, Callable[[Any], Any]] = {
    "CreateTable": convert.create_table_from_pb,
    "DescribeTable": convert.describe_from_pb,
    "ListTables": convert.list_tables_from_pb,
    "DropTable": convert.drop_table_from_pb,
    "Add": convert.chunk_from_pb,
    "AddStream": convert.chunk_from_pb,
    "MergeInsert": convert.merge_insert_from_pb,
    "Delete": convert.delete_from_pb,
    "Update": convert.update_from_pb,
    "CountRows": convert.count_rows_from_pb,
    "Read": convert.read_from_pb,
    "Search": convert.search_from_pb,
    "CreateIndex": convert.create_index_from_pb,
    "ListIndexes": convert.table_of,
    "DropIndex": convert.index_name_of,
    "IndexStats": convert.index_name_of,
    "ListVersions": convert.table_of,
    "Restore": convert.restore_from_pb,
    "ListProviders": lambda request: (),
    "ResolveFunction": convert.resolve_from_pb,
    "GenerateEmbeddings": convert.embed_call_from_pb,
    "AddColumns": schema_edge.add_columns_from_pb,
    "AlterColumns": schema_edge.alter_columns_from_pb,
    "DropColumns": schema_edge.drop_columns_from_pb,
    "Optimize": schema_edge.optimize_from_pb,
    "CompactFiles": schema_edge.compact_files_from_pb,
    "CleanupOldVersions": schema_edge.cleanup_from_pb,
    "CreateTag": schema_edge.tag_request_from_pb,
    "UpdateTag": schema_edge.tag_request_from_pb,
    "DeleteTag": schema_edge.delete_tag_from_pb,
    "ListTags": schema_edge.table_from_pb,
    "TableStats": schema_edge.table_from_pb,
    "RenameTable": convert.rename_table_from_pb,
    "Take": convert.take_from_pb,
    "ExplainPlan": convert.explain_from_pb,
    "SearchStream": convert.search_from_pb,
    "Rerank": convert_rerank.rerank_call_from_pb,
}
# Values for fields whose bytes or strings must mean something, by field name; every other
# field gets a non-default value of its type.
MEANINGFUL: dict[str, Any] = {
    "arrow_schema": schema_to_ipc(SCHEMA),
    "arrow_ipc": table_to_ipc(ROWS),
    "json": '[{"id": 1, "text": "a"}]',
    "vector": np.array([0.5, 0.25], dtype="<f4").tobytes(),
    "query_vectors": 2,  # the two values above as two one-dimensional query vectors
    "type": "int64",
    "args": {"name": "all-MiniLM-L6-v2"},
}
# The members of each oneof to try, one request per member (the filler sets none by itself).
ONEOF_MEMBERS = {"query": ("text", "vector", "blob"), "format": ("arrow_ipc", "json")}
# Request fields a conversion may leave unread, and why. (rpc, dotted path)
NOT_READ = {
    # The embedder sniffs an image's format from its bytes; query blobs go without it, as
    # a row's blobs do (their column holds no mime type either).
    ("Search", "blob.mime_type"): "the embedder reads the format from the bytes",
    ("SearchStream", "blob.mime_type"): "the embedder reads the format from the bytes",
    ("ExplainPlan", "query.blob.mime_type"): "the embedder reads the format from the bytes",
}
# Fields cleared in one more request of each kind: columns are read when arrow_schema is empty.
ALSO_WITHOUT: dict[str, list[FieldPath]] = {"CreateTable": [("arrow_schema",)]}


def filled(descriptor: Descriptor, oneofs: dict[str, str]) -> Message:
    """A message of ``descriptor``'s type with every field set to a non-default value (of
    each oneof, the member ``oneofs`` names)."""
    message = _message_class(descriptor)()
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and not _synthetic(oneof) and oneofs.get(oneof.name) != field.name:
            continue
        _fill(message, field, oneofs)
    return message


def _message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def _value(field: FieldDescriptor, oneofs: dict[str, str]) -> Any:
    if field.name in MEANINGFUL and field.message_type is None:
        return MEANINGFUL[field.name]
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values[-1].number
    if field.type == FieldDescriptor.TYPE_STRING:
        return f"{field.name}-1"
    if field.type == FieldDescriptor.TYPE_BYTES:
        return b"\x01\x02"
    if field.type == FieldDescriptor.TYPE_BOOL:
        return True
    if field.cpp_type in (FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE):
        return 0.5
    return 3


def _fill(message: Message, field: FieldDescriptor, oneofs: dict[str, str]) -> None:
    target = getattr(message, field.name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        target[f"{field.name}-key"] = f"{field.name}-value"
    elif field.message_type is not None and field.message_type.full_name.startswith("google."):
        target.update(MEANINGFUL.get(field.name, {"key": "value"}))  # a Struct
    elif field.message_type is not None:
        item = filled(field.message_type, oneofs)
        (target.add() if _repeated(field) else target).CopyFrom(item)
    elif _repeated(field):
        target.append(_value(field, oneofs))
    else:
        setattr(message, field.name, _value(field, oneofs))


def _repeated(field: FieldDescriptor) -> bool:
    return field.is_repeated


def _nested(field: FieldDescriptor) -> bool:
    """A field holding a message of ours (not a map, not a well-known type like Struct)."""
    inner = field.message_type
    return (
        inner is not None
        and not inner.GetOptions().map_entry
        and not inner.full_name.startswith("google.")
    )


def dotted(path: FieldPath) -> str:
    return ".".join(str(step) for step in path if not isinstance(step, int))


def leaves(message: Message, path: FieldPath = ()) -> Iterator[FieldPath]:
    """Paths of every set field that holds a value (a scalar, a list of them, a map, a Struct),
    through nested messages and the first element of repeated ones."""
    for field, value in message.ListFields():
        here = (*path, field.name)
        if not _nested(field):
            yield here
        elif _repeated(field):
            yield from leaves(value[0], (*here, 0))
        else:
            yield from leaves(value, here)


def cleared(message: Message, path: FieldPath) -> Message:
    copy = type(message)()
    copy.CopyFrom(message)
    parent: Any = copy
    for step in path[:-1]:
        parent = parent[step] if isinstance(step, int) else getattr(parent, step)
    parent.ClearField(str(path[-1]))
    return copy


def plain(value: Any) -> Any:
    """A comparable form of a converted value: dataclasses, arrays, tables, schemas."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return tuple((f.name, plain(getattr(value, f.name))) for f in dataclasses.fields(value))
    if isinstance(value, np.ndarray):
        return ("array", value.tolist())
    if isinstance(value, pa.Table):
        return ("table", value.to_pylist())
    if isinstance(value, pa.Schema):
        return ("schema", str(value), plain(value.metadata))
    if isinstance(value, list | tuple):
        return tuple(plain(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((plain(k), plain(v)) for k, v in value.items()))
    return value


def converted(convert_pb: Callable[[Any], Any], request: Message) -> Any:
    try:
        return plain(convert_pb(request))
    except Exception as exc:  # a field whose absence is refused is read too
        return ("raises", type(exc).__name__)


def requests_for(rpc: str, descriptor: Descriptor) -> list[Message]:
    """A filled request per oneof member, plus the RPC's extra variants."""
    choices = [{}]
    for oneof in _oneofs(descriptor):
        choices = [{**c, oneof: member} for c in choices for member in ONEOF_MEMBERS[oneof]]
    made = [filled(descriptor, choice) for choice in choices]
    return made + [cleared(m, path) for path in ALSO_WITHOUT.get(rpc, []) for m in made]


def _synthetic(oneof: Any) -> bool:
    """The oneof protoc makes for one ``optional`` field: not a choice between members."""
    return len(oneof.fields) == 1 and oneof.name == f"_{oneof.fields[0].name}"


def _oneofs(descriptor: Descriptor) -> set[str]:
    found = {o.name for o in descriptor.oneofs if not _synthetic(o)}
    for field in descriptor.fields:
        if _nested(field):
            found |= _oneofs(field.message_type)
    return found


def test_every_gateway_rpc_has_a_request_conversion():
    assert set(FROM_PB) == {m.name for m in GATEWAY.methods}


@pytest.mark.parametrize("rpc", sorted(FROM_PB))
def test_every_request_field_is_read(rpc):
    """Clearing any one field of a filled request changes what the conversion returns."""
    method = GATEWAY.methods_by_name[rpc]
    unread: set[str] = set()
    read: set[str] = set()
    for request in requests_for(rpc, method.input_type):
        whole = converted(FROM_PB[rpc], request)
        assert whole[:1] != ("raises",), f"{rpc}: a filled request fails to convert: {whole}"
        for path in leaves(request):
            name = dotted(path)
            if converted(FROM_PB[rpc], cleared(request, path)) == whole:
                unread.add(name)
            else:
                read.add(name)
    allowed = {path for (r, path) in NOT_READ if r == rpc}
    assert unread - read - allowed == set(), f"{rpc} ignores these request fields"
    assert not allowed & read, f"{rpc}: fields listed as unread are read; drop them from NOT_READ"


# -- replies out, and requests to the peers: values -> every field set ------------------------

INDEX = IndexInfo("text_idx", ["text"], "INVERTED", "ready", 1, 2, 0.5, "train_ivf", 1)
BINDING = Binding("sentence-transformers", {"name": "x"}, "text", "vector", True, 3)
PROVIDER = Provider(
    "colbert", "colbert-ir/colbertv2.0", ["text"], ["name"], "local", True, {"name": "x"}
)
TABLE = StoreTable("t", SCHEMA, 3, 4, [INDEX], "f1", uri="/data/t.lance")
BAD = BadVectors("fill", 0.5)

# Each RPC's replies, built from values with every attribute set.
TO_PB: dict[str, list[Callable[[], Message]]] = {
    "CreateTable": [lambda: convert.table_info_to_pb(TableInfo(TABLE, [BINDING]))],
    "DescribeTable": [lambda: convert.table_info_to_pb(TableInfo(TABLE, [BINDING]))],
    "ListTables": [lambda: convert.list_tables_to_pb(["t"])],
    "DropTable": [gateway_pb2.DropTableResponse],
    "Add": [lambda: convert.write_to_pb(WriteResult(1, 2, 3, 4))],
    "AddStream": [lambda: convert.write_to_pb(WriteResult(1, 2, 3, 4))],
    "MergeInsert": [lambda: convert.write_to_pb(WriteResult(1, 2, 3, 4))],
    "Delete": [lambda: convert.write_to_pb(WriteResult(1, 2, 3, 4))],
    "Update": [lambda: convert.write_to_pb(WriteResult(1, 2, 3, 4))],
    "CountRows": [lambda: convert.count_rows_to_pb(5)],
    "Read": [lambda: convert.read_to_pb(table_to_ipc(ROWS))],
    "Search": [
        lambda: convert.search_to_pb(ResultRows(ipc=table_to_ipc(ROWS)), json_rows=False),
        lambda: convert.search_to_pb(ResultRows(table=ROWS), json_rows=True),
    ],
    "CreateIndex": [lambda: convert.index_to_pb(INDEX)],
    "ListIndexes": [lambda: convert.indexes_to_pb([INDEX])],
    "DropIndex": [gateway_pb2.DropIndexResponse],
    "IndexStats": [
        lambda: contract_convert.index_stats_to_pb(
            IndexStats(
                "i",
                "IVF_PQ",
                1,
                2,
                "dot",
                3,
                0.5,
                IndexCalibration(
                    10,
                    100,
                    5,
                    2,
                    1.5,
                    [RecallLevel(0.9, 4, 2, 8, 0.93, 1.5, memory_scan=True)],
                    0.99,
                    100,
                    16,
                    250,
                ),
            )
        )
    ],
    "ListVersions": [
        lambda: convert.versions_to_pb([TableVersion(2, 0.5, ["v2"], {"k": "v"})]),
    ],
    "Restore": [lambda: convert.write_to_pb(WriteResult(1, 2, 3, 4))],
    "ListProviders": [lambda: convert.providers_to_pb([PROVIDER])],
    "ResolveFunction": [
        lambda: convert.resolved_to_pb(Resolved("p", {"name": "x"}, 3, ["text", "image"], True))
    ],
    "GenerateEmbeddings": [
        lambda: convert.embedded_to_pb(
            Embedded(np.ones((2, 3), np.float32), 3, "request-1", vectors_per_input=[2])
        )
    ],
    "RenameTable": [lambda: convert.table_info_to_pb(TableInfo(TABLE, [BINDING]))],
    "AddColumns": [lambda: convert.write_to_pb(WriteResult(1, 2, 3, 4))],
    "AlterColumns": [lambda: convert.write_to_pb(WriteResult(1, 2, 3, 4))],
    "DropColumns": [lambda: convert.write_to_pb(WriteResult(1, 2, 3, 4))],
    "Optimize": [lambda: schema_edge.optimize_to_pb(OptimizeResult(1, 2, 3, 4, 5))],
    "CompactFiles": [lambda: contract_convert.compaction_to_pb(CompactionResult(1, 2, 3, 4, 5))],
    "CleanupOldVersions": [lambda: schema_edge.cleanup_to_pb(CleanupResult(1, 2))],
    "CreateTag": [lambda: schema_edge.tag_to_pb(TagInfo("v1", 2, 3))],
    "UpdateTag": [lambda: schema_edge.tag_to_pb(TagInfo("v1", 2, 3))],
    "DeleteTag": [gateway_pb2.DeleteTagResponse],
    "ListTags": [lambda: schema_edge.tags_to_pb([TagInfo("v1", 2, 3)])],
    "TableStats": [
        lambda: contract_convert.statistics_to_pb(
            TableStatistics(1, 2, 3, 4, 5, FragmentLengths(1, 2, 3, 4, 5, 6, 7))
        )
    ],
    "Take": [lambda: convert.read_to_pb(table_to_ipc(ROWS))],
    "SearchStream": [lambda: convert.read_to_pb(table_to_ipc(ROWS))],
    "ExplainPlan": [lambda: convert.explain_to_pb("KNN")],
    "Rerank": [lambda: convert_rerank.scores_to_pb(np.array([0.5, 0.25]))],
}

# The requests the gateway sends its peers, built from values with every attribute set.
INDEX_PARAMS = IndexParams(
    *(1, 2, 3, 4, 5, "dot", True, 6, 7, 8),
    *(True, "ngram", "French", 9, False, False, False, False, ["a"], True, 2, 4, True, 256),
)
SEARCH = Search(
    "t",
    "a cat",
    "v",
    3,
    "dot",
    "f",
    True,
    ["id"],
    1,
    2,
    3,
    4,
    False,
    True,
    5,
    "",
    ["t"],
    {"double": "id * 2"},
    True,
    0.5,
    2.5,
    target_recall=0.9,
)
READ = Read("t", ReadParams("id = 1", ["id"], 5, 2, 3, True, {"double": "id * 2"}))
MERGE = MergeInsert("t", ["id"], ROWS, True, "c1", True, True, "c2", BAD)
PEER_REQUESTS: dict[str, list[Callable[[], Message]]] = {
    "CreateTable": [lambda: clients.create_table_to_pb("t", SCHEMA, "overwrite", ROWS)],
    "DescribeTable": [lambda: clients.describe_to_pb("t", 3)],
    "ListTables": [lambda: clients.list_tables_to_pb("a", 3)],
    "DropTable": [lambda: clients.drop_table_to_pb("t", True)],
    "Add": [lambda: clients.add_to_pb("t", ROWS, "f1", True)],
    "AddStream": [
        lambda: clients.add_to_pb("t", ROWS, "f1", True),
        lambda: clients.add_to_pb("t", None, "f1", True),  # the stream's last message
    ],
    "MergeInsert": [lambda: clients.merge_insert_to_pb(MERGE, ROWS, "f1")],
    "Delete": [lambda: clients.delete_to_pb("t", "id = 1")],
    "Update": [lambda: clients.update_to_pb("t", "id = 1", {"id": "2"})],
    "CountRows": [lambda: clients.count_rows_to_pb("t", "id = 1", 3)],
    "Search": [lambda: clients.vector_search_to_pb(SEARCH, "v", np.ones(3), True, "f1")],
    "TextSearch": [lambda: clients.text_search_to_pb(SEARCH, True, "f1")],
    "Scan": [lambda: clients.scan_to_pb(Scan("t", "id = 1", ["id"]))],
    "Read": [lambda: clients.read_to_store_pb(READ)],
    "RenameTable": [lambda: clients.rename_table_to_pb("t", "u")],
    "AddColumns": [
        lambda: schema_edge.store_add_columns_to_pb(NewColumns("t", [("d", "id * 2")]), "f1"),
        lambda: schema_edge.store_add_columns_to_pb(NewColumns("t", [], b"schema"), "f1"),
    ],
    "AlterColumns": [
        lambda: schema_edge.store_alter_columns_to_pb(
            "t", [ColumnChange("a", "b", True, b"type")], MetadataChange({"k": "v"}, ["r"]), "f1"
        )
    ],
    "DropColumns": [
        lambda: schema_edge.store_drop_columns_to_pb(
            "t", ["a"], MetadataChange({"k": "v"}, ["r"]), "f1"
        )
    ],
    "Optimize": [lambda: schema_edge.store_optimize_to_pb(Optimize("t", 0.5, True))],
    "CompactFiles": [
        lambda: schema_edge.store_compact_to_pb(
            Compaction(
                "t",
                {
                    "target_rows_per_fragment": 1,
                    "max_rows_per_group": 2,
                    "max_bytes_per_file": 3,
                    "materialize_deletions": True,
                    "materialize_deletions_threshold": 0.5,
                    "num_threads": 4,
                    "batch_size": 5,
                },
            )
        )
    ],
    "CleanupOldVersions": [lambda: schema_edge.store_cleanup_to_pb(Cleanup("t", 0.5, True))],
    "CreateTag": [lambda: schema_edge.store_create_tag_to_pb("t", "v1", 2)],
    "UpdateTag": [lambda: schema_edge.store_update_tag_to_pb("t", "v1", 2)],
    "DeleteTag": [lambda: schema_edge.store_delete_tag_to_pb("t", "v1")],
    "ListTags": [lambda: schema_edge.store_list_tags_to_pb("t")],
    "TableStats": [lambda: schema_edge.store_stats_to_pb("t")],
    "Take": [
        lambda: clients.take_to_pb(
            Take("t", TakeParams([1], [2], ["id"], {"double": "id * 2"}, True, 3))
        )
    ],
    "SearchStream": [lambda: clients.vector_search_to_pb(SEARCH, "v", np.ones(3), True, "f1")],
    "ExplainPlan": [
        lambda: clients.explain_to_pb(True, scan=clients.read_to_store_pb(READ)),
        lambda: clients.explain_to_pb(
            True, search=clients.vector_search_to_pb(SEARCH, "v", np.ones(3), True, "f1")
        ),
        lambda: clients.explain_to_pb(
            True, text_search=clients.text_search_to_pb(SEARCH, True, "f")
        ),
    ],
    "CreateIndex": [
        lambda: clients.create_index_to_pb(CreateIndex("t", "v", "IVF_PQ", INDEX_PARAMS, True, "i"))
    ],
    "ListIndexes": [lambda: clients.list_indexes_to_pb("t")],
    "DropIndex": [lambda: clients.drop_index_to_pb("t", "i")],
    "IndexStats": [lambda: clients.index_stats_to_pb("t", "i")],
    "ListVersions": [lambda: clients.list_versions_to_pb("t")],
    "Restore": [lambda: clients.restore_to_pb("t", 3)],
    "ResolveFunction": [lambda: clients.resolve_to_pb("p", {"name": "x"})],
    "ListProviders": [embedder_pb2.ListProvidersRequest],
    "Embed": [
        lambda: convert.embed_call_to_pb(
            EmbedCall("p", {"name": "x"}, "query", ["a"], [(b"png", "image/png")], "request-1")
        )
    ],
    "Rerank": [
        lambda: convert_rerank.rerank_call_to_pb(
            RerankCall("cross-encoder", {"model_name": "x"}, "a cat", ["a dog"])
        )
    ],
}
# Store RPCs the gateway does not call.
NOT_CALLED: set[str] = set()
EMBEDDER = embedder_pb2.DESCRIPTOR.services_by_name["Embedder"]
NOT_CALLED_EMBEDDER = {"EmbedStream"}
# Fields of the messages above left unset, and why. (rpc, dotted path)
NOT_SENT = {
    # The public API names versions by number; tags are not in it yet.
    ("DescribeTable", "tag"): "no tags in the public API",
    ("CountRows", "tag"): "no tags in the public API",
    ("Search", "tag"): "no tags in the public API",
    ("TextSearch", "tag"): "no tags in the public API",
    ("Restore", "tag"): "no tags in the public API",
    ("DropIndex", "ignore_missing"): "LanceDB's drop_index refuses an unknown index",
    ("Add", "last"): "only an AddStream's final message says the stream is complete",
    ("SearchStream", "tag"): "no tags in the public API",
    ("ExplainPlan", "search.tag"): "no tags in the public API",
    ("ExplainPlan", "text_search.tag"): "no tags in the public API",
    # Key lookups for merge_insert read every matching key of the latest version.
    ("Scan", "limit"): "key lookups read every match",
    ("Scan", "offset"): "key lookups read every match",
    ("Scan", "version"): "key lookups read the latest version",
    ("Scan", "with_row_id"): "key lookups need only the keys",
    ("Scan", "projections.name"): "key lookups need only the keys",
    ("Scan", "projections.expression"): "key lookups need only the keys",
}


def declared(descriptor: Descriptor) -> set[str]:
    """Dotted paths of every value-holding field a message of this type can have."""
    paths: set[str] = set()
    for field in descriptor.fields:
        if _nested(field):
            paths |= {f"{field.name}.{inner}" for inner in declared(field.message_type)}
        else:
            paths.add(field.name)
    return paths


def unset(messages: list[Message], descriptor: Descriptor) -> set[str]:
    assert all(m.DESCRIPTOR is descriptor for m in messages)
    return declared(descriptor) - {dotted(path) for m in messages for path in leaves(m)}


def test_every_gateway_rpc_has_replies_to_check():
    assert set(TO_PB) == {m.name for m in GATEWAY.methods}


@pytest.mark.parametrize("rpc", sorted(TO_PB))
def test_every_reply_field_is_set(rpc):
    replies = [make() for make in TO_PB[rpc]]
    assert unset(replies, GATEWAY.methods_by_name[rpc].output_type) == set()


def test_every_peer_rpc_is_checked_or_not_called():
    assert set(PEER_REQUESTS) | NOT_CALLED | NOT_CALLED_EMBEDDER == {
        m.name for service in (STORE, EMBEDDER) for m in service.methods
    }


@pytest.mark.parametrize("rpc", sorted(PEER_REQUESTS))
def test_every_field_of_a_peer_request_is_set(rpc):
    method = STORE.methods_by_name.get(rpc) or EMBEDDER.methods_by_name[rpc]
    requests = [make() for make in PEER_REQUESTS[rpc]]
    allowed = {path for (r, path) in NOT_SENT if r == rpc}
    assert unset(requests, method.input_type) == allowed


def test_the_core_and_its_values_import_no_protobuf_and_no_grpc():
    """Outside ``if TYPE_CHECKING:``: the core speaks plain values; conversions live at the edge."""
    gateway = Path(__file__).resolve().parents[1] / "gateway"
    for module in ("core.py", "values.py", "mapping.py"):
        tree = ast.parse((gateway / module).read_text())
        typing_only = {
            id(node)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
            for node in ast.walk(block)
        }
        names = [
            alias.name if isinstance(node, ast.Import) else f"{node.module}.{alias.name}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in typing_only
            for alias in node.names
        ]
        assert not [n for n in names if "_pb2" in n or n.split(".")[0] == "grpc"], module
