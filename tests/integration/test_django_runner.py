"""``manage.py test --parallel 2`` with ``ConcurrentTestRunner``: the example project
(examples/django_project) copied to ``tmp_path`` and run in real subprocesses on SQLite,
PostgreSQL and MariaDB, under the fork, spawn and forkserver start methods.

The copy gets a module of Django ``TestCase`` classes (:data:`CASES`: the example's own tests
are pytest functions, which ``manage.py test`` does not collect) that count every migration
applied (``Migration.apply``, into ``$SHOP_APPLY_LOG``) and record what each worker process is
connected to (``$RESULTS_DIR``); the example's ``post_migrate`` receiver counts ``migrate``
runs (``$SHOP_MIGRATE_LOG``).  Its settings get a start-method switch and a ``CONCURRENT_DB``
dict from the environment (:data:`SETTINGS_TAIL`).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_concurrent_db.backends import DatabaseInfo, connect_url, load_backend
from pytest_concurrent_db.url import DatabaseURL
from tests.conftest import drop_ours

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "django_project"
RUNNER = "pytest_concurrent_db.django.ConcurrentTestRunner"
#: TestCase classes of CASES that ran (2 of them skip unless told otherwise) and what each records
TESTS = 8
RECORDING = 4

CASES = '''
"""Django TestCases for ``manage.py test`` (written by test_django_runner.py)."""

import json
import os
import time

from django.db import IntegrityError, connection, connections, transaction
from django.db.migrations.migration import Migration
from django.test import TestCase, TransactionTestCase, tag

from analytics.models import Event
from catalog.models import Category, Product

_apply = Migration.apply


def _counting_apply(self, project_state, schema_editor, collect_sql=False):
    log = os.environ.get("SHOP_APPLY_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{schema_editor.connection.alias} {self.app_label}.{self.name}\\n")
    return _apply(self, project_state, schema_editor, collect_sql)


Migration.apply = _counting_apply


def record():
    """What this worker is connected to, into $RESULTS_DIR (then a pause, so that the other
    worker takes the next class)."""
    results = os.environ.get("RESULTS_DIR")
    if not results:
        return
    seen = {"pid": os.getpid()}
    for alias in ("default", "analytics", "replica"):
        conn = connections[alias]
        with conn.cursor() as cursor:
            if conn.vendor == "postgresql":
                cursor.execute("SELECT current_database()")
                current = cursor.fetchone()[0]
            elif conn.vendor == "mysql":
                cursor.execute("SELECT DATABASE()")
                current = cursor.fetchone()[0]
                cursor.execute(
                    "SELECT COUNT(*) FROM information_schema.REFERENTIAL_CONSTRAINTS "
                    "WHERE CONSTRAINT_SCHEMA = DATABASE()"
                )
                seen[f"{alias}_fks"] = cursor.fetchone()[0]
            else:
                cursor.execute("PRAGMA database_list")
                current = next(row[2] for row in cursor.fetchall() if row[1] == "main")
        seen[alias] = {"name": str(conn.settings_dict["NAME"]), "current": current}
    with open(os.path.join(results, f"{os.getpid()}-{time.monotonic_ns()}.json"), "w", encoding="utf-8") as f:
        json.dump(seen, f)
    time.sleep(0.2)


class CatalogTests(TestCase):
    databases = "__all__"

    def test_seeded_by_data_migration(self):
        self.assertEqual(sorted(Category.objects.values_list("name", flat=True)), ["books", "games", "music"])
        record()

    @tag("fast")
    def test_rolled_back(self):
        Product.objects.create(category=Category.objects.get(name="books"), name="p", price_cents=1)
        self.assertEqual(Product.objects.count(), 1)


class ForeignKeyTests(TestCase):
    databases = "__all__"

    def test_foreign_keys_enforced(self):
        with self.assertRaises(IntegrityError), transaction.atomic():
            Product.objects.create(category_id=987654, name="orphan", price_cents=1)
            if connection.vendor != "mysql":  # deferred until the commit: check now
                connection.check_constraints()
        record()


class AnalyticsTests(TestCase):
    databases = "__all__"

    @tag("fast")
    def test_two_databases(self):
        Event.objects.create(kind="view")
        self.assertEqual(Event.objects.using("analytics").count(), 1)
        record()


class MirrorTests(TransactionTestCase):
    databases = "__all__"
    serialized_rollback = True

    def test_mirror_reads_what_default_wrote(self):
        Category.objects.create(name="garden")
        self.assertTrue(Category.objects.using("replica").filter(name="garden").exists())
        record()


class BlockingTests(TestCase):
    """Only with $SHOP_BLOCK: writes $SHOP_BLOCK.<pid>, then waits (a run to interrupt)."""

    def test_block(self):
        path = os.environ.get("SHOP_BLOCK")
        if not path:
            self.skipTest("SHOP_BLOCK not set")
        with open(f"{path}.{os.getpid()}", "w", encoding="utf-8") as f:
            f.write("started")
        time.sleep(120)


class FailingTests(TestCase):
    """Only with $SHOP_FAIL."""

    def test_fails(self):
        if not os.environ.get("SHOP_FAIL"):
            self.skipTest("SHOP_FAIL not set")
        Category.objects.filter(name="shop-fail-marker").count()
        self.fail("SHOP_FAIL is set")
'''

SETTINGS_TAIL = """

