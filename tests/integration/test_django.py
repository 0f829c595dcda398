"""pytest-django integration: the example project (examples/django_project) run in real
pytest subprocesses, under ``-n 2 --concurrent-db``, on SQLite, PostgreSQL and MariaDB.

The project counts its ``migrate`` runs in ``$SHOP_MIGRATE_LOG`` (a ``post_migrate``
receiver: one line per migrated alias) and its ``test_record_databases`` writes what
each worker is connected to into ``$RESULTS_DIR/<worker>.json``.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from pytest_concurrent_db.backends import load_backend
from pytest_concurrent_db.url import DatabaseURL
from tests.conftest import drop_ours

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "django_project"
NEW_MIGRATION = """
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("catalog", "0002_seed_categories")]
    operations = [migrations.RunPython(migrations.RunPython.noop, migrations.RunPython.noop)]
"""


class DjangoProject:
    """The example project copied into the pytester directory, on one backend."""

    def __init__(self, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, url: DatabaseURL | None) -> None:
        self.pytester = pytester
        self.url = url
        self.name = "dj" + secrets.token_hex(3)
        ignore = shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.sqlite3")
        shutil.copytree(EXAMPLE, pytester.path, dirs_exist_ok=True, ignore=ignore)
        self.log = pytester.path / "migrate.log"
        self.results = pytester.path / "results"
        self.results.mkdir()
        env = {
            "DJANGO_DB": url.backend if url else "sqlite",
            "DJANGO_DB_NAME": self.name,
            "SHOP_MIGRATE_LOG": str(self.log),
            "RESULTS_DIR": str(self.results),
        }
        if url is not None:
            env.update(
                DJANGO_DB_HOST=url.host or "",
                DJANGO_DB_PORT=str(url.port or ""),
                DJANGO_DB_USER=url.username or "",
                DJANGO_DB_PASSWORD=url.password or "",
            )
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        for key in ("DJANGO_SETTINGS_MODULE", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT"):
            monkeypatch.delenv(key, raising=False)  # our own run's, when it runs under xdist

    def run(self, *args: str) -> pytest.RunResult:
        for path in self.results.iterdir():
            path.unlink()
        return self.pytester.runpytest_subprocess(*args, timeout=180)

    def add_test(self, name: str, source: str) -> None:
        (self.pytester.path / "tests" / f"{name}.py").write_text(textwrap.dedent(source))

    def migrations(self) -> Counter[str]:
        """How many times each alias was migrated so far."""
        lines = self.log.read_text().split("\n") if self.log.exists() else []
        return Counter(line.split()[0] for line in lines if line)

    def records(self) -> dict[str, dict[str, dict[str, str]]]:
        return {p.stem: json.loads(p.read_text()) for p in self.results.glob("*.json")}

    def leftovers(self, run_id: str) -> list[str]:
        """Our databases of this project still on the server (or disk): clones of ``run_id``
        and anything that is not a ready template."""
        if self.url is None:
            return sorted(str(p) for p in self.pytester.path.rglob("cdb_*.db") if "_tpl_" not in p.name)
        backend = load_backend(self.url)
        try:
            infos = backend.list_databases(f"cdb_test_{self.name}")
        finally:
            backend.close()
        return [i.name for i in infos if i.marker is None or (i.marker.run_id == run_id and i.marker.kind == "clone")]

    def drop_all(self) -> None:
        if self.url is None:
            return
        drop_ours(load_backend(self.url), f"cdb_test_{self.name}")


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def django_project(request: pytest.FixtureRequest, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    url = None if request.param == "sqlite" else request.getfixturevalue(f"{request.param}_url")
    project = DjangoProject(pytester, monkeypatch, url)
    yield project
    project.drop_all()


@pytest.fixture
def sqlite_project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> DjangoProject:
    return DjangoProject(pytester, monkeypatch, None)


def run_id(result: pytest.RunResult) -> str:
    match = re.search(r"run: ([0-9a-f]+)", result.stdout.str())
    assert match, result.stdout.str()
    return match.group(1)


def assert_passed(result: pytest.RunResult, at_least: int = 10) -> dict[str, int]:
    outcomes = result.parseoutcomes()
    assert result.ret == 0, result.stdout.str()
    assert outcomes.get("passed", 0) >= at_least
    assert not outcomes.get("failed")
    assert not outcomes.get("errors")
    assert not outcomes.get("warnings")
    return outcomes


def assert_own_clones(project: DjangoProject, workers: set[str]) -> None:
    """Each worker on its own clones of default/analytics; replica mirrors default."""
    records = project.records()
    assert set(records) == workers
    names = []
    for worker, seen in records.items():
        for alias in ("default", "analytics"):
            name, current = seen[alias]["name"], seen[alias]["current"]
            assert seen[alias]["settings"] == name
            short = Path(name).stem if project.url is None else name
            assert short.startswith(f"cdb_test_{project.name}" if project.url else f"cdb_test_{alias}_")
            assert short.endswith(f"_{worker}")
            assert (Path(current).resolve() == Path(name).resolve()) if project.url is None else current == name
            names.append(name)
        assert seen["replica"]["name"] == seen["default"]["name"]
    assert len(set(names)) == len(names) == 2 * len(workers)


def test_template_built_once_per_run_and_reused(django_project: DjangoProject) -> None:
    """Cold run: migrations once per alias; warm run: none; new migration: once again."""
    project = django_project
    cold = project.run("-n", "2", "--concurrent-db", "--concurrent-db-spares", "1")  # auto: slow copies only
    assert_passed(cold)
    assert project.migrations() == {"default": 1, "analytics": 1}
    assert "built by gw" in cold.stdout.str()
    assert project.leftovers(run_id(cold)) == []

    warm = project.run("-n", "2", "--dist", "each", "--concurrent-db", "--concurrent-db-spares", "1")  # each test, both
    assert_passed(warm, at_least=20)
    assert project.migrations() == {"default": 1, "analytics": 1}
    assert warm.stdout.str().count("reused (inputs unchanged)") == 2
    if project.url is not None:  # spares of both databases made by the cold run, for each worker
        assert warm.stdout.str().count("(spare)") == 4, warm.stdout.str()
    assert_own_clones(project, {"gw0", "gw1"})
    assert project.leftovers(run_id(warm)) == []

    (project.pytester.path / "catalog" / "migrations" / "0003_noop.py").write_text(NEW_MIGRATION)
    changed = project.run("-n", "2", "--concurrent-db")
    assert_passed(changed)
    assert project.migrations() == {"default": 2, "analytics": 2}
    assert project.leftovers(run_id(changed)) == []


def test_create_db_and_no_migrations(sqlite_project: DjangoProject) -> None:
    """--create-db rebuilds once per run; --no-migrations is another template (syncdb)."""
    project = sqlite_project
    assert_passed(project.run("-n", "2", "--concurrent-db", "--reuse-db"))
    assert project.migrations() == {"default": 1, "analytics": 1}
    result = project.run("-n", "2", "--concurrent-db", "--create-db")
    assert_passed(result)
    assert project.migrations() == {"default": 2, "analytics": 2}
    assert "reused" not in result.stdout.str()
    result = project.run("-n", "2", "--concurrent-db", "--no-migrations", "-k", "rolled_back or two_databases")
    assert_passed(result, at_least=5)
    assert project.migrations() == {"default": 3, "analytics": 3}
    assert_passed(project.run("-n", "2", "--concurrent-db"))  # the migrated template is still there
    assert project.migrations() == {"default": 3, "analytics": 3}


def test_without_xdist(sqlite_project: DjangoProject) -> None:
    result = sqlite_project.run("-p", "no:xdist", "--concurrent-db")
    assert_passed(result)
    assert sqlite_project.migrations() == {"default": 1, "analytics": 1}
    assert_own_clones(sqlite_project, {"main"})
    assert sqlite_project.leftovers(run_id(result)) == []


def test_plugins_loaded_with_p_and_autoload_off(sqlite_project: DjangoProject, monkeypatch: pytest.MonkeyPatch) -> None:
    """``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1`` with ``-p <module>``: xdist and pytest-django are
    registered under their module names, and are still recognised."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugins = ["-p", "xdist.plugin", "-p", "pytest_django.plugin", "-p", "pytest_concurrent_db.plugin"]
    result = sqlite_project.run(*plugins, "-n", "2", "--dist", "each", "--concurrent-db")
    assert_passed(result, at_least=20)
    assert sqlite_project.migrations() == {"default": 1, "analytics": 1}
    assert "built by gw" in result.stdout.str()
    assert_own_clones(sqlite_project, {"gw0", "gw1"})


