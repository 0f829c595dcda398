"""The MySQL/MariaDB control connection: how to reach the server, what its errors mean, and the
``GET_LOCK`` session locks held on the one connection that never selects a default database.

Every other MySQL module builds on :class:`MySQLControl`: the registry (:mod:`.mysql_registry`), the
drop that kills sessions (:mod:`.mysql_drop`) and the backend itself (:mod:`.mysql`).  When the server
ends the control connection (``KILL CONNECTION``, a restart, ``wait_timeout``, the network), the next
statement notices, opens a new one, takes the locks the old one held again and runs once more
(:class:`~.base.ControlConnection`).  ``GET_LOCK`` nests: a key already held is not taken twice (one
release frees it), as on PostgreSQL.  MySQL rounds GET_LOCK timeouts to whole seconds (we round up).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from typing import Any

from ..errors import BackendUnavailableError, LockTimeoutError
from ..options import names
from ..url import DatabaseURL
from .base import ControlConnection, ServerNotUpError, no_free_slot

__all__ = [
    "MySQLControl",
    "connect_params",
    "connect_to",
    "connection_lost",
    "error_number",
    "is_mariadb",
    "one_line",
    "server_message",
]

_URL_FIX = f"fix {names('url')}"

# MySQL error numbers.
ER_CON_COUNT_ERROR = 1040  # too many connections
ER_DBACCESS_DENIED = 1044
ER_ACCESS_DENIED = 1045
ER_DB_DROP_RMDIR = 1010  # DROP DATABASE: its tables are gone but its directory is not empty
ER_BAD_DB = 1049
ER_SERVER_SHUTDOWN = 1053
ER_DUP_ENTRY = 1062
ER_NO_SUCH_THREAD = 1094
ER_KILL_DENIED = 1095
ER_UNKNOWN_TABLE = 1109
ER_TABLEACCESS_DENIED = 1142
ER_NO_SUCH_TABLE = 1146
ER_LOCK_WAIT_TIMEOUT = 1205
ER_SPECIFIC_ACCESS_DENIED = 1227
ER_ACCESS_DENIED_NO_PASSWORD = 1698
ER_USER_LOCK_DEADLOCK = 3058
ER_CONNECTION_KILLED = 1927  # MariaDB: "Connection was killed"
ER_CLIENT_INTERACTION_TIMEOUT = 4031  # MySQL 8.0.24+: closed after wait_timeout
CR_SERVER_GONE = 2006
CR_SERVER_LOST = 2013
CR_SERVER_LOST_EXTENDED = 2055
CONNECTION_LOST = (
    ER_CONNECTION_KILLED,
    ER_CLIENT_INTERACTION_TIMEOUT,
    CR_SERVER_GONE,
    CR_SERVER_LOST,
    CR_SERVER_LOST_EXTENDED,
)
AUTH_ERRORS = (ER_DBACCESS_DENIED, ER_ACCESS_DENIED, ER_ACCESS_DENIED_NO_PASSWORD)
PRIVILEGE_ERRORS = (ER_DBACCESS_DENIED, ER_TABLEACCESS_DENIED, ER_SPECIFIC_ACCESS_DENIED)


def error_number(exc: BaseException) -> int | None:
    args: tuple[Any, ...] = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def server_message(exc: BaseException) -> str:
    args: tuple[Any, ...] = getattr(exc, "args", ())
    if len(args) >= 2 and isinstance(args[0], int):
        return one_line(f"{args[1]} (MySQL error {args[0]})")
    return one_line(exc) or type(exc).__name__


def connect_params(url: DatabaseURL, **overrides: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`pymysql.connect` for the database of ``url`` (none if
    it names none): every connection to the server is made from them (the backend's and
    :func:`.connect_url`'s).  From the query: ``unix_socket``, and ``host`` when the URL
    names no host; ``overrides`` last."""
    params: dict[str, Any] = {
        "host": url.host or url.option("host") or "127.0.0.1",
        "port": url.port or 3306,
        "user": url.username or "root",
        "password": url.password or "",
        "charset": "utf8mb4",
        "connect_timeout": 10,
    }
    socket = url.option("unix_socket")
    if socket:
        params["unix_socket"] = socket
    if url.database:
        params["database"] = url.database
    params.update(overrides)
    return params


