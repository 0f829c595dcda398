"""Running a SQL script on a PostgreSQL connection, and finding the statement that failed."""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg

from ..errors import ScriptError
from ..sqlscript import Statement, split_sql
from .postgresql_control import reason_of

__all__ = ["run_script"]


def run_script(connection: Any, text: str, source: str) -> None:
    """Run ``text`` in one round trip; on error find the statement from the error
    position, or (no position: an execution error) by replaying it statement by
    statement in a transaction that is rolled back."""
    conn: psycopg.Connection[Any] = connection
    try:
        if text.strip():
            conn.execute(text)
        conn.commit()
    except psycopg.Error as exc:
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
        error = exc
    else:
        return
    statements = split_sql(text, "postgresql")
    position = error.diag.statement_position if isinstance(error, psycopg.DatabaseError) else None
    failed = _at(text, statements, int(position) - 1) if position else _replay_until_error(conn, statements)
    where = f"{source}:{failed.line}: {failed.snippet()}" if failed else source
    raise ScriptError(
        f"{where}: {reason_of(error)}",
        source,
        failed.line if failed else 0,
        failed.snippet() if failed else "",
    )


def _at(text: str, statements: list[Statement], offset: int) -> Statement | None:
    """The statement of ``statements`` that holds character ``offset`` of ``text``."""
    found, cursor = None, 0
    for stmt in statements:
        start = text.find(stmt.text, cursor)
        if start < 0 or start > offset:
            break
        found, cursor = stmt, start + len(stmt.text)
    return found


def _replay_until_error(conn: psycopg.Connection[Any], statements: list[Statement]) -> Statement | None:
    """The first of ``statements`` that fails, run one by one in a transaction rolled back."""
    with contextlib.suppress(psycopg.Error):
        try:
            with conn.transaction(force_rollback=True):
                for stmt in statements:
                    try:
                        conn.execute(stmt.text)
                    except psycopg.Error:
                        return stmt
        finally:
            if not conn.autocommit:
                conn.rollback()
    return None
