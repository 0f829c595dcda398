"""Resource limits and many machines on one server.

* ``pytest -n 16`` on a small machine: every test passes, our sessions stay far below
  ``max_connections`` (a few per worker), and none of them nor any clone of the run
  is left afterwards.  The run connects as a user of its own, so that the sessions of
  tests running concurrently are not counted.
* Two machines (two runs with different ``TMPDIR``: their file locks never meet) on
  one server: only the server-side lock coordinates them, and the template is built
  exactly once.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from pytest_concurrent_db.backends import connect_url
from pytest_concurrent_db.backends.mysql import REGISTRY, quote_ident
from pytest_concurrent_db.url import DatabaseURL
from tests.integration.conftest import Project

WORKERS = 16
TESTS = 32


@pytest.fixture(params=["postgresql", "mysql"])
def backend_url(request: pytest.FixtureRequest) -> DatabaseURL:
    """Only the server backends (overrides tests/conftest.py)."""
    url: DatabaseURL = request.getfixturevalue(f"{request.param}_url")
    return url


def _admin(url: DatabaseURL) -> Any:
    return connect_url(url.with_database("postgres" if url.backend == "postgresql" else ""), autocommit=True)


def _run_sql(url: DatabaseURL, *statements: str) -> None:
    admin = _admin(url)
    try:
        for statement in statements:
            admin.cursor().execute(statement)
    finally:
        admin.close()


def _wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


@pytest.fixture
def own_user(project: Project) -> Iterator[DatabaseURL]:
    """The project's URL for a user of its own (all privileges on our databases: a run may reap
    any other run's leftovers); dropped afterwards, after the project's databases."""
    user = f"cdb_lim_{secrets.token_hex(3)}"
    password = secrets.token_hex(8)
    if project.backend == "postgresql":
        create = [f'CREATE ROLE "{user}" LOGIN SUPERUSER PASSWORD {sql.Literal(password).as_string()}']
        drop = [f'DROP ROLE IF EXISTS "{user}"']
    else:
        hosts = ("%", "localhost")
        create = [f"CREATE USER '{user}'@'{h}' IDENTIFIED BY '{password}'" for h in hosts]
        create += [
            f"GRANT ALL PRIVILEGES ON {db}.* TO '{user}'@'{h}'"
            for db in ("`cdb\\_%`", quote_ident(REGISTRY))
            for h in hosts
        ]
        drop = [f"DROP USER IF EXISTS '{user}'@'{h}'" for h in hosts]
    _run_sql(project.url, *create)
    try:
        yield dataclasses.replace(project.url, username=user, password=password)
    finally:
        project.drop_all()  # a role that owns databases cannot be dropped
        _run_sql(project.url, *drop)


def _count_sessions(admin: Any, url: DatabaseURL) -> int:
    """Sessions of ``url``'s user (PostgreSQL: with our application name)."""
    cur = admin.cursor()
    if url.backend == "postgresql":
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s "
            "AND application_name LIKE 'pytest-concurrent-db%%'",
            (url.username,),
        )
    else:
        cur.execute("SELECT count(*) FROM information_schema.PROCESSLIST WHERE USER = %s", (url.username,))
    return int(cur.fetchone()[0])


def _max_connections(admin: Any, url: DatabaseURL) -> int:
    cur = admin.cursor()
    cur.execute("SHOW max_connections" if url.backend == "postgresql" else "SELECT @@max_connections")
    return int(cur.fetchone()[0])


class Sampler(threading.Thread):
    """Counts our sessions every 0.1 s while a run is going on."""

    def __init__(self, url: DatabaseURL) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.samples: list[int] = []
        self.error: BaseException | None = None
        self._done = threading.Event()

    def run(self) -> None:
        admin = _admin(self.url)
        try:
            while not self._done.is_set():
                self.samples.append(_count_sessions(admin, self.url))
                self._done.wait(0.1)
        except BaseException as exc:
            self.error = exc
        finally:
            admin.close()

    def stop(self) -> list[int]:
        self._done.set()
        self.join(30)
        if self.error is not None:
            raise self.error
        return self.samples


def _start(project: Project, url: DatabaseURL, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "pytest", "--concurrent-db", "-p", "no:randomly"]
    argv += ["--concurrent-db-url", url.render(hide_password=False), *args]
    return subprocess.Popen(
        argv,
        cwd=project.pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )


