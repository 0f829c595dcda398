"""Build progress: the states a process writes, the lines they render as, and the display
that writes them to pytest's terminal writer (a real ``TerminalWriter`` on a string)."""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from _pytest._io import TerminalWriter

from pytest_concurrent_db import progress as progress_module
from pytest_concurrent_db.progress import (
    BuildProgress,
    BuildState,
    ProgressLines,
    end_line,
    live_line,
    read_states,
    report,
    short_name,
)
from pytest_concurrent_db.progress_display import ProgressDisplay, display_mode
from pytest_concurrent_db.template import callable_populator, schema_populator
from pytest_concurrent_db.url import DatabaseURL
from tests.conftest import worker_databases

TEMPLATE = "cdb_app_tpl_3f9c0123abcd"


def state(worker: str, phase: str, ago: float, *, step: str = "", template: str = TEMPLATE) -> BuildState:
    now = time.time()
    return BuildState(worker, template, phase, now - ago, step, now if phase in ("built", "failed") else 0.0)


# -- lines ------------------------------------------------------------------------------------------------
def test_short_name_cuts_the_fingerprint() -> None:
    assert short_name(TEMPLATE) == "cdb_app_tpl_3f9c…"
    assert short_name("cdb_app_tpl_3f9c") == "cdb_app_tpl_3f9c"
    assert short_name("not_a_template") == "not_a_template"


def test_live_line_names_the_builder_its_step_and_who_waits() -> None:
    states = [
        state("gw0", "building", 23.4, step="migrations 41/80"),
        state("gw2", "waiting", 12.2),
        state("gw1", "waiting", 11.0),
        state("gw3", "ready", 1.0),
    ]
    assert live_line(states, time.time()) == (
        "concurrent-db: building cdb_app_tpl_3f9c… on gw0 — migrations 41/80, 23 s; "
        "gw1, gw2 waiting for the template (gw0 builds it, 12 s)"
    )


def test_waiting_for_another_process_and_nothing_going_on() -> None:
    assert live_line([state("gw1", "waiting", 3.5)], time.time()) == (
        "concurrent-db: gw1 waiting for the template (another process builds it, 3 s)"
    )
    assert live_line([state("gw1", "built", 3.0), state("gw0", "ready", 1.0)], time.time()) is None
    # a waiter of a template this run has built is about to find it ready: not shown
    assert live_line([state("gw1", "built", 3.0), state("gw0", "waiting", 5.0)], time.time()) is None


def test_end_lines() -> None:
    built = BuildState("gw0", TEMPLATE, "built", 100.0, ended=123.4)
    assert end_line(built) == "concurrent-db: built cdb_app_tpl_3f9c… on gw0 in 23.4 s"
    failed = BuildState("gw0", TEMPLATE, "failed", 100.0, ended=103.0)
    assert end_line(failed) == "concurrent-db: building cdb_app_tpl_3f9c… on gw0 failed after 3.0 s"


# -- the writer ---------------------------------------------------------------------------------------------
def test_writer_steps_through_schema_files_and_a_hook(tmp_path: Path) -> None:
    files = []
    for name in ("a.sql", "b.sql"):
        (tmp_path / name).write_text("SELECT 1;")
        files.append(schema_populator(tmp_path / name))
    populators = [*files, callable_populator("pytest_concurrent_db_populate_template", lambda c: None)]
    directory = tmp_path / "progress"
    seen: list[BuildState] = []
    writer = BuildProgress("gw0", directory=directory, listener=seen.append)
    writer.building(TEMPLATE, populators)
    texts = []
    for index in range(3):
        writer.step(index)
        texts.append(writer.state.step if writer.state else "")
    assert texts == ["schema files 0/2", "schema files 1/2", "populate hook (step 3/3)"]
    with writer.current():
        report("rows", 5, 5)
    assert read_states(directory) == [replace_step(seen[-1], "rows 5/5")]
    writer.finished(built=True)
    final = read_states(directory)[0]
    assert final.phase == "built"
    assert final.ended >= final.since
    assert [s.phase for s in seen] == ["building", "building", "building", "building", "building", "built"]
    assert [p.name for p in directory.iterdir()] == [f"gw0-{TEMPLATE}.json"]  # no partial file left
    # the next template of this worker (Django: one per test database) has a file of its own
    writer.building("cdb_app_tpl_99990000aaaa", [])
    assert [(s.template, s.phase) for s in read_states(directory)] == [
        (TEMPLATE, "built"),
        ("cdb_app_tpl_99990000aaaa", "building"),
    ]


