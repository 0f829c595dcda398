"""Faults without restarting anything: server sessions ended under a live run, a hung lock holder.

The server ends our sessions (PostgreSQL ``pg_terminate_backend``, MariaDB ``KILL
CONNECTION``): the backend's control connection reconnects, takes its locks again and
goes on; a lock someone else took meanwhile is reported when released.  In a real run
the affected test fails with the driver's message, the run ends, and every worker
drops its own clone itself (the controller's sweep finds nothing to do).
"""

from __future__ import annotations

import inspect
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_concurrent_db import ConcurrentDBError
from pytest_concurrent_db.backends import Backend, Marker, load_backend
from pytest_concurrent_db.naming import template_name
from pytest_concurrent_db.template import fingerprint, schema_populator
from pytest_concurrent_db.url import DatabaseURL
from tests.conftest import worker_databases
from tests.integration.conftest import Project, summary


@pytest.fixture(params=["postgresql", "mysql"])
def backend_url(request: pytest.FixtureRequest) -> DatabaseURL:
    """Only the server backends: SQLite has no sessions to end (overrides tests/conftest.py)."""
    url: DatabaseURL = request.getfixturevalue(f"{request.param}_url")
    return url


def _wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


# -- ending sessions from outside (also copied into the inner projects' conftest.py) -------
def admin_connection(url: DatabaseURL) -> Any:
    """An autocommit connection to the server of ``url``, outside of any of our databases."""
    from pytest_concurrent_db.backends import connect_url

    return connect_url(url.with_database("postgres" if url.backend == "postgresql" else ""), autocommit=True)


def mysql_sessions_of(cursor: Any, pids: list[int], server_port: int) -> list[int]:
    """Ids of the MySQL sessions whose client socket belongs to one of the processes ``pids``
    (MariaDB shows no application name without performance_schema: match the client ports
    of their TCP connections to ``server_port``)."""
    import os

    inodes = set()
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[9] in inodes and int(fields[2].rpartition(":")[2], 16) == server_port:
                    ports.add(int(fields[1].rpartition(":")[2], 16))
    cursor.execute("SELECT ID, HOST FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID()")
    found = []
    for session, host in cursor.fetchall():
        port = str(host or "").rpartition(":")[2]
        if port.isdigit() and int(port) in ports:
            found.append(int(session))
    return found


def end_sessions(url: DatabaseURL, application_names: list[str], pids: list[int]) -> int:
    """End, from a separate admin connection, the PostgreSQL sessions with these application
    names or the MySQL sessions of these processes; how many were ended."""
    admin = admin_connection(url)
    try:
        cur = admin.cursor()
        if url.backend == "postgresql":
            cur.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = ANY(%s) AND pid <> pg_backend_pid()",
                (application_names,),
            )
            return int(cur.fetchone()[0])
        sessions = mysql_sessions_of(cur, pids, url.port or 3306)
        for session in sessions:
            cur.execute("KILL CONNECTION %s", (session,))
        return len(sessions)
    finally:
        admin.close()


# -- the control connection itself ---------------------------------------------------------
def _end_control_session(backend: Backend, before: list[int]) -> None:
    url: DatabaseURL = backend.url  # type: ignore[attr-defined]
    app: str = backend.application_name  # type: ignore[attr-defined]
    if url.backend == "postgresql":
        assert end_sessions(url, [app], []) == 1
        return
    admin = admin_connection(url)
    try:
        cur = admin.cursor()
        ours = [s for s in mysql_sessions_of(cur, [os.getpid()], url.port or 3306) if s not in before]
        assert len(ours) == 1, ours  # the control connection
        cur.execute("KILL CONNECTION %s", (ours[0],))
    finally:
        admin.close()


def _sessions_before(url: DatabaseURL) -> list[int]:
    """This process's MySQL sessions now (to tell the victim's control connection from them)."""
    if url.backend != "mysql":
        return []
    admin = admin_connection(url)
    try:
        return mysql_sessions_of(admin.cursor(), [os.getpid()], url.port or 3306)
    finally:
        admin.close()


@pytest.fixture
def victim_and_before(backend_url: DatabaseURL) -> Iterator[tuple[Backend, str, str, list[int]]]:
    """(backend, name, key, sessions): a backend with an application name of its own that
    created database ``name`` and holds its lock ``key``; this process's MySQL sessions
    before (to tell its control connection from them).  Everything is dropped afterwards."""
    before = _sessions_before(backend_url)
    token = secrets.token_hex(4)
    app = f"pytest-concurrent-db faults {token}"
    url = backend_url.with_database(f"flt{token}")
    backend = load_backend(url, application_name=app)
    # the test decides when the ended session is noticed: no heartbeat noticing it first
    backend.heartbeat = 0  # type: ignore[attr-defined]
    name = f"cdb_flt{token}_victim"
    backend.preflight()
    # a ready template's marker: while the session is gone its lock is free, and a concurrent run's
    # reaper (every run reaps dead runs' clones on the whole server) would take a clone for dead
    backend.create(name, Marker(kind="template", run_id=token, state="ready"))
    key = f"clone:{name}"
    assert backend.try_lock(key)
    yield backend, name, key, before
    backend.close()
    cleaner = load_backend(url, application_name=app + " cleanup")
    try:
        cleaner.drop(name)
    finally:
        cleaner.close()