def unavailable(url: DatabaseURL, exc: BaseException) -> BackendUnavailableError:
    """The error for a failed connection to ``url``: one line, without the password, with the fix."""
    reason = server_message(exc)
    if url.password:
        reason = reason.replace(url.password, "***")
    errno = error_number(exc)
    where = f"cannot connect to MySQL at {url.render()}"
    if errno in AUTH_ERRORS:
        fix = f"check the user and password or {_URL_FIX}"
    elif errno == ER_BAD_DB:
        fix = f"check that database {url.database!r} exists or {_URL_FIX}"
    elif errno == ER_CON_COUNT_ERROR:
        return no_free_slot("MySQL", url, reason)
    elif isinstance(getattr(exc, "original_exception", None), (ConnectionRefusedError, FileNotFoundError)):
        refused = f"{where}: the server refused the connection ({reason})"
        return ServerNotUpError(f"{refused}; start the server or {_URL_FIX}")
    elif errno in (ER_SERVER_SHUTDOWN, CR_SERVER_LOST):  # shutting down, or gone during the handshake
        closed = f"{where}: the server is not accepting connections ({reason})"
        return ServerNotUpError(f"{closed}; start the server or {_URL_FIX}")
    else:
        fix = f"start the server or {_URL_FIX}"
    return BackendUnavailableError(f"{where}: {reason}; {fix}")