def test_pytest_django_unchanged_without_the_flag(sqlite_project: DjangoProject) -> None:
    result = sqlite_project.run("-n", "2", "--dist", "each")
    assert_passed(result, at_least=20)
    assert not re.search(r"=+ concurrent-db =+", result.stdout.str())  # no summary: the plugin is off
    assert sqlite_project.migrations() == {"default": 2, "analytics": 2}  # pytest-django: every worker
    for seen in sqlite_project.records().values():
        assert seen["default"]["name"] == "file:memorydb_default?mode=memory&cache=shared"


def test_isolation_check_reports_a_moved_connection(sqlite_project: DjangoProject) -> None:
    sqlite_project.add_test(
        "test_zz_move",
        """
        from django.db import connections

        def test_move(db):
            connections["default"].settings_dict["NAME"] = "elsewhere.sqlite3"
    """,
    )
    result = sqlite_project.run("-p", "no:xdist", "--concurrent-db", "-k", "move or seeded")
    result.stdout.fnmatch_lines(
        ["*concurrent-db isolation check failed for Django databases of worker main*'default' points at*"]
    )
    outcomes = result.parseoutcomes()
    assert (outcomes["passed"], outcomes["errors"]) == (2, 1)
    assert sqlite_project.leftovers(run_id(result)) == []


def test_crashed_worker_clones_are_swept(
    postgresql_url: DatabaseURL, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = DjangoProject(pytester, monkeypatch, postgresql_url)
    try:
        project.add_test(
            "test_zz_crash",
            """
            import os

            def test_crash(db):
                os._exit(1)
        """,
        )
        result = project.run("-n", "2", "--concurrent-db", "-k", "crash or rolled_back or two_databases")
        assert result.parseoutcomes().get("failed") == 1
        # Its two clones are swept by this run's controller (or reaped by a concurrent run's).
        result.stdout.fnmatch_lines(["*worker 'gw*' crashed while running*", "*dropped: * databases (*)"])
        assert project.leftovers(run_id(result)) == []
    finally:
        project.drop_all()