def replace_step(value: BuildState, step: str) -> BuildState:
    return BuildState(value.worker, value.template, value.phase, value.since, step, value.ended)


def test_report_outside_a_build_does_nothing() -> None:
    report("rows", 1, 2)  # no build: no error, no effect


def test_a_writer_that_cannot_write_never_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")

    def broken(value: BuildState) -> None:
        raise RuntimeError("listener bug")

    writer = BuildProgress("gw0", directory=blocker / "sub", listener=broken)
    writer.waiting(TEMPLATE)
    writer.building(TEMPLATE, [])
    writer.detail("migrations", 1, 2)
    writer.finished(built=False, failed=True)
    assert writer.state is not None
    assert writer.state.phase == "failed"


def test_read_states_skips_what_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "gw0.json").write_text(json.dumps(state("gw0", "building", 1.0).to_json()))
    (tmp_path / "gw1.json").write_text("{half")
    (tmp_path / "gw2.json").write_text(json.dumps({"worker": "gw2"}))
    assert [s.worker for s in read_states(tmp_path)] == ["gw0"]
    assert read_states(tmp_path / "missing") == []


# -- ensure_template drives it ------------------------------------------------------------------------------
def test_a_real_build_a_waiter_and_a_reuse(tmp_path: Path) -> None:
    """Two processes (threads with their own backends and locks) on one SQLite template: one
    builds (slowly), the other waits for it, then finds it ready."""
    url = DatabaseURL(backend="sqlite", database=str(tmp_path / "app.db"))
    started = threading.Event()

    def slow(connection: Any) -> None:
        started.set()
        for step in range(3):
            report("slow", step, 3)
            time.sleep(0.2)

    populators = [callable_populator("slow", slow)]
    seen: dict[str, list[BuildState]] = {"gw0": [], "gw1": []}
    builder = worker_databases(url, run_id="r1", worker_id="gw0", lock_dir=tmp_path)
    waiter = worker_databases(url, run_id="r1", worker_id="gw1", lock_dir=tmp_path)
    builder.progress = BuildProgress("gw0", listener=seen["gw0"].append)
    waiter.progress = BuildProgress("gw1", listener=seen["gw1"].append)
    try:
        thread = threading.Thread(target=builder.ensure_template, args=(populators,))
        thread.start()
        assert started.wait(10)
        template = waiter.ensure_template(populators)
        thread.join(10)
        assert not template.built
    finally:
        builder.close()
        waiter.close()
    assert seen["gw0"][0].phase == "building"
    assert seen["gw0"][-1].phase == "built"
    steps = [s.step for s in seen["gw0"] if s.step.startswith("slow ")]  # at most one every 0.2 s
    assert "slow 1/3" in steps, steps
    assert steps[-1] == "slow 2/3", steps
    assert [s.phase for s in seen["gw1"]] == ["waiting", "ready"]


# -- the display -------------------------------------------------------------------------------------------
@dataclass
class Reporter:
    """What the display needs of pytest's TerminalReporter: its writer."""

    out: io.StringIO = field(default_factory=io.StringIO)

    def __post_init__(self) -> None:
        self._tw = TerminalWriter(self.out)
        self._tw.fullwidth = 200


def display(tmp_path: Path, mode: str) -> tuple[ProgressDisplay, Reporter]:
    reporter = Reporter()
    return ProgressDisplay(reporter, None, mode, tmp_path), reporter


def put(directory: Path, value: BuildState) -> None:
    (directory / f"{value.worker}-{value.template}.json").write_text(json.dumps(value.to_json()))


def test_live_mode_rewrites_one_line_then_ends_it(tmp_path: Path) -> None:
    shown, reporter = display(tmp_path, "live")
    put(tmp_path, state("gw0", "building", 2.0, step="migrations 1/80"))
    shown._tick()
    put(tmp_path, state("gw0", "building", 3.0, step="migrations 2/80"))
    shown._tick()
    put(tmp_path, state("gw0", "built", 4.0))
    shown._tick()
    text = reporter.out.getvalue()
    assert text.startswith("concurrent-db: building cdb_app_tpl_3f9c… on gw0 — migrations 1/80, 2 s\r")
    assert "\rconcurrent-db: building cdb_app_tpl_3f9c… on gw0 — migrations 2/80, 3 s" in text
    assert text.endswith("\n")
    assert text.rsplit("\r", 1)[-1].rstrip() == "concurrent-db: built cdb_app_tpl_3f9c… on gw0 in 4.0 s"
    assert reporter._tw.width_of_current_line == 0  # pytest's next line starts clean


