"""Template snapshots (issue 15): written after a build, restored on a server without the
template (a fresh CI server) with no migration or schema file run, and ignored with one
warning when corrupt, truncated or of another fingerprint."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_concurrent_db.snapshot import FORMAT, read_header
from pytest_concurrent_db.url import DatabaseURL

from .conftest import Project, summary

#: counts every build of the template: the hook runs only when the template is built
CONFTEST = """
    import os

    def pytest_concurrent_db_populate_template(config, connection, backend):
        with open(os.path.join(os.environ["RESULTS_DIR"], "builds"), "a") as out:
            out.write("built\\n")
"""

TESTS = """
    def test_schema_restored(concurrent_db_connection):
        cur = concurrent_db_connection.cursor()
        cur.execute("SELECT name FROM author")
        assert [row[0] for row in cur.fetchall()] == ["seed"]
        cur.execute("INSERT INTO book (author_id, title) VALUES (1, 'x')")
        cur.execute("SELECT count(*) FROM audit")  # the trigger came back too
        assert cur.fetchone()[0] == 1
        cur.execute("SELECT name FROM book_view")
        assert [row[0] for row in cur.fetchall()] == ["seed"]
        concurrent_db_connection.rollback()

    def test_other(concurrent_db_connection):
        cur = concurrent_db_connection.cursor()
        cur.execute("SELECT count(*) FROM book")
        assert cur.fetchone()[0] == 0
