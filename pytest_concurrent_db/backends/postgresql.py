"""PostgreSQL backend: ``CREATE DATABASE ... TEMPLATE`` on a control connection.

The control connection (autocommit) lives in the maintenance database (URL option
``maintenance_db``, else ``postgres``, else ``template1``), never in the user's
database nor in one of our templates: any session on a template makes
``CREATE DATABASE ... TEMPLATE`` wait and fail.  Session-level advisory locks are
held on it, so every process sharing a server must use the same maintenance database.

When the server ends the control session (``pg_terminate_backend``, a restart, the
network), the next statement notices, opens a new control connection, takes the
locks the old session held again and runs once more (:class:`~.base.ControlConnection`):
``drop``, ``list_databases`` and the markers go on working.  A lock another session took in the meantime is
*lost*: ``release_lock`` of it raises a :class:`ConcurrentDBError` naming the lock
and its new holder, after the work it guarded (e.g. the drop) was done anyway.
"""

from __future__ import annotations

import contextlib
import functools
import re
import time
from typing import Any, ClassVar

import psycopg
from psycopg import errors, sql

from ..errors import (
    BackendUnavailableError,
    ConcurrentDBError,
    ConfigError,
    LockTimeoutError,
    NotOursError,
    PrivilegeError,
    ScriptError,
)
from ..naming import lock_key
from ..options import names
from ..sqlscript import Statement, split_sql
from ..url import DatabaseURL
from .base import ControlConnection, DatabaseInfo, Marker, clean_up_after

__all__ = ["PostgreSQLBackend", "connect_params", "connect_to"]

_FIX_URL = f"fix {names('url')}"
_STRATEGIES = ("wal_log", "file_copy")
#: With ``--concurrent-db-clone-strategy auto``, templates larger than this are cloned with FILE_COPY.
#: Measured (bench/results/strategy-threshold.md): WAL_LOG writes every block to the WAL (3-5 ms/MB),
#: FILE_COPY syncs every file (slower per relation: schema-heavy templates stay faster on WAL_LOG even
#: at 5,000 relations) and forces two checkpoints that flush other sessions' buffers (worse under load).
#: FILE_COPY won from 64 MB on a quiet server and tied with WAL_LOG near 512 MB under load: 256 MB.
FILE_COPY_ABOVE = 256 * 1024 * 1024
#: Settings whose list elements are identifiers: ``ALTER DATABASE SET`` needs one literal each.
_LIST_QUOTE = frozenset({"search_path", "temp_tablespaces", "local_preload_libraries", "session_preload_libraries"})
_LIST_ITEM = re.compile(r'"(?:[^"]|"")*"|[^,\s"]+')
_IDLE, _INTRANS = 0, 2  # TransactionStatus in psycopg 3 and psycopg2 alike


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _reason(exc: BaseException) -> str:
    """The server's primary message (or the driver's text), on one line."""
    return _one_line(getattr(getattr(exc, "diag", None), "message_primary", None) or str(exc))


def _split_list(value: str) -> list[str]:
    """``"$user", app`` -> ``["$user", "app"]`` (the stored form of a list setting)."""
    items = _LIST_ITEM.findall(value) or [value]
    return [i[1:-1].replace('""', '"') if i.startswith('"') else i for i in items]


@functools.cache
def _libpq_keywords() -> frozenset[str]:
    return frozenset(o.keyword.decode() for o in psycopg.pq.Conninfo.get_defaults())


def connect_params(url: DatabaseURL, **overrides: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`psycopg.connect` for the database of ``url``: every
    connection to the server is made from them (the backend's and :func:`.connect_url`'s).

    libpq keywords in the URL's query come first (``sslmode``, ``application_name``,
    ``connect_timeout``, a socket directory as ``host`` when the URL names no host...), then
    the URL's own user, password, host, port and database, then ``overrides``.  Anything else
    in the query (e.g. ``maintenance_db``) is ours, not libpq's, and left out."""
    params: dict[str, Any] = {"connect_timeout": 10}
    params.update((k, v) for k, v in url.query if k in _libpq_keywords())
    parts = {"host": url.host, "port": url.port, "user": url.username, "password": url.password}
    params.update((k, v) for k, v in parts.items() if v is not None)
    params["dbname"] = url.database
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


