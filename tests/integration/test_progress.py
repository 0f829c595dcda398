"""Progress of template builds on the controller's screen, and the summary's phase table.

Real ``pytest -n 2 --concurrent-db`` runs of a project whose template takes seconds to
build (a populate hook that sleeps between steps and says how far it is).  The runs that
need a terminal run inside a pseudo-terminal (the ``pty`` module), and the output is read
as it arrives, with the time each piece came: the live line must appear and change
*while* the build runs, not only at the end.
"""

from __future__ import annotations

import os
import re
import select
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import Project, summary

pty = pytest.importorskip("pty")  # POSIX only

#: the populate hook: STEPS steps of PAUSE seconds, each reported on the progress line
STEPS = 10
PAUSE = 0.5
SLOW_CONFTEST = f"""
    import time

    from pytest_concurrent_db import report_progress

    def pytest_concurrent_db_populate_template(connection):
        for step in range({STEPS}):
            report_progress("slow steps", step, {STEPS})
            time.sleep({PAUSE})
        report_progress("slow steps", {STEPS}, {STEPS})
"""
TESTS = """
    import pytest

    @pytest.mark.parametrize("n", range(4))
    def test_uses_the_database(concurrent_db_connection, n):
        cur = concurrent_db_connection.cursor()
        cur.execute("SELECT COUNT(*) FROM author")
        assert cur.fetchone()[0] == 1
"""
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass
class Screen:
    """What a run wrote to its terminal: ``chunks`` as (seconds since start, text)."""

    chunks: list[tuple[float, str]]
    status: int

    @property
    def text(self) -> str:
        return ANSI.sub("", "".join(text for _, text in self.chunks))

    def first(self, pattern: str) -> float:
        """When ``pattern`` (a regex) first appeared in a chunk."""
        return next(at for at, text in self.chunks if re.search(pattern, ANSI.sub("", text)))

    def lines(self) -> list[str]:
        """The lines a reader of a log would see (``\\r`` rewrites as separate pieces)."""
        return [piece for line in self.text.splitlines() for piece in line.split("\r")]


def run_in_pty(project: Project, *args: str) -> Screen:
    """``python -m pytest --concurrent-db <args>`` in the project's directory, its output a
    pseudo-terminal."""
    pytester = project.pytester
    argv = ["-m", "pytest", "--concurrent-db", "-p", "no:randomly", *project.url_arg]
    return in_pty(pytester.path, [*argv, f"--basetemp={pytester.path / 'basetemp'}", *args])


def in_pty(cwd: Path, args: list[str], timeout: float = 240) -> Screen:
    """``python <args>`` in ``cwd``, its output a pseudo-terminal 200 columns wide."""
    env = {**os.environ, "COLUMNS": "200", "LINES": "50"}
    env.pop("PYTEST_ADDOPTS", None)
    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal of its own
        try:
            os.chdir(cwd)
            os.execve(sys.executable, [sys.executable, *args], env)
        finally:
            os._exit(127)
    started = time.monotonic()
    chunks: list[tuple[float, str]] = []
    try:
        while time.monotonic() - started < timeout:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the child closed its terminal
                break
            if not data:
                break
            chunks.append((time.monotonic() - started, data.decode("utf-8", "replace")))
    finally:
        done, status = os.waitpid(pid, os.WNOHANG)
        if not done:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        os.close(fd)
    return Screen(chunks, os.waitstatus_to_exitcode(status))


def slow_project(project: Project) -> Project:
    project.write(tests=TESTS, conftest=SLOW_CONFTEST)
    return project


def progress_lines(lines: list[str]) -> list[str]:
    """The progress lines among ``lines`` (not the report header, not the summary)."""
    return [line for line in lines if re.match(r"concurrent-db: (building|built|gw|the template)", line)]


