"""Splitting SQL scripts into statements, remembering where each one starts.

Used to apply schema files one statement at a time so that a failure can name the
file, the line and the statement.  Understands quoting, comments, PostgreSQL
dollar quoting, MySQL ``DELIMITER`` lines and SQLite trigger bodies.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

__all__ = ["Statement", "split_sql"]

_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_DELIMITER = re.compile(r"^[ \t]*DELIMITER[ \t]+(\S+)[ \t]*$", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Statement:
    """One statement of a script: its text (without the terminator) and first line (1-based)."""

    text: str
    line: int

    def snippet(self, width: int = 80) -> str:
        flat = " ".join(self.text.split())
        return flat if len(flat) <= width else flat[: width - 3] + "..."


def split_sql(text: str, dialect: str) -> list[Statement]:
    """Split ``text`` into statements for ``dialect`` (``sqlite``, ``postgresql``, ``mysql``)."""
    if dialect == "sqlite":
        return _split_sqlite(text)
    return _split_generic(text, mysql=(dialect == "mysql"))


def _split_sqlite(text: str) -> list[Statement]:
    """Split at each ``;`` that completes a statement (as SQLite itself decides)."""
    out: list[Statement] = []
    start = 0
    position = text.find(";")
    while position >= 0:
        if sqlite3.complete_statement(text[start : position + 1]):
            _emit_sqlite(out, text, start, position)
            start = position + 1
        position = text.find(";", position + 1)
    _emit_sqlite(out, text, start, len(text))
    return out


def _emit_sqlite(out: list[Statement], text: str, start: int, end: int) -> None:
    begin = _skip_comments(text, start, end, mysql=False)
    stmt = text[begin:end].strip()
    if stmt and _has_code(stmt):
        out.append(Statement(stmt, 1 + text.count("\n", 0, begin)))


def _has_code(stmt: str) -> bool:
    without = re.sub(r"--[^\n]*|/\*.*?\*/", "", stmt, flags=re.DOTALL)
    return bool(without.strip(" \t\r\n;"))


_LEADING = re.compile(r"(?:\s+|--[^\n]*|/\*.*?\*/)*", re.DOTALL)
_LEADING_MYSQL = re.compile(r"(?:\s+|--[^\n]*|#[^\n]*|/\*(?!!).*?\*/)*", re.DOTALL)


def _skip_comments(text: str, start: int, end: int, *, mysql: bool) -> int:
    m = (_LEADING_MYSQL if mysql else _LEADING).match(text, start, end)
    return m.end() if m else start


def _split_generic(text: str, *, mysql: bool) -> list[Statement]:
    out: list[Statement] = []
    delimiter = ";"
    i, n = 0, len(text)
    start = 0
    line = 1
    start_line = 1

    def emit(end: int) -> None:
        begin = _skip_comments(text, start, end, mysql=mysql)
        stmt = text[begin:end].strip()
        if stmt:
            out.append(Statement(stmt, start_line + text.count("\n", start, begin)))

    while i < n:
        ch = text[i]
        at_line_start = i == 0 or text[i - 1] == "\n"
        if mysql and at_line_start:
            m = _DELIMITER.match(text, i)
            if m and not text[start:i].strip():
                delimiter = m.group(1)
                i = m.end()
                start, start_line = i, line
                continue
            if m:  # DELIMITER line ends the pending statement
                emit(i)
                delimiter = m.group(1)
                i = m.end()
                start, start_line = i, line
                continue
        if text.startswith(delimiter, i):
            emit(i)
            i += len(delimiter)
            start, start_line = i, line
            continue
        if ch == "\n":
            line += 1
            i += 1
        elif ch in ("'", '"', "`"):
            j = i + 1
            while j < n:
                c = text[j]
                if mysql and c == "\\" and ch != "`":
                    j += 2
                    continue
                if c == ch:
                    if j + 1 < n and text[j + 1] == ch:
                        j += 2
                        continue
                    break
                j += 1
            line += text.count("\n", i, j + 1)
            i = j + 1
        elif text.startswith("--", i) or (mysql and ch == "#"):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            line += text.count("\n", i, j)
            i = j
        elif ch == "$" and not mysql:
            m = _DOLLAR.match(text, i) if i == 0 or not (text[i - 1].isalnum() or text[i - 1] in "_$") else None
            if m:
                end = text.find(m.group(0), m.end())
                end = n if end < 0 else end + len(m.group(0))
                line += text.count("\n", i, end)
                i = end
            else:
                i += 1
        else:
            i += 1
    emit(n)
    return out
