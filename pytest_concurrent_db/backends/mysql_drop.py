"""Dropping a MySQL/MariaDB database that sessions may still use.

``drop`` kills the sessions whose default database is the one dropped (the control connection never
selects one, so it is never hit).  A session holding metadata locks on it from another default
database is found only through performance_schema.metadata_locks (MySQL 8) or the
metadata_lock_info plugin (MariaDB); otherwise the drop fails after 60 s naming no holder.
"""

from __future__ import annotations

import time

from ..errors import ConcurrentDBError
from .mysql_control import (
    ER_DB_DROP_RMDIR,
    ER_KILL_DENIED,
    ER_LOCK_WAIT_TIMEOUT,
    ER_NO_SUCH_TABLE,
    ER_NO_SUCH_THREAD,
    ER_UNKNOWN_TABLE,
    PRIVILEGE_ERRORS,
    MySQLControl,
    error_number,
)
from .mysql_recipe import quote_ident

__all__ = ["MySQLDrop"]

_DROP_DEADLINE = 60.0
_DROP_LOCK_WAIT = 2  # seconds a DROP waits for metadata locks before we look for holders
_RMDIR_WAIT = 5.0  # seconds a DROP that left the directory (a file not yet unlinked?) is tried again


class MySQLDrop(MySQLControl):
    """Drop a database, killing the sessions on it and those holding its metadata locks."""

    def _drop_database(self, name: str) -> None:
        """Kill every other session on ``name`` and drop it, not waiting on a lock forever."""
        deadline = time.monotonic() + _DROP_DEADLINE
        rmdir_deadline: float | None = None  # set by the first DROP that left the directory
        try:
            while True:
                # again each time: a control connection opened after a lost one starts with the default
                self._execute("SET SESSION lock_wait_timeout = %s", (_DROP_LOCK_WAIT,))
                self._kill(self._sessions_on(name))
                conn = self._control()
                try:
                    self._execute("DROP DATABASE IF EXISTS " + quote_ident(name), retry=False)
                except Exception as exc:
                    if self._ended(exc, conn) and time.monotonic() <= deadline:
                        continue  # the server ended the control connection: again on a new one
                    if error_number(exc) == ER_DB_DROP_RMDIR:
                        # the tables are gone, the directory holds a file the server does not know:
                        # try again for a while (a file the server unlinks late), then say which to remove
                        rmdir_deadline = rmdir_deadline or time.monotonic() + _RMDIR_WAIT
                        if time.monotonic() > rmdir_deadline:
                            raise _undroppable(name, exc) from None
                        time.sleep(0.25)
                        continue
                    if error_number(exc) != ER_LOCK_WAIT_TIMEOUT:
                        raise
                    holders = self._lock_holders(name)
                    if time.monotonic() > deadline:
                        raise ConcurrentDBError(
                            f"cannot drop MySQL database {name!r}: metadata locks held for "
                            f"{_DROP_DEADLINE:g}s by MySQL connections {holders or '(not visible)'}; end those "
                            f"sessions (a transaction left open in another database can hold them)"
                        ) from None
                    self._kill(holders)
                else:
                    return
        finally:
            if self._conn is not None and self._conn.open:
                self._execute("SET SESSION lock_wait_timeout = DEFAULT")

    def _sessions_on(self, name: str) -> list[int]:
        rows = self._query(
            "SELECT ID, DB FROM information_schema.PROCESSLIST WHERE DB = %s AND ID <> CONNECTION_ID()", (name,)
        )
        return [int(i) for i, db in rows if db == name]

    def _lock_holders(self, name: str) -> list[int]:
        """Sessions holding metadata locks in ``name`` (when the server can tell)."""
        queries = (
            # MySQL 8 (and MariaDB with performance_schema on)
            "SELECT DISTINCT t.PROCESSLIST_ID FROM performance_schema.metadata_locks m"
            " JOIN performance_schema.threads t ON t.THREAD_ID = m.OWNER_THREAD_ID"
            " WHERE m.OBJECT_SCHEMA = %s AND m.LOCK_STATUS = 'GRANTED' AND t.PROCESSLIST_ID <> CONNECTION_ID()",
            # MariaDB with the metadata_lock_info plugin
            "SELECT DISTINCT THREAD_ID FROM information_schema.METADATA_LOCK_INFO"
            " WHERE TABLE_SCHEMA = %s AND THREAD_ID <> CONNECTION_ID()",
        )
        for sql in queries:
            try:
                return [int(row[0]) for row in self._query(sql, (name,)) if row[0] is not None]
            except Exception as exc:  # table missing or not readable: try the next way
                if error_number(exc) not in (ER_UNKNOWN_TABLE, ER_NO_SUCH_TABLE, *PRIVILEGE_ERRORS):
                    raise
        return []

    def _kill(self, ids: list[int]) -> None:
        for session in ids:
            try:
                self._execute("KILL %s", (session,))
            except Exception as exc:
                if error_number(exc) not in (ER_NO_SUCH_THREAD, ER_KILL_DENIED):
                    raise


def _undroppable(name: str, error: Exception) -> ConcurrentDBError:
    detail = error.args[1] if len(error.args) > 1 else str(error)
    return ConcurrentDBError(
        f"cannot drop MySQL database {name!r}: its tables are gone but the server cannot remove its "
        f"directory ({detail}): a file the server did not make is in it (SELECT ... INTO OUTFILE, a copy "
        f"by hand); remove that file from the server's data directory, then run "
        f"`python -m pytest_concurrent_db prune --yes`"
    )
