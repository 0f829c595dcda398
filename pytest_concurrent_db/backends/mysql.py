"""MySQL and MariaDB through PyMySQL.

One class, :class:`MySQLBackend`, made of one module per job:

* :mod:`.mysql_control`: the control connection (no default database: ``drop`` kills the sessions
  using a database and must never hit it), its errors, and the ``GET_LOCK`` locks held on it, taken
  again after the server ended it (a restart, ``KILL``, ``wait_timeout``; :class:`~.base.ControlConnection`).
* :mod:`.mysql_registry`: markers in the registry database ``pytest_concurrent_db_registry``, one row
  per database we created, written before the database and deleted after it.
* :mod:`.mysql_recipe`: a template is cloned by replaying its *recipe*, captured when it is marked ready.
* :mod:`.mysql_drop`: dropping a database that sessions (or metadata locks) still hold.
* :mod:`.mysql_probes`: the isolation probes on a user's connection.

Here: creating, marking, cloning and dropping, the users' connections and scripts.

Limits (tested on MariaDB 10.11 only; MySQL 8 paths are written from its documentation):

* MySQL 8 with binary logging needs ``log_bin_trust_function_creators`` (or SUPER)
  to recreate stored functions in a clone.  ``in_transaction`` on MySQL reads performance_schema.data_locks
  (falling back to INNODB_TRX, which lags by up to 0.1 s).
* Sequences (MariaDB) restart in a clone at the template's next uncached value, as
  after a server restart.  System-versioned history rows are not copied.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from ..errors import ConcurrentDBError, NotOursError, ScriptError
from ..sqlscript import split_sql
from ..url import DatabaseURL
from . import mysql_probes, mysql_state
from .base import DatabaseState, Marker, clean_up_after
from .mysql_control import connect_params, connect_to, connection_lost, one_line
from .mysql_drop import MySQLDrop
from .mysql_recipe import capture_recipe, charset_clause, quote_ident, replay_recipe
from .mysql_registry import REGISTRY, REGISTRY_TABLE, MySQLRegistry

__all__ = ["REGISTRY", "MySQLBackend", "connect_params", "connect_to", "quote_ident"]


#: Connections that create a clone's tables side by side (each CREATE TABLE waits on its own
#: file and redo-log writes; two overlap them: -25% on 250 tables here, four did no better),
#: for templates with at least this many tables (below, opening a connection costs more).
_DDL_CONNECTIONS = 2
_PARALLEL_DDL_FROM = 30


class MySQLBackend(MySQLRegistry, MySQLDrop):
    """One MySQL/MariaDB server; nothing is connected until first use."""

    name: ClassVar[str] = "mysql"
    max_name_length: ClassVar[int] = 64
    records_intents: ClassVar[bool] = False  # the registry row is written before CREATE DATABASE

    def __init__(self, url: DatabaseURL, *, application_name: str = "pytest-concurrent-db") -> None:
        super().__init__(url, application_name=application_name)
        self._version: str | None = None
        self._recipes: dict[str, tuple[str, dict[str, Any]]] = {}
        self._in_transaction = mysql_probes.TransactionProbe()

    def server_version(self) -> str:
        if self._version is None:
            raw = str(self._query("SELECT VERSION()")[0][0])
            number = raw.split("-", 1)[0]
            flavour = "MariaDB" if "mariadb" in raw.lower() else "MySQL"
            self._version = f"{flavour} {number}"
        return self._version

    def server_started(self) -> float:
        """``NOW()`` less the ``Uptime`` status (whole seconds: two calls may differ by one)."""
        uptime = self._query("SHOW GLOBAL STATUS LIKE 'Uptime'")[0][1]
        return float(self._query("SELECT UNIX_TIMESTAMP()")[0][0]) - float(uptime)

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
            "UPDATE " + REGISTRY_TABLE + " SET marker = %s, recipe = %s WHERE name = %s",
            (marker.encode(), recipe, name),
        )
        self._recipes.pop(name, None)

    def adopt(self, name: str, marker: Marker) -> bool:
        """Never needed: a database is claimed by its registry row before it is created."""
        return False

    def _capture(self, template: str) -> dict[str, Any]:
        recipe: dict[str, Any] = self._on_recipe_connection(lambda cur: capture_recipe(cur, template))
        return recipe

    def _on_recipe_connection(self, run: Any) -> Any:
        """``run(cursor)`` on a new connection with ``CLIENT.MULTI_STATEMENTS`` and no default database."""
        from pymysql.constants import CLIENT

        conn = self._open(client_flag=CLIENT.MULTI_STATEMENTS)
        try:
            with conn.cursor() as cur:
                return run(cur)
        finally:
            conn.close()

    def database_state(self, name: str) -> DatabaseState:
        """The recipe, ``CHECKSUM TABLE`` and the counters (:func:`.mysql_state.mysql_state`)."""

        def read(cur: Any) -> DatabaseState:
            sessions = mysql_probes.other_sessions(name, cur.connection)
            digest, counters = mysql_state.mysql_state(cur, name)
            return DatabaseState(digest, counters, sessions)

        result: DatabaseState = self._on_recipe_connection(read)
        return result

    def reset_counters(self, name: str, now: dict[str, int], wanted: dict[str, int]) -> int:
        """``ALTER TABLE … AUTO_INCREMENT`` of every table whose counter moved."""
        count: int = self._on_recipe_connection(lambda cur: mysql_state.reset_counters(cur, name, now, wanted))
        return count

    def _recipe(self, template: str) -> dict[str, Any]:
        """The recipe of ready template ``template``, cached while its marker is unchanged."""
        cached = self._recipes.get(template)
        if cached is not None and self._registry_rows(template).get(template) == cached[0]:
            return cached[1]
        rows = self._query("SELECT marker, recipe FROM " + REGISTRY_TABLE + " WHERE name = %s", (template,))
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
        """Create ``name`` and replay the template's recipe into it.  If the server ends the
        replay's connections (a restart, a crash), the half-made clone is dropped and the
        replay starts over once, when the server is up again (the control connection waits
        for it); any other failure drops it and its registry row."""
        recipe = self._recipe(template)
        claimed = self._claim(name, marker)
        statement = "CREATE DATABASE " + quote_ident(name) + charset_clause(recipe)
        for attempt in (1, 2):
            if attempt == 2:
                # a crash loses the commits of its last second on a server that does not flush every
                # commit (innodb_flush_log_at_trx_commit = 0): the registry row may be gone, write it again
                claimed = self._claim(name, marker)
            try:
                self._create_database(statement, name)
            except BaseException as exc:
                if claimed:
                    clean_up_after(exc, lambda: self._unclaim(name, marker), f"the registry row of {name!r} stays")
                raise
            try:
                self._replay(recipe, name)
            except BaseException as exc:
                again = attempt == 1 and connection_lost(exc)
                undo = (lambda: self._drop_database(name)) if again else (lambda: self._remove(name, marker))
                if clean_up_after(exc, undo, f"the half-made clone {name!r} stays") is None and again:
                    continue
                raise
            return

    def _remove(self, name: str, marker: Marker) -> None:
        """Drop the half-made database ``name``, then its registry row (kept if the drop fails)."""
        self._drop_database(name)
        self._unclaim(name, marker)

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

    # -- connections for users -----------------------------------------------------
    def connect(self, name: str, *, autocommit: bool = False) -> Any:
        """A new connection to ``name`` (waiting up to :attr:`connect_wait` for a server that is not up)."""
        url = self.url.with_database(name)

        def connect() -> Any:
            return connect_to(url, program_name=self.application_name, autocommit=autocommit)

        return self._when_up(connect, self.connect_wait)

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
                        f"{source}:{statement.line}: {snippet}: {one_line(message)}",
                        source,
                        statement.line,
                        snippet,
                    ) from None
        connection.commit()

    # -- isolation probes ----------------------------------------------------------
    def current_database(self, connection: Any) -> str:
        return mysql_probes.current_database(connection)

    def in_transaction(self, connection: Any) -> bool:
        """True if the open transaction of ``connection`` wrote (MySQL: or locked) rows
        (:class:`.mysql_probes.TransactionProbe`)."""
        return self._in_transaction(connection)

    def other_sessions(self, name: str, connection: Any) -> list[str]:
        return mysql_probes.other_sessions(name, connection)

    def row_counts(self, connection: Any) -> dict[str, int]:
        return mysql_probes.row_counts(connection)
