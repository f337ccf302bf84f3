"""SQL literals for the filters embedsearch writes itself (updates by value, key lookups), and
the structural check every filter and update expression from a caller passes."""

from __future__ import annotations

import datetime
from typing import Any

from embedsearch.errors import InvalidArgument


def sql_literal(value: Any) -> str:
    """A value as a Lance SQL literal; TypeError for a type with no literal form here.

    >>> sql_literal("it's")
    "'it''s'"
    """
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, datetime.datetime):
        return f"TIMESTAMP '{value.isoformat(sep=' ')}'"
    if isinstance(value, datetime.date):
        return f"DATE '{value.isoformat()}'"
    raise TypeError(f"no SQL literal for {type(value).__name__}")


def keys_filter(on: list[str], keys: list[tuple[Any, ...]]) -> str:
    """A filter matching rows whose ``on`` columns equal one of ``keys``."""
    if len(on) == 1:
        return f"{on[0]} IN ({', '.join(sql_literal(key[0]) for key in keys)})"
    return " OR ".join(
        "(" + " AND ".join(f"{c} = {sql_literal(v)}" for c, v in zip(on, key, strict=True)) + ")"
        for key in keys
    )


def check_expression(sql: str, what: str = "filter") -> str:
    """``sql`` if it is one whole SQL expression as far as quoting, brackets and statement
    separators go; InvalidArgument otherwise.

    Lance's parser reads the longest expression it can and drops the rest, so without this
    ``"true; DELETE FROM t"`` or ``"1=1) OR (1=1"`` would run as ``true`` and ``1=1``.

    >>> check_expression("name = 'a;b' AND (x > 1)")
    "name = 'a;b' AND (x > 1)"
    """
    depth, quote = 0, ""
    for char in sql:
        if quote:
            quote = "" if char == quote else quote  # a doubled quote closes and reopens
        elif char in "'\"`":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise InvalidArgument(f"bad {what} {sql!r}: ')' without its '('")
        elif char == ";":
            raise InvalidArgument(f"bad {what} {sql!r}: one expression only, no ';'")
    if quote:
        raise InvalidArgument(f"bad {what} {sql!r}: unterminated {quote}…{quote} quote")
    if depth:
        raise InvalidArgument(f"bad {what} {sql!r}: '(' without its ')'")
    return sql