# -- a terminal --------------------------------------------------------------------------------------------
def test_live_line_appears_and_changes_while_the_template_builds(project: Project) -> None:
    screen = run_in_pty(slow_project(project), "-n", "2")
    assert screen.status == 0, screen.text
    text = screen.text
    name = rf"cdb_{project.base}_tpl_[0-9a-f]{{4}}…"
    # one line, rewritten in place (\r), says who builds which template and how far it is
    live = re.findall(rf"\rconcurrent-db: building {name} on (gw\d) — slow steps (\d+)/{STEPS}, (\d+) s", text)
    assert live, text
    assert len({builder for builder, _, _ in live}) == 1, live
    steps = [int(step) for _, step, _ in live]
    assert steps == sorted(steps), steps
    assert steps[-1] - steps[0] >= 3, steps  # it moved on while we watched
    assert len({seconds for _, _, seconds in live}) >= 3, live
    # the other worker waits, and the line says for whom
    builder = live[0][0]
    assert re.search(rf"gw\d waiting for the template \({builder} builds it, \d+ s\)", text), text
    # it appeared while the build ran: seconds before the end line, not together with it
    shown = screen.first(r"concurrent-db: building")
    ended = screen.first(rf"concurrent-db: built {name} on {builder} in \d+\.\d s")
    assert ended - shown >= STEPS * PAUSE / 2, (shown, ended)
    # the end line is a line of its own (it replaces the live line, or follows a line pytest began)
    assert re.search(rf"[\r\n]concurrent-db: built {name} on {builder} in \d+\.\d s *\r?\n", text), text
    assert "4 passed" in text
    assert project.clones() == []


def test_a_run_without_xdist_shows_the_line_too(project: Project) -> None:
    screen = run_in_pty(slow_project(project), "-p", "no:xdist")
    assert screen.status == 0, screen.text
    steps = re.findall(rf"\rconcurrent-db: building \S+ on main — slow steps (\d+)/{STEPS}", screen.text)
    assert len(set(steps)) >= 3, screen.text
    assert re.search(r"concurrent-db: built \S+ on main in \d+\.\d s", screen.text)
    # the test file's name is written again after the build: its dots are not on our line
    assert re.search(r"\ntest_project\.py \.\.\.\.", screen.text.replace("\r", "")), screen.text


def test_quiet_shows_only_the_start_and_end_lines(project: Project) -> None:
    screen = run_in_pty(slow_project(project), "-n", "2", "-q")
    assert screen.status == 0, screen.text
    lines = progress_lines(screen.lines())
    assert len(lines) == 2, lines
    assert lines[0].startswith("concurrent-db: building "), lines
    assert re.match(r"concurrent-db: built \S+ on gw\d in \d+\.\d s$", lines[1]), lines
    assert "\rconcurrent-db" not in screen.text  # nothing rewritten in place


@pytest.mark.parametrize("backend_url", ["sqlite"], indirect=True)
def test_off_shows_nothing_and_verbose_summary_has_worker_rows(project: Project) -> None:
    screen = run_in_pty(slow_project(project), "-n", "2", "-v", "--concurrent-db-progress=off")
    assert screen.status == 0, screen.text
    assert progress_lines(screen.lines()) == [], screen.text
    assert "progress=off [--concurrent-db-progress]" in screen.text  # the header says which source won
    # -v: each worker's seconds under its phase
    table = screen.text.split("clone per worker", 1)[1].splitlines()
    assert [row.split()[0] for row in table[1:3]] == ["gw0", "gw1"], table[:3]


# -- not a terminal ---------------------------------------------------------------------------------------
def test_a_log_gets_a_bounded_number_of_lines_and_the_phase_table(project: Project) -> None:
    slow_project(project)
    result = project.run("-n", "2", "--concurrent-db-timings")
    result.assert_outcomes(passed=4)
    output = result.stdout.str()
    assert "\r" not in output
    lines = progress_lines(output.splitlines())
    # the build takes ~5 s: its first line and its end line (one more at most every 10 s)
    assert len(lines) == 2, lines
    assert re.match(rf"concurrent-db: building cdb_{project.base}_tpl_\S+ on gw\d — ", lines[0]), lines
    assert re.match(r"concurrent-db: built \S+ on gw\d in \d+\.\d s$", lines[1]), lines
    # the summary's table: the same rows as --concurrent-db-timings
    text = summary(result)
    assert re.search(r"template: \S+ built by gw\d", text), text
    rows = [line for line in text.splitlines() if line.startswith("  ")]
    assert [row.split()[0] for row in rows][:1] == ["phase"], rows
    for phase in ("fingerprint", "lock wait", "template build", "template reuse", "clone per worker", "drop"):
        assert any(row.strip().startswith(phase) for row in rows), (phase, rows)
    timings = output.split("concurrent-db timings", 1)[1]
    for row in rows:
        assert row in timings, (row, timings)
    # then one verdict line per worker
    assert re.findall(r"^(gw\d): ok — (?:built the template, )?\d+ checks, dropped$", text, re.M) == ["gw0", "gw1"]
    assert project.clones() == []