def _other(backend: Backend, role: str) -> Backend:
    url: DatabaseURL = backend.url  # type: ignore[attr-defined]
    return load_backend(url, application_name=f"{backend.application_name} {role}")  # type: ignore[attr-defined]


def test_control_connection_reconnects_and_takes_its_locks_again(
    victim_and_before: tuple[Backend, str, str, list[int]],
) -> None:
    """After the server ended the control session, drop/list/markers work without an error, and
    the lock the session held is held again (another process still sees its owner alive)."""
    backend, name, key, before = victim_and_before
    _end_control_session(backend, before)
    assert backend.get_marker(name) is not None  # no error: reconnected, lock taken again
    assert name in [info.name for info in backend.list_databases(name)]
    other = _other(backend, "reaper")
    try:
        assert not other.try_lock(key)  # the owner is alive again: a reaper must not take it
    finally:
        other.close()
    backend.drop(name)
    backend.release_lock(key)  # no error: the lock was never lost to anyone
    assert not backend.exists(name)


def test_a_lock_taken_by_another_session_meanwhile_is_reported(
    victim_and_before: tuple[Backend, str, str, list[int]],
) -> None:
    """If another session took the lock while ours was gone, the drop still happens and the
    release raises one clear line naming the lock and the session that holds it now."""
    backend, name, key, before = victim_and_before
    _end_control_session(backend, before)
    other = _other(backend, "reaper")
    try:
        _wait_for(lambda: other.try_lock(key))  # the ended session's locks are released as it exits
        backend.drop(name)  # reconnects; the lock is someone else's now, but the drop goes on
        assert not backend.exists(name)
        with pytest.raises(ConcurrentDBError) as info:
            backend.release_lock(key)
        message = str(info.value)
        assert "\n" not in message
        assert f"lost the {'PostgreSQL advisory' if backend.name == 'postgresql' else 'MySQL'} lock {key!r}" in message
        if backend.name == "postgresql":
            assert f"{backend.application_name} reaper" in message  # type: ignore[attr-defined]
        else:
            assert re.search(r"MySQL connection \d+", message), message
        backend.release_lock(key)  # reported once
        other.release_lock(key)
    finally:
        other.close()


def test_a_database_created_right_after_the_session_ended_is_created_once(
    victim_and_before: tuple[Backend, str, str, list[int]],
) -> None:
    """CREATE DATABASE is not blindly run twice: when the statement fails because the session
    is gone (PostgreSQL: CREATE is the first statement to notice), the backend looks whether
    the database is there and creates it once; then a clone of it works too."""
    backend, name, key, before = victim_and_before
    other, clone = name + "_other", name + "_clone"
    for lock in (f"template:{other}", f"clone:{clone}"):
        assert backend.try_lock(lock)
    _end_control_session(backend, before)
    try:
        backend.create(other, Marker(kind="template", run_id="faults", state="building"))
        backend.set_marker(other, Marker(kind="template", run_id="faults", state="ready"))
        backend.clone(other, clone, Marker(kind="clone", run_id="faults", worker_id="gw1", template=other))
        assert [info.name for info in backend.list_databases(name)] == sorted([name, other, clone])
    finally:
        for database in (clone, other):
            backend.drop(database)
    for lock in (f"template:{other}", f"clone:{clone}", key):
        backend.release_lock(lock)  # all taken again on the new session: none lost
    assert not backend.exists(other)


# -- a real run whose worker loses its sessions ---------------------------------------------
KILLER_CONFTEST = '''
from __future__ import annotations

import os
from typing import Any

import pytest
from pytest_concurrent_db.url import parse_url

{helpers}

@pytest.fixture
def end_my_sessions(concurrent_db, worker_id):
    """End this worker's sessions and the controller's (its parent process)."""
    def end():
        url = parse_url(concurrent_db.url)
        names = [f"pytest-concurrent-db {{concurrent_db.run_id}} {{w}}" for w in (worker_id, "main")]
        return end_sessions(url, names, [os.getpid(), os.getppid()])
    return end
'''