def unavailable(url: DatabaseURL, exc: Exception) -> BackendUnavailableError:
    """The error for a failed connection to ``url``: one line, without the password."""
    reason = _one_line(str(exc))
    if url.password:
        reason = reason.replace(url.password, "***")
    return BackendUnavailableError(
        f"cannot connect to PostgreSQL at {url.render()}: {reason}; start the server or {_FIX_URL}"
    )


def connect_to(url: DatabaseURL, **overrides: Any) -> psycopg.Connection[Any]:
    """A new connection to the database of ``url`` (:func:`connect_params`), or BackendUnavailableError."""
    try:
        return psycopg.connect(**connect_params(url, **overrides))
    except psycopg.OperationalError as exc:
        raise unavailable(url, exc) from None


class PostgreSQLBackend(ControlConnection[psycopg.Connection[Any]]):
    """Databases on one PostgreSQL server; see :class:`~.base.Backend` for the contract."""

    name: ClassVar[str] = "postgresql"
    max_name_length: ClassVar[int] = 63
    records_intents: ClassVar[bool] = True  # CREATE DATABASE first, COMMENT ON DATABASE after

    #: How long clone/create/drop retry while the source database is in use (seconds).
    in_use_timeout: float = 30.0

    def __init__(
        self, url: DatabaseURL, *, application_name: str = "pytest-concurrent-db", strategy: str | None = None
    ) -> None:
        if strategy and strategy.lower() not in _STRATEGIES:
            raise ConfigError(
                f"unknown PostgreSQL clone strategy {strategy!r}: use "
                f"wal_log or file_copy ({names('clone_strategy')})"
            )
        super().__init__()
        self.url = url
        self.application_name = application_name
        self.strategy = strategy.lower() if strategy else None
        self.chosen_strategy = ""
        self._sizes: dict[str, int] = {}
        self._maintenance_db = ""

    # -- connections ------------------------------------------------------------
    def _params(self, dbname: str) -> dict[str, Any]:
        return connect_params(self.url.with_database(dbname), application_name=self.application_name)

    def _open_control(self) -> psycopg.Connection[Any]:
        wanted = self.url.option("maintenance_db")
        candidates = [wanted] if wanted else ["postgres", "template1"]
        first: psycopg.OperationalError | None = None
        for dbname in candidates:
            try:
                conn = psycopg.connect(**self._params(dbname), autocommit=True)
            except psycopg.OperationalError as exc:
                first = first or exc
                continue
            if (
                dbname == "template1"
                and conn.execute("SELECT 1 FROM pg_database WHERE datname = 'postgres'").fetchone()
            ):
                conn.close()  # postgres exists: the first failure was not "no such database"
                break
            self._maintenance_db = dbname
            if conn.info.server_version >= 140000:
                # If this process dies during a CREATE DATABASE, the server would finish the copy
                # and leave a database without our marker (which we never drop); checking for the
                # client makes it abort and remove the copy instead.
                with contextlib.suppress(psycopg.Error):
                    conn.execute("SET client_connection_check_interval = 100")
            return conn
        assert first is not None
        raise unavailable(self.url, first) from None

    # the driver's part of ControlConnection
    def _is_open(self, conn: psycopg.Connection[Any]) -> bool:
        return not conn.closed

    def _session_of(self, conn: psycopg.Connection[Any]) -> int:
        return int(conn.info.backend_pid)

    def _close_quietly(self, conn: psycopg.Connection[Any]) -> None:
        with contextlib.suppress(psycopg.Error):
            conn.close()

    def _ended(self, exc: Exception, conn: psycopg.Connection[Any]) -> bool:
        return isinstance(exc, psycopg.OperationalError) and conn.closed

    def _exec(self, query: str | sql.Composed, params: Any = None, *, retry: bool = True) -> list[tuple[Any, ...]]:
        """Run ``query`` on the control connection; if the server ended that session, run it
        once more on a new one (``retry``: only for statements that may run twice)."""

        def run(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

        return self._on_control(run, retry=retry)

    def _major(self) -> int:
        return self._control().info.server_version // 10000

    def connect(self, name: str, *, autocommit: bool = False) -> Any:
        return connect_to(self.url.with_database(name), application_name=self.application_name, autocommit=autocommit)

    def url_for(self, name: str) -> str:
        return self.url.with_database(name).render(hide_password=False)

    def location(self, name: str) -> str:
        return name

    def _release_all(self, conn: psycopg.Connection[Any]) -> None:
        """At once: a closed session frees its locks only when its server process exits, a
        moment later."""
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT pg_advisory_unlock_all()")

    # -- server -------------------------------------------------------------------
    def server_version(self) -> str:
        v = self._control().info.server_version  # 150020; we need 10+ (pg_stat_activity.backend_type)
        return f"PostgreSQL {v // 10000}.{v % 10000}"

    def _grant_fix(self) -> str:
        return f"ALTER ROLE {self._exec('SELECT quote_ident(current_user)')[0][0]} CREATEDB"

    def preflight(self) -> None:
        rows = self._exec("SELECT current_user, rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user")
        if not rows or not rows[0][1]:
            raise PrivilegeError(
                f"PostgreSQL user {rows[0][0] if rows else self.url.username!r} at "
                f"{self.url} may not create databases (checked rolcreatedb and rolsuper): run "
                f"{self._grant_fix()} as a superuser, or use another user: {_FIX_URL}"
            )

    # -- databases ----------------------------------------------------------------
    def _check_name(self, name: str) -> None:
        if not name or "\x00" in name or len(name.encode()) > self.max_name_length:
            raise ConcurrentDBError(
                f"invalid PostgreSQL database name {name!r}: it must "
                f"be 1 to {self.max_name_length} bytes (longer ones are truncated)"
            )

    def _row(self, name: str) -> tuple[Any, ...] | None:
        rows = self._exec(
            "SELECT datistemplate, shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (name,)
        )
        return rows[0] if rows else None

    def get_marker(self, name: str) -> Marker | None:
        row = self._row(name)
        return Marker.decode(row[1]) if row else None

    def exists(self, name: str) -> bool:
        return self._row(name) is not None

    def list_databases(self, prefix: str, *, sizes: bool = True) -> list[DatabaseInfo]:
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        size = "CASE WHEN has_database_privilege(d.oid, 'CONNECT') THEN pg_database_size(d.oid) END"
        if not sizes:  # pg_database_size() walks every file of every database listed
            size = "NULL::bigint"
        query = (
            "SELECT d.datname, shobj_description(d.oid, 'pg_database'), {} FROM pg_database d "
            "WHERE d.datname LIKE %s ESCAPE '\\' ORDER BY d.datname"
        )
        try:
            rows = self._exec(sql.SQL(query).format(sql.SQL(size)), (pattern,))
        except psycopg.DatabaseError:  # a size we may not read, or a database dropped meanwhile
            rows = self._exec(sql.SQL(query).format(sql.NULL), (pattern,))
        return [DatabaseInfo(n, Marker.decode(c), s) for n, c, s in rows]

    def _comment(self, name: str, marker: Marker) -> None:
        self._exec(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(marker.encode())))

    def _create(self, query: sql.Composed, name: str, source: str, what: str) -> None:
        """Run CREATE DATABASE ``query``, retrying while ``source`` is in use."""
        deadline = time.monotonic() + self.in_use_timeout
        delay = 0.05
        lost_once = False
        while True:
            conn = self._control()
            try:
                self._exec(query, retry=False)  # not blindly twice: it may be done when the session ends
            except errors.ObjectInUse:
                if time.monotonic() + delay >= deadline:
                    raise ConcurrentDBError(
                        f"cannot {what}: {source!r} was still in use after "
                        f"{self.in_use_timeout:g}s by {', '.join(self._sessions(source)) or 'other sessions'}; "
                        "close those sessions (nothing may be connected to a database being copied)"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except (errors.DuplicateDatabase, errors.UniqueViolation):
                raise ConcurrentDBError(f"cannot {what}: database {name!r} already exists") from None
            except errors.InsufficientPrivilege as exc:
                raise PrivilegeError(
                    f"cannot {what}: {_reason(exc)}; run "
                    f"{self._grant_fix()} as a superuser, or {_FIX_URL}"
                ) from None
            except errors.InvalidCatalogName:
                raise ConcurrentDBError(
                    f"cannot {what}: database {source!r} does not exist (pruned by another run?)"
                ) from None
            except psycopg.Error as exc:  # e.g. an invalid (half-dropped) template
                if not conn.closed or lost_once:
                    raise ConcurrentDBError(f"cannot {what}: {_reason(exc)}") from exc
                # the server ended the control session: done if the database is there (the name is
                # ours alone: unique to this run and process, guarded by its lock), else once more
                lost_once = True
                if self.exists(name):
                    return
            else:
                return

    def _finish(self, name: str, steps: list[sql.Composed], marker: Marker, what: str) -> None:
        """Record ``marker`` (first: a leftover we fail to drop can still be reaped), then run
        ``steps`` on the new database ``name``; drop it on any failure (a failing drop is
        noted on the original error, never raised instead of it)."""
        try:
            self._comment(name, marker)
            for step in steps:
                self._exec(step)
        except BaseException as exc:
            failed = clean_up_after(exc, lambda: self._force_drop(name), f"the new database {name!r} stays")
            if not isinstance(exc, psycopg.Error):
                raise
            error = PrivilegeError if isinstance(exc, errors.InsufficientPrivilege) else ConcurrentDBError
            outcome = (
                "the new database was dropped"
                if failed is None
                else f"dropping the new database {name!r} failed too: {_reason(failed)}"
            )
            raise error(f"cannot {what}: {_reason(exc)}; {outcome}") from exc

    def create(self, name: str, marker: Marker) -> None:
        """Create ``name`` from the default template (template0 when our own control
        connection sits in template1, which would block every other worker)."""
        self._check_name(name)
        self._control()
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        source = "template1"
        if self._maintenance_db == "template1":
            query += sql.SQL(" TEMPLATE template0")
            source = "template0"
        what = f"create database {name!r}"
        self._create(query, name, source, what)
        self._finish(name, [], marker, what)

    def set_marker(self, name: str, marker: Marker) -> None:
        row = self._row(name)
        if row is None or Marker.decode(row[1]) is None:
            raise NotOursError(
                f"refusing to mark database {name!r}: it "
                f"{'does not exist' if row is None else 'carries no pytest-concurrent-db marker'}"
            )
        self._comment(name, marker)
        if marker.kind == "template" and marker.state == "ready":
            self._exec(
                sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(sql.Identifier(name))
            )

    def adopt(self, name: str, marker: Marker) -> bool:
        """Mark ``name`` if it exists without any marker: a copy whose creator died after the
        server made it and before the marker was written (the engine knows it from the intent
        it recorded before the ``CREATE DATABASE``).  True if it was marked."""
        row = self._row(name)
        if row is None or row[1]:
            return False
        self._comment(name, marker)
        return True

    def clone(self, template: str, name: str, marker: Marker) -> None:
        self._check_name(name)
        query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
        strategy = self._strategy_for(template)
        if strategy:
            query += sql.SQL(" STRATEGY {}").format(sql.Literal(strategy.upper()))
        settings = self._exec(
            "SELECT unnest(s.setconfig) FROM pg_db_role_setting s "
            "JOIN pg_database d ON d.oid = s.setdatabase "
            "WHERE d.datname = %s AND s.setrole = 0",
            (template,),
        )
        steps: list[sql.Composed] = []
        for (entry,) in settings:
            key, _, value = entry.partition("=")
            values = _split_list(value) if key.lower() in _LIST_QUOTE else [value]
            steps.append(
                sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                    sql.Identifier(name),
                    sql.Identifier(*key.split(".")),
                    sql.SQL(", ").join(sql.Literal(v) for v in values),
                )
            )
        what = f"clone template {template!r} into {name!r}"
        self._create(query, name, template, what)
        self._finish(name, steps, marker, what)

    def clone_method(self) -> str:
        """``CREATE DATABASE TEMPLATE``, with the strategy of the last clone when one was chosen."""
        if self.chosen_strategy:
            return f"CREATE DATABASE TEMPLATE, STRATEGY {self.chosen_strategy}"
        return "CREATE DATABASE TEMPLATE"

    def _strategy_for(self, template: str) -> str | None:
        """The forced strategy, or with ``auto`` (PostgreSQL 15+): WAL_LOG for templates up to
        :data:`FILE_COPY_ABOVE` bytes (no checkpoint), FILE_COPY above (no WAL for every block).
        Remembered per template in :attr:`chosen_strategy` for the summary."""
        if self._major() < 15:
            return None
        if self.strategy is None and template not in self._sizes:
            rows = self._exec("SELECT pg_database_size(oid) FROM pg_database WHERE datname = %s", (template,))
            self._sizes[template] = int(rows[0][0]) if rows and rows[0][0] is not None else 0
        chosen = self.strategy or ("file_copy" if self._sizes[template] > FILE_COPY_ABOVE else "wal_log")
        auto = "" if self.strategy else f" (auto, {self._sizes[template] >> 20} MB template)"
        self.chosen_strategy = chosen.upper() + auto
        return chosen

    def _force_drop(self, name: str) -> None:
        ident = sql.Identifier(name)
        if self._major() >= 13:  # FORCE ends the other sessions and keeps new ones out
            self._exec(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
            return
        self._exec(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(ident))
        deadline = time.monotonic() + self.in_use_timeout
        while True:
            self._exec(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            try:
                self._exec(sql.SQL("DROP DATABASE IF EXISTS {}").format(ident))
            except errors.ObjectInUse:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)
            else:
                return

    def drop(self, name: str) -> None:
        row = self._row(name)
        if row is None:
            return
        if name == self.url.database:  # belt and braces: the user's database is never ours
            raise NotOursError(
                f"refusing to drop {name!r}: it is the database of {names('url')}, which is never dropped"
            )
        if Marker.decode(row[1]) is None:
            raise NotOursError(
                f"refusing to drop database {name!r}: it carries no "
                "pytest-concurrent-db marker (COMMENT ON DATABASE), so we did not "
                "create it; drop it yourself if it is a leftover"
            )
        try:
            if row[0]:
                self._exec(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(sql.Identifier(name)))
            self._force_drop(name)
        except psycopg.Error as exc:  # e.g. prepared transactions or replication slots on it
            error = PrivilegeError if isinstance(exc, errors.InsufficientPrivilege) else ConcurrentDBError
            raise error(f"cannot drop database {name!r}: {_reason(exc)}") from exc

    # -- scripts --------------------------------------------------------------------
    def build_statements(self) -> tuple[str, ...]:
        """Session settings for the connection that builds a template: commits do not wait for
        the WAL flush.  Safe: the template is sealed by a synchronous commit on the control
        connection, which flushes everything before it, and an unsealed one is rebuilt."""
        return ("SET synchronous_commit TO off",)

    def run_script(self, connection: Any, text: str, source: str) -> None:
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
        failed = self._at(text, statements, int(position) - 1) if position else self._replay(conn, statements)
        reason = _reason(error)
        where = f"{source}:{failed.line}: {failed.snippet()}" if failed else source
        raise ScriptError(
            f"{where}: {reason}",
            source,
            failed.line if failed else 0,
            failed.snippet() if failed else "",
        )

    @staticmethod
    def _at(text: str, statements: list[Statement], offset: int) -> Statement | None:
        found, cursor = None, 0
        for stmt in statements:
            start = text.find(stmt.text, cursor)
            if start < 0 or start > offset:
                break
            found, cursor = stmt, start + len(stmt.text)
        return found

    @staticmethod
    def _replay(conn: psycopg.Connection[Any], statements: list[Statement]) -> Statement | None:
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

    # -- isolation probes -------------------------------------------------------------
    def current_database(self, connection: Any) -> str:
        return str(connection.info.dbname)  # a PostgreSQL session never changes database

    def in_transaction(self, connection: Any) -> bool:
        """True if aborted, or open with writes (a transaction id is assigned).  Any SELECT on
        a DB-API connection opens a transaction: one that only read is no leftover."""
        status = int(connection.info.transaction_status)
        if status != _INTRANS:
            return status != _IDLE  # aborted, a command still running, or a broken connection
        cur = connection.cursor()
        try:
            cur.execute("SELECT txid_current_if_assigned() IS NOT NULL")
            return bool(cur.fetchone()[0])
        finally:
            cur.close()

    def other_sessions(self, name: str, connection: Any) -> list[str]:
        return self._sessions(name, exclude=int(connection.info.backend_pid))

    def _sessions(self, name: str, exclude: int = 0) -> list[str]:
        rows = self._exec(
            "SELECT pid, application_name, client_addr, state FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> %s AND backend_type = 'client backend' "
            "ORDER BY pid",
            (name, exclude),
        )
        return [
            f"pid {pid} (application_name {app!r}, client {addr or '-'}, state {state or '-'})"
            for pid, app, addr, state in rows
        ]

    def row_counts(self, connection: Any) -> dict[str, int]:
        """One query on ``connection``; a transaction it had to open is rolled back."""
        idle = int(connection.info.transaction_status) == _IDLE
        cur = connection.cursor()
        try:
            cur.execute(
                "SELECT n.nspname, c.relname, substring(query_to_xml(format("
                "'SELECT count(*) AS n FROM %%I.%%I', n.nspname, c.relname), false, true, '')::text "
                "FROM '<n>(\\d+)</n>')::bigint FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't' "
                "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                "AND n.nspname NOT LIKE 'pg\\_toast%%' AND has_table_privilege(c.oid, 'SELECT') "
                "ORDER BY 1, 2",
                (),
            )
            return {f"{schema}.{table}": int(count) for schema, table, count in cur.fetchall()}
        finally:
            cur.close()
            if idle and not connection.autocommit:
                connection.rollback()

    # -- advisory locks on the control connection --------------------------------------
    def try_lock(self, key: str) -> bool:
        """Take lock ``key`` if free; a key we hold already returns True (not counted)."""
        return self._take(key, lambda: bool(self._exec("SELECT pg_try_advisory_lock(%s)", (lock_key(key),))[0][0]))

    def acquire_lock(self, key: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.02
        while not self.try_lock(key):
            if time.monotonic() >= deadline:
                raise LockTimeoutError(
                    f"the PostgreSQL advisory lock {key!r} (key {lock_key(key)})", timeout, self._holder(key)
                )
            time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
            delay = min(delay * 2, 0.5)

    _HOLDERS = (
        "SELECT a.pid, a.application_name, a.client_addr, a.backend_start FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
        "AND l.classid::bigint = %s AND l.objid::bigint = %s AND l.objsubid = 1 "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )

    @staticmethod
    def _key_parts(key: str) -> tuple[int, int]:
        unsigned = lock_key(key) & 0xFFFFFFFFFFFFFFFF
        return unsigned >> 32, unsigned & 0xFFFFFFFF

    def _retake(self, conn: psycopg.Connection[Any], key: str, old_session: int) -> tuple[bool, bool]:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_key(key),)).fetchone()
        if row and row[0]:
            return True, False
        holders = {int(r[0]) for r in conn.execute(self._HOLDERS, self._key_parts(key)).fetchall()}
        return False, not holders or old_session in holders

    def _holder(self, key: str) -> str:
        rows = self._exec(self._HOLDERS, self._key_parts(key))
        if not rows:
            return "another session (released just now?)"
        return ", ".join(
            f"pid {pid} (application_name {app!r}, client {addr or '-'}, "
            f"backend_start {start.isoformat(' ', 'seconds') if start else '-'})"
            for pid, app, addr, start in rows
        )

    def _lock_label(self, key: str) -> str:
        return f"PostgreSQL advisory lock {key!r}"

    def _lost_session(self) -> str:
        return f"session at {self.url} (pg_terminate_backend, a restart or the network)"

    def _unlock(self, conn: psycopg.Connection[Any], key: str) -> None:
        try:
            conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key(key),))
        except psycopg.OperationalError:
            if not conn.closed:
                raise
            # the session ended, and the lock with it