def _finish(proc: subprocess.Popen[str], timeout: float = 240) -> str:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        output, _ = proc.communicate()
        raise AssertionError(f"the run hung:\n{output}") from None
    return output


def test_sixteen_workers_stay_within_the_connection_limits(project: Project, own_user: DatabaseURL) -> None:
    project.write(
        schema="CREATE TABLE item (id INTEGER PRIMARY KEY);\n",
        tests=f"""
        import pytest

        @pytest.mark.parametrize("i", range({TESTS}))
        def test_tiny(concurrent_db_connection, i):
            cur = concurrent_db_connection.cursor()
            cur.execute("SELECT count(*) FROM item")
            assert cur.fetchone()[0] == 0
            concurrent_db_connection.rollback()
        """,
    )
    admin = _admin(project.url)
    try:
        limit = _max_connections(admin, project.url)
        sampler = Sampler(own_user)
        sampler.start()
        try:
            output = _finish(_start(project, own_user, "-n", str(WORKERS)))
        finally:
            samples = sampler.stop()
        assert f"{TESTS} passed" in output, output
        assert "INTERNALERROR" not in output, output
        peak = max(samples)
        # a control and a test connection per worker (a third while building or cloning), the controller's
        bound = 3 * WORKERS + 4
        assert 0 < peak <= min(limit, bound), (peak, limit, samples)
        _wait_for(lambda: _count_sessions(admin, own_user) == 0)  # none of ours remains
    finally:
        admin.close()
    match = re.search(r"concurrent-db: backend=\S+ run=(\w+)", output)
    assert match is not None, output
    assert [n for n in project.server_names() if f"_{match.group(1)}_" in n] == []
    assert project.clones() == []
    assert f"dropped: {WORKERS} databases (0 left by crashed workers)" in summary_of(output), output


def summary_of(output: str) -> str:
    found = re.search(r"=+ concurrent-db =+\n(.*?)(?:\n=|$)", output, re.DOTALL)
    return found.group(1) if found else ""


SLOW_BUILD_CONFTEST = """
import os, pathlib, time

def pytest_concurrent_db_populate_template(connection):
    # the build goes on until the test has seen both machines waiting for the template lock
    signals = pathlib.Path(os.environ["SIGNAL_DIR"])
    (signals / f"built-by-{os.getpid()}").write_text("x")
    deadline = time.monotonic() + 60
    while not (signals / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
"""


def test_two_machines_on_one_server_build_the_template_once(project: Project, tmp_path: Path) -> None:
    """Two runs whose file locks live in different directories (``TMPDIR``), as on two
    machines: while one builds the template, a worker of each machine has passed its own
    file lock, so only the server-side lock keeps the other from building it too."""
    project.write(
        tests="""
        import pytest

        @pytest.mark.parametrize("i", range(4))
        def test_uses_template(concurrent_db_connection, i):
            cur = concurrent_db_connection.cursor()
            cur.execute("SELECT count(*) FROM author")
            assert cur.fetchone()[0] == 1
            concurrent_db_connection.rollback()
        """,
        conftest=SLOW_BUILD_CONFTEST,
    )
    signals = tmp_path / "signals"
    signals.mkdir()
    machines = [tmp_path / "machine-a", tmp_path / "machine-b"]
    procs = []
    for machine in machines:
        machine.mkdir()
        env = {"TMPDIR": str(machine), "SIGNAL_DIR": str(signals)}
        procs.append(_start(project, project.url, "-n", "2", env=env))
    try:
        _wait_for(lambda: any(signals.glob("built-by-*")))
        # each machine has a worker past its file lock: the builder, and one waiting for the server lock
        _wait_for(lambda: all(any(machine.rglob("*.holder")) for machine in machines))
    finally:
        (signals / "release").write_text("x")
        outputs = [_finish(proc) for proc in procs]
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output
        assert "4 passed" in output, output
    summaries = [summary_of(output) for output in outputs]
    built = [s for s in summaries if re.search(r"template: \S+ built by gw\d", s)]
    reused = [s for s in summaries if "reused (inputs unchanged)" in s]
    assert (len(built), len(reused)) == (1, 1), outputs
    assert len(list(signals.glob("built-by-*"))) == 1  # the populate hook ran once in all
    templates = {re.search(r"template: (\S+)", s).group(1) for s in summaries}  # type: ignore[union-attr]
    assert len(templates) == 1
    assert project.clones() == []