def test_a_quick_build_shows_nothing(tmp_path: Path) -> None:
    shown, reporter = display(tmp_path, "lines")
    put(tmp_path, state("gw0", "building", 0.2))
    shown._tick()
    put(tmp_path, state("gw0", "built", 0.3))
    shown._tick()
    assert reporter.out.getvalue() == ""
    # nor later, when another template's slow build ends
    put(tmp_path, state("gw1", "building", 2.0, template="cdb_app_tpl_99990000aaaa"))
    shown._tick()
    put(tmp_path, state("gw1", "built", 2.5, template="cdb_app_tpl_99990000aaaa"))
    shown._tick()
    assert reporter.out.getvalue().splitlines() == [
        "concurrent-db: building cdb_app_tpl_9999… on gw1 — 2 s",
        "concurrent-db: built cdb_app_tpl_9999… on gw1 in 2.5 s",
    ]


def test_the_live_line_never_writes_into_a_line_pytest_began(tmp_path: Path) -> None:
    shown, reporter = display(tmp_path, "live")
    reporter._tw.write("..")  # test progress dots of tests that need no database
    put(tmp_path, state("gw0", "building", 2.0))
    shown._tick()
    reporter._tw.write(".")  # another dot, after our line
    put(tmp_path, state("gw0", "building", 3.0, step="x 1/2"))
    shown._tick()  # not ours any more: no rewrite
    put(tmp_path, state("gw0", "built", 3.5))
    shown._tick()
    lines = reporter.out.getvalue().split("\n")
    assert lines[0] == ".."
    assert lines[1] == "concurrent-db: building cdb_app_tpl_3f9c… on gw0 — 2 s."
    assert lines[2] == "concurrent-db: built cdb_app_tpl_3f9c… on gw0 in 3.5 s"


def test_one_worker_builds_two_templates_while_another_waits(tmp_path: Path) -> None:
    """Django with two test databases: gw0 builds one template after the other; gw1 waits for
    the first and finds it ready (its wait is not shown once the template is built)."""
    other = "cdb_app_tpl_99990000aaaa"
    shown, reporter = display(tmp_path, "lines")
    put(tmp_path, state("gw0", "building", 2.0))
    put(tmp_path, state("gw1", "waiting", 1.5))
    shown._tick()
    put(tmp_path, state("gw0", "built", 3.0))
    put(tmp_path, state("gw0", "building", 0.5, template=other))
    shown._tick()
    put(tmp_path, state("gw0", "built", 1.5, template=other))
    put(tmp_path, state("gw1", "ready", 0.0))
    shown._tick()
    assert reporter.out.getvalue().splitlines() == [
        "concurrent-db: building cdb_app_tpl_3f9c… on gw0 — 2 s; gw1 waiting for the template (gw0 builds it, 1 s)",
        "concurrent-db: built cdb_app_tpl_3f9c… on gw0 in 3.0 s",
        "concurrent-db: built cdb_app_tpl_9999… on gw0 in 1.5 s",
    ]


def test_erase_takes_the_live_line_off_before_a_report(tmp_path: Path) -> None:
    shown, reporter = display(tmp_path, "live")
    put(tmp_path, state("gw0", "building", 2.0))
    shown._tick()
    shown.erase()
    assert reporter._tw.width_of_current_line == 0
    assert reporter.out.getvalue().endswith(
        "\r" + " " * len("concurrent-db: building cdb_app_tpl_3f9c… on gw0 — 2 s") + "\r"
    )


