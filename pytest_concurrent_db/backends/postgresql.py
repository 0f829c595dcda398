"""PostgreSQL backend: ``CREATE DATABASE ... TEMPLATE`` on a control connection.

One class, :class:`PostgreSQLBackend`, made of one module per job:

* :mod:`.postgresql_control`: connecting, and the control connection in the maintenance database
  with the session-level advisory locks held on it, taken again after the server ended it
  (``pg_terminate_backend``, a restart, the network; :class:`~.base.ControlConnection`).  A lock
  another session took in the meantime is *lost*: ``release_lock`` of it raises a
  :class:`ConcurrentDBError` naming the lock and its new holder, after the work it guarded (e.g.
  the drop) was done anyway.
* :mod:`.postgresql_script`: running a SQL script and locating the statement that failed.
* :mod:`.postgresql_probes`: the isolation probes on a user's connection.

Here: creating, marking, cloning (with the copy strategy) and dropping databases.
"""

from __future__ import annotations

import re
import time
from typing import Any, ClassVar

import psycopg
from psycopg import errors, sql

from ..errors import ConcurrentDBError, ConfigError, NotOursError, PrivilegeError
from ..options import names
from ..url import DatabaseURL
from . import postgresql_probes, postgresql_script, postgresql_state
from .base import DatabaseInfo, DatabaseState, Marker, clean_up_after
from .postgresql_control import FIX_URL, PostgreSQLControl, connect_params, connect_to, reason_of

__all__ = ["FILE_COPY_ABOVE", "PostgreSQLBackend", "connect_params", "connect_to"]

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


def _split_list(value: str) -> list[str]:
    """``"$user", app`` -> ``["$user", "app"]`` (the stored form of a list setting)."""
    items = _LIST_ITEM.findall(value) or [value]
    return [i[1:-1].replace('""', '"') if i.startswith('"') else i for i in items]


class PostgreSQLBackend(PostgreSQLControl):
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
                f"unknown PostgreSQL clone strategy {strategy!r}: use wal_log or file_copy ({names('clone_strategy')})"
            )
        super().__init__(url, application_name=application_name)
        self.strategy = strategy.lower() if strategy else None
        self.chosen_strategy = ""
        self._sizes: dict[str, int] = {}

    def connect(self, name: str, *, autocommit: bool = False) -> Any:
        """A new connection to ``name`` (waiting up to :attr:`connect_wait` for a server that is not up)."""
        url = self.url.with_database(name)

        def connect() -> Any:
            return connect_to(url, application_name=self.application_name, autocommit=autocommit)

        return self._when_up(connect, self.connect_wait)

    def url_for(self, name: str) -> str:
        return self.url.with_database(name).render(hide_password=False)

    def location(self, name: str) -> str:
        return name

    # -- server -------------------------------------------------------------------
    def server_version(self) -> str:
        v = self._control().info.server_version  # 150020; we need 10+ (pg_stat_activity.backend_type)
        return f"PostgreSQL {v // 10000}.{v % 10000}"

    def server_started(self) -> float:
        return float(self._exec("SELECT extract(epoch FROM pg_postmaster_start_time())::float8")[0][0])

    def _grant_fix(self) -> str:
        return f"ALTER ROLE {self._exec('SELECT quote_ident(current_user)')[0][0]} CREATEDB"

    def preflight(self) -> None:
        rows = self._exec("SELECT current_user, rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user")
        if not rows or not rows[0][1]:
            raise PrivilegeError(
                f"PostgreSQL user {rows[0][0] if rows else self.url.username!r} at "
                f"{self.url} may not create databases (checked rolcreatedb and rolsuper): run "
                f"{self._grant_fix()} as a superuser, or use another user: {FIX_URL}"
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
                    f"cannot {what}: {reason_of(exc)}; run {self._grant_fix()} as a superuser, or {FIX_URL}"
                ) from None
            except errors.InvalidCatalogName:
                raise ConcurrentDBError(
                    f"cannot {what}: database {source!r} does not exist (pruned by another run?)"
                ) from None
            except psycopg.Error as exc:  # e.g. an invalid (half-dropped) template
                if not conn.closed or lost_once:
                    raise ConcurrentDBError(f"cannot {what}: {reason_of(exc)}") from exc
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
                else f"dropping the new database {name!r} failed too: {reason_of(failed)}"
            )
            raise error(f"cannot {what}: {reason_of(exc)}; {outcome}") from exc

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
            raise error(f"cannot drop database {name!r}: {reason_of(exc)}") from exc

    # -- scripts --------------------------------------------------------------------
    def build_statements(self) -> tuple[str, ...]:
        """Session settings for the connection that builds a template: commits do not wait for
        the WAL flush.  Safe: the template is sealed by a synchronous commit on the control
        connection, which flushes everything before it, and an unsealed one is rebuilt."""
        return ("SET synchronous_commit TO off",)

    def run_script(self, connection: Any, text: str, source: str) -> None:
        """Run ``text`` in one round trip; on error name the failing statement
        (:func:`.postgresql_script.run_script`)."""
        postgresql_script.run_script(connection, text, source)

    # -- isolation probes -------------------------------------------------------------
    def current_database(self, connection: Any) -> str:
        return postgresql_probes.current_database(connection)

    def in_transaction(self, connection: Any) -> bool:
        """True if aborted, or open with writes (:func:`.postgresql_probes.in_transaction`)."""
        return postgresql_probes.in_transaction(connection)

    def row_counts(self, connection: Any) -> dict[str, int]:
        return postgresql_probes.row_counts(connection)

    def other_sessions(self, name: str, connection: Any) -> list[str]:
        return self._sessions(name, exclude=int(connection.info.backend_pid))

    def database_state(self, name: str) -> DatabaseState:
        """One query on a connection of its own (:func:`.postgresql_state.postgresql_state`)."""
        connection = self.connect(name)
        try:
            sessions = self._sessions(name, exclude=int(connection.info.backend_pid))
            digest, counters = postgresql_state.postgresql_state(connection)
        finally:
            connection.close()
        return DatabaseState(digest, counters, sessions)

    def reset_counters(self, name: str, now: dict[str, int], wanted: dict[str, int]) -> int:
        """``setval`` of every sequence that moved (:func:`.postgresql_state.reset_sequences`)."""
        connection = self.connect(name)
        try:
            return postgresql_state.reset_sequences(connection, now, wanted)
        finally:
            connection.close()

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
