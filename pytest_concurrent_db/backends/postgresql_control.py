"""The PostgreSQL control connection: how to connect, and the advisory locks held on it.

The control connection (autocommit) lives in the maintenance database (URL option
``maintenance_db``, else ``postgres``, else ``template1``), never in the user's
database nor in one of our templates: any session on a template makes
``CREATE DATABASE ... TEMPLATE`` wait and fail.  Session-level advisory locks are
held on it, so every process sharing a server must use the same maintenance database.

When the server ends the control session (``pg_terminate_backend``, a restart, the
network), the next statement notices, opens a new control connection, takes the
locks the old session held again and runs once more (:class:`~.base.ControlConnection`).
"""

from __future__ import annotations

import contextlib
import functools
import socket
import struct
import time
from typing import Any

import psycopg
from psycopg import sql

from ..errors import BackendUnavailableError, LockTimeoutError
from ..naming import lock_key
from ..options import names
from ..url import DatabaseURL
from .base import ControlConnection, ServerNotUpError, no_free_slot

__all__ = ["FIX_URL", "PostgreSQLControl", "connect_params", "connect_to", "one_line", "reason_of"]

FIX_URL = f"fix {names('url')}"


def one_line(text: str) -> str:
    """``text`` with every run of whitespace made one space."""
    return " ".join(text.split())


def reason_of(exc: BaseException) -> str:
    """The server's primary message (or the driver's text), on one line."""
    return one_line(getattr(getattr(exc, "diag", None), "message_primary", None) or str(exc))


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
    """The error for a failed connection to ``url``: one line, without the password, with the
    fix; a :class:`~.base.ServerNotUpError` when the server refused the connection or is
    starting up, shutting down or recovering."""
    reason = one_line(str(exc))
    if url.password:
        reason = reason.replace(url.password, "***")
    where = f"cannot connect to PostgreSQL at {url.render()}"
    answer = startup_answer(url)
    if answer == _TOO_MANY_CONNECTIONS:
        return no_free_slot("PostgreSQL", url, reason)
    if answer in (_REFUSED, _CANNOT_CONNECT_NOW):
        what = "refused the connection" if answer == _REFUSED else "is not accepting connections yet"
        return ServerNotUpError(f"{where}: the server {what} ({reason}); start the server or {FIX_URL}")
    return BackendUnavailableError(f"{where}: {reason}; start the server or {FIX_URL}")


_REFUSED = "refused"
_TOO_MANY_CONNECTIONS = "53300"
_CANNOT_CONNECT_NOW = "57P03"  # starting up, shutting down, in recovery


def startup_answer(url: DatabaseURL) -> str | None:
    """How the server of ``url`` answers a new connection, when libpq cannot say it in a typed
    way (psycopg has no SQLSTATE for a failed connection): ``"refused"`` if nothing listens at
    the address (or no socket file is there), the SQLSTATE of the error it sends right after our
    startup message (``53300`` no free connection slot, ``57P03`` starting up), None otherwise
    (it wants to authenticate us, it cannot be reached at all, or it speaks SSL only)."""
    params = connect_params(url)
    host = str(params.get("host") or "/var/run/postgresql").split(",")[0]
    port = int(str(params.get("port") or 5432).split(",")[0])
    user = str(params.get("user") or "postgres")
    body = b"user\0" + user.encode() + b"\0database\0" + str(params.get("dbname") or user).encode() + b"\0\0"
    startup = struct.pack("!ii", len(body) + 8, 196608) + body  # protocol 3.0
    try:
        if host.startswith("/"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(3.0)
            sock.connect(f"{host}/.s.PGSQL.{port}")
        else:
            sock = socket.create_connection((host, port), timeout=3.0)
    except (ConnectionRefusedError, FileNotFoundError):
        return _REFUSED
    except OSError:
        return None
    try:
        with sock:
            sock.sendall(startup)
            data = b""
            while len(data) < 5 or len(data) < 1 + struct.unpack("!i", data[1:5])[0]:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    if data[:1] != b"E":
        return None
    for field in data[5:].split(b"\0"):
        if field[:1] == b"C":
            return field[1:].decode("ascii", "replace")
    return None


def connect_to(url: DatabaseURL, **overrides: Any) -> psycopg.Connection[Any]:
    """A new connection to the database of ``url`` (:func:`connect_params`), or BackendUnavailableError."""
    try:
        return psycopg.connect(**connect_params(url, **overrides))
    except psycopg.OperationalError as exc:
        raise unavailable(url, exc) from None


class PostgreSQLControl(ControlConnection[psycopg.Connection[Any]]):
    """The control connection to one PostgreSQL server and the advisory locks held on it."""

    def __init__(self, url: DatabaseURL, *, application_name: str = "pytest-concurrent-db") -> None:
        super().__init__()
        self.url = url
        self.application_name = application_name
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

    def _ping(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute("SELECT 1")

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

    def _release_all(self, conn: psycopg.Connection[Any]) -> None:
        """At once: a closed session frees its locks only when its server process exits, a
        moment later."""
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT pg_advisory_unlock_all()")

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