def test_lines_mode_writes_at_most_one_line_every_ten_seconds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shown, reporter = display(tmp_path, "lines")
    clock = [1000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    put(tmp_path, BuildState("gw0", TEMPLATE, "building", 998.0))
    for _ in range(100):  # 25 s of polls, 4 a second
        shown._tick()
        clock[0] += 0.25
    put(tmp_path, BuildState("gw0", TEMPLATE, "built", 998.0, ended=clock[0]))
    shown._tick()
    lines = reporter.out.getvalue().splitlines()
    assert "\r" not in reporter.out.getvalue()
    assert [line.rsplit("— ", 1)[-1] for line in lines[:-1]] == ["2 s", "12 s", "22 s"]
    assert lines[-1] == "concurrent-db: built cdb_app_tpl_3f9c… on gw0 in 27.0 s"


def test_quiet_mode_writes_the_start_and_end_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shown, reporter = display(tmp_path, "quiet")
    clock = [1000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    put(tmp_path, BuildState("gw0", TEMPLATE, "building", 998.0))
    put(tmp_path, BuildState("gw1", TEMPLATE, "waiting", 998.5))
    for _ in range(100):
        shown._tick()
        clock[0] += 0.25
    put(tmp_path, BuildState("gw0", TEMPLATE, "built", 998.0, ended=clock[0]))
    put(tmp_path, BuildState("gw1", TEMPLATE, "ready", clock[0]))
    shown._tick()
    assert reporter.out.getvalue().splitlines() == [
        "concurrent-db: building cdb_app_tpl_3f9c… on gw0 — 2 s; gw1 waiting for the template (gw0 builds it, 1 s)",
        "concurrent-db: built cdb_app_tpl_3f9c… on gw0 in 27.0 s",
    ]


def test_stop_ends_an_unfinished_build_and_removes_the_directory(tmp_path: Path) -> None:
    directory = tmp_path / "progress"
    directory.mkdir()
    shown, reporter = display(directory, "lines")
    shown.start()
    put(directory, state("gw0", "building", 2.0))  # its worker died mid-build
    deadline = time.monotonic() + 10
    while not reporter.out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    shown.stop()
    assert reporter.out.getvalue().splitlines()[-1] == "concurrent-db: building cdb_app_tpl_3f9c… on gw0 ended"
    assert not directory.exists()


def test_display_modes() -> None:
    assert display_mode("auto", isatty=True, verbosity=0) == "live"
    assert display_mode("auto", isatty=False, verbosity=1) == "lines"
    assert display_mode("auto", isatty=True, verbosity=-1) == "quiet"
    assert display_mode("on", isatty=True, verbosity=-1) == "live"
    assert display_mode("off", isatty=True, verbosity=0) is None


def test_progress_lines_for_the_django_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(progress_module.time, "time", lambda: clock[0])
    written: list[str] = []
    lines = ProgressLines(written.append)
    for step in range(30):
        lines(BuildState("main", TEMPLATE, "building", 1000.0, f"migrations {step}/30"))
        clock[0] += 1.0
    lines(BuildState("main", TEMPLATE, "built", 1000.0, ended=clock[0]))
    assert written[:-1] == [
        # nothing in the first second (a quick build is not worth a line)
        "concurrent-db: building cdb_app_tpl_3f9c… on main — migrations 1/30, 1 s",
        "concurrent-db: building cdb_app_tpl_3f9c… on main — migrations 11/30, 11 s",
        "concurrent-db: building cdb_app_tpl_3f9c… on main — migrations 21/30, 21 s",
    ]
    assert written[-1] == "concurrent-db: built cdb_app_tpl_3f9c… on main in 30.0 s"
    quick = ProgressLines(written.append)
    written.clear()
    quick(BuildState("main", TEMPLATE, "building", clock[0]))
    quick(BuildState("main", TEMPLATE, "built", clock[0], ended=clock[0] + 0.3))
    assert written == []


def test_alembic_revisions_are_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The example's ``alembic upgrade head`` on a real SQLite template: ``revisions k/n``."""
    pytest.importorskip("alembic")
    import shutil

    from pytest_concurrent_db.alembic_template import alembic_populator

    example = Path(__file__).resolve().parents[2] / "examples" / "sqlalchemy_alembic"
    project = tmp_path / "project"
    shutil.copytree(example, project, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    monkeypatch.syspath_prepend(str(project))
    url = DatabaseURL(backend="sqlite", database=str(tmp_path / "app.db"))
    databases = worker_databases(url, run_id="r1", worker_id="gw0", lock_dir=tmp_path / "locks")
    seen: list[BuildState] = []
    databases.progress = BuildProgress("gw0", listener=seen.append)
    before = set(sys.modules)
    try:
        template = databases.ensure_template([alembic_populator(project / "alembic.ini", "", None)])
    finally:
        databases.close()
        for name in set(sys.modules) - before:  # the example's own ``shop`` package is not another test's
            if name == "shop" or name.startswith("shop."):
                del sys.modules[name]
    assert template.built
    steps = [s.step for s in seen if s.step.startswith("revisions ")]
    assert steps[-1] == "revisions 3/3", steps  # the last one always (a step's end is never held back)
    assert seen[-1].phase == "built"
