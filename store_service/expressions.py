"""The one checker every caller's SQL expression passes before Lance sees it."""

from __future__ import annotations

import re
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from embedsearch.contract.errors import InvalidArgument
from embedsearch.contract.text import brief

# One token of Lance's SQL dialect. Literals and quoted identifiers are whole tokens (a doubled
# quote stays inside), so nothing in them is mistaken for an operator, bracket or keyword.
_TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<literal>'(?:[^']|'')*'|"(?:[^"]|"")*"|`(?:[^`]|``)*`)
    | (?P<unterminated>['"`])
    | (?P<comment>--|/\*)
    | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<word>[^\W\d]\w*)
    | (?P<operator><=|>=|<>|!=|\|\||::|!~\*|!~|~\*|[-+*/%<>=~!&|^])
    | (?P<open>[(\[])
    | (?P<close>[)\]])
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
# Keywords that are operators (each one a node of the expression tree, like `+`).
_KEYWORD_OPERATORS = frozenset(
    {"AND", "OR", "NOT", "IS", "IN", "LIKE", "ILIKE", "BETWEEN", "CASE", "WHEN", "SIMILAR"}
)
# Keywords that start another clause or statement. Lance embeds a filter in
# `SELECT ... WHERE <filter>` and keeps only the WHERE part, so `true LIMIT 0` or
# `x = 1 ORDER BY y` would run as their first part: one whole expression only.
_CLAUSES = frozenset(
    {
        "SELECT", "FROM", "WHERE", "GROUP", "HAVING", "ORDER", "LIMIT", "OFFSET", "UNION",
        "INTERSECT", "EXCEPT", "WINDOW", "QUALIFY", "INTO", "FETCH", "JOIN", "DELETE", "DROP",
        "INSERT", "UPDATE", "CREATE", "ALTER", "WITH",
    }
)  # fmt: skip


class ExpressionLimits(BaseModel):
    """Bounds on one SQL expression. Lance's parser and planner recurse over the expression
    tree, so a long chain (`1 + 1 + … + 1`) or deep nesting costs quadratic CPU and can
    overflow a thread's stack, killing the store, and its parser backtracks exponentially over
    runs of prefix operators; these bounds keep every expression far from all three.

    A group of the store's settings (StoreSettings inherits it), whose flags these fields are:
    refusals name them."""

    model_config = ConfigDict(extra="forbid")
    env_prefix: ClassVar[str] = "STORE_"

    max_expression_bytes: int = Field(
        64 * 1024, ge=1, description="Longest filter, condition or SQL expression, in bytes."
    )
    max_expression_operators: int = Field(
        256,
        ge=1,
        description="Most operators (AND, OR, =, +, …) in one expression: Lance's planner "
        "costs grow quadratically with them, and very long chains overflow its stack.",
    )
    max_expression_depth: int = Field(
        32, ge=1, description="Deepest nesting of brackets in one expression."
    )
    max_expression_run: int = Field(
        8,
        ge=1,
        description="Most operators and opening brackets in a row, before an operand: Lance's "
        "parser takes exponential time over chains of prefix operators such as `NOT +NOT +…`.",
    )

    def _setting(self, name: str) -> str:
        return f"--{name.replace('_', '-')} ({self.env_prefix}{name.upper()})"

    def check(self, sql: str, what: str = "filter") -> str:
        """``sql`` if it is one whole expression within the bounds; InvalidArgument naming
        the bound or the fault otherwise.

        >>> ExpressionLimits().check("name = 'a;b' AND (x > 1)")
        "name = 'a;b' AND (x > 1)"
        """
        size = len(sql.encode("utf-8", "surrogatepass"))
        if size > self.max_expression_bytes:
            raise InvalidArgument(
                f"{what} is {size} bytes, over {self._setting('max_expression_bytes')} = "
                f"{self.max_expression_bytes}: {brief(sql)}",
                metadata={"setting": "max_expression_bytes"},
            )
        depth = operators = run = 0
        for token in _TOKEN.finditer(sql):
            kind, text = token.lastgroup, token.group()
            if kind == "space":
                continue
            # Operators and brackets in a row, before any operand: Lance's parser backtracks
            # over runs of prefix operators (`NOT +NOT +…`), exponentially (25 took 48 s).
            operator = kind == "operator" or (kind == "word" and text.upper() in _KEYWORD_OPERATORS)
            run = run + 1 if operator or kind == "open" else 0
            operators += operator
            if run > self.max_expression_run:
                self._refuse(
                    sql,
                    what,
                    f"more than {self._setting('max_expression_run')} = {self.max_expression_run} "
                    "operators and brackets in a row",
                    "max_expression_run",
                )
            if kind == "word":
                upper = text.upper()
                if upper in _CLAUSES:
                    self._refuse(sql, what, f"one expression only, no {upper} clause")
            elif kind == "open":
                depth += 1
                if depth > self.max_expression_depth:
                    self._refuse(
                        sql,
                        what,
                        f"brackets nest deeper than {self._setting('max_expression_depth')} = "
                        f"{self.max_expression_depth}",
                        "max_expression_depth",
                    )
            elif kind == "close":
                depth -= 1
                if depth < 0:
                    self._refuse(sql, what, f"{text!r} without its opening bracket")
            elif kind == "unterminated":
                self._refuse(sql, what, f"unterminated {text}…{text} quote")
            elif kind == "comment":
                self._refuse(sql, what, "comments are not allowed")
            elif kind == "other" and text == ";":
                self._refuse(sql, what, "one expression only, no ';'")
            if operators > self.max_expression_operators:
                self._refuse(
                    sql,
                    what,
                    f"more than {self._setting('max_expression_operators')} = "
                    f"{self.max_expression_operators} operators",
                    "max_expression_operators",
                )
        if depth:
            self._refuse(sql, what, "a bracket is not closed")
        return sql

    def _refuse(self, sql: str, what: str, why: str, setting: str = "") -> None:
        """Refuse ``sql``; ``setting`` names the bound it went over (ErrorInfo metadata)."""
        metadata = {"setting": setting} if setting else None
        raise InvalidArgument(f"bad {what} {brief(sql)}: {why}", metadata=metadata)
