"""The contract every backend implements, and the marker that says "this database is ours".

A backend owns one *control* connection to the server (PostgreSQL: the maintenance
database; MySQL: no default database; SQLite: none).  Session-level locks are held
on that connection, so they die with the process that holds them: a lock that can
be taken means its owner is gone.  That is how liveness is decided everywhere
(see :mod:`pytest_concurrent_db.markers`).  On the servers, :class:`ControlConnection`
keeps that connection and its locks across a session the server ended.

Backends never decide *what* to create: their callers (the template, clones, spares and
janitor modules) do.  They only do it, safely: ``drop`` refuses any database that does not
carry our marker.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

from ..errors import PREFIX, BackendUnavailableError, ConcurrentDBError
from ..options import names
from ..url import DatabaseURL

__all__ = [
    "MARKER_TAG",
    "SERVER_WAIT",
    "Backend",
    "ControlConnection",
    "DatabaseInfo",
    "DatabaseState",
    "Marker",
    "ServerNotUpError",
    "clean_up_after",
    "restarted_since",
    "server_start",
    "when_up",
]

Conn = TypeVar("Conn")
Result = TypeVar("Result")

MARKER_TAG = "pytest-concurrent-db:v1 "

Kind = Literal["template", "clone", "spare"]
State = Literal["building", "ready", "kept"]


#: The longest a run's process waits for a server that is not up (seconds; a shorter lock timeout
#: wins): long enough for a database container to start or a server to restart or fail over, short
#: enough that a server nobody started is reported within a minute.
SERVER_WAIT = 30.0


class ServerNotUpError(BackendUnavailableError):
    """The server refused the connection, or said it is starting up, shutting down or
    recovering: it may come up (a restart, a container still starting), so a control
    connection tries again for :attr:`ControlConnection.connect_wait` seconds.  Not for
    errors that waiting does not mend (a wrong password, an unknown host or database, no
    free connection slot)."""


def no_free_slot(product: str, url: DatabaseURL, reason: str) -> BackendUnavailableError:
    """The error for a server whose ``max_connections`` is reached.  It names the server, not
    the database asked for: the controller, each worker and the spare thread say one line."""
    return BackendUnavailableError(
        f"cannot connect to {product} at {url.with_database('').render()}: the server has no free connection "
        f"slot, its max_connections is reached ({reason}); close other clients' connections or raise max_connections"
    )


@dataclass(frozen=True)
class Marker:
    """What we record on every database we create (PostgreSQL: ``COMMENT ON DATABASE``;
    MySQL: a row in the ``pytest_concurrent_db_registry`` database; SQLite: the file's location and a
    sidecar file for templates)."""

    kind: Kind
    run_id: str
    worker_id: str = ""
    template: str = ""
    fingerprint: str = ""
    state: State = "ready"
    created: float = field(default_factory=time.time)
    host: str = ""
    pid: int = 0
    #: a ready template's inputs step by step (see :mod:`pytest_concurrent_db.incremental`):
    #: what lets a later template of the same project start from this one
    manifest: str = ""
    #: a spare's state when it was known equal to its template (see
    #: :mod:`pytest_concurrent_db.recycle`): what lets the next run hand it on again
    pristine: str = ""

    def encode(self) -> str:
        fields = asdict(self)
        for optional in ("manifest", "pristine"):  # only some markers have them: the others stay as they were
            if not fields[optional]:
                del fields[optional]
        return MARKER_TAG + json.dumps(fields, sort_keys=True, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str | None) -> Marker | None:
        """The marker in ``text``, or None if ``text`` is not one of ours."""
        if not text or not text.startswith(MARKER_TAG):
            return None
        try:
            marker = cls(**json.loads(text[len(MARKER_TAG) :]))
        except (ValueError, TypeError):
            return None
        texts = (
            marker.run_id,
            marker.worker_id,
            marker.template,
            marker.fingerprint,
            marker.host,
            marker.manifest,
            marker.pristine,
        )
        if (
            marker.kind not in ("template", "clone", "spare")
            or marker.state not in ("building", "ready", "kept")
            or not all(isinstance(t, str) for t in texts)
            or not isinstance(marker.created, (int, float))
        ):
            return None
        return marker


@dataclass(frozen=True)
class DatabaseState:
    """What :meth:`Backend.database_state` read: ``digest`` of the schema and every row,
    ``counters`` (sequence positions, ``AUTO_INCREMENT`` values; only those not at their
    start), and ``sessions``, other than the reader's, on the database."""

    digest: str
    counters: dict[str, int]
    sessions: list[str]