# -- added by pytest-concurrent-db's tests/integration/test_django_runner.py ----------------
import json  # noqa: E402

if os.environ.get("SHOP_START_METHOD"):
    import multiprocessing

    multiprocessing.set_start_method(os.environ["SHOP_START_METHOD"], force=True)
if os.environ.get("SHOP_ENGINE"):
    DATABASES["default"]["ENGINE"] = os.environ["SHOP_ENGINE"]
if os.environ.get("SHOP_SQLITE_TEST_FILES"):  # file test databases instead of Django's in-memory default
    for _alias in ("default", "analytics"):
        DATABASES[_alias]["TEST"] = {**DATABASES[_alias].get("TEST", {}), "NAME": BASE_DIR / f"test_{_alias}.sqlite3"}
CONCURRENT_DB = json.loads(os.environ.get("SHOP_CONCURRENT_DB") or "{}")
"""

#: A backend Django loads whose vendor we do not clone: Oracle's vendor name on top of SQLite
#: (Django's own Oracle backend cannot be loaded without the oracledb driver).
ORACLE_STAND_IN = """
from django.db.backends.sqlite3.base import DatabaseWrapper as SQLiteDatabaseWrapper


class DatabaseWrapper(SQLiteDatabaseWrapper):
    vendor = "oracle"
    display_name = "Oracle"
"""

BROKEN_MIGRATION = """
from django.db import migrations


def fail(apps, schema_editor):
    raise RuntimeError("this data migration is broken")


class Migration(migrations.Migration):
    dependencies = [("catalog", "0002_seed_categories")]
    operations = [migrations.RunPython(fail, migrations.RunPython.noop)]
