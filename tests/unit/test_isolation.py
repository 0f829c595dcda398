"""The isolation check against the real SQLite backend: a template, a clone, real connections."""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_concurrent_db.backends.base import Marker
from pytest_concurrent_db.backends.sqlite import SQLiteBackend
from pytest_concurrent_db.isolation import Finding, IsolationChecker
from pytest_concurrent_db.naming import clone_name, template_name
from pytest_concurrent_db.url import parse_url

RUN = "1f2e3d4c"
WORKER = "gw0"
FINGERPRINT = "0123456789abcdef" * 4
MODES = ["strict", "default", "warn", "off"]
AUDIT = '"audit ""log"""'  # a table name that needs quoting
SCHEMA = (
    "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);\n"
    f"CREATE TABLE {AUDIT} (entry TEXT);\n"
    "CREATE TABLE empty (x INTEGER);\n"
    "INSERT INTO items (name) VALUES ('seed');\n"
)


@dataclass
class World:
    backend: SQLiteBackend
    template: str
    clone: str
    tmp_path: Path

    def checker(self, mode: str) -> IsolationChecker:
        return IsolationChecker(
            backend=self.backend,
            clone=self.clone,
            template=self.template,
            run_id=RUN,
            worker_id=WORKER,
            fingerprint=FINGERPRINT,
            mode=mode,
        )

    def template_marker(self, **changes: str) -> Marker:
        """The template's marker (as built), with ``changes``."""
        current = self.backend.get_marker(self.template)
        assert current is not None
        return dataclasses.replace(current, **changes)


@pytest.fixture(scope="module")
def built_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ready template, built once per module the way the engine builds it: create, connect, run_script,
    set_marker.  Each test gets its own copy of the directory, so tests may tamper with it."""
    root = tmp_path_factory.mktemp("isolation")
    backend = SQLiteBackend(parse_url("sqlite:///app.db"), template_dir=root / "templates", clone_dir=root / "unused")
    backend.preflight()
    template = template_name("app", FINGERPRINT)
    marker = {"kind": "template", "run_id": RUN, "worker_id": WORKER, "template": template, "fingerprint": FINGERPRINT}
    backend.create(template, Marker(**marker, state="building"))  # type: ignore[arg-type]
    with closing(backend.connect(template)) as conn:
        backend.run_script(conn, SCHEMA, "schema.sql")
    backend.set_marker(template, Marker(**marker, state="ready"))  # type: ignore[arg-type]
    backend.close()
    assert (root / "templates" / f"{template}.db").is_file()
    return root / "templates"


@pytest.fixture
def world(tmp_path: Path, built_template: Path) -> Iterator[World]:
    shutil.copytree(built_template, tmp_path / "templates")
    backend = SQLiteBackend(
        parse_url(f"sqlite:///{tmp_path / 'app.db'}"),
        template_dir=tmp_path / "templates",
        clone_dir=tmp_path / "clones",
    )
    world = World(backend, template_name("app", FINGERPRINT), clone_name("app", RUN, WORKER), tmp_path)
    assert backend.get_marker(world.template) == world.template_marker()
    backend.clone(
        world.template, world.clone, Marker(kind="clone", run_id=RUN, worker_id=WORKER, template=world.template)
    )
    yield world
    backend.close()


@pytest.fixture
def conn(world: World) -> Iterator[sqlite3.Connection]:
    """A connection on the clone, as a worker's tests would use it."""
    with closing(world.backend.connect(world.clone)) as connection:
        yield connection


def pristine_checker(world: World, mode: str) -> IsolationChecker:
    """A checker whose baseline is taken now, on a connection of its own, as the plugin does after cloning."""
    checker = world.checker(mode)
    with closing(world.backend.connect(world.clone)) as pristine:
        checker.baseline(pristine)
    return checker


def check(world: World, mode: str, connection: sqlite3.Connection, *, baseline: bool = True) -> list[Finding]:
    """Check ``connection`` (the baseline, when taken, is the clone's state at this point)."""
    checker = pristine_checker(world, mode) if baseline else world.checker(mode)
    return checker.check(connection)


def severities(findings: list[Finding]) -> list[str]:
    return [f.severity for f in findings]