@dataclass(frozen=True)
class DatabaseInfo:
    """A database found on the server whose name has our prefix.

    ``marker`` is None when it has our prefix but not our marker: such a database
    is not ours and is never touched.
    """

    name: str
    marker: Marker | None
    size_bytes: int | None = None


class Backend(Protocol):
    """One database server (or, for SQLite, one directory pair) we create databases on."""

    #: "sqlite" | "postgresql" | "mysql"
    name: ClassVar[str]
    #: Longest database name the server accepts without truncating (bytes).
    max_name_length: ClassVar[int]
    #: True when the backend can mark a database only after the server has made it
    #: (PostgreSQL: ``CREATE DATABASE``, then ``COMMENT ON DATABASE``).  The engine then records
    #: an intent file before each :meth:`create` and :meth:`clone`, so that a copy whose creator
    #: died in between is marked by :meth:`adopt` and reaped.  False when the marker is written
    #: before the database exists (MySQL: its registry row) or with it (SQLite).
    records_intents: ClassVar[bool]

    def server_version(self) -> str:
        """e.g. ``"PostgreSQL 15.20"``; part of the template fingerprint."""
        ...

    def server_started(self) -> float | None:
        """When the server last started, in seconds since the epoch by its own clock (PostgreSQL
        ``pg_postmaster_start_time()``, MySQL ``NOW()`` less ``Uptime``: to the second); None
        when there is no server (SQLite).  Every session lock dies with a restart: the janitor
        judges the free lock of a database made before the start with it
        (:func:`pytest_concurrent_db.janitor.presumed_alive`)."""
        ...

    def preflight(self) -> None:
        """Connect and check we may create databases.

        Raises BackendUnavailableError (cannot connect: message names the URL without
        password and the driver's reason) or PrivilegeError (message names the user and
        the missing privilege, e.g. ``ALTER ROLE x CREATEDB``).
        """
        ...

    def get_marker(self, name: str) -> Marker | None:
        """The marker of database ``name``; None if it does not exist or carries none."""
        ...

    def exists(self, name: str) -> bool:
        """True if database ``name`` exists, ours or not."""
        ...

    def list_databases(self, prefix: str, *, sizes: bool = True) -> list[DatabaseInfo]:
        """Every database whose name starts with ``prefix``, with its marker and (if ``sizes``,
        which can cost a scan of the server's files) its size."""
        ...

    def create(self, name: str, marker: Marker) -> None:
        """Create an empty database ``name`` and record ``marker`` on it.

        Fails (with the driver's error) if ``name`` already exists; the engine drops
        stale ones first."""
        ...

    def set_marker(self, name: str, marker: Marker) -> None:
        """Replace the marker of our database ``name``.

        When ``marker.kind == "template"`` and ``marker.state == "ready"`` the backend
        also seals the template (PostgreSQL: ``IS_TEMPLATE true, ALLOW_CONNECTIONS
        false``; MySQL: captures the DDL recipe used by :meth:`clone`).  The caller
        has closed every connection to it before.
        """
        ...

    def clone(self, template: str, name: str, marker: Marker) -> None:
        """Create database ``name`` as a full copy of the ready template ``template``
        (schema, constraints, indexes, views, triggers, routines, rows) and record
        ``marker`` on it.  On failure nothing named ``name`` is left behind."""
        ...

    def adopt(self, name: str, marker: Marker) -> bool:
        """Record ``marker`` on ``name`` if it exists and carries no marker at all: a copy whose
        creator died after the server made it and before marking it, known to the engine from
        the intent it recorded (see :attr:`records_intents`).  True if it was marked; always
        False on a backend that does not record intents."""
        ...

    def drop(self, name: str) -> None:
        """Drop our database ``name`` if it exists, ending other sessions on it first.

        Raises NotOursError, without dropping, if it exists but carries no marker.
        """
        ...

    def connect(self, name: str, *, autocommit: bool = False) -> Any:
        """A new DB-API connection to database ``name``."""
        ...

    def url_for(self, name: str) -> str:
        """A URL (with password) for database ``name`` that :func:`connect_url` accepts."""
        ...

    def location(self, name: str) -> str:
        """What a driver or framework takes as the database name to reach database ``name``
        (Django's ``NAME``): SQLite the file's path (an in-memory clone its shared-cache URI),
        a server the name itself."""
        ...

    def clone_method(self) -> str:
        """How :meth:`clone` copies, in words, for the terminal summary (e.g. ``"sqlite3 backup API"``)."""
        ...

    def build_statements(self) -> tuple[str, ...]:
        """Session settings for the one connection that builds a template (e.g. no flush per
        commit), run on it before the schema; ``()`` for none.  They must stay crash-safe: an
        unsealed template is always rebuilt."""
        ...

    def run_script(self, connection: Any, text: str, source: str) -> None:
        """Apply the SQL script ``text`` on ``connection`` and commit.

        Raises ScriptError naming ``source``, the line and the failing statement.
        """
        ...

    # -- isolation probes (on a connection returned by connect) ---------------
    def current_database(self, connection: Any) -> str:
        """The name of the database ``connection`` currently uses."""
        ...

    def in_transaction(self, connection: Any) -> bool:
        """True if ``connection`` has uncommitted writes or an aborted transaction.

        A transaction that only read (DB-API drivers open one for any SELECT) is not
        reported: it leaves nothing behind."""
        ...

    def other_sessions(self, name: str, connection: Any) -> list[str]:
        """Descriptions of sessions on database ``name`` other than ``connection``."""
        ...

    def row_counts(self, connection: Any) -> dict[str, int]:
        """Row count of every base table in the database of ``connection``."""
        ...

    # -- the state of a database, to hand an untouched one on (see recycle.py) ----
    def database_state(self, name: str) -> DatabaseState | None:
        """The state of database ``name``: a digest of its schema and rows, its counters
        (sequences, ``AUTO_INCREMENT``) apart, and the sessions on it.  None where
        databases are never handed on (SQLite: a copy is a file copy)."""
        ...

    def reset_counters(self, name: str, now: dict[str, int], wanted: dict[str, int]) -> int:
        """Set the counters of database ``name`` that ``now`` differs from ``wanted`` back to
        ``wanted`` (a counter missing from a map is at its start); returns how many were set."""
        ...

    # -- session-level locks, held on the control connection --------------------
    def acquire_lock(self, key: str, timeout: float) -> None:
        """Block until lock ``key`` is held (or raise LockTimeoutError naming the holder)."""
        ...

    def try_lock(self, key: str) -> bool:
        """Take lock ``key`` if free; True if now held by us.

        A key this backend already holds returns True without being counted twice, so
        one :meth:`release_lock` frees it.  A lock whose holder's connection closed is
        free once the server has handled the disconnect (usually milliseconds later)."""
        ...

    def release_lock(self, key: str) -> None:
        """Release lock ``key``; a key not held is a no-op.

        Server backends raise ConcurrentDBError, once, for a lock lost with the control
        connection (the server ended it and another session took the lock before we could
        take it again): what it guarded may have been touched by that session."""
        ...

    def close(self) -> None:
        """Close the control connection (releasing its locks)."""
        ...


