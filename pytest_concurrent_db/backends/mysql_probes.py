"""Isolation probes on a user's MySQL/MariaDB connection (never the control connection).

Functions of the connection they look at; only the transaction probe keeps state (what it saw last
time on each connection), so it is a small object the backend holds.
"""

from __future__ import annotations

import weakref
from typing import Any

from .mysql_control import ER_NO_SUCH_TABLE, PRIVILEGE_ERRORS, error_number, is_mariadb, one_line
from .mysql_recipe import quote_ident

__all__ = ["TransactionProbe", "current_database", "other_sessions", "row_counts"]


def current_database(connection: Any) -> str:
    with connection.cursor() as cur:
        cur.execute("SELECT DATABASE()")
        row = cur.fetchone()
    return str(row[0]) if row and row[0] is not None else ""


class TransactionProbe:
    """``in_transaction`` for MySQL/MariaDB connections, remembering each connection's counters."""

    def __init__(self) -> None:
        # per user connection: its row-write, commit and rollback counters at the last
        # probe, and the answer given then
        self._marks: weakref.WeakKeyDictionary[Any, tuple[int, int, int, bool]] = weakref.WeakKeyDictionary()

    def __call__(self, connection: Any) -> bool:
        """True if the open transaction of ``connection`` wrote (MySQL: or locked) rows.

        A DB-API connection opens a transaction with any SELECT; one that only read is no
        leftover (as on PostgreSQL).  INNODB_TRX cannot tell: InnoDB refreshes it at most
        every 0.1 s.  MariaDB: ``@@in_transaction`` and the session's row-write counters
        (which leave out internal temporary tables) since the previous probe; if the test
        committed meanwhile the writes may be committed ones and the answer is False (the
        caller rolls back either way).  MySQL: its InnoDB locks in performance_schema.
        """
        with connection.cursor() as cur:
            if not is_mariadb(connection):
                return _mysql_in_transaction(cur)
            cur.execute(
                "SELECT @@in_transaction, SUM(IF(VARIABLE_NAME IN ('HANDLER_WRITE', 'HANDLER_UPDATE',"
                " 'HANDLER_DELETE'), VARIABLE_VALUE, 0)), SUM(IF(VARIABLE_NAME IN ('COM_COMMIT', 'COM_XA_COMMIT'),"
                " VARIABLE_VALUE, 0)), SUM(IF(VARIABLE_NAME IN ('COM_ROLLBACK', 'COM_XA_ROLLBACK'), VARIABLE_VALUE, 0))"
                " FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME IN ('HANDLER_WRITE', 'HANDLER_UPDATE',"
                " 'HANDLER_DELETE', 'COM_COMMIT', 'COM_XA_COMMIT', 'COM_ROLLBACK', 'COM_XA_ROLLBACK')"
            )
            row = cur.fetchone()
        open_ = bool(row[0])
        state = (int(row[1] or 0), int(row[2] or 0), int(row[3] or 0))  # writes, commits, rollbacks
        last = self._marks.get(connection)
        if last is not None and last[:3] == state:  # nothing written or ended since: same answer
            answer = open_ and last[3]
        else:
            writes, commits = (last[0], last[1]) if last is not None else (0, 0)
            answer = open_ and state[0] > writes and state[1] == commits
        self._marks[connection] = (*state, answer)
        return answer


def _mysql_in_transaction(cur: Any) -> bool:
    try:
        cur.execute(
            "SELECT COUNT(*) FROM performance_schema.data_locks l JOIN performance_schema.threads t"
            " ON t.THREAD_ID = l.THREAD_ID WHERE t.PROCESSLIST_ID = CONNECTION_ID()"
        )
    except Exception as exc:
        if error_number(exc) not in (*PRIVILEGE_ERRORS, ER_NO_SUCH_TABLE):
            raise
        cur.execute(  # may lag by up to 0.1 s
            "SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_mysql_thread_id = CONNECTION_ID()"
            " AND (trx_rows_modified > 0 OR trx_lock_structs > 0)"
        )
    row = cur.fetchone()
    return bool(row and row[0])


def other_sessions(name: str, connection: Any) -> list[str]:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT ID, USER, HOST, COMMAND, TIME, INFO, DB FROM information_schema.PROCESSLIST"
            " WHERE DB = %s AND ID <> CONNECTION_ID() ORDER BY ID",
            (name,),
        )
        rows = cur.fetchall()
    out = []
    for session, user, host, command, seconds, info, db in rows:
        if db != name:
            continue
        text = f"connection {session} {user}@{host} ({command}, {seconds}s)"
        if info:
            text += ": " + one_line(info)[:80]
        out.append(text)
    return out


def row_counts(connection: Any) -> dict[str, int]:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()"
            " AND TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED') ORDER BY TABLE_NAME"
        )
        tables = [str(row[0]) for row in cur.fetchall()]
        if not tables:
            return {}
        cur.execute(
            " UNION ALL ".join("SELECT " + str(i) + ", COUNT(*) FROM " + quote_ident(t) for i, t in enumerate(tables))
        )
        return {tables[int(i)]: int(count) for i, count in cur.fetchall()}