"""


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def ok(self, tests: int = TESTS, skipped: int = 2) -> Run:
        assert self.returncode == 0, self.output
        assert f"Ran {tests} test" in self.stderr, self.output
        assert f"OK (skipped={skipped})" in self.stderr if skipped else "\nOK\n" in self.stderr, self.output
        return self


class RunnerProject:
    """The example copied to ``tmp_path`` with :data:`CASES`, on one backend (None: SQLite)."""

    def __init__(self, tmp_path: Path, url: DatabaseURL | None) -> None:
        self.path = tmp_path / "shop"
        self.url = url
        self.name = "dr" + secrets.token_hex(3)
        ignore = shutil.ignore_patterns("__pycache__", ".pytest_cache", ".ruff_cache", "*.sqlite3")
        shutil.copytree(EXAMPLE, self.path, ignore=ignore)
        (self.path / "tests" / "test_runner_cases.py").write_text(CASES.lstrip())
        with (self.path / "shop" / "settings.py").open("a") as settings:
            settings.write(SETTINGS_TAIL)
        with (self.path / "pytest.ini").open("a") as ini:  # pytest-django makes Django tags marks
            ini.write("markers =\n    fast: a Django tag of the runner's cases\n")
        self.applied_log = self.path / "applied.log"
        self.migrate_log = self.path / "migrate.log"
        self.results = self.path / "results"
        self.results.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONCURRENT_DB", "DJANGO_", "PYTEST_"))}
        env.update(
            DJANGO_DB=url.backend if url else "sqlite",
            DJANGO_DB_NAME=self.name,
            SHOP_APPLY_LOG=str(self.applied_log),
            SHOP_MIGRATE_LOG=str(self.migrate_log),
            RESULTS_DIR=str(self.results),
            PYTHONPATH=str(Path(__file__).resolve().parents[2]),
        )
        if url is not None:
            env.update(
                DJANGO_DB_HOST=url.host or "",
                DJANGO_DB_PORT=str(url.port or ""),
                DJANGO_DB_USER=url.username or "",
                DJANGO_DB_PASSWORD=url.password or "",
            )
        self.env = env

    # -- running ---------------------------------------------------------------------------
    def command(self, *args: str, parallel: str = "2") -> list[str]:
        return [sys.executable, "manage.py", "test", "--noinput", "--testrunner", RUNNER, "--parallel", parallel, *args]

    def run(self, *args: str, parallel: str = "2", **env: str) -> Run:
        for path in self.results.iterdir():
            path.unlink()
        done = subprocess.run(
            self.command(*args, parallel=parallel),
            cwd=self.path,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=150,
            check=False,
        )
        return Run(done.returncode, done.stdout, done.stderr)

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        """The run in a session of its own (a terminal's process group), not waited for."""
        return subprocess.Popen(
            self.command(*args),
            cwd=self.path,
            env={**self.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    # -- what happened ---------------------------------------------------------------------
    def applied(self) -> Counter[tuple[str, str]]:
        """How many times each (alias, migration) was applied so far."""
        lines = self.applied_log.read_text().splitlines() if self.applied_log.exists() else []
        return Counter((line.split()[0], line.split()[1]) for line in lines)

    def migrate_runs(self) -> Counter[str]:
        lines = self.migrate_log.read_text().splitlines() if self.migrate_log.exists() else []
        return Counter(line.split()[0] for line in lines)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(self.results.glob("*.json"))]

    def ours(self) -> list[DatabaseInfo]:
        """Our databases of this project (templates, clones, spares) on the server or disk."""
        backend = self._backend()
        try:
            return list(backend.list_databases(f"cdb_test_{self.name}" if self.url else "cdb_"))
        finally:
            backend.close()

    def clones(self) -> list[str]:
        """Our databases that are not templates or spares (the spares are for the next run)."""
        return sorted(i.name for i in self.ours() if i.marker is None or i.marker.kind == "clone")

    def templates(self) -> list[str]:
        return sorted(i.name for i in self.ours() if i.marker is not None and i.marker.kind == "template")

    def _backend(self) -> Any:
        cache = self.path / ".pytest_cache" / "d" / "concurrent_db"
        url = self.url or DatabaseURL(backend="sqlite", database="")
        return load_backend(url, template_dir=cache, clone_dir=cache / "runner")

    def drop_all(self) -> None:
        if self.url is not None:
            drop_ours(load_backend(self.url), f"cdb_test_{self.name}")


@pytest.fixture
def sqlite_project(tmp_path: Path) -> RunnerProject:
    return RunnerProject(tmp_path, None)


@pytest.fixture
def sqlite_file_project(tmp_path: Path) -> RunnerProject:
    """SQLite with file test databases (``TEST["NAME"]``), which are only names: never created."""
    project = RunnerProject(tmp_path, None)
    project.env["SHOP_SQLITE_TEST_FILES"] = "1"
    return project


@pytest.fixture
def postgresql_project(tmp_path: Path, postgresql_url: DatabaseURL) -> Any:
    project = RunnerProject(tmp_path, postgresql_url)
    yield project
    project.drop_all()


@pytest.fixture
def mysql_project(tmp_path: Path, mysql_url: DatabaseURL) -> Any:
    project = RunnerProject(tmp_path, mysql_url)
    yield project
    project.drop_all()


def assert_own_clones(project: RunnerProject) -> set[int]:
    """Every recording worker on its own clones (replica on its default clone); returns the pids."""
    records = project.records()
    assert len(records) == RECORDING
    by_pid: dict[int, str] = {}
    for seen in records:
        for alias in ("default", "analytics", "replica"):
            name = seen[alias]["name"]
            assert seen[alias]["current"] == name, seen
            short = Path(name).stem if project.url is None else name
            base = f"cdb_test_{alias}" if project.url is None else f"cdb_test_{project.name}"
            assert short.startswith(base if alias != "replica" else base.replace("replica", "default")), seen
            assert short.rsplit("_", 1)[1] in ("gw0", "gw1"), seen
        assert seen["replica"]["name"] == seen["default"]["name"]
        assert by_pid.setdefault(seen["pid"], seen["default"]["name"]) == seen["default"]["name"]
    assert len(set(by_pid.values())) == len(by_pid)  # one clone per worker process
    return set(by_pid)


def mysql_foreign_keys(url: DatabaseURL, database: str) -> int:
    connection = connect_url(url.with_database(""))
    try:
        cursor = connection.cursor()
        cursor.execute(
            "SELECT COUNT(*) FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = %s", (database,)
        )
        return int(cursor.fetchone()[0])
    finally:
        connection.close()


# -- twice on every backend and start method ----------------------------------------------------------
@pytest.mark.parametrize(
    ("backend", "start_method"),
    [
        ("sqlite", "fork"),
        pytest.param("postgresql", "fork", marks=pytest.mark.postgresql),
        pytest.param("mysql", "fork", marks=pytest.mark.mysql),
        ("sqlite", "spawn"),
        ("sqlite_file", "spawn"),
        pytest.param("postgresql", "spawn", marks=pytest.mark.postgresql),
        ("sqlite", "forkserver"),
        pytest.param("mysql", "forkserver", marks=pytest.mark.mysql),
    ],
)
def test_migrates_once_then_never(request: pytest.FixtureRequest, backend: str, start_method: str) -> None:
    """Run 1 migrates each test database once in all (not once per worker); run 2 applies
    no migration at all.  Each worker is on its own clones; nothing but templates stays."""
    project: RunnerProject = request.getfixturevalue(f"{backend}_project")
    first = project.run(SHOP_START_METHOD=start_method).ok()
    applied = project.applied()
    assert applied, first.output
    assert set(applied.values()) == {1}  # every migration once per alias, in one process
    assert {alias for alias, _ in applied} == {"default", "analytics"}
    assert project.migrate_runs() == {"default": 1, "analytics": 1}
    assert "built in" in first.stdout
    pids = assert_own_clones(project)
    assert project.clones() == []
    templates = project.templates()
    assert len(templates) == 2
    if backend == "mysql":  # the clones kept the template's foreign keys
        fks = mysql_foreign_keys(project.url, next(t for t in templates if "_analytics_" not in t))  # type: ignore[arg-type]
        assert fks > 0
        assert {r["default_fks"] for r in project.records()} == {fks}

    second = project.run("--concurrent-db-timings=timings.json", SHOP_START_METHOD=start_method).ok()
    assert project.applied() == applied
    assert project.migrate_runs() == {"default": 1, "analytics": 1}
    assert "reused (no migrations)" in second.stdout
    assert_own_clones(project)
    assert project.clones() == []
    assert project.templates() == templates
    document = json.loads((project.path / "timings.json").read_text())
    assert sorted(t["template"] for t in document["templates"]) == templates
    for template in document["templates"]:
        assert not template["built"]
        assert template["migrations"] == 0
        phases = {p["phase"]: p for p in template["phases"]}
        expected = {"fingerprint", "lock wait", "template reuse", "clone per worker", "isolation check"}
        if backend.startswith("sqlite"):
            assert set(phases) == expected | {"drop"}
            assert phases["clone per worker"]["n"] == phases["drop"]["n"] == 2
        else:  # the first run's spares were taken over; each was checked, then handed on or dropped
            assert expected | {"hand on"} <= set(phases) <= expected | {"hand on", "drop"}, second.stdout
            assert phases["clone per worker"]["n"] == phases["hand on"]["n"] == 2
    assert "concurrent-db timings" in second.stdout
    assert len(pids) >= 1
    assert not list(project.path.glob("test_*.sqlite3"))  # a file test database only names the templates


def test_pytest_and_manage_py_share_the_template(sqlite_project: RunnerProject) -> None:
    """A pytest-django run builds the templates; manage.py test reuses them (no migration)."""
    project = sqlite_project
    env = {**project.env, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    plugins = ["-p", "xdist.plugin", "-p", "pytest_django.plugin", "-p", "pytest_concurrent_db.plugin"]
    argv = [sys.executable, "-m", "pytest", *plugins, "-n", "2", "--concurrent-db", "-p", "no:randomly"]
    argv += ["--concurrent-db-timings=pytest-timings.json"]
    done = subprocess.run(argv, cwd=project.path, env=env, capture_output=True, text=True, timeout=150, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "concurrent-db timings" in done.stdout
    by_pytest = project.applied()
    assert set(by_pytest.values()) == {1}
    document = json.loads((project.path / "pytest-timings.json").read_text())
    built = [t for t in document["templates"] if t["built"]]
    assert {t["template"] for t in built} == set(project.templates())
    assert all(t["migrations"] > 0 for t in built)

    run = project.run().ok()
    assert project.applied() == by_pytest  # nothing applied by manage.py test
    for template in project.templates():
        assert f"template {template} reused (no migrations)" in run.stdout


# -- stopped runs ---------------------------------------------------------------------------------------
def _wait_for_block(project: RunnerProject, process: subprocess.Popen[str], marker: Path) -> None:
    deadline = time.monotonic() + 90
    while not list(marker.parent.glob(marker.name + ".*")):
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "the blocking test never started"
        time.sleep(0.2)


def _wait_for_group(pgid: int) -> None:
    """Until no process of the group is left (the workers end with their parent)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(pgid, signal.SIGKILL)
    pytest.fail(f"processes of group {pgid} outlived the killed run")


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def test_killed_run_is_reaped_by_the_next(request: pytest.FixtureRequest, backend: str) -> None:
    project: RunnerProject = request.getfixturevalue(f"{backend}_project")
    marker = project.path / "blocked"
    process = project.start(SHOP_BLOCK=str(marker))
    try:
        _wait_for_block(project, process, marker)
        left = project.clones()
        assert len(left) == 4  # default and analytics, two workers
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        _wait_for_group(process.pid)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
    remaining = project.clones()
    # SIGKILL dropped nothing; on a server shared with other runs (this suite under -n 2), a
    # run that starts meanwhile may already have reaped some of them: the dead run's liveness
    # locks are free, which is the point.
    assert set(remaining) <= set(left)
    if backend == "sqlite":
        assert remaining == left  # nobody else looks at the project's own directory

    run = project.run().ok()
    if remaining:
        assert "reaped" in run.stdout
    assert project.clones() == []


@pytest.mark.mysql
def test_ctrl_c_drops_the_clones(mysql_project: RunnerProject) -> None:
    """Ctrl-C (SIGINT to the terminal's process group) stops the tests, and the run drops
    its clones before it exits, while a worker still sits in a test on its clone."""
    project = mysql_project
    marker = project.path / "blocked"
    process = project.start(SHOP_BLOCK=str(marker))
    try:
        _wait_for_block(project, process, marker)
        assert len(project.clones()) == 4
        os.killpg(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert "Traceback" not in output, output
    assert project.clones() == []
    assert len(project.templates()) == 2


# -- options ----------------------------------------------------------------------------------------------
@pytest.mark.postgresql
def test_keepdb_keeps_one_marked_clone_per_database_with_parallel_1(postgresql_project: RunnerProject) -> None:
    project = postgresql_project
    run = project.run("--keepdb", "-v", "2", parallel="1").ok()
    assert ", 1 clones;" in run.stdout
    kept = [i for i in project.ours() if i.marker is not None and i.marker.kind == "clone"]
    assert len(kept) == 2
    assert {i.marker.state for i in kept if i.marker} == {"kept"}
    assert all(i.name.endswith("_gw0") for i in kept)
    assert len({r["pid"] for r in project.records()}) == 1  # the tests ran in the runner's process
    line = next(line for line in run.stdout.splitlines() if "kept 2 clones (--keepdb)" in line)
    commands = [c.split() for c in line.split("; ", 1)[1].removesuffix(" drops them").split(" && ")]
    targets = [project.url.with_database(f"test_{project.name}{s}") for s in ("", "_analytics")]  # type: ignore[union-attr]
    assert commands == [
        ["python", "-m", "pytest_concurrent_db", "prune", "--url", str(target), "--yes"] for target in targets
    ]
    for command, target in zip(commands, targets):
        argv = [sys.executable, *command[1:5], target.render(hide_password=False), "--yes"]
        pruned = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    assert project.clones() == []


def test_django_options_behave_as_with_the_stock_runner(sqlite_project: RunnerProject) -> None:
    project = sqlite_project
    project.run("--tag", "fast").ok(tests=2, skipped=0)
    project.run("-k", "test_two_databases").ok(tests=1, skipped=0)
    shuffled = project.run("--shuffle", "7").ok()
    assert "Used shuffle seed: 7 (given)" in shuffled.stdout
    # a failure in a worker process needs tblib to travel back, with Django's runner as with ours
    failed = project.run("--failfast", parallel="1", SHOP_FAIL="1")
    assert failed.returncode == 1
    assert "FAIL: test_fails" in failed.stderr
    assert f"Ran {TESTS} tests" not in failed.stderr  # stopped at the failure
    debug = project.run("--debug-sql", "-k", "test_fails", parallel="1", SHOP_FAIL="1")
    assert debug.returncode == 1
    assert "shop-fail-marker" in debug.stderr  # the failing test's SQL, printed by --debug-sql
    auto = project.run("--tag", "fast", "-v", "2", parallel="auto", SHOP_START_METHOD="forkserver")
    assert ", 2 clones;" in auto.ok(tests=2, skipped=0).stdout  # Django's own "auto" is 1 under forkserver
    assert project.clones() == []


def test_options_from_settings_and_environment(sqlite_project: RunnerProject) -> None:
    project = sqlite_project
    configured = json.dumps({"isolation": "warn", "lock_timeout": 60, "timings": True})
    run = project.run(
        "-v", "2", SHOP_CONCURRENT_DB=configured, CONCURRENT_DB_ISOLATION="strict", DJANGO_TEST_PROCESSES="2"
    )
    run.ok()
    line = next(line for line in run.stdout.splitlines() if line.startswith("concurrent-db: run "))
    assert "isolation=strict [env CONCURRENT_DB_ISOLATION]" in line  # env wins over settings
    assert "lock-timeout=60s [settings CONCURRENT_DB['lock_timeout']]" in line
    assert "timings=on [settings CONCURRENT_DB['timings']]" in line
    assert "keep=off [default]" in line
    assert "concurrent-db timings" in run.stdout

    bad = project.run(SHOP_CONCURRENT_DB=json.dumps({"url": "sqlite:///x.db"}))
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        "CommandError: concurrent-db: settings.CONCURRENT_DB has 'url', which the Django test runner does not "
        "use; its keys are keep, rebuild, lock_timeout, keep_templates, clone_strategy, spares, isolation, "
        "timings, progress, snapshot_dir, snapshot_keep, pg_bin (the databases come from DATABASES)"
    ]


# -- bad input --------------------------------------------------------------------------------------------
def test_backend_we_do_not_clone_is_one_line_naming_the_alternative(sqlite_project: RunnerProject) -> None:
    project = sqlite_project
    (project.path / "oracle_stand_in").mkdir()
    (project.path / "oracle_stand_in" / "__init__.py").write_text("")
    (project.path / "oracle_stand_in" / "base.py").write_text(textwrap.dedent(ORACLE_STAND_IN))
    run = project.run(SHOP_ENGINE="oracle_stand_in")
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.output
    assert lines[0].startswith("CommandError: concurrent-db: Django database 'default' uses oracle_stand_in (oracle);")
    assert lines[0].endswith(
        "run the tests without ConcurrentTestRunner (Django's own runner: remove TEST_RUNNER or --testrunner)"
    )
    assert not (project.path / ".pytest_cache").exists()  # nothing was made


@pytest.mark.postgresql
def test_user_without_createdb_gets_the_plugins_message(postgresql_project: RunnerProject) -> None:
    project = postgresql_project
    assert project.url is not None
    role = "cdb_t_nocreate_" + secrets.token_hex(3)
    admin = connect_url(project.url.with_database("postgres"), autocommit=True)
    try:
        admin.execute(f'CREATE ROLE "{role}" LOGIN NOCREATEDB')
        run = project.run(DJANGO_DB_USER=role)
        env = {**project.env, "DJANGO_DB_USER": role, "DJANGO_SETTINGS_MODULE": "shop.settings"}
        plugin = subprocess.run(
            [sys.executable, "-m", "pytest", "-n", "2", "--concurrent-db", "-p", "no:randomly"],
            cwd=project.path,
            env=env,
            capture_output=True,
            text=True,
            timeout=150,
            check=False,
        )
    finally:
        admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        admin.close()
    assert run.returncode == 1
    (line,) = run.stderr.strip().splitlines()
    message = line.removeprefix("CommandError: ")
    assert "CREATEDB" in message
    assert message.endswith("(the server of Django's DATABASES['default'])")
    assert f"ERROR: {message}" in plugin.stderr.splitlines(), plugin.stdout + plugin.stderr


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def test_broken_migration_is_djangos_error_and_leaves_nothing(request: pytest.FixtureRequest, backend: str) -> None:
    project: RunnerProject = request.getfixturevalue(f"{backend}_project")
    (project.path / "catalog" / "migrations" / "0003_broken.py").write_text(textwrap.dedent(BROKEN_MIGRATION))
    run = project.run()
    assert run.returncode == 1
    assert "Traceback" in run.stderr
    assert run.stderr.strip().endswith("RuntimeError: this data migration is broken")
    assert project.ours() == []
    if backend == "sqlite":
        cache = project.path / ".pytest_cache" / "d" / "concurrent_db"
        assert sorted(p.name for p in cache.rglob("*.db*")) == []
