"""Every bad input gives one clear line, no traceback, and leaves nothing behind."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from pytest_concurrent_db.backends import connect_url
from pytest_concurrent_db.url import DatabaseURL

from .conftest import Project

PASSING_TEST = "def test_uses_db(concurrent_db_connection):\n    pass\n"


def _assert_clean_usage_error(result: pytest.RunResult, *fragments: str) -> None:
    output = result.stdout.str() + result.stderr.str()
    assert result.ret != 0
    assert "Traceback" not in output, output
    assert "INTERNALERROR" not in output, output
    error_lines = [line for line in result.stderr.lines if line.startswith("ERROR: ")]
    assert len(error_lines) == 1, output
    for fragment in fragments:
        assert fragment in error_lines[0], error_lines[0]


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("nonsense", "malformed database URL"),
        ("oracle://scott:tiger@db/x", "unknown database URL scheme 'oracle'"),
        ("postgresql://u:s3cr3t@127.0.0.1:notaport/x", "malformed database URL"),
        ("sqlite:///:memory:", "in-memory SQLite URL cannot be shared by xdist workers"),
    ],
)
def test_bad_url(pytester: pytest.Pytester, url: str, fragment: str) -> None:
    pytester.makepyfile(PASSING_TEST)
    result = pytester.runpytest_subprocess("-n", "2", "--concurrent-db", "--concurrent-db-url", url)
    _assert_clean_usage_error(result, fragment, "concurrent-db")
    assert "s3cr3t" not in result.stdout.str() + result.stderr.str()


def test_bad_url_from_environment_names_the_variable(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(PASSING_TEST)
    monkeypatch.setenv("CONCURRENT_DB_URL", "mongodb://x")
    result = pytester.runpytest_subprocess("-n", "2", "--concurrent-db")
    _assert_clean_usage_error(result, "mongodb", "CONCURRENT_DB_URL")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--concurrent-db-isolation", "paranoid"], "invalid choice"),
        (["--concurrent-db-lock-timeout", "soon"], "positive number of seconds"),
        (["--concurrent-db-schema", "missing.sql"], "missing.sql"),
    ],
)
def test_bad_option_values(pytester: pytest.Pytester, args: list[str], fragment: str) -> None:
    pytester.makepyfile(PASSING_TEST)
    result = pytester.runpytest_subprocess("--concurrent-db", *args)
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert fragment in output
    assert "Traceback" not in output


def test_bad_env_value_names_the_variable(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(PASSING_TEST)
    monkeypatch.setenv("CONCURRENT_DB_KEEP", "maybe")
    result = pytester.runpytest_subprocess("--concurrent-db")
    _assert_clean_usage_error(result, "CONCURRENT_DB_KEEP", "true or false")


def test_missing_driver_names_the_extra(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = pytester.mkdir("blocked")
    (blocker / "psycopg.py").write_text("raise ImportError('blocked for this test')\n")
    monkeypatch.setenv("PYTHONPATH", str(blocker))
    pytester.makepyfile(PASSING_TEST)
    result = pytester.runpytest_subprocess(
        "-n", "2", "--concurrent-db", "--concurrent-db-url", "postgresql://postgres@127.0.0.1/app"
    )
    _assert_clean_usage_error(result, "pip install 'pytest-concurrent-db[postgresql]'")


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
def test_unreachable_server(pytester: pytest.Pytester, scheme: str) -> None:
    pytester.makepyfile(PASSING_TEST)
    url = f"{scheme}://user:s3cr3t@127.0.0.1:1/app"
    # a server that refuses connections is waited for, up to the lock timeout (at most 30 s)
    result = pytester.runpytest_subprocess(
        "-n", "2", "--concurrent-db", "--concurrent-db-url", url, "--concurrent-db-lock-timeout", "1"
    )
    _assert_clean_usage_error(result, "cannot connect", "127.0.0.1:1", "refused the connection", "waited 1s")
    assert "s3cr3t" not in result.stdout.str() + result.stderr.str()


def test_missing_create_privilege_postgresql(pytester: pytest.Pytester, postgresql_url: DatabaseURL) -> None:
    role = "cdb_t_nocreate_" + secrets.token_hex(3)
    admin = connect_url(postgresql_url.with_database("postgres"), autocommit=True)
    try:
        admin.execute(f'CREATE ROLE "{role}" LOGIN NOCREATEDB')
        pytester.makepyfile(PASSING_TEST)
        url = postgresql_url.with_database("app").render(hide_password=False).replace("postgres@", f"{role}@", 1)
        result = pytester.runpytest_subprocess("-n", "2", "--concurrent-db", "--concurrent-db-url", url)
        _assert_clean_usage_error(result, "CREATEDB")
    finally:
        admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        admin.close()


def test_missing_create_privilege_mysql(pytester: pytest.Pytester, mysql_url: DatabaseURL) -> None:
    user = "cdb_t_nocreate_" + secrets.token_hex(3)
    admin = connect_url(mysql_url.with_database(""), autocommit=True)
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY ''")
            cur.execute(f"CREATE USER '{user}'@'localhost' IDENTIFIED BY ''")
        pytester.makepyfile(PASSING_TEST)
        url = f"mysql://{user}@127.0.0.1:{mysql_url.port}/app"
        result = pytester.runpytest_subprocess("-n", "2", "--concurrent-db", "--concurrent-db-url", url)
        _assert_clean_usage_error(result, "GRANT")
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
            cur.execute(f"DROP USER IF EXISTS '{user}'@'localhost'")
        admin.close()


def _assert_clean_run_failure(result: pytest.RunResult, *fragments: str) -> None:
    output = result.stdout.str() + result.stderr.str()
    assert result.ret not in (0, pytest.ExitCode.INTERNAL_ERROR), output
    assert "Traceback" not in output, output
    for fragment in fragments:
        assert fragment in output, output


def test_schema_file_that_fails_names_file_line_and_statement(project: Project) -> None:
    schema = "CREATE TABLE ok_table (id INTEGER);\n\nINSERT INTO no_such_table VALUES (1);\n"
    project.write(schema=schema, tests=PASSING_TEST)
    result = project.run("-n", "2")
    _assert_clean_run_failure(result, "schema.sql:3", "INSERT INTO no_such_table VALUES (1)")
    assert project.server_names() == []  # the half-built template was dropped


def test_summary_names_a_template_whose_build_failed(project: Project) -> None:
    project.write(schema="INSERT INTO no_such_table VALUES (1);\n", tests=PASSING_TEST)
    result = project.run("-n", "2")
    result.stdout.fnmatch_lines(["template: cdb_*_tpl_* not ready (setup failed)*"])


def test_lock_timeout(project: Project) -> None:
    """A template lock held by another process times out with a message naming it."""
    project.write(tests=PASSING_TEST)
    first = project.run("-p", "no:xdist")
    first.assert_outcomes(passed=1)
    template = next(n for n in project.server_names() if "_tpl_" in n)
    holder = project.pytester.makepyfile(
        holder=textwrap.dedent(
            f"""
            import sys, time, pathlib
            from filelock import FileLock
            lock_dir = pathlib.Path(sys.argv[1])
            lock = FileLock(lock_dir / "{template}.lock")
            lock.acquire()
            print("locked", flush=True)
            time.sleep(30)
            """
        )
    )
    if project.backend == "sqlite":
        lock_dir = project.pytester.path / ".pytest_cache" / "d" / "concurrent_db" / "locks"
    else:
        lock_dir = Path(tempfile.gettempdir()) / f"pytest-concurrent-db-{os.getuid()}"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with subprocess.Popen([sys.executable, str(holder), str(lock_dir)], stdout=subprocess.PIPE) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"locked"
            result = project.run("-n", "2", "--concurrent-db-rebuild", "--concurrent-db-lock-timeout", "1")
            _assert_clean_run_failure(result, "timed out after 1s waiting for the template lock", "lock-timeout")
        finally:
            proc.kill()
    assert project.clones() == []


@pytest.mark.parametrize("backend_url", ["postgresql"], indirect=True)
def test_a_refused_worker_connection_fails_the_test_with_one_line(project: Project) -> None:
    """The worker's clone stops accepting connections between the setup and the first
    ``concurrent_db_connection``: that test fails with the server's reason on one line, no
    traceback through our code, and the run goes on (the clone is dropped at the end)."""
    project.write(
        tests="""
        import psycopg

        def admin(concurrent_db, allow):
            url = concurrent_db.url.rsplit("/", 1)[0] + "/postgres"
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{concurrent_db.name}" WITH ALLOW_CONNECTIONS {allow}')

        def test_1_refuse(concurrent_db):
            admin(concurrent_db, "false")

        def test_2_connect(concurrent_db_connection):
            pass

        def test_3_allow_again(concurrent_db):
            admin(concurrent_db, "true")
        """
    )
    result = project.run("-n", "1")
    output = result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=2, errors=1)
    assert "pytest_concurrent_db/" not in output, output  # no traceback through our code
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_2_connect*",
            "*",
            "concurrent-db: cannot connect to PostgreSQL at * is not currently accepting*",
        ]
    )
    assert project.clones() == []
