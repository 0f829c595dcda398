"""Issue 18: real server faults on private servers, each scenario in a bounded loop with the
fault at different moments, driving real ``pytest -n 2 --concurrent-db`` runs.

What every run shows is a pass or a clear error, never a hang (it ends within 60 s of the
fault), never a traceback through our code; no database a live run uses is dropped, no half
copy is taken for a good one, and after the next run nothing of ours is left but templates
(and spares made for the run after).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.faults.conftest import FaultProject, Record, Run, wait_for
from tests.integration.conftest import SCHEMAS

__all__ = [
    "test_a_live_run_survives_another_runs_start_after_a_restart",
    "test_connections_exhausted",
    "test_crash_during_a_clone",
    "test_locks_are_taken_back_after_a_restart",
    "test_restart_during_the_template_build",
    "test_restart_while_tests_run",
    "test_server_down_at_start",
]

INNER = """
    import os, time, pytest

    TESTS = int(os.environ.get("TESTS", "4"))
    SLEEP = float(os.environ.get("SLEEP", "0"))
    TABLES = int(os.environ.get("TABLES", "0"))
    GATE = os.environ.get("GATE")  # a file: each test waits until it exists (60 s at most)

    @pytest.mark.parametrize("i", range(TESTS))
    def test_work(concurrent_db_connection, i):
        cur = concurrent_db_connection.cursor()
        cur.execute("SELECT COUNT(*) FROM author")
        assert cur.fetchone()[0] == 1
        if TABLES:  # a complete copy of the template, not half of one
            cur.execute(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_type = 'BASE TABLE' AND table_schema = "
                + ("'public'" if "{backend}" == "postgresql" else "DATABASE()")
            )
            assert cur.fetchone()[0] == TABLES
        time.sleep(SLEEP)
        deadline = time.monotonic() + 60
        while GATE and not os.path.exists(GATE) and time.monotonic() < deadline:
            time.sleep(0.05)
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        cur.execute("INSERT INTO book (author_id, title, worker) VALUES (1, PARAM, PARAM)", (f"t{i}", worker))
        concurrent_db_connection.commit()
