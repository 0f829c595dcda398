"""Fault tests on private servers (:mod:`tests.faults.servers`): restarts, crashes, a server
down at start, exhausted connections.

Every test here is marked ``faults``: the default run leaves them out (``-m "not faults"`` in
pyproject's addopts); CI runs them in a step of their own::

    python -m pytest -n 2 --dist loadfile -m faults tests/faults

The scenarios (:mod:`tests.faults.scenarios`) are collected once per server, in
``test_postgresql.py`` and ``test_mariadb.py``; each module's tests share one private server
(``--dist loadfile``: the two run side by side on two workers); after every test the server is
up again with its usual settings.  Each test adds a line to the ``concurrent-db faults`` summary at the end: per
scenario and server, the runs, faults injected, wrong drops, leftovers after the next run
and the longest time from a fault to the end of the run it hit.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import pytest

from pytest_concurrent_db.backends import load_backend
from tests.faults.servers import SERVERS, PrivateServer
from tests.integration.conftest import Project

#: The record a test leaves in its report's user properties, for the summary.
RECORD = "concurrent_db_fault_record"
#: Every run must end within this many seconds of the fault that hit it.
WITHIN = 60.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.faults)


@pytest.fixture(scope="module")
def private_server(request: pytest.FixtureRequest) -> Iterator[PrivateServer]:
    """The private server of the module's ``SERVER`` (``postgresql`` or ``mysql``), removed at the
    end of the module (also after failures)."""
    server = SERVERS[request.module.SERVER]()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def server(private_server: PrivateServer) -> Iterator[PrivateServer]:
    """The private server, up; brought up again (with its usual connection limit) after the test."""
    if not private_server.running:
        private_server.start()
    yield private_server
    if not private_server.running:
        private_server.start()
    if private_server.max_connections != 40:  # type: ignore[attr-defined]
        private_server.set_max_connections(40)  # type: ignore[attr-defined]


@dataclass
class Record:
    """What one scenario saw on one server."""

    scenario: str
    server: str
    runs: int = 0
    faults: int = 0
    wrong_drops: int = 0
    leftovers: int = 0
    longest: float = 0.0
    notes: list[str] = field(default_factory=list)

    def ended(self, run: Run, fault_at: float) -> None:
        """``run`` ended; it was hit by a fault at ``fault_at`` (monotonic)."""
        assert run.ended is not None
        took = run.ended - fault_at
        self.longest = max(self.longest, took)
        outcome = " ".join(f"{n}{kind[0]}" for kind, n in sorted(run.outcomes().items()))
        self.notes.append(outcome or f"exit {run.returncode}")  # e.g. "1e 1f 3p"
        assert took <= WITHIN, f"the run ended {took:.1f}s after the fault (more than {WITHIN:g}s):\n{run.output}"


@pytest.fixture
def record(request: pytest.FixtureRequest, server: PrivateServer) -> Iterator[Record]:
    name = request.node.originalname.removeprefix("test_")
    rec = Record(name, server.backend)
    yield rec
    request.node.user_properties.append((RECORD, json.dumps(asdict(rec))))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    rows = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            for key, value in getattr(report, "user_properties", ()):
                if key == RECORD and getattr(report, "when", "") == "teardown":
                    rows.append(json.loads(value))
    if not rows:
        return
    terminalreporter.section("concurrent-db faults")
    terminalreporter.write_line(
        f"{'scenario':<44} {'server':<10} {'runs':>4} {'faults':>6} {'wrong drops':>11} {'leftovers':>9} {'longest':>8}"
    )
    for row in sorted(rows, key=lambda r: (r["scenario"], r["server"])):
        terminalreporter.write_line(
            f"{row['scenario']:<44} {row['server']:<10} {row['runs']:>4} {row['faults']:>6} "
            f"{row['wrong_drops']:>11} {row['leftovers']:>9} {row['longest']:>7.1f}s"
            + (f"  ({'; '.join(row['notes'])})" if row["notes"] else "")
        )


# -- inner runs ---------------------------------------------------------------------------------
@dataclass
class Run:
    """One ``pytest --concurrent-db`` subprocess of the project."""

    proc: subprocess.Popen[bytes]
    started: float
    ended: float | None = None
    output: str = ""

    def wait(self, timeout: float = 120.0) -> Run:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            out, _ = self.proc.communicate()
            raise AssertionError(f"the run hung for {timeout:g}s:\n{out.decode(errors='replace')}") from None
        self.ended = time.monotonic()
        self.output = out.decode(errors="replace")
        return self

    @property
    def returncode(self) -> int:
        assert self.proc.returncode is not None
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc.poll() is None

    def outcomes(self) -> dict[str, int]:
        """pytest's closing counts (``{"passed": 2, "failed": 1}``); {} if it ended without (a usage error)."""
        ends = [line for line in self.output.splitlines() if re.search(r"\d+ \w+.* in [\d.]+s\b", line)]
        found = re.findall(r"(\d+) (passed|failed|errors?)", ends[-1]) if ends else []
        return {("error" if kind.startswith("error") else kind): int(n) for n, kind in found}

    def assert_clean_output(self) -> None:
        """No traceback through our code, no internal error."""
        assert "INTERNALERROR" not in self.output, self.output
        ours = re.findall(r"pytest_concurrent_db/[\w/]+\.py:\d+", self.output)
        assert not ours, f"a traceback through our code ({ours[:3]}):\n{self.output}"