def retake_locks(
    keys: Iterable[str],
    attempt: Callable[[str], tuple[bool, bool]],
    *,
    held: set[str],
    lost: set[str],
    wait: float,
) -> None:
    """Take session locks again on a new control connection after the old one was lost.

    ``attempt(key)`` tries once and returns ``(taken, may_wait)``: ``may_wait`` when the
    lock is free or still held by our old, dying session (whose process releases it a
    moment later).  Keys taken go to ``held``; keys another session holds, or that stay
    unavailable for ``wait`` seconds, go to ``lost`` (reported when released).
    """
    pending = list(keys)
    deadline = time.monotonic() + wait
    try:
        while pending:
            waiting = []
            for key in pending:
                taken, may_wait = attempt(key)
                if taken:
                    held.add(key)
                elif may_wait and time.monotonic() < deadline:
                    waiting.append(key)
                else:
                    lost.add(key)
            pending = waiting
            if pending:
                time.sleep(0.01)
    except BaseException:
        lost.update(set(pending) - held)
        raise


def server_start(backend: Backend) -> float | None:
    """When ``backend``'s server last started (its clock), or None: no server (SQLite), or
    the question failed (the server is down, the connection broke)."""
    try:
        return backend.server_started()
    except Exception:
        return None


def restarted_since(backend: Backend, before: float | None) -> float | None:
    """The server's new start time if it started again since ``before`` (its start time then,
    from :func:`server_start`), else None (also when that cannot be told)."""
    if before is None:
        return None
    now = server_start(backend)
    return now if now is not None and now > before + 1.0 else None  # MySQL's start time is to the second


