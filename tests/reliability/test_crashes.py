"""Crashes and concurrent runs: the run ends cleanly, nothing is left, live runs are never touched."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_concurrent_db.errors import ConcurrentDBError
from pytest_concurrent_db.url import DatabaseURL
from tests.conftest import worker_databases
from tests.integration.conftest import Project, summary

SLOW_TESTS = """
    import os, time, pytest

    @pytest.mark.parametrize("i", range(4))
    def test_slow(concurrent_db_connection, i):
        gate = os.environ.get("GATE")  # a file: wait until it exists, else the seconds
        deadline = time.monotonic() + float(os.environ.get("SLOW_SECONDS", "30"))
        while time.monotonic() < deadline and not (gate and os.path.exists(gate)):
            time.sleep(0.05)
"""


def _wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def _start(project: Project, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "pytest", "--concurrent-db", *project.url_arg, *args]
    return subprocess.Popen(
        argv,
        cwd=project.pytester.path,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )


def test_worker_killed_mid_run_is_swept_by_the_controller(project: Project) -> None:
    tests = """
        import os, signal, pathlib, pytest

        @pytest.mark.parametrize("i", range(6))
        def test_maybe_die(concurrent_db_connection, worker_id, i):
            flag = pathlib.Path(os.environ["FLAG_DIR"]) / "killed"
            if worker_id == "gw0" and not flag.exists():
                flag.write_text("x")
                os.kill(os.getpid(), signal.SIGKILL)
    """
    project.write(tests=tests)
    project.pytester.path.joinpath("flags").mkdir()
    os.environ["FLAG_DIR"] = str(project.pytester.path / "flags")
    try:
        result = project.run("-n", "2")
    finally:
        del os.environ["FLAG_DIR"]
    assert "crashed" in result.stdout.str()
    assert result.ret == 1  # the killed test fails; the run ends normally
    # the controller sweeps the dead worker's clone and the spare it may have been making,
    # unless a concurrent run reaped them first
    assert re.search(r"\([012] left by crashed workers\)", summary(result))
    assert project.clones() == []


def test_whole_run_killed_is_reaped_by_the_next_run(project: Project) -> None:
    project.write(tests=SLOW_TESTS)
    proc = _start(project, "-n", "2")
    try:
        _wait_for(lambda: len(project.clones()) == 2)
        orphans = project.clones()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert project.clones() == orphans  # left behind by the kill
    project.write(tests="def test_quick(concurrent_db): pass\n")
    result = project.run("-n", "2")
    result.assert_outcomes(passed=1)
    assert not set(orphans) & set(project.server_names())
    # the spares the killed run was copying (their CREATE DATABASE may have outlived the kill on
    # the server) were adopted and reaped: nothing of this project is left without a marker
    backend = project._backend()
    try:
        unmarked = [i.name for i in backend.list_databases(f"cdb_{project.base}_", sizes=False) if i.marker is None]
    finally:
        backend.close()
    assert unmarked == []


def test_a_live_run_is_never_reaped_by_another(project: Project) -> None:
    """Another run (with a new template and --concurrent-db-keep-templates 0) reaps and prunes,
    but neither the live run's clones nor the template it uses."""
    project.write(tests=SLOW_TESTS)
    other = project.pytester.path / "other.sql"
    other.write_text((project.pytester.path / "schema.sql").read_text() + "\nCREATE TABLE other (id INTEGER);\n")
    project.pytester.makepyfile(test_quick="def test_quick(concurrent_db): pass\n")
    # in its tests until the gate opens, however long the other run takes on a loaded machine
    gate = project.pytester.path / "gate"
    slow = _start(project, "-n", "2", "test_project.py", env={"SLOW_SECONDS": "120", "GATE": str(gate)})
    try:
        if project.backend != "sqlite":
            _wait_for(lambda: len(project.clones()) == 2)
        else:
            time.sleep(3)
        # its clones and its template (the spares it makes in the background are the next run's)
        before = {name for name in project.server_names() if f"cdb_{project.base}_sp" not in name}
        quick = project.run(
            "-p",
            "no:xdist",
            "test_quick.py",
            "--concurrent-db-schema",
            "other.sql",
            "--concurrent-db-keep-templates",
            "0",
        )
        quick.assert_outcomes(passed=1)
        assert "built by" in summary(quick)
        assert before <= set(project.server_names())  # the live run's clones and template are all there
        assert slow.poll() is None, "the slow run ended before the check: it proves nothing"
        gate.touch()
        output, _ = slow.communicate(timeout=120)
    finally:
        if slow.poll() is None:
            os.killpg(slow.pid, signal.SIGKILL)
            slow.communicate()
    assert slow.returncode == 0, output.decode()
    assert b"4 passed" in output
    assert project.clones() == []


