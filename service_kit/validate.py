"""Requests parsed by the server kit itself: bytes that are no valid message, and enum values the
contract does not define, are the caller's error (INVALID_ARGUMENT), on every RPC."""

from __future__ import annotations

from functools import cache
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from embedsearch.contract.errors import InvalidArgument


def parse_request(message_class: type[Message], data: bytes) -> Message:
    """``data`` parsed as a ``message_class``, its enum values checked (:func:`check_enums`);
    InvalidArgument ("request is not a valid StoreDropTableRequest: ...") when it does not parse.
    """
    try:
        message = message_class.FromString(data)
    except DecodeError as exc:
        # upb says "Error parsing message with type '<full name>': <reason>"; keep the reason.
        reason = str(exc).rpartition("': ")[2] or "it does not decode"
        raise InvalidArgument(
            f"request is not a valid {message_class.DESCRIPTOR.name}: {reason}"
        ) from None
    check_enums(message)
    return message


def check_enums(message: Message, path: str = "") -> None:
    """Refuse an enum value the contract does not define, anywhere in ``message``.

    proto3 enums are open: a value a client made up (``query_type=99``) parses and is kept, and
    would otherwise reach code that assumes one of the listed values. Nested messages, repeated
    fields and map values are walked; subtrees whose type holds no enum are skipped.
    """
    descriptor = message.DESCRIPTOR
    if not _holds_enums(descriptor):
        return
    for field, value in message.ListFields():
        name = f"{path}{field.name}"
        if field.type == FieldDescriptor.TYPE_ENUM:
            values = value if _is_repeated(field) else [value]
            for index, number in enumerate(values):
                if number not in field.enum_type.values_by_number:
                    at = f"{name}[{index}]" if _is_repeated(field) else name
                    raise _unknown(at, number, field.enum_type)
        elif field.type == FieldDescriptor.TYPE_MESSAGE and _holds_enums(field.message_type):
            if _is_map(field):
                _check_map(value, field, name)
            elif _is_repeated(field):
                for index, item in enumerate(value):
                    check_enums(item, f"{name}[{index}].")
            else:
                check_enums(value, f"{name}.")


def _check_map(entries: Any, field: FieldDescriptor, name: str) -> None:
    value_field = field.message_type.fields_by_name["value"]
    for key, item in entries.items():
        at = f"{name}[{key!r}]"
        if value_field.type == FieldDescriptor.TYPE_ENUM:
            if item not in value_field.enum_type.values_by_number:
                raise _unknown(at, item, value_field.enum_type)
        else:
            check_enums(item, f"{at}.")


def _unknown(field: str, number: int, enum: EnumDescriptor) -> InvalidArgument:
    """The error for an enum value the contract does not define, naming the field at fault
    (a ``BadRequest`` field violation)."""
    allowed = ", ".join(f"{v.name} ({v.number})" for v in enum.values)
    why = f"use one of {allowed}"
    return InvalidArgument(
        f"{field} is {number}, which is no {enum.name}: {why}",
        field_violations=[(field, f"{number} is no {enum.name}: {why}")],
    )


def _is_repeated(field: FieldDescriptor) -> bool:
    repeated = getattr(field, "is_repeated", None)  # protobuf >= 6.31; `label` before
    return field.label == FieldDescriptor.LABEL_REPEATED if repeated is None else repeated


def _is_map(field: FieldDescriptor) -> bool:
    return _is_repeated(field) and field.message_type.GetOptions().map_entry


@cache
def _holds_enums(descriptor: Descriptor) -> bool:
    """Whether a message of this type can carry an enum value, at any depth."""
    seen: set[str] = set()
    pending = [descriptor]
    while pending:
        current = pending.pop()
        if current.full_name in seen:
            continue
        seen.add(current.full_name)
        for field in current.fields:
            if field.type == FieldDescriptor.TYPE_ENUM:
                return True
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                pending.append(field.message_type)
    return False