KILLER_TESTS = """
import os, pathlib, pytest

@pytest.mark.parametrize("i", range(6))
def test_work(concurrent_db_connection, worker_id, end_my_sessions, i):
    cur = concurrent_db_connection.cursor()
    cur.execute("SELECT count(*) FROM author")
    assert cur.fetchone()[0] == 1
    concurrent_db_connection.rollback()
    flag = pathlib.Path(os.environ["FLAG_DIR"]) / "ended"
    if worker_id == "gw0" and not flag.exists():
        ended = end_my_sessions()
        flag.write_text(str(ended))
        cur.execute("SELECT count(*) FROM author")  # our session is gone: the driver says so
"""


def test_a_worker_whose_server_sessions_are_ended_mid_run(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """gw0's sessions (control and test connection) and the controller's are ended from a
    separate connection in the middle of a ``-n 2`` run: that test fails with the driver's
    message, the other tests pass, the run ends, and each worker drops its own clone itself
    (its control connection reconnected and took the clone's lock again), so the
    controller's sweep has nothing left to do."""
    helpers = "\n\n".join(inspect.getsource(f) for f in (admin_connection, mysql_sessions_of, end_sessions))
    project.write(tests=KILLER_TESTS, conftest=KILLER_CONFTEST.format(helpers=helpers))
    flags = project.pytester.path / "flags"
    flags.mkdir()
    monkeypatch.setenv("FLAG_DIR", str(flags))
    result = project.run("-n", "2")
    output = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in output, output
    # control + test connection of gw0, control connection of the controller
    assert int((flags / "ended").read_text()) >= 3, output
    dead = (
        "terminating connection due to administrator command"
        if project.backend == "postgresql"
        else r"(Lost connection to (MySQL|server)|Connection was killed|server has gone away)"
    )
    assert re.search(dead, output), output
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    outcomes = result.parseoutcomes()
    if (outcomes.get("failed"), outcomes.get("passed")) == (1, 5):
        assert outcomes.get("errors", 0) <= 1, output  # the isolation check of that test, on the dead connection
        assert "dropped: 2 databases (0 left by crashed workers)" in summary(result), output
    else:  # rare: another run of the suite reaped gw0's clone in the moment its lock was free
        gone = r"(does not exist|Unknown database|lost the (PostgreSQL advisory|MySQL) lock)"
        assert re.search(gone, output), output
    assert project.clones() == []
    run_id = re.search(r"concurrent-db: backend=\S+ run=(\w+)", output)
    assert run_id is not None
    if project.backend == "postgresql":
        admin = admin_connection(project.url)
        try:
            pattern = f"pytest-concurrent-db {run_id.group(1)} %"
            query = "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s"
            _wait_for(lambda: admin.execute(query, (pattern,)).fetchone()[0] == 0)
        finally:
            admin.close()


# -- a template lock held by a hung process --------------------------------------------------
def test_a_hung_server_lock_holder_times_out_with_one_clear_line(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another machine (same server, its own file locks) hangs while holding the server-side
    template lock: ``--concurrent-db-lock-timeout 2`` ends the run with one line naming the
    lock and its holder, and nothing is left on the server."""
    project.write(tests="def test_a(concurrent_db_connection): pass\ndef test_b(concurrent_db_connection): pass\n")
    holder = worker_databases(project.url, run_id="hung0000", worker_id="holder", lock_dir=tmp_path / "holder-locks")
    print_ = fingerprint(holder.backend, [schema_populator(project.pytester.path / "schema.sql")])
    name = template_name(holder.site.base, print_)
    key = f"template:{name}"
    holder.backend.acquire_lock(key, 10)
    machine = tmp_path / "other-machine"
    machine.mkdir()
    monkeypatch.setenv("TMPDIR", str(machine))  # its own file locks: only the server lock is shared
    try:
        result = project.run("-n", "2", "--concurrent-db-lock-timeout", "2")
    finally:
        holder.backend.release_lock(key)
        holder.close()
    output = result.stdout.str() + result.stderr.str()
    assert result.ret not in (0, pytest.ExitCode.INTERNAL_ERROR), output
    assert "INTERNALERROR" not in output, output
    assert "Traceback" not in output, output
    wanted = re.compile(r"timed out after [\d.]+s waiting for .*" + re.escape(repr(key)))
    lines = [line for line in output.splitlines() if wanted.search(line)]
    assert lines, output
    for line in lines:  # everything on one line: what, which lock, who holds it, the fix
        if project.backend == "postgresql":
            assert "held by pid" in line, line
            assert "'pytest-concurrent-db hung0000 holder'" in line, line
        else:
            assert re.search(r"held by MySQL connection \d+", line), line
        assert "--concurrent-db-lock-timeout" in line, line
    assert project.server_names() == []