def test_three_concurrent_runs_share_one_template(project: Project) -> None:
    tests = """
        import os, time, pytest
        @pytest.mark.parametrize("i", range(4))
        def test_write(concurrent_db_connection, i):
            cur = concurrent_db_connection.cursor()
            cur.execute("INSERT INTO author (name) VALUES (PARAM)", (str(os.getpid()),))
            concurrent_db_connection.commit()
            time.sleep(0.1)
            cur.execute("SELECT DISTINCT name FROM author WHERE name <> 'seed'")
            assert [row[0] for row in cur.fetchall()] == [str(os.getpid())]  # no other process's rows
    """
    project.write(tests=tests)
    procs = [_start(project, "-n", "2") for _ in range(3)]
    outputs = [p.communicate(timeout=180)[0].decode() for p in procs]
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output
    built = sum("built by" in output for output in outputs)
    reused = sum("reused (inputs unchanged)" in output for output in outputs)
    assert (built, reused) == (1, 2), outputs
    assert project.clones() == []


def test_a_reap_in_the_background_says_what_went_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An xdist controller reaps while its workers start: a failure is reported when it is
    joined (a yellow line at the end of the run), once, and the backend is still usable."""
    url = DatabaseURL(backend="sqlite", database=str(tmp_path / "t.db"))
    engine = worker_databases(url, run_id="reaper02", worker_id="main", lock_dir=tmp_path)
    try:
        engine.preflight(reap_in_background=True)
        assert engine.wait_for_reap() == ""

        def fail() -> list[str]:
            raise ConcurrentDBError("the server went away")

        monkeypatch.setattr(engine.janitor, "reap_dead", fail)
        engine.preflight(reap_in_background=True)
        assert engine.wait_for_reap() == "the server went away"
        assert engine.wait_for_reap() == ""
        assert engine.backend.list_databases("cdb_", sizes=False) == []
    finally:
        engine.close()


@pytest.mark.parametrize("backend_url", ["postgresql", "mysql"], indirect=True)
def test_a_database_finished_between_the_listing_and_its_lock_is_not_dropped(
    backend_url: DatabaseURL, tmp_path: Path
) -> None:
    """A janitor lists the databases, then takes each dead-looking one's lock to drop it. Its
    owner may finish it in between and let the lock go: a spare listed ``building`` is
    ``ready`` for the next run, a clone listed in use is ``kept`` for debugging. The marker
    read again under the lock decides, not the listing."""
    from dataclasses import replace

    from pytest_concurrent_db.backends import Marker, load_backend
    from pytest_concurrent_db.janitor import Janitor, reapable, sweepable
    from pytest_concurrent_db.paths import Directories
    from pytest_concurrent_db.site import Site

    base = "t" + secrets.token_hex(4)
    spare, clone, template = f"cdb_{base}_sp0a0b0c_gw0", f"cdb_{base}_0a0b0c0d_gw1", f"cdb_{base}_tpl_x"
    markers = {
        spare: Marker(
            kind="spare", run_id="owner001", worker_id="gw0", template=template, fingerprint="b1", state="building"
        ),
        clone: Marker(kind="clone", run_id="owner001", worker_id="gw1", template=template),
    }
    builds = {(template, "b1")}  # the spares' template is ready: a ready spare of it is the next run's
    owner, other = load_backend(backend_url), load_backend(backend_url)
    site = Site(backend_url, Directories(tmp_path, tmp_path, tmp_path), base=base)
    try:
        for name, marker in markers.items():
            owner.create(name, marker)
            assert owner.try_lock(f"clone:{name}")
        listing = other.list_databases(f"cdb_{base}_", sizes=False)  # both in use, as listed
        assert {i.name: i.marker.state for i in listing if i.marker} == {spare: "building", clone: "ready"}
        for name, state in ((spare, "ready"), (clone, "kept")):  # their owner finishes them now
            owner.set_marker(name, replace(markers[name], state=state))
            owner.release_lock(f"clone:{name}")
        # the run's own sweep (its unfinished spares) and another run's reap (other runs' clones)
        assert Janitor(other, site, "owner001")._drop_dead(listing, lambda m: sweepable(m, "owner001")) == []
        assert Janitor(other, site, "reaper01")._drop_dead(listing, lambda m: reapable(m, "reaper01", builds)) == []
        assert {i.name for i in other.list_databases(f"cdb_{base}_", sizes=False)} == {spare, clone}
    finally:
        for name in markers:
            owner.drop(name)
        owner.close()
        other.close()