@dataclass
class FaultProject:
    """An inner project on a private server, run as real ``pytest -n 2 --concurrent-db`` subprocesses."""

    project: Project
    server: PrivateServer

    @property
    def base(self) -> str:
        return self.project.base

    def start(self, *args: str, env: dict[str, str] | None = None, workers: int = 2) -> Run:
        xdist = ["-n", str(workers)] if workers else ["-p", "no:xdist"]
        argv = [sys.executable, "-m", "pytest", "--concurrent-db", *self.project.url_arg, "-p", "no:randomly"]
        proc = subprocess.Popen(
            [*argv, *xdist, "-q", "-rfE", *args],
            cwd=self.project.pytester.path,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "2000", **(env or {})},  # whole lines in the short summary
        )
        return Run(proc, time.monotonic())

    def run(self, *args: str, env: dict[str, str] | None = None, workers: int = 2) -> Run:
        return self.start(*args, env=env, workers=workers).wait()

    # -- what is on the server --------------------------------------------------------------
    def databases(self) -> dict[str, Any]:
        """Our databases of this project on the server: name -> marker (None: not ours)."""
        backend = load_backend(self.project.url)
        try:
            return {i.name: i.marker for i in backend.list_databases(f"cdb_{self.base}_", sizes=False)}
        finally:
            backend.close()

    def clones(self) -> list[str]:
        return sorted(n for n, m in self.databases().items() if m is not None and m.kind == "clone")

    def leftovers(self) -> list[str]:
        """What must not stay after a clean run: anything but ready templates and ready spares
        (made for the next run) — clones, unfinished builds and spares, unmarked copies."""
        return sorted(
            n
            for n, m in self.databases().items()
            if m is None or m.kind == "clone" or m.state != "ready"
        )

    def admin_query(self, sql: str, args: Any = None) -> list[Any]:
        conn = self.server.admin()
        try:
            cur = conn.cursor()
            cur.execute(sql, args)
            return list(cur.fetchall())
        finally:
            conn.close()

    def next_run_leaves_nothing(self, rec: Record, *args: str, env: dict[str, str] | None = None) -> Run:
        """A run without faults: it passes, and afterwards nothing of ours is left but templates
        (and spares for the run after)."""
        run = self.run(*args, env=env, workers=0)  # one process: quicker, and it reaps the same
        rec.runs += 1
        run.assert_clean_output()
        assert run.returncode == 0, run.output
        left = self.leftovers()
        rec.leftovers += len(left)
        assert not left, f"left after the next run: {left}\n{run.output}"
        return run


def wait_for(condition: Callable[[], Any], timeout: float = 60.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


@pytest.fixture
def faulty(server: PrivateServer, pytester: pytest.Pytester) -> Iterator[FaultProject]:
    """A project on the private server; its databases are dropped afterwards."""
    base = "flt" + secrets.token_hex(3)
    project = Project(pytester, server.backend, server.url(base), base)
    yield FaultProject(project, server)
    if not server.running:
        server.start()
    project.drop_all()