"""
#: base tables of SCHEMAS: author, book, audit
BASE_TABLES = 3
#: what a test that lost its connection to a restarted or crashed server may say, and nothing else
CONNECTION_LOST = re.compile(
    r"terminating connection|server closed the connection|connection to the database was lost|"
    r"Lost connection|MySQL server has gone away|server restarted|consuming input failed|"
    r"the connection is closed|Connection refused|Can't connect|starting up|shutting down|"
    r"AdminShutdown|OperationalError|InterfaceError|"
    r"cannot connect to",  # a connection attempt the crash cut short: one line, the run goes on
    re.IGNORECASE,
)


def _schema(backend: str, *, tables: int = 0, sleep: float = 0.0, tag: str = "") -> str:
    extra = []
    for i in range(tables):
        if backend == "postgresql":
            extra.append(
                f"CREATE TABLE t{i} (id SERIAL PRIMARY KEY, author_id INTEGER REFERENCES author(id), v TEXT);"
                f" CREATE INDEX t{i}_v ON t{i} (v);"
            )
        else:
            extra.append(
                f"CREATE TABLE t{i} (id INT AUTO_INCREMENT PRIMARY KEY, author_id INT, v VARCHAR(50),"
                f" FOREIGN KEY (author_id) REFERENCES author(id), INDEX (v)) ENGINE=InnoDB;"
            )
    if sleep:
        extra.append(f"SELECT pg_sleep({sleep});" if backend == "postgresql" else f"SELECT SLEEP({sleep});")
    return f"-- {tag}\n" + SCHEMAS[backend] + "\n".join(extra) + "\n"


def _write(faulty: FaultProject, **schema: Any) -> None:
    backend = faulty.server.backend
    faulty.project.write(schema=_schema(backend, **schema), tests=INNER.replace("{backend}", backend))


def _failures_are_lost_connections(run: Run) -> None:
    """Every failed or erroring test of ``run`` failed because its connection died with the server."""
    summary = run.output.split("short test summary info", 1)[-1] if "short test summary info" in run.output else ""
    for line in summary.splitlines():
        if line.startswith(("FAILED", "ERROR")):
            assert CONNECTION_LOST.search(line), f"a failure that is not a lost connection: {line}\n{run.output}"


def _templates(faulty: FaultProject, state: str) -> list[str]:
    return [n for n, m in faulty.databases().items() if m is not None and m.kind == "template" and m.state == state]


def _copying(faulty: FaultProject) -> bool:
    """A clone is being copied on the server right now."""
    if faulty.server.backend == "postgresql":
        sql = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query ILIKE 'CREATE DATABASE%%'"
    else:
        sql = (
            "SELECT count(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'CREATE TABLE%%'"
            " OR INFO LIKE 'INSERT INTO%%SELECT%%'"
        )
    return bool(faulty.admin_query(sql)[0][0])


def _fault(
    faulty: FaultProject, record: Record, ready: Callable[[], Any], moment: float, *, crash: bool = False
) -> tuple[Any, float]:
    """For a run just started: once ``ready()`` is true, ``moment`` seconds more, then restart
    the server (``crash``: SIGKILL it, then start it: crash recovery); (what ``ready()`` said,
    when the fault was)."""
    record.runs += 1
    found = wait_for(ready, interval=0.005)
    time.sleep(moment)
    fault_at = time.monotonic()
    if crash:
        faulty.server.crash()
        faulty.server.start()
    else:
        faulty.server.restart()
    record.faults += 1
    return found, fault_at


def _two_clones(faulty: FaultProject) -> Callable[[], list[str]]:
    return lambda: len(faulty.clones()) == 2 and faulty.clones()


# -- 1 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("moments", [(0.2, 1.0, 1.8)])
def test_restart_during_the_template_build(faulty: FaultProject, record: Record, moments: tuple[float, ...]) -> None:
    """The build starts over once the server is up (within the lock timeout) and the run passes;
    a half-built template is never marked ready; the next run passes on complete clones."""
    tables = 5
    for rep, moment in enumerate(moments):
        _write(faulty, tables=tables, sleep=2.0, tag=f"build {rep}")
        run = faulty.start("--concurrent-db-lock-timeout", "30", env={"TESTS": "2"})
        _, fault_at = _fault(faulty, record, lambda: _templates(faulty, "building"), moment)
        run.wait()
        record.ended(run, fault_at)
        run.assert_clean_output()
        assert run.returncode == 0, run.output  # the build started over once the server was up
        assert "built by" in run.output, run.output
        faulty.next_run_leaves_nothing(record, env={"TABLES": str(BASE_TABLES + tables)})


# -- 2 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("moments", [(0.3, 1.5, 3.0)])
def test_restart_while_tests_run(faulty: FaultProject, record: Record, moments: tuple[float, ...]) -> None:
    """The tests that were using a connection fail because it died with the server; the run ends
    and the next run leaves nothing."""
    _write(faulty)
    for moment in moments:
        run = faulty.start(env={"TESTS": "4", "SLEEP": "2"})
        _, fault_at = _fault(faulty, record, _two_clones(faulty), moment)
        run.wait()
        record.ended(run, fault_at)
        run.assert_clean_output()
        _failures_are_lost_connections(run)
        if "short test summary info" in run.output:  # a test lost its connection: the restart is named
            assert "the database server restarted (up again since" in run.output, run.output
        faulty.next_run_leaves_nothing(record)


# -- 3 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("moments", [(0.5, 2.0, 3.5)])
def test_a_live_run_survives_another_runs_start_after_a_restart(
    faulty: FaultProject, record: Record, moments: tuple[float, ...]
) -> None:
    """Run A is mid-way when the server restarts; run B starts right after and must not drop A's
    clones while A lives (their locks died with the restart); A then ends on its own.

    A's tests wait for a gate file, opened once B has ended and A's clones are counted: A is
    in its tests, not in its own teardown dropping them, however slow the machine."""
    _write(faulty)
    for i, moment in enumerate(moments):
        gate = faulty.project.pytester.path / f"gate{i}"
        a = faulty.start(env={"TESTS": "4", "SLEEP": "1", "GATE": str(gate)})
        found, fault_at = _fault(faulty, record, _two_clones(faulty), moment)
        a_clones = set(found)
        b = faulty.run(env={"TESTS": "2"}, workers=0)  # its start reaps what dead runs left
        record.runs += 1
        b.assert_clean_output()
        assert b.returncode == 0, b.output
        reaped = {name for name in a_clones if name in b.output}  # the summary's "reaped:" line
        missing = a_clones - set(faulty.databases())
        assert a.alive(), f"run A ended before its gate opened:\n{a.wait().output}"
        record.wrong_drops += len(reaped | missing)
        assert not reaped | missing, f"run B dropped the clones of live run A: {sorted(reaped | missing)}\n{b.output}"
        gate.touch()
        a.wait()
        record.ended(a, fault_at)
        a.assert_clean_output()
        _failures_are_lost_connections(a)
        assert "lost the" not in a.output, a.output  # A took its locks back: nobody else had them
        faulty.next_run_leaves_nothing(record)


def test_locks_are_taken_back_after_a_restart(faulty: FaultProject, record: Record) -> None:
    """The path run A relies on: a backend holding locks takes them back after a real restart
    within its heartbeat, without a statement of its own, so that the server shows them held
    again; releasing them reports nothing lost."""
    from pytest_concurrent_db.backends import Marker, load_backend

    url = faulty.project.url
    owner: Any = load_backend(url, connect_wait=30)
    name = f"cdb_{faulty.base}_owner_gw0"
    keys = [f"clone:{name}", f"template:cdb_{faulty.base}_tpl_x"]

    def held() -> int:
        """How many of ``keys`` some session holds (asked without taking them)."""
        if faulty.server.backend == "postgresql":
            parts = [owner._key_parts(key) for key in keys]
            sql = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 AND ("
            sql += " OR ".join(["(classid::bigint = %s AND objid::bigint = %s)"] * len(keys)) + ")"
            return int(faulty.admin_query(sql, [n for pair in parts for n in pair])[0][0])
        sql = "SELECT " + " + ".join(["(IS_USED_LOCK(%s) IS NOT NULL)"] * len(keys))
        return int(faulty.admin_query(sql, [owner._lock_name(key) for key in keys])[0][0])

    try:
        owner.create(name, Marker(kind="clone", run_id="owner", worker_id="gw0"))
        assert all(owner.try_lock(key) for key in keys)
        assert held() == len(keys)
        for _ in range(3):
            fault_at = time.monotonic()
            faulty.server.restart()
            record.faults += 1
            wait_for(lambda: held() == len(keys), timeout=owner.heartbeat + 10)
            record.longest = max(record.longest, time.monotonic() - fault_at)
        for key in keys:
            owner.release_lock(key)  # none lost
        assert held() == 0
        owner.drop(name)
    finally:
        owner.close()


# -- 4 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("moments", [(0.0, 0.1, 0.3)])
def test_crash_during_a_clone(faulty: FaultProject, record: Record, moments: tuple[float, ...]) -> None:
    """SIGKILL of the server while workers copy the template: after crash recovery no half clone
    is taken for a good one (every test checks its clone has every table), and the next run
    drops what is left."""
    tables = 120
    _write(faulty, tables=tables)
    complete = {"TABLES": str(BASE_TABLES + tables)}
    faulty.next_run_leaves_nothing(record, "--concurrent-db-spares", "0", env=complete)  # builds the template
    for moment in moments:
        run = faulty.start("--concurrent-db-spares", "0", "--concurrent-db-lock-timeout", "30", env=complete)
        _, fault_at = _fault(faulty, record, lambda: _copying(faulty), moment, crash=True)
        run.wait()
        record.ended(run, fault_at)
        run.assert_clean_output()
        _failures_are_lost_connections(run)
        faulty.next_run_leaves_nothing(record, env=complete)


# -- 5 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("comes_up_after", [(None, 1.0, 3.0)])
def test_server_down_at_start(faulty: FaultProject, record: Record, comes_up_after: tuple[float | None, ...]) -> None:
    """Down for good: one line naming the URL (password hidden) and that the server refused the
    connection, after the lock timeout.  Up within the lock timeout: the run waits and passes."""
    _write(faulty)
    shown = faulty.project.url.render()
    for after in comes_up_after:
        faulty.server.stop()
        record.faults += 1
        timeout = "3" if after is None else "30"
        run = faulty.start("--concurrent-db-lock-timeout", timeout, env={"TESTS": "2"})
        record.runs += 1
        if after is not None:
            time.sleep(after)
            faulty.server.start()
        run.wait()
        record.ended(run, run.started)
        run.assert_clean_output()
        if after is None:
            assert run.returncode != 0
            lines = [line for line in run.output.splitlines() if "cannot connect" in line]
            assert len(lines) == 1, run.output
            assert shown in lines[0], run.output
            assert "s3cr3t" not in run.output, run.output
            assert "refused the connection" in lines[0], lines[0]
            assert "waited 3s" in lines[0], lines[0]
            faulty.server.start()
        else:
            assert run.returncode == 0, run.output
        faulty.next_run_leaves_nothing(record)


# -- 6 ---------------------------------------------------------------------------------------------
def _hog(faulty: FaultProject) -> list[Any]:
    """Every free connection slot of the server, taken by another client."""
    conns: list[Any] = []
    while True:
        try:
            conns.append(faulty.server.admin())
        except Exception:
            return conns


@pytest.mark.parametrize("moments", [(None, 0.0, 1.0, "clones")])
def test_connections_exhausted(faulty: FaultProject, record: Record, moments: tuple[float | str | None, ...]) -> None:
    """Another client holds every connection slot (``max_connections``), before the run starts
    or while it starts (``clones``: once the workers' clones exist, before their tests connect):
    the run ends at once with one line saying so and naming the setting."""
    _write(faulty)
    faulty.server.set_max_connections(12)  # type: ignore[attr-defined]
    for moment in moments:
        hog: list[Any] = []
        try:
            if moment is None:
                hog = _hog(faulty)
                fault_at = time.monotonic()
            run = faulty.start(env={"TESTS": "2", "SLEEP": "1" if moment == "clones" else "0"})
            record.runs += 1
            if moment == "clones":
                wait_for(_two_clones(faulty), interval=0.005)
            elif moment is not None:
                time.sleep(float(moment))
            if moment is not None:
                hog = _hog(faulty)
                fault_at = time.monotonic()
            record.faults += 1
            run.wait()
            record.ended(run, max(fault_at, run.started))
        finally:
            for conn in hog:
                conn.close()
        run.assert_clean_output()
        if run.returncode != 0:
            assert "max_connections" in run.output, run.output
            said = [line for line in run.output.splitlines() if "max_connections" in line]
            lines = {line.split("concurrent-db: ", 1)[-1].rstrip(" !") for line in said}
            assert len(lines) == 1, run.output  # one message (the controller's, or the same from each worker)
        else:
            record.notes.append(f"{moment}: the run had its connections already")
        faulty.next_run_leaves_nothing(record)
