"""SQL literals and identifiers for the filters embedsearch writes itself (updates by value, key
lookups). The store checks every expression it receives: store_service/expressions.py."""

from __future__ import annotations

import datetime
from typing import Any


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
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return sql_literal(value.tolist())
    if isinstance(value, list | tuple):  # vectors and lists: an array literal
        return "[" + ", ".join(sql_literal(v) for v in value) + "]"
    raise TypeError(f"no SQL literal for {type(value).__name__}")


def keys_filter(on: list[str], keys: list[tuple[Any, ...]]) -> str:
    """A filter matching rows whose ``on`` columns equal one of ``keys``."""
    columns = [quote_identifier(c) for c in on]
    if len(on) == 1:
        return f"{columns[0]} IN ({', '.join(sql_literal(key[0]) for key in keys)})"
    return " OR ".join(
        "("
        + " AND ".join(f"{c} = {sql_literal(v)}" for c, v in zip(columns, key, strict=True))
        + ")"
        for key in keys
    )


def quote_identifier(name: str) -> str:
    """A column name as a quoted SQL identifier: any name, keywords and spaces included.

    >>> quote_identifier("order")
    '`order`'
    """
    return "`" + name.replace("`", "``") + "`"
