"""MySQL and MariaDB through PyMySQL.

* Markers live in the registry database ``pytest_concurrent_db_registry`` (one row per database we
  created); nothing is added to the user's schemas.  A row is written before its
  database is created and deleted after it is dropped, so a crash leaves at worst a
  row without a database, never a database nobody claims.
* A template is cloned by replaying its *recipe* (:mod:`.mysql_recipe`), captured
  when it is marked ready.
* Locks are ``GET_LOCK`` on the control connection, which never selects a default
  database: ``drop`` kills the sessions using a database, and must never hit it.
  A key already held is not taken twice (one release frees it), as on PostgreSQL.
* When the server ends the control connection (``KILL CONNECTION``, a restart,
  ``wait_timeout``, the network), the next statement notices, opens a new one, takes
  the locks the old one held again and runs once more (:class:`~.base.ControlConnection`):
  ``drop``, ``list_databases`` and the markers go on working.  A lock another session took in the meantime is
  *lost*: ``release_lock`` of it raises a :class:`ConcurrentDBError` naming the lock
  and its new holder, after the work it guarded (e.g. the drop) was done anyway.

Limits (tested on MariaDB 10.11 only; MySQL 8 paths are written from its documentation):

* ``drop`` kills the sessions whose default database is the one dropped.  A session
  holding metadata locks on it from another default database is found only through
  performance_schema.metadata_locks (MySQL 8) or the metadata_lock_info plugin
  (MariaDB); otherwise the drop fails after 60 s naming no holder.
* MySQL 8 with binary logging needs ``log_bin_trust_function_creators`` (or SUPER)
  to recreate stored functions in a clone.  MySQL rounds GET_LOCK timeouts to whole
  seconds (we round up).  ``in_transaction`` on MySQL reads performance_schema.data_locks
  (falling back to INNODB_TRX, which lags by up to 0.1 s).
* Sequences (MariaDB) restart in a clone at the template's next uncached value, as
  after a server restart.  System-versioned history rows are not copied.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
import weakref
from typing import Any, ClassVar

from ..errors import (
    BackendUnavailableError,
    ConcurrentDBError,
    LockTimeoutError,
    NotOursError,
    PrivilegeError,
    ScriptError,
)
from ..options import names
from ..sqlscript import split_sql
from ..url import DatabaseURL
from .base import ControlConnection, DatabaseInfo, Marker, clean_up_after
from .mysql_recipe import capture_recipe, quote_ident, replay_recipe

__all__ = ["REGISTRY", "MySQLBackend", "connect_params", "connect_to", "quote_ident"]

#: The database holding one row per database we created.
REGISTRY = "pytest_concurrent_db_registry"
_REGISTRY_TABLE = quote_ident(REGISTRY) + "." + quote_ident("databases")

#: Connections that create a clone's tables side by side (each CREATE TABLE waits on its own
#: file and redo-log writes; two overlap them: -25% on 250 tables here, four did no better),
#: for templates with at least this many tables (below, opening a connection costs more).
_DDL_CONNECTIONS = 2
_PARALLEL_DDL_FROM = 30
_URL_FIX = f"fix {names('url')}"
_PRIVILEGES = (
    "CREATE, DROP, ALTER, INDEX, REFERENCES, SELECT, INSERT, UPDATE, DELETE, CREATE VIEW, SHOW VIEW, "
    "TRIGGER, CREATE ROUTINE, ALTER ROUTINE, EXECUTE, EVENT"
)

# MySQL error numbers.
ER_DBACCESS_DENIED = 1044
ER_ACCESS_DENIED = 1045
ER_BAD_DB = 1049
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
_CONNECTION_LOST = (
    ER_CONNECTION_KILLED,
    ER_CLIENT_INTERACTION_TIMEOUT,
    CR_SERVER_GONE,
    CR_SERVER_LOST,
    CR_SERVER_LOST_EXTENDED,
)
_AUTH_ERRORS = (ER_DBACCESS_DENIED, ER_ACCESS_DENIED, ER_ACCESS_DENIED_NO_PASSWORD)
_PRIVILEGE_ERRORS = (ER_DBACCESS_DENIED, ER_TABLEACCESS_DENIED, ER_SPECIFIC_ACCESS_DENIED)

_DROP_DEADLINE = 60.0
_DROP_LOCK_WAIT = 2  # seconds a DROP waits for metadata locks before we look for holders


def _errno(exc: BaseException) -> int | None:
    args: tuple[Any, ...] = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _server_message(exc: BaseException) -> str:
    args: tuple[Any, ...] = getattr(exc, "args", ())
    if len(args) >= 2 and isinstance(args[0], int):
        return _one_line(f"{args[1]} (MySQL error {args[0]})")
    return _one_line(exc) or type(exc).__name__


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
    reason = _server_message(exc)
    if url.password:
        reason = reason.replace(url.password, "***")
    errno = _errno(exc)
    if errno in _AUTH_ERRORS:
        fix = f"check the user and password or {_URL_FIX}"
    elif errno == ER_BAD_DB:
        fix = f"check that database {url.database!r} exists or {_URL_FIX}"
    else:
        fix = f"start the server or {_URL_FIX}"
    return BackendUnavailableError(f"cannot connect to MySQL at {url.render()}: {reason}; {fix}")


def connect_to(url: DatabaseURL, *, shown: DatabaseURL | None = None, **overrides: Any) -> Any:
    """A new connection to the database of ``url`` (:func:`connect_params`), or
    BackendUnavailableError naming ``shown`` (default: ``url``)."""
    import pymysql

    try:
        return pymysql.connect(**connect_params(url, **overrides))
    except (pymysql.err.MySQLError, OSError) as exc:  # any failure to connect means "unavailable"
        raise unavailable(shown or url, exc) from None


class MySQLBackend(ControlConnection[Any]):
    """One MySQL/MariaDB server; nothing is connected until first use."""

    name: ClassVar[str] = "mysql"
    max_name_length: ClassVar[int] = 64
    records_intents: ClassVar[bool] = False  # the registry row is written before CREATE DATABASE

    def __init__(self, url: DatabaseURL, *, application_name: str = "pytest-concurrent-db") -> None:
        super().__init__()
        self.url = url
        self.application_name = application_name
        self._registry_ready = False
        self._version: str | None = None
        self._recipes: dict[str, tuple[str, dict[str, Any]]] = {}
        # per user connection: its row-write, commit and rollback counters at the last
        # in_transaction probe, and the answer given then
        self._marks: weakref.WeakKeyDictionary[Any, tuple[int, int, int, bool]] = weakref.WeakKeyDictionary()

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

    def _ended(self, exc: Exception, conn: Any) -> bool:
        """True if ``exc`` means the server ended ``conn`` (then it is closed here too)."""
        import pymysql

        if not isinstance(exc, (pymysql.err.OperationalError, pymysql.err.InterfaceError)):
            return False
        if conn.open and _errno(exc) not in _CONNECTION_LOST:
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

    def server_version(self) -> str:
        if self._version is None:
            raw = str(self._query("SELECT VERSION()")[0][0])
            number = raw.split("-", 1)[0]
            flavour = "MariaDB" if "mariadb" in raw.lower() else "MySQL"
            self._version = f"{flavour} {number}"
        return self._version

    def _is_mariadb(self, connection: Any) -> bool:
        return "mariadb" in str(connection.get_server_info()).lower()

    # -- registry ------------------------------------------------------------------
    def preflight(self) -> None:
        self._control()
        self._ensure_registry()

    def _ensure_registry(self) -> None:
        if self._registry_ready:
            return
        try:
            self._execute(
                "CREATE DATABASE IF NOT EXISTS " + quote_ident(REGISTRY) + " CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            )
            self._execute(
                "CREATE TABLE IF NOT EXISTS " + _REGISTRY_TABLE + " ("
                " name VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,"
                " marker TEXT NOT NULL,"
                " recipe LONGTEXT NULL"
                ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
            )
        except Exception as exc:
            if _errno(exc) not in _PRIVILEGE_ERRORS:
                raise
            account = self._account()
            raise PrivilegeError(
                f"MySQL user {account} at {self.url.render()} may not create databases "
                f"({_server_message(exc)}); grant it with GRANT {_PRIVILEGES} ON *.* TO {account} "
                f"(or only ON `cdb\\_%`.* and ON {quote_ident(REGISTRY)}.*)"
            ) from None
        self._registry_ready = True

    def _account(self) -> str:
        user, _, host = str(self._query("SELECT CURRENT_USER()")[0][0]).rpartition("@")
        return f"'{user}'@'{host}'"

    def _registry_rows(self, name: str | None = None) -> dict[str, str]:
        """name -> marker text of registry rows (all, or ``name``'s); {} if no registry yet."""
        sql = "SELECT name, marker FROM " + _REGISTRY_TABLE
        try:
            rows = self._query(sql + " WHERE name = %s", (name,)) if name is not None else self._query(sql)
        except Exception as exc:
            if _errno(exc) in (ER_BAD_DB, ER_NO_SUCH_TABLE):
                return {}
            raise
        return {str(n): str(m) for n, m in rows}

    def _claim(self, name: str, marker: Marker) -> bool:
        """Write ``name``'s registry row; False if the database already exists (ours or not)."""
        if len(name) > self.max_name_length:
            raise ConcurrentDBError(
                f"MySQL database name {name!r} is longer than {self.max_name_length} characters"
            )
        self._ensure_registry()
        try:
            self._execute("INSERT INTO " + _REGISTRY_TABLE + " (name, marker) VALUES (%s, %s)", (name, marker.encode()))
        except Exception as exc:
            if _errno(exc) != ER_DUP_ENTRY:
                raise
            if self.exists(name):
                return False  # CREATE DATABASE reports it
            # A row left by a crash between writing it and creating the database.
            self._execute(
                "UPDATE " + _REGISTRY_TABLE + " SET marker = %s, recipe = NULL WHERE name = %s", (marker.encode(), name)
            )
        return True

    def _unclaim(self, name: str, marker: Marker) -> None:
        self._execute("DELETE FROM " + _REGISTRY_TABLE + " WHERE name = %s AND marker = %s", (name, marker.encode()))

    def _remove(self, name: str, marker: Marker) -> None:
        """Drop the half-made database ``name``, then its registry row (kept if the drop fails)."""
        self._drop_database(name)
        self._unclaim(name, marker)

    def get_marker(self, name: str) -> Marker | None:
        if not self.exists(name):
            return None
        return Marker.decode(self._registry_rows(name).get(name))

    def exists(self, name: str) -> bool:
        if any(ord(ch) > 0xFFFF for ch in name):
            return False  # identifiers are utf8mb3: no such database, and comparing would be an error
        rows = self._query("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (name,))
        return any(row[0] == name for row in rows)  # the column compares case-insensitively

    def list_databases(self, prefix: str, *, sizes: bool = True) -> list[DatabaseInfo]:
        names = [
            str(row[0])
            for row in self._query("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")
            if str(row[0]).startswith(prefix) and row[0] != REGISTRY
        ]
        if not names:
            return []
        markers = self._registry_rows()
        if not sizes:  # information_schema.TABLES opens every table of every database listed
            return [DatabaseInfo(n, Marker.decode(markers.get(n))) for n in sorted(names)]
        found: dict[str, int] = {}
        placeholders = ", ".join(["%s"] * len(names))
        for schema, size in self._query(
            "SELECT TABLE_SCHEMA, SUM(DATA_LENGTH + INDEX_LENGTH) FROM information_schema.TABLES"
            " WHERE TABLE_SCHEMA IN (" + placeholders + ") GROUP BY TABLE_SCHEMA",
            names,
        ):
            if schema in names:
                found[str(schema)] = int(size or 0)
        return [DatabaseInfo(n, Marker.decode(markers.get(n)), found.get(n, 0)) for n in sorted(names)]

    # -- create, mark, clone, drop -------------------------------------------------
    def create(self, name: str, marker: Marker) -> None:
        claimed = self._claim(name, marker)
        try:
            self._create_database("CREATE DATABASE " + quote_ident(name), name)
        except BaseException as exc:
            if claimed:
                clean_up_after(exc, lambda: self._unclaim(name, marker), f"the registry row of {name!r} stays")
            raise

    def set_marker(self, name: str, marker: Marker) -> None:
        self._ensure_registry()
        if not self._registry_rows(name):
            raise NotOursError(
                f"refusing to mark MySQL database {name!r}: it has no row in "
                f"{REGISTRY}.databases, so pytest-concurrent-db did not create it"
            )
        recipe = None
        if marker.kind == "template" and marker.state == "ready":
            recipe = json.dumps(self._capture(name), separators=(",", ":"))
        self._execute(
            "UPDATE " + _REGISTRY_TABLE + " SET marker = %s, recipe = %s WHERE name = %s",
            (marker.encode(), recipe, name),
        )
        self._recipes.pop(name, None)

    def adopt(self, name: str, marker: Marker) -> bool:
        """Never needed: a database is claimed by its registry row before it is created."""
        return False

    def _capture(self, template: str) -> dict[str, Any]:
        from pymysql.constants import CLIENT

        conn = self._open(client_flag=CLIENT.MULTI_STATEMENTS)
        try:
            with conn.cursor() as cur:
                return capture_recipe(cur, template)
        finally:
            conn.close()

    def _recipe(self, template: str) -> dict[str, Any]:
        """The recipe of ready template ``template``, cached while its marker is unchanged."""
        cached = self._recipes.get(template)
        if cached is not None and self._registry_rows(template).get(template) == cached[0]:
            return cached[1]
        rows = self._query("SELECT marker, recipe FROM " + _REGISTRY_TABLE + " WHERE name = %s", (template,))
        marker = Marker.decode(rows[0][0]) if rows else None
        if not rows or rows[0][1] is None or marker is None or marker.kind != "template" or marker.state != "ready":
            raise ConcurrentDBError(
                f"cannot clone MySQL database {template!r}: it is not a ready template "
                f"(no clone recipe in {REGISTRY}.databases); build it and mark it ready first"
            )
        recipe: dict[str, Any] = json.loads(rows[0][1])
        self._recipes[template] = (str(rows[0][0]), recipe)
        return recipe

    def clone(self, template: str, name: str, marker: Marker) -> None:
        recipe = self._recipe(template)
        claimed = self._claim(name, marker)
        try:
            self._create_database(
                "CREATE DATABASE "
                + quote_ident(name)
                + " CHARACTER SET "
                + quote_ident(recipe["charset"])
                + " COLLATE "
                + quote_ident(recipe["collation"]),
                name,
            )
        except BaseException as exc:
            if claimed:
                clean_up_after(exc, lambda: self._unclaim(name, marker), f"the registry row of {name!r} stays")
            raise
        try:
            self._replay(recipe, name)
        except BaseException as exc:
            clean_up_after(exc, lambda: self._remove(name, marker), f"the half-made clone {name!r} stays")
            raise

    def clone_method(self) -> str:
        return "DDL replay + INSERT ... SELECT"

    def _create_database(self, statement: str, name: str) -> None:
        """Run CREATE DATABASE ``statement``; if the server ended the control connection
        meanwhile, done if ``name`` is there (its registry row, written before, claims it),
        else once more."""
        conn = self._control()
        try:
            self._execute(statement, retry=False)
        except Exception as exc:
            if not self._ended(exc, conn):
                raise
            if not self.exists(name):
                self._execute(statement, retry=False)

    def _replay(self, recipe: dict[str, Any], name: str) -> None:
        from pymysql.constants import CLIENT

        ways = _DDL_CONNECTIONS if len(recipe["tables"]) >= _PARALLEL_DDL_FROM else 1
        conns: list[Any] = []
        try:
            for _ in range(ways):
                conns.append(self._open(client_flag=CLIENT.MULTI_STATEMENTS))
            cursors = [conn.cursor() for conn in conns]
            replay_recipe(cursors[0], recipe, name, conns[0].escape, helpers=cursors[1:])
        finally:
            for conn in conns:
                conn.close()

    def drop(self, name: str) -> None:
        if name == REGISTRY:
            raise NotOursError(f"refusing to drop {REGISTRY!r}: it is the registry of our databases")
        if not self.exists(name):
            return  # a row without database is harmless: the next create of that name reuses it
        if Marker.decode(self._registry_rows(name).get(name)) is None:
            raise NotOursError(
                f"refusing to drop MySQL database {name!r}: it has no marker in "
                f"{REGISTRY}.databases, so pytest-concurrent-db did not create it; drop it yourself if it is garbage"
            )
        self._drop_database(name)
        self._forget(name)
        self._recipes.pop(name, None)

    def _forget(self, name: str) -> None:
        try:
            self._execute("DELETE FROM " + _REGISTRY_TABLE + " WHERE name = %s", (name,))
        except Exception as exc:
            if _errno(exc) not in (ER_BAD_DB, ER_NO_SUCH_TABLE):
                raise

    def _drop_database(self, name: str) -> None:
        """Kill every other session on ``name`` and drop it, not waiting on a lock forever."""
        deadline = time.monotonic() + _DROP_DEADLINE
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
                    if _errno(exc) != ER_LOCK_WAIT_TIMEOUT:
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
                if _errno(exc) not in (ER_UNKNOWN_TABLE, ER_NO_SUCH_TABLE, *_PRIVILEGE_ERRORS):
                    raise
        return []

    def _kill(self, ids: list[int]) -> None:
        for session in ids:
            try:
                self._execute("KILL %s", (session,))
            except Exception as exc:
                if _errno(exc) not in (ER_NO_SUCH_THREAD, ER_KILL_DENIED):
                    raise

    # -- connections for users -----------------------------------------------------
    def connect(self, name: str, *, autocommit: bool = False) -> Any:
        return connect_to(self.url.with_database(name), program_name=self.application_name, autocommit=autocommit)

    def url_for(self, name: str) -> str:
        return self.url.with_database(name).render(hide_password=False)

    def location(self, name: str) -> str:
        return name

    def build_statements(self) -> tuple[str, ...]:
        return ()

    def run_script(self, connection: Any, text: str, source: str) -> None:
        import pymysql

        with connection.cursor() as cur:
            for statement in split_sql(text, "mysql"):
                try:
                    cur.execute(statement.text)
                    while cur.nextset():
                        pass
                except pymysql.err.Error as exc:
                    connection.rollback()
                    snippet = statement.snippet()
                    message = exc.args[1] if len(exc.args) > 1 else exc
                    raise ScriptError(
                        f"{source}:{statement.line}: {snippet}: {_one_line(message)}",
                        source,
                        statement.line,
                        snippet,
                    ) from None
        connection.commit()

    # -- isolation probes ----------------------------------------------------------
    def current_database(self, connection: Any) -> str:
        with connection.cursor() as cur:
            cur.execute("SELECT DATABASE()")
            row = cur.fetchone()
        return str(row[0]) if row and row[0] is not None else ""

    def in_transaction(self, connection: Any) -> bool:
        """True if the open transaction of ``connection`` wrote (MySQL: or locked) rows.

        A DB-API connection opens a transaction with any SELECT; one that only read is no
        leftover (as on PostgreSQL).  INNODB_TRX cannot tell: InnoDB refreshes it at most
        every 0.1 s.  MariaDB: ``@@in_transaction`` and the session's row-write counters
        (which leave out internal temporary tables) since the previous probe; if the test
        committed meanwhile the writes may be committed ones and the answer is False (the
        caller rolls back either way).  MySQL: its InnoDB locks in performance_schema.
        """
        with connection.cursor() as cur:
            if not self._is_mariadb(connection):
                return self._mysql_in_transaction(cur)
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

    @staticmethod
    def _mysql_in_transaction(cur: Any) -> bool:
        try:
            cur.execute(
                "SELECT COUNT(*) FROM performance_schema.data_locks l JOIN performance_schema.threads t"
                " ON t.THREAD_ID = l.THREAD_ID WHERE t.PROCESSLIST_ID = CONNECTION_ID()"
            )
        except Exception as exc:
            if _errno(exc) not in (*_PRIVILEGE_ERRORS, ER_NO_SUCH_TABLE):
                raise
            cur.execute(  # may lag by up to 0.1 s
                "SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_mysql_thread_id = CONNECTION_ID()"
                " AND (trx_rows_modified > 0 OR trx_lock_structs > 0)"
            )
        row = cur.fetchone()
        return bool(row and row[0])

    def other_sessions(self, name: str, connection: Any) -> list[str]:
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
                text += ": " + _one_line(info)[:80]
            out.append(text)
        return out

    def row_counts(self, connection: Any) -> dict[str, int]:
        with connection.cursor() as cur:
            cur.execute(
                "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()"
                " AND TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED') ORDER BY TABLE_NAME"
            )
            tables = [str(row[0]) for row in cur.fetchall()]
            if not tables:
                return {}
            cur.execute(
                " UNION ALL ".join(
                    "SELECT " + str(i) + ", COUNT(*) FROM " + quote_ident(t) for i, t in enumerate(tables)
                )
            )
            return {tables[int(i)]: int(count) for i, count in cur.fetchall()}

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
            if not self._is_mariadb(conn):
                wait = math.ceil(wait)
            try:
                row = self._query("SELECT GET_LOCK(%s, %s)", (self._lock_name(key), wait))
            except Exception as exc:
                if _errno(exc) != ER_USER_LOCK_DEADLOCK:
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

    def close(self) -> None:
        super().close()
        self._registry_ready = False