def when_up(connect: Callable[[], Result], wait: float) -> Result:
    """``connect()``; while it raises :class:`ServerNotUpError`, once more until ``wait`` seconds
    have passed (then the error says how long it waited)."""
    deadline = time.monotonic() + wait
    delay = 0.1
    while True:
        try:
            return connect()
        except ServerNotUpError as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                if wait <= 0:
                    raise
                bound = f"the lock timeout, {SERVER_WAIT:g}s at most: {names('lock_timeout')}"
                waited = f"waited {wait:g}s for it ({bound})"
                raise ServerNotUpError(f"{exc.describe()}; {waited}") from None
        time.sleep(min(delay, left))
        delay = min(delay * 2, 1.0)


def clean_up_after(error: BaseException, cleanup: Callable[[], object], what: str) -> Exception | None:
    """Run ``cleanup``, made necessary by ``error`` (e.g. drop a half-made clone); the cleanup's
    exception if it failed, else None.

    The caller goes on raising ``error``: a failing cleanup never replaces it.  Its exception
    is recorded on ``error`` as a note instead (``what: reason``; Python 3.11+).
    """
    try:
        cleanup()
    except Exception as failure:
        add_note = getattr(error, "add_note", None)
        if add_note is not None:
            reason = " ".join(str(failure).split()) or type(failure).__name__
            add_note(f"{PREFIX}{what}: {reason}")
        return failure
    return None


