"""Transactions with an isolation level and read-only mode, and one connection per thread.

Both work on plain DB-API connections (psycopg 3, PyMySQL, sqlite3) of a
:class:`~.clones.ConcurrentDatabase`; the SQLAlchemy fixtures apply the same
:func:`begin` to the DB-API connection under their ``Connection``.

Levels are checked against what the backend really does, never silently downgraded:
PostgreSQL runs ``READ UNCOMMITTED`` as ``READ COMMITTED`` and SQLite runs every
transaction ``SERIALIZABLE``, so those requests are errors.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .clones import ConcurrentDatabase

__all__ = [
    "ISOLATION_LEVELS",
    "ThreadConnections",
    "TransactionOptions",
    "begin",
    "thread_connections",
    "transaction",
    "transaction_options",
]

ISOLATION_LEVELS = ("READ UNCOMMITTED", "READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE")
_SUPPORTED = {
    "postgresql": ("READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"),
    "mysql": ISOLATION_LEVELS,
    "sqlite": ("SERIALIZABLE",),
}
_WHY = {
    "postgresql": "PostgreSQL runs READ UNCOMMITTED as READ COMMITTED (it never reads uncommitted rows)",
    "sqlite": "SQLite runs every transaction SERIALIZABLE",
}
#: MySQL's session settings, as literal texts so that nothing else reaches the server
_MYSQL_LEVEL = {
    "READ UNCOMMITTED": "SET SESSION TRANSACTION ISOLATION LEVEL READ UNCOMMITTED",
    "READ COMMITTED": "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
    "REPEATABLE READ": "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
    "SERIALIZABLE": "SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE",
}
_MYSQL_READ_ONLY = {True: "SET SESSION TRANSACTION READ ONLY", False: "SET SESSION TRANSACTION READ WRITE"}
#: MySQL 8 and MariaDB 11.1+ name them transaction_*; MariaDB before, tx_*
_MYSQL_CURRENT = (
    "SELECT @@session.transaction_isolation, @@session.transaction_read_only",
    "SELECT @@session.tx_isolation, @@session.tx_read_only",
)


@dataclass(frozen=True)
class TransactionOptions:
    """A checked request: ``isolation_level`` one of :data:`ISOLATION_LEVELS` (or None: the
    server's default) and ``read_only``."""

    isolation_level: str | None = None
    read_only: bool = False

    @property
    def default(self) -> bool:
        return self.isolation_level is None and not self.read_only


def transaction_options(
    backend: str, isolation_level: str | None = None, read_only: bool = False
) -> TransactionOptions:
    """Check ``isolation_level`` (any case, ``_`` for spaces) against ``backend``; raise a
    one-line ConfigError for an unknown level or one the backend does not really run."""
    if not isinstance(read_only, bool):
        raise ConfigError(f"read_only must be True or False, not {read_only!r}")
    if isolation_level is None:
        return TransactionOptions(None, read_only)
    level = " ".join(str(isolation_level).replace("_", " ").upper().split())
    if level not in ISOLATION_LEVELS:
        raise ConfigError(
            f"unknown isolation level {isolation_level!r}: use one of {', '.join(ISOLATION_LEVELS)} (or None)"
        )
    supported = _SUPPORTED[backend]
    if level not in supported:
        raise ConfigError(
            f"isolation level {level} is not available on {backend}: {_WHY[backend]}; "
            f"use {' or '.join(supported)}, or None for the default"
        )
    return TransactionOptions(level, read_only)


def begin(backend: str, connection: Any, options: TransactionOptions) -> Callable[[], None]:
    """Make the next transaction of the idle DB-API ``connection`` use ``options``; returns
    the function that puts the connection back as it was (call it after the transaction).

    PostgreSQL: psycopg's ``isolation_level``/``read_only`` (its ``BEGIN`` carries them);
    MySQL: the session's (``SET SESSION TRANSACTION ...``, readable as ``@@tx_isolation``); SQLite:
    ``PRAGMA query_only`` for read-only (every transaction is serializable).
    """
    if options.default:
        return _nothing
    if backend == "postgresql":
        import psycopg

        saved = (connection.isolation_level, connection.read_only)
        if options.isolation_level is not None:
            connection.isolation_level = psycopg.IsolationLevel[options.isolation_level.replace(" ", "_")]
        if options.read_only:
            connection.read_only = True

        def undo() -> None:
            connection.isolation_level, connection.read_only = saved

        return undo
    if backend == "mysql":
        return _mysql_session(connection, options)
    if options.read_only:
        connection.execute("PRAGMA query_only = ON")
        return lambda: connection.execute("PRAGMA query_only = OFF") and None
    return _nothing


def _nothing() -> None:
    return None


def _mysql_session(connection: Any, options: TransactionOptions) -> Callable[[], None]:
    """MySQL: the session's level and access mode for the next transactions (a one-shot ``SET
    TRANSACTION`` cannot be read back); the undo puts the previous ones back."""
    import pymysql

    with connection.cursor() as cursor:
        for query in _MYSQL_CURRENT:
            try:
                cursor.execute(query)
            except pymysql.err.OperationalError as exc:
                if exc.args[0] != 1193:  # ER_UNKNOWN_SYSTEM_VARIABLE: the other spelling
                    raise
            else:
                break
        level, read_only = cursor.fetchone()
        if options.isolation_level is not None:
            cursor.execute(_MYSQL_LEVEL[options.isolation_level])
        if options.read_only:
            cursor.execute(_MYSQL_READ_ONLY[True])

    def undo() -> None:
        with connection.cursor() as cursor:
            cursor.execute(_MYSQL_LEVEL[str(level).replace("-", " ").upper()])
            cursor.execute(_MYSQL_READ_ONLY[bool(int(read_only))])

    return undo


@contextlib.contextmanager
def transaction(
    database: ConcurrentDatabase, isolation_level: str | None = None, read_only: bool = False
) -> Iterator[Any]:
    """A new DB-API connection to ``database`` in one transaction: committed when the block
    ends, rolled back when it raises (the exception goes on), closed either way."""
    options = transaction_options(database.backend, isolation_level, read_only)
    connection = database.connect()
    try:
        undo = begin(database.backend, connection, options)
        try:
            yield connection
        except BaseException:
            connection.rollback()
            raise
        connection.commit()
        undo()
    finally:
        connection.close()


class ThreadConnections:
    """One DB-API connection per thread to one database, made on first use; :meth:`close_all`
    closes every one of them, also those of threads still running or already dead."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._lock = threading.Lock()
        self._by_thread: dict[int, tuple[threading.Thread, Any]] = {}

    def get(self) -> Any:
        """The calling thread's connection."""
        me = threading.current_thread()
        ident = threading.get_ident()
        with self._lock:
            entry = self._by_thread.get(ident)
        if entry is not None and entry[0] is me:
            return entry[1]
        if entry is not None:  # a dead thread's id, reused: its connection is no one's now
            _close(entry[1])
        connection = self._connect()
        with self._lock:
            self._by_thread[ident] = (me, connection)
        return connection

    def __len__(self) -> int:
        return len(self._by_thread)

    def close_all(self) -> int:
        """Close every thread's connection; returns how many there were."""
        with self._lock:
            entries, self._by_thread = list(self._by_thread.values()), {}
        for _, connection in entries:
            _close(connection)
        return len(entries)


def _close(connection: Any) -> None:
    with contextlib.suppress(Exception):  # a connection broken by its thread is closed all the same
        connection.close()


_REGISTRY: dict[ConcurrentDatabase, ThreadConnections] = {}
_REGISTRY_LOCK = threading.Lock()


def thread_connections(database: ConcurrentDatabase, *, create: bool = True) -> ThreadConnections | None:
    """The per-thread connections of ``database`` (a frozen handle: its state lives here)."""
    with _REGISTRY_LOCK:
        found = _REGISTRY.get(database)
        if found is None and create:
            extra = {"check_same_thread": False} if database.backend == "sqlite" else {}
            found = _REGISTRY[database] = ThreadConnections(lambda: database.connect(**extra))
        return found
