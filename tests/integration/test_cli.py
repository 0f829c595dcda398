"""`python -m pytest_concurrent_db list|prune` against real servers."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_concurrent_db import Template, build_template, worker_database
from pytest_concurrent_db.backends import Marker, connect_url, load_backend
from pytest_concurrent_db.naming import new_run_id
from pytest_concurrent_db.url import DatabaseURL
from pytest_concurrent_db.worker import WorkerDatabases
from tests.conftest import dead_undroppable_mysql_database, drop_ours

from .conftest import Project, summary


def _cli(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    url = ["--url", project.url.render(hide_password=False)]
    return subprocess.run(
        [sys.executable, "-m", "pytest_concurrent_db", *args, *url],
        cwd=project.pytester.path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_list_and_prune_dead_clones_and_stale_templates(project: Project) -> None:
    project.write(tests="def test_one(concurrent_db): pass\ndef test_two(concurrent_db): pass\n")
    project.run("-n", "2", "--concurrent-db-keep").assert_outcomes(passed=2)
    clones = project.clones()
    assert len(clones) in (1, 2)
    listing = _cli(project, "list")
    assert listing.returncode == 0, listing.stderr
    # SQLite clones live in pytest's temp dirs (pytest removes old ones); servers list them as dead
    for clone in clones if project.backend != "sqlite" else []:
        line = next(line for line in listing.stdout.splitlines() if line.startswith(clone))
        assert " clone " in line
        assert " kept " in line  # kept for debugging: later runs leave it alone, prune removes it
    dry = _cli(project, "prune")
    assert dry.returncode == 0
    assert "dry run" in dry.stdout
    assert project.clones() == clones  # a dry run drops nothing
    if project.backend != "sqlite":
        assert all(clone in dry.stdout for clone in clones)
        done = _cli(project, "prune", "--yes")
        assert done.returncode == 0
        assert project.clones() == []
    # the template is kept (up to --keep-templates out-of-date ones) ...
    templates = [n for n in project.server_names() if "_tpl_" in n]
    assert len(templates) == 1
    assert templates[0] in _cli(project, "list").stdout
    # ... and dropped by prune --keep-templates 0 once no live run uses it
    done = _cli(project, "prune", "--yes", "--keep-templates", "0")
    assert done.returncode == 0, done.stderr
    assert [n for n in project.server_names() if "_tpl_" in n] == []


def test_new_template_prunes_old_ones_beyond_keep(project: Project) -> None:
    project.write(tests="def test_one(concurrent_db): pass\n")
    schema = project.pytester.path / "schema.sql"
    original = schema.read_text()
    for i in range(4):
        schema.write_text(original + f"\nCREATE TABLE version_{i} (id INTEGER);\n")
        project.run("-p", "no:xdist", "--concurrent-db-keep-templates", "1").assert_outcomes(passed=1)
    templates = [n for n in project.server_names() if "_tpl_" in n]
    assert len(templates) == 2  # the current one and one out-of-date one


@pytest.mark.parametrize("backend_url", ["postgresql"], indirect=True)
def test_cli_error_is_one_line(project: Project) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest_concurrent_db", "list", "--url", "postgresql://u:s3cr3t@127.0.0.1:1/x"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "cannot connect" in result.stderr
    assert "s3cr3t" not in result.stderr
    assert "Traceback" not in result.stderr


def test_prune_is_scoped_to_the_urls_database_name(project: Project) -> None:
    """Another project's out-of-date template on the same server survives our prune."""
    project.write(tests="def test_one(concurrent_db): pass\n")
    project.run("-p", "no:xdist").assert_outcomes(passed=1)
    other = Project(
        project.pytester,
        project.backend,
        project.url.with_database(project.url.database.replace(project.base, "o" + project.base[1:])),
        "o" + project.base[1:],
    )
    other.run("-p", "no:xdist").assert_outcomes(passed=1)
    try:
        assert [n for n in other.server_names() if "_tpl_" in n]
        done = _cli(project, "prune", "--yes", "--keep-templates", "0")
        assert done.returncode == 0, done.stderr
        assert [n for n in project.server_names() if "_tpl_" in n] == []
        assert [n for n in other.server_names() if "_tpl_" in n]  # not ours to prune
    finally:
        other.drop_all()


# -- the settings URL of a Django project, and prune --templates ------------------------------
def _seed(connection: Any) -> None:
    connection.cursor().execute("CREATE TABLE plan (id INTEGER PRIMARY KEY, name VARCHAR(20))")