def connect_to(url: DatabaseURL, *, shown: DatabaseURL | None = None, **overrides: Any) -> Any:
    """A new connection to the database of ``url`` (:func:`connect_params`), or
    BackendUnavailableError naming ``shown`` (default: ``url``)."""
    import pymysql

    try:
        return pymysql.connect(**connect_params(url, **overrides))
    except (pymysql.err.MySQLError, OSError) as exc:  # any failure to connect means "unavailable"
        raise unavailable(shown or url, exc) from None


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` means the server ended the connection (killed, restarted, crashed, gone)."""
    import pymysql

    if isinstance(exc, pymysql.err.InterfaceError):  # a statement on a connection already closed
        return True
    return isinstance(exc, pymysql.err.OperationalError) and error_number(exc) in CONNECTION_LOST


def is_mariadb(connection: Any) -> bool:
    """True if ``connection`` is to MariaDB (else MySQL)."""
    return "mariadb" in str(connection.get_server_info()).lower()


class MySQLControl(ControlConnection[Any]):
    """The control connection to one MySQL/MariaDB server and the ``GET_LOCK`` locks held on it."""

    def __init__(self, url: DatabaseURL, *, application_name: str = "pytest-concurrent-db") -> None:
        super().__init__()
        self.url = url
        self.application_name = application_name

    # -- connections ---------------------------------------------------------------
    def _open(self, *, client_flag: int = 0, **extra: Any) -> Any:
        """A new autocommit connection without default database, or BackendUnavailableError
        (naming the URL of the user's database)."""
        return connect_to(
            self.url.with_database(""),
            shown=self.url,
            program_name=self.application_name,
            autocommit=True,
            client_flag=client_flag,
            **extra,
        )

    # the driver's part of ControlConnection
    def _open_control(self) -> Any:
        from pymysql.constants import CLIENT

        return self._open(
            client_flag=CLIENT.FOUND_ROWS,
            init_command="SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'",
        )

    def _is_open(self, conn: Any) -> bool:
        return bool(conn.open)

    def _session_of(self, conn: Any) -> int:
        return int(conn.thread_id())

    def _close_quietly(self, conn: Any) -> None:
        with contextlib.suppress(Exception):  # already broken
            conn.close()

    def _ping(self, conn: Any) -> None:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")

    def _ended(self, exc: Exception, conn: Any) -> bool:
        """True if ``exc`` means the server ended ``conn`` (then it is closed here too)."""
        import pymysql

        if not isinstance(exc, (pymysql.err.OperationalError, pymysql.err.InterfaceError)):
            return False
        if conn.open and error_number(exc) not in CONNECTION_LOST:
            return False
        self._close_quietly(conn)  # so that the next statement opens a new one
        return True

    def _run(self, sql: str, args: Any, retry: bool) -> tuple[int, list[tuple[Any, ...]]]:
        """Run ``sql`` on the control connection; if the server ended that connection, run it
        once more on a new one (``retry``: only for statements that may run twice)."""

        def run(conn: Any) -> tuple[int, list[tuple[Any, ...]]]:
            with conn.cursor() as cur:
                count = int(cur.execute(sql, args))
                return count, list(cur.fetchall())

        return self._on_control(run, retry=retry)

    def _query(self, sql: str, args: Any = None, *, retry: bool = True) -> list[tuple[Any, ...]]:
        """Run ``sql`` on the control connection; its rows (``rowcount`` for writes is lost)."""
        return self._run(sql, args, retry)[1]

    def _execute(self, sql: str, args: Any = None, *, retry: bool = True) -> int:
        return self._run(sql, args, retry)[0]

    # -- locks ---------------------------------------------------------------------
    @staticmethod
    def _lock_name(key: str) -> str:
        return "cdb_" + hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=20).hexdigest()

    def _get_lock(self, key: str, timeout: float) -> bool:
        """GET_LOCK nests; one release must free it, so a key held is not taken again."""
        conn = self._control()

        def take() -> bool:
            # MySQL rounds the timeout to whole seconds; MariaDB takes fractions.
            wait: float = max(timeout, 0.0)  # a negative timeout would wait forever
            if not is_mariadb(conn):
                wait = math.ceil(wait)
            try:
                row = self._query("SELECT GET_LOCK(%s, %s)", (self._lock_name(key), wait))
            except Exception as exc:
                if error_number(exc) != ER_USER_LOCK_DEADLOCK:
                    raise
                raise LockTimeoutError(
                    f"the MySQL lock {key!r}, which would deadlock", timeout, self._holder(key)
                ) from None
            return bool(row and row[0][0] == 1)

        return self._take(key, take)

    def try_lock(self, key: str) -> bool:
        return self._get_lock(key, 0)

    def acquire_lock(self, key: str, timeout: float) -> None:
        if not self._get_lock(key, timeout):
            raise LockTimeoutError(
                f"the MySQL lock {key!r} (GET_LOCK {self._lock_name(key)!r})", timeout, self._holder(key)
            )

    def _holder(self, key: str) -> str:
        rows = self._query("SELECT IS_USED_LOCK(%s)", (self._lock_name(key),))
        session = rows[0][0] if rows else None
        if session is None:
            return "a session that has just released it"
        found = self._query(
            "SELECT USER, HOST, COMMAND, TIME FROM information_schema.PROCESSLIST WHERE ID = %s", (session,)
        )
        if not found:
            return f"MySQL connection {session} (not visible to this user; GRANT PROCESS to see it)"
        user, host, command, seconds = found[0]
        return f"MySQL connection {session} ({user}@{host}, {command} for {seconds}s)"

    def _retake(self, conn: Any, key: str, old_session: int) -> tuple[bool, bool]:
        name = self._lock_name(key)
        with conn.cursor() as cur:
            cur.execute("SELECT GET_LOCK(%s, 0), IS_USED_LOCK(%s)", (name, name))
            got, holder = cur.fetchone()
        return got == 1, holder is None or int(holder) == old_session

    def _lock_label(self, key: str) -> str:
        return f"MySQL lock {key!r} (GET_LOCK {self._lock_name(key)!r})"

    def _lost_session(self) -> str:
        return f"connection to {self.url} (KILL, a restart, wait_timeout or the network)"

    def _unlock(self, conn: Any, key: str) -> None:
        try:
            self._query("SELECT RELEASE_LOCK(%s)", (self._lock_name(key),), retry=False)
        except Exception as exc:
            if not self._ended(exc, conn):
                raise
            # the connection ended, and the lock with it