class ControlConnection(Generic[Conn]):
    """The control connection of a server backend and the session-level locks held on it.

    When the server ends the control session (PostgreSQL ``pg_terminate_backend``, MySQL
    ``KILL CONNECTION``, a restart, the network), the next statement notices, a new
    connection is opened, the locks the old session held are taken again
    (:func:`retake_locks`) and the statement runs once more (:meth:`_on_control`).  A lock
    another session took in the meantime is *lost*: :meth:`release_lock` of it raises a
    :class:`ConcurrentDBError` naming the lock and its new holder, once.

    A backend supplies the driver's part: how to open, test, identify and close a control
    connection (:meth:`_open_control`, :meth:`_is_open`, :meth:`_session_of`,
    :meth:`_close_quietly`), which errors mean the server ended it (:meth:`_ended`), and its
    lock SQL (:meth:`_retake`, :meth:`_unlock`, :meth:`_holder`).

    While it holds locks, a background thread checks the session every :attr:`heartbeat`
    seconds, so that after a server restart the locks are taken back within seconds of the
    server being up, not at the owner's next statement (which may come only at the end of a
    long test); meanwhile other runs presume the owner alive
    (:func:`pytest_concurrent_db.janitor.presumed_alive`).  A mutex keeps that thread and the
    owner's statements apart.
    """

    #: How long a new control session waits for the lost one's server process (or thread) to
    #: end and free our locks (seconds).
    old_session_wait: ClassVar[float] = 5.0
    #: How long opening a connection waits for a server that is not up (:class:`ServerNotUpError`):
    #: the control connection, the first time and after a lost one, and the users' connections
    #: (seconds; the site's lock timeout for the processes of a run,
    #: :meth:`pytest_concurrent_db.site.Site.open_backend`).
    connect_wait: float = 0.0
    #: Seconds between two checks of the control session while locks are held (0: none).
    heartbeat: float = 2.0

    def __init__(self) -> None:
        self._mutex = threading.RLock()
        self._stop_heartbeat: threading.Event | None = None
        #: a wait for the server ended in vain, and no connection opened since
        self._waited_in_vain = False
        self._conn: Conn | None = None
        #: the server's id of the control session (a connection the server ended may not tell)
        self._session_id = 0
        #: locks held on the control connection
        self._held: set[str] = set()
        #: locks the control session held when the server ended it, that we could not take again
        self._lost: set[str] = set()

    # -- the driver's part ------------------------------------------------------------------
    def _open_control(self) -> Conn:
        """A new control connection (autocommit), or BackendUnavailableError."""
        raise NotImplementedError

    def _is_open(self, conn: Conn) -> bool:
        """False once ``conn`` is known to be closed (a statement failed on it, or we closed it)."""
        raise NotImplementedError

    def _session_of(self, conn: Conn) -> int:
        """The server's id of the session of ``conn`` (PostgreSQL backend pid, MySQL thread id)."""
        raise NotImplementedError

    def _close_quietly(self, conn: Conn) -> None:
        """Close ``conn``, which may be broken already."""
        raise NotImplementedError

    def _ended(self, exc: Exception, conn: Conn) -> bool:
        """True if ``exc``, raised by a statement on ``conn``, means the server ended that session."""
        raise NotImplementedError

    def _retake(self, conn: Conn, key: str, old_session: int) -> tuple[bool, bool]:
        """Try once to take lock ``key`` on the new control connection ``conn``: ``(taken,
        may_wait)``, ``may_wait`` when the lock is free or still held by ``old_session``."""
        raise NotImplementedError

    def _unlock(self, conn: Conn, key: str) -> None:
        """Release lock ``key`` on ``conn``; if the server ended the session meanwhile, the
        lock went with it and there is nothing to do."""
        raise NotImplementedError

    def _holder(self, key: str) -> str:
        """Who holds lock ``key`` now, in words."""
        raise NotImplementedError

    def _lock_label(self, key: str) -> str:
        """Lock ``key`` in words, e.g. ``"PostgreSQL advisory lock 'clone:x'"``."""
        raise NotImplementedError

    def _lost_session(self) -> str:
        """The control session and the ways it may end, for the message of a lost lock."""
        raise NotImplementedError

    def _ping(self, conn: Conn) -> None:
        """One cheap statement on ``conn`` (``SELECT 1``)."""
        raise NotImplementedError

    def _release_all(self, conn: Conn) -> None:
        """Release every lock on ``conn`` before it is closed; by default the close does."""

    # -- shared -------------------------------------------------------------------------------
    def _control(self) -> Conn:
        """The control connection; a new one (taking our locks again) if it is closed."""
        with self._mutex:
            if self._conn is None or not self._is_open(self._conn):
                self._reconnect(self.connect_wait)
            assert self._conn is not None
            return self._conn

    def _reconnect(self, wait: float) -> None:
        """Open the control connection (waiting up to ``wait`` seconds for a server that is not
        up); after a lost one, take its locks again.  If it cannot be opened, the locks are
        taken again by the next connection that can."""
        old, self._conn = self._conn, None
        if old is not None:
            self._close_quietly(old)
        conn = self._when_up(self._open_control, wait)
        held, self._held = sorted(self._held), set()
        old_session = self._session_id
        self._session_id = self._session_of(conn)
        self._conn = conn
        retake_locks(
            held,
            lambda key: self._retake(conn, key, old_session),
            held=self._held,
            lost=self._lost,
            wait=self.old_session_wait,
        )

    def _when_up(self, connect: Callable[[], Result], wait: float) -> Result:
        """``connect()``, waiting up to ``wait`` seconds for a server that is not up
        (:func:`when_up`), unless a wait already ended in vain and nothing connected since: a
        server that stays down is waited for once, not before every statement."""
        try:
            result = when_up(connect, 0.0 if self._waited_in_vain else wait)
        except ServerNotUpError:
            self._waited_in_vain = wait > 0
            raise
        self._waited_in_vain = False
        return result

    def _on_control(self, run: Callable[[Conn], Result], *, retry: bool = True) -> Result:
        """``run(connection)`` on the control connection; if the server ended that session, once
        more on a new one (``retry``: only for statements that may run twice)."""
        with self._mutex:
            conn = self._control()
            try:
                return run(conn)
            except Exception as exc:
                if not retry or not self._ended(exc, conn):
                    raise
            return run(self._control())

    def _start_heartbeat(self) -> None:
        """Start the thread that checks the control session (once; it ends with :meth:`close`)."""
        if self._stop_heartbeat is not None or self.heartbeat <= 0:
            return
        stop = self._stop_heartbeat = threading.Event()
        owner = weakref.ref(self)
        interval = self.heartbeat

        def beat() -> None:
            while not stop.wait(interval):
                backend = owner()
                if backend is None:
                    return
                backend._beat()
                del backend

        threading.Thread(target=beat, name="pytest-concurrent-db heartbeat", daemon=True).start()

    def _beat(self) -> None:
        """One check of the control session while locks are held: if the server ended it, a
        new one takes the locks back.  Skipped while a statement runs (it checks as much);
        one attempt to connect (the next beat, or the owner's next statement, tries again)."""
        if not self._mutex.acquire(blocking=False):
            return
        try:
            conn = self._conn
            if not self._held:
                return
            if conn is None or not self._is_open(conn):
                self._reconnect(0.0)
                return
            try:
                self._ping(conn)
            except Exception as exc:
                if not self._ended(exc, conn):
                    raise
                self._reconnect(0.0)
        except Exception:  # the server is not up yet: tried again
            pass
        finally:
            self._mutex.release()

    def _take(self, key: str, take: Callable[[], bool]) -> bool:
        """Lock bookkeeping around ``take()``, one attempt to take ``key`` on the server: a key
        held already is not taken twice (one release frees it), and a key lost earlier is no
        longer reported once we try to take it again."""
        with self._mutex:
            if key in self._held:
                return True
            self._lost.discard(key)
            if not take():
                return False
            self._held.add(key)
        self._start_heartbeat()
        return True

    def release_lock(self, key: str) -> None:
        """Release ``key``; raise ConcurrentDBError, once, if it was lost with the control session."""
        with self._mutex:
            self._release(key)

    def _release(self, key: str) -> None:
        if key in self._lost:
            self._lost.discard(key)
            holder = "another session"
            with contextlib.suppress(Exception):  # only to name it
                holder = self._holder(key)
            raise ConcurrentDBError(
                f"lost the {self._lock_label(key)}: the server ended our control {self._lost_session()} "
                f"and {holder} took the lock before we could take it again; what it guarded may have been "
                "dropped by that session (our cleanup went on)"
            )
        if key not in self._held:
            return
        self._held.discard(key)
        conn = self._conn
        if conn is not None and self._is_open(conn):
            self._unlock(conn, key)

    def close(self) -> None:
        """Close the control connection (releasing its locks) and forget them."""
        if self._stop_heartbeat is not None:
            self._stop_heartbeat.set()
            self._stop_heartbeat = None
        with self._mutex:
            conn, self._conn = self._conn, None
            held = bool(self._held)
            self._held.clear()
            self._lost.clear()
            if conn is None:
                return
            if held and self._is_open(conn):
                self._release_all(conn)
            self._close_quietly(conn)