def _run_cli(url: DatabaseURL, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_concurrent_db", *args, "--url", url.render(hide_password=False)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def django_named(backend_url: DatabaseURL, tmp_path: Path) -> Iterator[tuple[DatabaseURL, DatabaseURL]]:
    """(the URL in a Django project's settings, the URL of its test database ``test_<name>``);
    every database of ours named after either is dropped afterwards."""
    # not on SQLite: Django names SQLite test databases after the file, not test_<name>
    name = "dj" + secrets.token_hex(3)
    yield backend_url.with_database(name), backend_url.with_database(f"test_{name}")
    for prefix in (f"cdb_{name}_", f"cdb_test_{name}_"):
        drop_ours(load_backend(backend_url, template_dir=tmp_path, clone_dir=tmp_path), prefix)


def _kept_clone(template: Template, worker_id: str) -> str:
    """A clone left behind by a run that ended (as ``--concurrent-db-keep`` leaves it)."""
    databases = WorkerDatabases(template.site, run_id=new_run_id(), worker_id=worker_id)
    try:
        name = databases.create_clone(template).name
        databases.keep_clone()
    finally:
        databases.close()
    return name


@pytest.mark.parametrize("backend_url", ["postgresql", "mysql"], indirect=True)
def test_settings_url_finds_a_django_projects_databases(
    django_named: tuple[DatabaseURL, DatabaseURL], tmp_path: Path
) -> None:
    """``--url .../app`` (the settings' NAME) finds what runs on Django's test database
    ``test_app`` made (``cdb_test_app_…``), as well as the plain ``cdb_app_…`` ones."""
    settings_url, test_url = django_named
    django_template = build_template(test_url.render(hide_password=False), _seed, directory=tmp_path)
    plain_template = build_template(settings_url.render(hide_password=False), _seed, directory=tmp_path)
    assert django_template.name.startswith(f"cdb_test_{settings_url.database}_")
    clone = _kept_clone(django_template, "gw0")

    listing = _run_cli(settings_url, "list", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    for name in (django_template.name, plain_template.name, clone):
        assert name in listing.stdout
    dry = _run_cli(settings_url, "prune", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert clone in dry.stdout
    assert "dry run" in dry.stdout
    done = _run_cli(settings_url, "prune", "--yes", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    after = _run_cli(settings_url, "list", cwd=tmp_path).stdout
    assert clone not in after
    assert django_template.name in after  # the newest templates stay without --templates
    # the test database's own name finds the Django ones too
    assert django_template.name in _run_cli(test_url, "list", cwd=tmp_path).stdout


@pytest.mark.parametrize("backend_url", ["postgresql", "mysql"], indirect=True)
@pytest.mark.usefixtures("server_wide_prune_lock")
def test_prune_templates_drops_unused_templates_never_a_live_runs(
    django_named: tuple[DatabaseURL, DatabaseURL], tmp_path: Path
) -> None:
    settings_url, test_url = django_named
    template = build_template(test_url.render(hide_password=False), _seed, directory=tmp_path)
    unmarked = f"cdb_test_{settings_url.database}_tpl_000000000000"  # our prefix, not our marker
    _create_unmarked(settings_url, unmarked)
    try:
        with worker_database(template, "gw0") as live:  # a live run: it holds its clone's lock
            done = _run_cli(settings_url, "prune", "--templates", "--yes", cwd=tmp_path)
            assert done.returncode == 0, done.stderr
            listing = _run_cli(settings_url, "list", cwd=tmp_path).stdout
            assert template.name in listing  # in use by the live clone
            assert live.name in listing
        dry = _run_cli(settings_url, "prune", "--templates", cwd=tmp_path)
        assert template.name in dry.stdout
        plain = _run_cli(settings_url, "prune", "--yes", cwd=tmp_path)
        assert template.name not in plain.stdout  # without --templates the newest ones stay
        done = _run_cli(settings_url, "prune", "--templates", "--yes", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert template.name in done.stdout
        assert template.name not in _run_cli(settings_url, "list", cwd=tmp_path).stdout
        assert unmarked not in done.stdout
        assert _exists(settings_url, unmarked)  # without our marker: never ours to drop
    finally:
        _drop_unmarked(settings_url, unmarked)


def _admin(url: DatabaseURL) -> Any:
    server = url.with_database("postgres" if url.backend == "postgresql" else "")
    connection = connect_url(server, connect_timeout=5)
    if url.backend == "postgresql":
        connection.autocommit = True
    return connection


def _quoted(url: DatabaseURL, name: str) -> Any:
    if url.backend == "postgresql":
        from psycopg import sql

        return sql.SQL("{}").format(sql.Identifier(name))
    return "`" + name.replace("`", "``") + "`"


def _create_unmarked(url: DatabaseURL, name: str) -> None:
    connection = _admin(url)
    try:
        if url.backend == "postgresql":
            from psycopg import sql

            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        else:
            connection.cursor().execute(f"CREATE DATABASE {_quoted(url, name)}")
    finally:
        connection.close()


def _exists(url: DatabaseURL, name: str) -> bool:
    connection = _admin(url)
    try:
        cursor = connection.cursor()
        if url.backend == "postgresql":
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        else:
            cursor.execute("SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (name,))
        return cursor.fetchone() is not None
    finally:
        connection.close()


def _drop_unmarked(url: DatabaseURL, name: str) -> None:
    connection = _admin(url)
    try:
        if url.backend == "postgresql":
            from psycopg import sql

            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        else:
            connection.cursor().execute(f"DROP DATABASE IF EXISTS {_quoted(url, name)}")
    finally:
        connection.close()


def test_cli_help_is_plain_text() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest_concurrent_db", "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "prune" in result.stdout
    assert "--templates" in result.stdout
    for markup in ("``", ":func:", ":class:", ":mod:", ":data:", ":meth:", "`"):
        assert markup not in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["prune", "--keep-templates", "-1"],
        ["prune", "--templates", "--keep-templates", "3"],
        ["list", "--url", "x://y"],
    ],
)
def test_cli_bad_input_is_one_line_without_traceback(args: list[str], tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest_concurrent_db", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if "error:" in line], result.stderr


@pytest.mark.parametrize("backend_url", ["postgresql", "mysql"], indirect=True)
def test_scope_is_the_exact_project_not_a_longer_name(
    django_named: tuple[DatabaseURL, DatabaseURL], tmp_path: Path
) -> None:
    """``--url …/app`` covers ``cdb_app_…`` and ``cdb_test_app_…``, not project ``app_v2``'s
    ``cdb_app_v2_…`` (nor ``test_app_v2``'s), although their names start the same."""
    settings_url, test_url = django_named
    ours = build_template(settings_url.render(hide_password=False), _seed, directory=tmp_path)
    longer = [
        build_template(url.with_database(url.database + "_v2").render(hide_password=False), _seed, directory=tmp_path)
        for url in (settings_url, test_url)
    ]
    try:
        listing = _run_cli(settings_url, "list", cwd=tmp_path)
        assert ours.name in listing.stdout
        assert not [t.name for t in longer if t.name in listing.stdout]
        done = _run_cli(settings_url, "prune", "--templates", "--yes", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert ours.name in done.stdout
        everything = _run_cli(settings_url, "list", "--all", cwd=tmp_path).stdout
        assert all(t.name in everything for t in longer)  # another project's: left alone
    finally:
        for url in (settings_url, test_url):
            drop_ours(load_backend(url, template_dir=tmp_path, clone_dir=tmp_path), f"cdb_{url.database}_v2_")


# -- a database the server cannot drop --------------------------------------------------------
@pytest.mark.usefixtures("server_wide_prune_lock")
def test_a_database_the_server_cannot_drop_is_named_and_runs_go_on(mysql_url: DatabaseURL,
                                                                  pytester: pytest.Pytester) -> None:
    """A dead run's MySQL database whose directory holds a file the server did not make (here
    from ``SELECT ... INTO OUTFILE``) cannot be dropped: every run that reaps it says so in a
    yellow line and goes on (it was an INTERNALERROR that failed every run on the server), and
    ``prune`` names it and exits 1 until the file is gone."""
    base = "it" + secrets.token_hex(3)
    project = Project(pytester, "mysql", mysql_url.with_database(base), base)
    project.write(tests="def test_one(concurrent_db): pass\n")
    stuck, dead = f"cdb_{base}_gw7", f"cdb_{base}_gw8"
    template = f"cdb_{base}_tpl_0123456789ab"
    backend = load_backend(project.url)
    stray: Path | None = None
    try:
        assert backend.try_lock("clone:" + dead)  # no other test's run reaps it before the other is ready
        backend.create(dead, Marker(kind="clone", run_id="deadrun", worker_id="gw8", template=template))
        stray = dead_undroppable_mysql_database(backend, stuck, template)
        backend.release_lock("clone:" + dead)

        for args in (["-p", "no:xdist"], ["-n", "2"]):
            result = project.run(*args)
            result.assert_outcomes(passed=1)
            text = summary(result)
            assert f"not dropped: {stuck}: cannot drop MySQL database {stuck!r}" in text, text
            assert "remove that file from the server's data directory" in text
            assert dead not in project.server_names()  # the other dead database is still reaped

        done = _cli(project, "prune", "--yes")
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"error: not dropped: {stuck}: cannot drop MySQL database" in done.stderr
        assert "Traceback" not in done.stderr
        stray.unlink()
        done = _cli(project, "prune", "--yes")
        assert done.returncode == 0, done.stderr
        assert stuck in done.stdout
        assert stuck not in project.server_names()
    finally:
        if stray is not None and stray.exists():
            stray.unlink()
        backend.close()
        project.drop_all()