@pytest.mark.parametrize("backend_url", ["sqlite"], indirect=True)
def test_off_by_environment_and_ini(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    slow_project(project)
    monkeypatch.setenv("CONCURRENT_DB_PROGRESS", "off")
    result = project.run("-n", "2")
    result.assert_outcomes(passed=4)
    assert progress_lines(result.stdout.lines) == []
    monkeypatch.delenv("CONCURRENT_DB_PROGRESS")
    project.write(tests=TESTS, conftest=SLOW_CONFTEST, ini="concurrent_db_progress = off\nconcurrent_db_rebuild = 1\n")
    result = project.run("-n", "2")
    result.assert_outcomes(passed=4)
    assert progress_lines(result.stdout.lines) == []
    assert "built by gw" in summary(result)


@pytest.mark.parametrize("backend_url", ["sqlite"], indirect=True)
def test_a_bad_value_is_a_one_line_error(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    project.write(tests=TESTS)
    result = project.run("--concurrent-db-progress=loud")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*argument --concurrent-db-progress: invalid choice: 'loud' (choose from *auto*on*off*)"]
    )
    assert "Traceback" not in result.stderr.str() + result.stdout.str()
    monkeypatch.setenv("CONCURRENT_DB_PROGRESS", "loud")
    result = project.run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.startswith("ERROR")]
    assert errors == [
        "ERROR: concurrent-db: env CONCURRENT_DB_PROGRESS must be one of auto, on, off, not 'loud'; "
        "fix --concurrent-db-progress (ini concurrent_db_progress, env CONCURRENT_DB_PROGRESS)"
    ], result.stderr.lines
    assert "Traceback" not in result.stderr.str()


@pytest.mark.parametrize("backend_url", ["sqlite"], indirect=True)
def test_progress_files_are_removed(project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller's progress directory lives in the temp dir and is gone after the run."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    project.write(tests=TESTS)
    result = project.run("-n", "2")
    result.assert_outcomes(passed=4)
    assert not list(tmp_path.glob("pytest-concurrent-db-progress-*"))


# -- Django: migrations k/n ---------------------------------------------------------------------------------
SLOW_MIGRATION = """
import time

from django.db import migrations


def pause(apps, schema_editor):
    time.sleep(0.7)


class Migration(migrations.Migration):
    dependencies = [("catalog", "{previous}")]
    operations = [migrations.RunPython(pause, migrations.RunPython.noop)]
"""


def add_slow_migrations(project_dir: Path, count: int = 5) -> None:
    """``count`` migrations of 0.7 s each after the catalog app's last one."""
    folder = project_dir / "catalog" / "migrations"
    previous = "0002_seed_categories"
    for number in range(3, 3 + count):
        name = f"{number:04d}_slow"
        (folder / f"{name}.py").write_text(SLOW_MIGRATION.format(previous=previous))
        previous = name


def test_django_migrations_count_on_the_live_line(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.integration.test_django import DjangoProject

    project = DjangoProject(pytester, monkeypatch, None)
    add_slow_migrations(pytester.path)
    screen = in_pty(pytester.path, ["-m", "pytest", "-n", "2", "--concurrent-db", "-p", "no:randomly"])
    assert screen.status == 0, screen.text
    live = re.findall(r"\rconcurrent-db: building cdb_test_\S+ on gw\d — migrations (\d+)/(\d+), \d+ s", screen.text)
    assert len({done for done, _ in live}) >= 3, screen.text  # it counted up while we watched
    assert all(int(done) <= int(total) for done, total in live), live
    assert re.search(r"concurrent-db: built cdb_test_\S+ on gw\d in \d+\.\d s", screen.text), screen.text
    assert project.migrations()  # migrate ran (once per test database, in one worker)


def test_the_django_runner_prints_its_own_progress(tmp_path: Path) -> None:
    from tests.integration.test_django_runner import RunnerProject

    project = RunnerProject(tmp_path, None)
    add_slow_migrations(project.path)
    run = project.run()
    assert run.returncode == 0, run.stdout + run.stderr
    lines = progress_lines(run.stdout.splitlines())
    assert any(re.match(r"concurrent-db: building cdb_\S+ on main — ", line) for line in lines), run.stdout
    assert any(re.match(r"concurrent-db: built cdb_\S+ on main in \d+\.\d s$", line) for line in lines), lines
    assert len(lines) <= 2 * 2 + 1, lines  # two test databases: start and end each, one more every 10 s
    off = project.run(CONCURRENT_DB_PROGRESS="off", CONCURRENT_DB_REBUILD="1")
    assert off.returncode == 0, off.stdout + off.stderr
    assert progress_lines(off.stdout.splitlines()) == []