def test_the_world_is_real(world: World, conn: sqlite3.Connection) -> None:
    assert (world.tmp_path / "templates" / f"{world.template}.db").is_file()
    assert (world.tmp_path / "clones" / f"{world.clone}.db").is_file()
    assert world.backend.current_database(conn) == world.clone
    assert conn.execute("SELECT name FROM items").fetchall() == [("seed",)]


# -- a clean connection --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_clean_connection_passes(world: World, conn: sqlite3.Connection, mode: str) -> None:
    conn.execute("SELECT * FROM items").fetchall()
    assert check(world, mode, conn) == []


@pytest.mark.parametrize("mode", MODES)
def test_rolled_back_changes_pass(world: World, conn: sqlite3.Connection, mode: str) -> None:
    conn.execute("INSERT INTO items (name) VALUES ('temp')")
    conn.rollback()
    assert check(world, mode, conn) == []


def test_checks_are_repeatable(world: World, conn: sqlite3.Connection) -> None:
    checker = world.checker("strict")
    checker.baseline(conn)
    assert [checker.check(conn) for _ in range(3)] == [[], [], []]


# -- a transaction left open ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "expected"), [("strict", ["error"]), ("default", ["warning"]), ("warn", ["warning"])])
def test_open_transaction(world: World, conn: sqlite3.Connection, mode: str, expected: list[str]) -> None:
    conn.execute("INSERT INTO items (name) VALUES ('uncommitted')")
    assert conn.in_transaction
    findings = check(world, mode, conn)
    assert severities(findings) == expected
    assert findings[0].message == "the test left a transaction open on the connection (rolled back)"
    assert not conn.in_transaction
    assert conn.execute("SELECT COUNT(*) FROM items").fetchone() == (1,)


