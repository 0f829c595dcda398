"""The contract every backend implements, and the marker that says "this database is ours".

A backend owns one *control* connection to the server (PostgreSQL: the maintenance
database; MySQL: no default database; SQLite: none).  Session-level locks are held
on that connection, so they die with the process that holds them: a lock that can
be taken means its owner is gone.  That is how liveness is decided everywhere
(see :mod:`pytest_concurrent_db.engine`).

Backends never decide *what* to create: the engine does.  They only do it, safely:
``drop`` refuses any database that does not carry our marker.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal, Protocol

__all__ = ["MARKER_TAG", "Backend", "DatabaseInfo", "Marker"]

MARKER_TAG = "pytest-concurrent-db:v1 "

Kind = Literal["template", "clone", "spare"]
State = Literal["building", "ready", "kept"]


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

    def encode(self) -> str:
        return MARKER_TAG + json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str | None) -> Marker | None:
        """The marker in ``text``, or None if ``text`` is not one of ours."""
        if not text or not text.startswith(MARKER_TAG):
            return None
        try:
            marker = cls(**json.loads(text[len(MARKER_TAG) :]))
        except (ValueError, TypeError):
            return None
        texts = (marker.run_id, marker.worker_id, marker.template, marker.fingerprint, marker.host)
        if (
            marker.kind not in ("template", "clone", "spare")
            or marker.state not in ("building", "ready", "kept")
            or not all(isinstance(t, str) for t in texts)
            or not isinstance(marker.created, (int, float))
        ):
            return None
        return marker


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
