"""Wire compatibility of the v1 contracts, buf-style: the protos as they are now are compared
with the descriptor set committed in protos/embedsearch_v1.binpb, and a change that would break
a client or server built from the committed contracts fails, until the descriptor is renewed on
purpose with `make proto-descriptor`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf.descriptor_pb2 import (
    DescriptorProto,
    EnumDescriptorProto,
    FieldDescriptorProto,
    FileDescriptorSet,
    ServiceDescriptorProto,
)

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
COMMITTED = PROTOS / "embedsearch_v1.binpb"
T = FieldDescriptorProto
# Field types that read each other's encoding (the protobuf language guide's "updating a
# message type"): varints among themselves, zigzag varints, fixed widths, UTF-8 and raw bytes.
WIRE_GROUPS = [
    {T.TYPE_INT32, T.TYPE_INT64, T.TYPE_UINT32, T.TYPE_UINT64, T.TYPE_BOOL, T.TYPE_ENUM},
    {T.TYPE_SINT32, T.TYPE_SINT64},
    {T.TYPE_FIXED32, T.TYPE_SFIXED32},
    {T.TYPE_FIXED64, T.TYPE_SFIXED64},
    {T.TYPE_STRING, T.TYPE_BYTES},
]


def descriptor_set(proto_root: Path) -> FileDescriptorSet:
    """Compile every .proto under ``proto_root`` with protoc, imports included."""
    files = sorted(str(p.relative_to(proto_root)) for p in proto_root.rglob("*.proto"))
    out = proto_root / "current.binpb"
    protoc = [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_root}", "--include_imports"]
    subprocess.run(
        [*protoc, f"--descriptor_set_out={out}", *files],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return FileDescriptorSet.FromString(out.read_bytes())


def _messages(
    prefix: str, messages: list[DescriptorProto]
) -> Iterator[tuple[str, DescriptorProto]]:
    for message in messages:
        name = f"{prefix}.{message.name}"
        yield name, message
        yield from _messages(name, list(message.nested_type))


def index(
    files: FileDescriptorSet,
) -> tuple[
    dict[str, DescriptorProto], dict[str, EnumDescriptorProto], dict[str, ServiceDescriptorProto]
]:
    """Messages (nested and map entries included), enums and services by full name."""
    messages, enums, services = {}, {}, {}
    for file in files.file:
        prefix = f".{file.package}" if file.package else ""
        messages.update(_messages(prefix, list(file.message_type)))
        enums.update({f"{prefix}.{e.name}": e for e in file.enum_type})
        services.update({f"{prefix}.{s.name}": s for s in file.service})
    for name, message in list(messages.items()):
        enums.update({f"{name}.{e.name}": e for e in message.enum_type})
    return messages, enums, services


def _reserved(number: int, ranges: list) -> bool:  # type: ignore[type-arg]
    return any(r.start <= number < r.end for r in ranges)


def _field_change(where: str, old: FieldDescriptorProto, new: FieldDescriptorProto) -> list[str]:
    problems = []
    if (old.label == T.LABEL_REPEATED) != (new.label == T.LABEL_REPEATED):
        problems.append(f"{where}: repeated changed")
    if old.type != new.type and not any({old.type, new.type} <= group for group in WIRE_GROUPS):
        problems.append(f"{where}: type {T.Type.Name(old.type)} became {T.Type.Name(new.type)}")
    elif old.type in (T.TYPE_MESSAGE, T.TYPE_GROUP) and old.type_name != new.type_name:
        problems.append(f"{where}: message type {old.type_name} became {new.type_name}")
    # A synthetic oneof (proto3 `optional`) only tracks presence; a real one changes parsing.
    old_oneof = old.HasField("oneof_index") and not old.proto3_optional
    new_oneof = new.HasField("oneof_index") and not new.proto3_optional
    if old_oneof != new_oneof:
        problems.append(f"{where}: moved into or out of a oneof")
    return problems


def breaking_changes(old_set: FileDescriptorSet, new_set: FileDescriptorSet) -> list[str]:
    """What in ``new_set`` a peer built from ``old_set`` would misread or fail to call."""
    old_messages, old_enums, old_services = index(old_set)
    new_messages, new_enums, new_services = index(new_set)
    problems = []
    for name, service in old_services.items():
        if name not in new_services:
            problems.append(f"service {name} deleted")
            continue
        methods = {m.name: m for m in new_services[name].method}
        for method in service.method:
            where = f"rpc {name}.{method.name}"
            now = methods.get(method.name)
            if now is None:
                problems.append(f"{where} deleted")
                continue
            if (now.input_type, now.output_type) != (method.input_type, method.output_type):
                problems.append(f"{where}: request or response type changed")
            if (now.client_streaming, now.server_streaming) != (
                method.client_streaming,
                method.server_streaming,
            ):
                problems.append(f"{where}: streaming changed")
    for name, message in old_messages.items():
        now = new_messages.get(name)
        if now is None:
            continue  # whatever used it changed its field type, and is reported there
        fields = {f.number: f for f in now.field}
        for field in message.field:
            where = f"{name}.{field.name} = {field.number}"
            if field.number in fields:
                problems += _field_change(where, field, fields[field.number])
            elif not _reserved(field.number, list(now.reserved_range)):
                problems.append(f"{where}: deleted without reserving its number")
    for name, enum in old_enums.items():
        now = new_enums.get(name)
        if now is None:
            continue
        numbers = {v.number for v in now.value}
        for value in enum.value:
            if value.number not in numbers and not any(
                r.start <= value.number <= r.end for r in now.reserved_range
            ):
                problems.append(f"{name}.{value.name} = {value.number}: deleted without reserving")
    return problems


@pytest.fixture(scope="module")
def committed() -> FileDescriptorSet:
    return FileDescriptorSet.FromString(COMMITTED.read_bytes())


@pytest.fixture
def proto_copy(tmp_path: Path) -> Path:
    """A copy of protos/embedsearch to change."""
    shutil.copytree(PROTOS / "embedsearch", tmp_path / "embedsearch")
    return tmp_path


def edit(root: Path, name: str, old: str, new: str) -> None:
    path = root / "embedsearch" / "v1" / name
    text = path.read_text()
    assert old in text, f"{name} no longer has {old!r}: update this test's example change"
    path.write_text(text.replace(old, new, 1))


def test_the_protos_keep_the_committed_wire_contract(committed, proto_copy):
    problems = breaking_changes(committed, descriptor_set(proto_copy))
    assert not problems, (
        "wire-incompatible change to the v1 protos:\n  "
        + "\n  ".join(problems)
        + "\nMake it compatible (add fields, reserve removed numbers), or, if the break is "
        "deliberate, accept it with `make proto-descriptor`."
    )


def test_the_committed_descriptor_covers_every_contract(committed):
    names = {f.name for f in committed.file}
    on_disk = {str(p.relative_to(PROTOS)) for p in (PROTOS / "embedsearch").rglob("*.proto")}
    assert on_disk <= names


BREAKING = [
    ("gateway.proto", "uint32 k = 6;", "string k = 6;", "type TYPE_UINT32 became TYPE_STRING"),
    ("gateway.proto", "  bool postfilter = 9;\n", "", "deleted without reserving"),
    ("gateway.proto", "repeated string columns = 10;", "string columns = 10;", "repeated"),
    ("gateway.proto", "rpc Restore(", "rpc RestoreVersion(", "Gateway.Restore deleted"),
    ("gateway.proto", "rpc AddStream(stream AddRequest)", "rpc AddStream(AddRequest)", "stream"),
    ("common.proto", "  METRIC_DOT = 3;\n", "", "METRIC_DOT = 3: deleted"),
    ("gateway.proto", "service Gateway {", "service PublicGateway {", "Gateway deleted"),
]


@pytest.mark.parametrize(("name", "old", "new", "reported"), BREAKING)
def test_a_wire_incompatible_change_is_caught(committed, proto_copy, name, old, new, reported):
    edit(proto_copy, name, old, new)
    problems = breaking_changes(committed, descriptor_set(proto_copy))
    assert any(reported in p for p in problems), problems


COMPATIBLE = [
    ("gateway.proto", "  bool postfilter = 9;\n", "  reserved 9;\n"),
    ("gateway.proto", "uint32 k = 6;", "uint32 top_k = 6;"),  # names are not on the wire
    ("gateway.proto", "uint32 k = 6;", "uint64 k = 6;"),
    ("gateway.proto", "  uint32 ef = 13;\n", "  uint32 ef = 13;\n  uint32 added = 99;\n"),
    (
        "gateway.proto",
        "service Gateway {\n",
        "service Gateway {\n  // New.\n"
        "  rpc Ping(ListTablesRequest) returns (ListTablesResponse);\n",
    ),
]


@pytest.mark.parametrize(("name", "old", "new"), COMPATIBLE)
def test_a_compatible_change_passes(committed, proto_copy, name, old, new):
    edit(proto_copy, name, old, new)
    assert breaking_changes(committed, descriptor_set(proto_copy)) == []