def test_open_transaction_is_ignored_when_off(world: World, conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO items (name) VALUES ('uncommitted')")
    assert check(world, "off", conn) == []


# -- the connection is on the template (or elsewhere) --------------------------------------------------------


@pytest.mark.parametrize(("mode", "severity"), [("strict", "error"), ("default", "error"), ("warn", "warning")])
def test_connection_on_the_template(world: World, mode: str, severity: str) -> None:
    with closing(world.backend.connect(world.template)) as on_template:
        findings = check(world, mode, on_template)
    assert findings == [
        Finding(severity, f"the connection is on the template, not on this worker's clone {world.clone!r}")  # type: ignore[arg-type]
    ]


def test_connection_on_another_database(world: World) -> None:
    other = world.tmp_path / "elsewhere.db"
    with closing(sqlite3.connect(other)) as elsewhere:
        findings = check(world, "default", elsewhere)
    assert severities(findings) == ["error"]
    assert f"the connection is on database {str(other)!r}" in findings[0].message
    assert world.clone in findings[0].message


def test_connection_on_the_template_with_open_transaction(world: World) -> None:
    with closing(world.backend.connect(world.template)) as on_template:
        on_template.execute("SELECT 1")
        on_template.execute("DELETE FROM empty")
        default = check(world, "default", on_template)
    assert severities(default) == ["error", "warning"]
    assert "the template" in default[0].message
    assert "transaction" in default[1].message


def test_connection_on_the_template_when_off(world: World) -> None:
    with closing(world.backend.connect(world.template)) as on_template:
        assert check(world, "off", on_template) == []


# -- the clone or the template was tampered with -------------------------------------------------------------


@pytest.mark.parametrize(("mode", "severity"), [("strict", "error"), ("default", "error"), ("warn", "warning")])
def test_clone_marked_for_another_worker(world: World, conn: sqlite3.Connection, mode: str, severity: str) -> None:
    world.backend.set_marker(world.clone, Marker(kind="clone", run_id="99999999", worker_id="gw7", template="x"))
    assert check(world, mode, conn) == [
        Finding(severity, f"clone {world.clone!r} is marked as belonging to run 99999999 worker gw7")  # type: ignore[arg-type]
    ]


def test_clone_without_marker(world: World, conn: sqlite3.Connection) -> None:
    world.backend.drop(world.clone)  # the open connection keeps reading the unlinked file
    assert world.backend.get_marker(world.clone) is None
    assert check(world, "default", conn, baseline=False) == [
        Finding("error", f"clone {world.clone!r} is marked as belonging to nobody (marker missing)")
    ]


@pytest.mark.parametrize(
    "tamper",
    ["fingerprint", "state", "removed"],
)
def test_template_changed_during_the_run(world: World, conn: sqlite3.Connection, tamper: str) -> None:
    if tamper == "removed":
        world.backend.drop(world.template)
    elif tamper == "fingerprint":
        world.backend.set_marker(world.template, world.template_marker(fingerprint="f" * 64))
    else:
        world.backend.set_marker(world.template, world.template_marker(state="building"))
    expected = f"template {world.template!r} was changed or removed during the run"
    assert check(world, "default", conn, baseline=False) == [Finding("error", expected)]
    assert check(world, "warn", conn, baseline=False) == [Finding("warning", expected)]
    assert check(world, "off", conn, baseline=False) == []


# -- strict: committed rows leaking into later tests ---------------------------------------------------------


def test_strict_reports_leaked_rows_naming_the_table(world: World, conn: sqlite3.Connection) -> None:
    checker = pristine_checker(world, "strict")
    conn.execute("INSERT INTO items (name) VALUES ('leaked')")
    conn.commit()
    assert checker.check(conn) == [
        Finding("error", "committed rows leaked into later tests: items (1 -> 2)"),
    ]


def test_strict_reports_every_changed_table_sorted(world: World, conn: sqlite3.Connection) -> None:
    checker = pristine_checker(world, "strict")
    conn.execute("DELETE FROM items")
    conn.execute(f"INSERT INTO {AUDIT} VALUES ('a'), ('b')")
    conn.execute("CREATE TABLE created_by_test (x)")
    conn.execute("INSERT INTO created_by_test VALUES (1)")
    conn.commit()
    assert checker.check(conn) == [
        Finding(
            "error",
            'committed rows leaked into later tests: audit "log" (0 -> 2), created_by_test (0 -> 1), items (1 -> 0)',
        ),
    ]


def test_strict_compares_against_the_pristine_clone(world: World, conn: sqlite3.Connection) -> None:
    checker = world.checker("strict")
    checker.baseline(conn)
    conn.execute("INSERT INTO items (name) VALUES ('x')")
    conn.commit()
    assert severities(checker.check(conn)) == ["error"]
    conn.execute("DELETE FROM items WHERE name = 'x'")
    conn.commit()
    assert checker.check(conn) == []


def test_strict_open_transaction_is_not_a_leak(world: World, conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO items (name) VALUES ('uncommitted')")
    findings = check(world, "strict", conn)
    assert [f.message for f in findings] == ["the test left a transaction open on the connection (rolled back)"]


@pytest.mark.parametrize("mode", ["default", "warn", "off"])
def test_row_counts_are_only_checked_in_strict(world: World, conn: sqlite3.Connection, mode: str) -> None:
    checker = pristine_checker(world, mode)
    conn.execute("INSERT INTO items (name) VALUES ('leaked')")
    conn.commit()
    assert checker.check(conn) == []


def test_strict_skips_row_counts_when_the_connection_is_shared(world: World) -> None:
    with closing(world.backend.connect(world.template)) as on_template:
        findings = check(world, "strict", on_template)
    assert len(findings) == 1
    assert "the template" in findings[0].message


def test_baseline_only_in_strict(world: World, conn: sqlite3.Connection) -> None:
    for mode in ("default", "warn", "off"):
        checker = world.checker(mode)
        checker.baseline(conn)
        assert checker._baseline is None
    checker = world.checker("strict")
    checker.baseline(conn)
    assert checker._baseline == {"items": 1, 'audit "log"': 0, "empty": 0}
    assert not conn.in_transaction


# -- warn turns errors into warnings -------------------------------------------------------------------------


def test_warn_mode_only_warns_even_when_everything_is_wrong(world: World) -> None:
    world.backend.set_marker(world.template, world.template_marker(fingerprint="0" * 64))
    world.backend.set_marker(world.clone, Marker(kind="clone", run_id=RUN, worker_id="gw1"))
    with closing(world.backend.connect(world.template)) as on_template:
        on_template.execute("DELETE FROM empty")
        warned = check(world, "warn", on_template, baseline=False)
        on_template.execute("DELETE FROM empty")
        failed = check(world, "default", on_template, baseline=False)
        on_template.execute("DELETE FROM empty")
        assert check(world, "off", on_template, baseline=False) == []
    assert severities(warned) == ["warning"] * 4
    assert severities(failed) == ["error", "error", "error", "warning"]
    assert [f.message for f in warned] == [f.message for f in failed]