"""


def _builds(results: Path) -> int:
    path = results / "builds"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _snapshots(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.snap"))


def _fresh_server(project: Project) -> None:
    """What a CI job with a new database server sees: no template (nor anything else) of ours."""
    project.drop_all()
    assert project.server_names() == []


def _run(project: Project, snaps: Path, *args: str) -> pytest.RunResult:
    result = project.run("-n", "2", "--concurrent-db-snapshot-dir", str(snaps), *args)
    result.assert_outcomes(passed=2)
    assert project.clones() == []
    return result


def _warnings(result: pytest.RunResult) -> list[str]:
    return [line for line in result.stdout.lines if "snapshot warning:" in line]


def test_snapshot_written_then_restored_without_migrations(project: Project, results_dir: Path) -> None:
    project.write(tests=TESTS, conftest=CONFTEST)
    snaps = project.pytester.path / "snaps"
    first = _run(project, snaps)
    assert _builds(results_dir) == 1
    (snapshot,) = _snapshots(snaps)
    assert snapshot.name.endswith(f".{project.backend}.snap")
    assert "written to" in summary(first)
    with snapshot.open("rb") as stream:
        header = read_header(stream)
    assert header["format"] == FORMAT
    assert header["backend"] == project.backend
    assert snapshot.name == f"{header['fingerprint']}.{project.backend}.snap"
    for key in ("plugin", "server_major", "created", "checksum"):
        assert header[key]
    counts = header["counts"]
    assert counts["tables"] == 3
    assert counts["views"] == 1
    assert counts["triggers"] == 1
    assert counts["foreign_keys"] == 1
    assert counts["indexes"] >= 1
    assert sorted(counts["rows"].values()) == [0, 0, 1]

    _fresh_server(project)
    second = _run(project, snaps)
    assert _builds(results_dir) == 1  # no migration, no schema file, no hook: restored
    text = summary(second)
    assert "restored from" in text, text
    assert _warnings(second) == []
    assert _snapshots(snaps) == [snapshot]

    # the template is on the server again: the next run reuses it, no snapshot involved
    third = _run(project, snaps)
    assert _builds(results_dir) == 1
    assert "restored from" not in summary(third)


@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
def test_damaged_snapshot_is_ignored_with_one_warning(project: Project, results_dir: Path, damage: str) -> None:
    project.write(tests=TESTS, conftest=CONFTEST)
    snaps = project.pytester.path / "snaps"
    _run(project, snaps)
    (snapshot,) = _snapshots(snaps)
    data = bytearray(snapshot.read_bytes())
    if damage == "truncated":
        del data[len(data) * 2 // 3 :]
    else:
        data[len(data) * 2 // 3] ^= 0x01
    snapshot.write_bytes(bytes(data))

    _fresh_server(project)
    result = _run(project, snaps, "-W", "error")
    assert _builds(results_dir) == 2  # built the normal way
    (warning,) = _warnings(result)
    assert "ignored" in warning
    assert "corrupt" in warning or "truncated" in warning, warning
    # the build wrote a sound snapshot again, which the next fresh server restores
    _fresh_server(project)
    again = _run(project, snaps)
    assert _builds(results_dir) == 2
    assert "restored from" in summary(again)


def test_snapshot_of_another_fingerprint_is_not_used(project: Project, results_dir: Path) -> None:
    project.write(tests=TESTS, conftest=CONFTEST)
    snaps = project.pytester.path / "snaps"
    _run(project, snaps)
    (old,) = _snapshots(snaps)
    schema = project.pytester.path / "schema.sql"
    schema.write_text(schema.read_text() + "\nCREATE TABLE extra (id INTEGER);\n")
    _fresh_server(project)
    _run(project, snaps)  # a new fingerprint: the old snapshot does not fit
    assert _builds(results_dir) == 2
    new = next(path for path in _snapshots(snaps) if path != old)
    # a snapshot under the new fingerprint's name whose content is the old one: refused
    shutil.copyfile(old, new)
    _fresh_server(project)
    result = _run(project, snaps)
    assert _builds(results_dir) == 3
    (warning,) = _warnings(result)
    assert "another fingerprint" in warning


def test_snapshot_keep(project: Project, results_dir: Path) -> None:
    project.write(tests=TESTS, conftest=CONFTEST, ini="concurrent_db_snapshot_keep = 2\n")
    snaps = project.pytester.path / "snaps"
    schema = project.pytester.path / "schema.sql"
    original = schema.read_text()
    written: list[Path] = []
    for i in range(4):
        schema.write_text(original + f"\nCREATE TABLE extra{i} (id INTEGER);\n")
        before = set(_snapshots(snaps))
        _run(project, snaps)
        (new,) = set(_snapshots(snaps)) - before
        written.append(new)
    assert _snapshots(snaps) == sorted(written[-2:])  # the newest two


def _cli(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_concurrent_db", *args],
        cwd=project.pytester.path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_fingerprint_command_names_the_snapshot_a_run_writes(project: Project, results_dir: Path) -> None:
    project.write(tests=TESTS, conftest=CONFTEST)
    url = project.url.render(hide_password=False)
    before = project.server_names()
    done = _cli(project, "fingerprint", "--concurrent-db-url", url)
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    print_, backend, template, _ = line.split(None, 3)
    assert backend == project.backend
    assert project.server_names() == before  # nothing made on the server
    assert _builds(results_dir) == 0
    snaps = project.pytester.path / "snaps"
    _run(project, snaps)
    assert [p.name for p in _snapshots(snaps)] == [f"{print_}.{project.backend}.snap"]
    assert template in project.server_names()


def test_bad_snapshot_settings_are_one_line_errors(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="def test_x(): pass\n")
    afile = pytester.makefile(".txt", afile="x")
    for args, expected in (
        (["--concurrent-db-snapshot-dir", str(afile)], "is not a directory"),
        (["--concurrent-db-snapshot-dir", "snaps", "--concurrent-db-snapshot-keep", "-1"], "whole number >= 0"),
        (["--concurrent-db-pg-bin", str(afile)], "is not a directory"),
    ):
        result = pytester.runpytest_subprocess("--concurrent-db", *args)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        errors = [line for line in result.stderr.lines if line.strip()]
        assert len(errors) == 1, errors
        assert expected in errors[0]
        assert "Traceback" not in result.stderr.str()


@pytest.mark.parametrize("backend_url", ["postgresql"], indirect=True)  # pg_dump is PostgreSQL's
def test_missing_pg_dump_is_one_warning_and_the_run_goes_on(project: Project, results_dir: Path) -> None:
    project.write(tests=TESTS, conftest=CONFTEST)
    snaps = project.pytester.path / "snaps"
    empty = project.pytester.mkdir("nobin")
    result = _run(project, snaps, "--concurrent-db-pg-bin", str(empty))
    (warning,) = _warnings(result)
    assert "pg_dump not found" in warning
    assert "postgresql-client-" in warning
    assert _snapshots(snaps) == []


def test_django_project_restored_without_migrations(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, backend_url: DatabaseURL
) -> None:
    """pytest-django: both test databases of the example project come back from their
    snapshots, and ``fingerprint`` names them before pytest runs."""
    from .test_django import DjangoProject, assert_passed

    project = DjangoProject(pytester, monkeypatch, None if backend_url.backend == "sqlite" else backend_url)
    try:
        snaps = pytester.path / "snaps"
        args = ("-n", "2", "--concurrent-db", f"--concurrent-db-snapshot-dir={snaps}")
        printed = subprocess.run(
            [sys.executable, "-m", "pytest_concurrent_db", "fingerprint"],
            cwd=pytester.path, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert printed.returncode == 0, printed.stderr
        cold = project.run(*args)
        assert_passed(cold)
        assert project.migrations() == {"default": 1, "analytics": 1}
        written = _snapshots(snaps)
        assert len(written) == 2
        assert sorted(line.split()[0] for line in printed.stdout.splitlines()) == sorted(
            p.name.split(".")[0] for p in written
        )
        project.drop_all()  # a fresh server (SQLite: no template files)
        shutil.rmtree(pytester.path / ".pytest_cache" / "d" / "concurrent_db", ignore_errors=True)
        fresh = project.run(*args)
        assert_passed(fresh)
        assert project.migrations() == {"default": 1, "analytics": 1}  # no migration ran
        assert summary(fresh).count("snapshot: template restored from") == 2, summary(fresh)
    finally:
        project.drop_all()


def test_build_template_api_writes_and_restores_a_snapshot(tmp_path: Path) -> None:
    """The public API takes ``snapshot_dir`` too (SQLite: no server needed)."""
    from pytest_concurrent_db import build_template

    schema = tmp_path / "schema.sql"
    schema.write_text("CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1);")
    url = f"sqlite:///{tmp_path / 'app.db'}"
    snaps = tmp_path / "snaps"
    first = build_template(url, str(schema), directory=tmp_path / "d", snapshot_dir=snaps)
    assert first.built
    assert first.snapshot is not None
    assert first.snapshot.written
    for path in (tmp_path / "d").glob(f"{first.name}*"):
        path.unlink()  # the template is gone
    second = build_template(url, str(schema), directory=tmp_path / "d", snapshot_dir=snaps)
    assert second.snapshot is not None
    assert second.snapshot.restored == first.snapshot.written
    assert second.fingerprint == first.fingerprint
    with pytest.raises(Exception, match="snapshot_keep"):
        build_template(url, str(schema), directory=tmp_path / "d", snapshot_dir=snaps, snapshot_keep=-1)
