"""The public API without pytest: get_database_url, build_template, worker_database,
clone_many and verify_isolation, against real databases on every backend.

Each test gets a base name of its own (``api<hex>``), so its databases are
``cdb_api<hex>_…``; SQLite keeps them under the test's ``tmp_path``.  After each test no
clone of that base is left (checked in the ``target`` fixture's teardown); templates
may stay, and are dropped there too.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import secrets
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from pytest_concurrent_db import (
    ClonePool,
    ConcurrentDatabase,
    ConcurrentDBError,
    ConfigError,
    IsolationError,
    IsolationFailure,
    IsolationReport,
    ScriptError,
    Template,
    build_template,
    clone_many,
    get_database_url,
    verify_isolation,
    worker_database,
)
from pytest_concurrent_db.backends import load_backend
from pytest_concurrent_db.url import DatabaseURL
from tests.conftest import dead_undroppable_mysql_database, drop_ours

#: every backend in turn, server ones marked like the backend test modules
ALL_BACKENDS = pytest.mark.parametrize(
    "backend_url",
    [
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgresql),
        pytest.param("mysql", id="mysql", marks=pytest.mark.mysql),
    ],
    indirect=True,
)
SQLITE_ONLY = pytest.mark.parametrize("backend_url", ["sqlite"], indirect=True)

#: one small schema every backend accepts
SCHEMA = """\
CREATE TABLE item (id INTEGER PRIMARY KEY, label VARCHAR(50) NOT NULL);
INSERT INTO item (id, label) VALUES (1, 'one'), (2, 'two');
"""
PRISTINE = [(1, "one"), (2, "two")]
PARAM = {"sqlite": "?", "postgresql": "%s", "mysql": "%s"}
TABLES = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table'",
    "postgresql": "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
    "mysql": "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()",
}
PROBE_TABLE = "cdb_isolation_probe"
BACKEND_CLASSES = {
    "sqlite": ("pytest_concurrent_db.backends.sqlite", "SQLiteBackend"),
    "postgresql": ("pytest_concurrent_db.backends.postgresql", "PostgreSQLBackend"),
    "mysql": ("pytest_concurrent_db.backends.mysql", "MySQLBackend"),
}


# -- populate callables: module-level functions, their source is part of the fingerprint --
def add_extra(connection: Any) -> None:
    """A table of its own; no commit (build_template commits)."""
    cursor = connection.cursor()
    cursor.execute("CREATE TABLE extra (n INTEGER NOT NULL)")
    cursor.execute("INSERT INTO extra (n) VALUES (42)")
    cursor.close()


def add_three(connection: Any) -> None:
    """Needs the ``item`` table of SCHEMA: proves the populators run in order."""
    cursor = connection.cursor()
    cursor.execute("INSERT INTO item (id, label) VALUES (3, 'three')")
    cursor.close()


#: one line per build by ``populate_slowly_here`` (the threads test)
THREAD_BUILDS: list[str] = []


def populate_slowly_here(connection: Any) -> None:
    """Slow enough that a second thread arrives while the first one builds."""
    time.sleep(0.5)
    THREAD_BUILDS.append(threading.current_thread().name)


# -- helpers ------------------------------------------------------------------------------
def run(db: ConcurrentDatabase, statement: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
    """Execute ``statement`` on a new connection to ``db``, commit, close; the rows it returned."""
    connection = db.connect()
    try:
        cursor = connection.cursor()
        if params is None:
            cursor.execute(statement)
        else:
            cursor.execute(statement, params)
        rows = [tuple(row) for row in cursor.fetchall()] if cursor.description else []
        cursor.close()
        connection.commit()
        return rows
    finally:
        connection.close()


def items(db: ConcurrentDatabase) -> list[tuple[Any, ...]]:
    return run(db, "SELECT id, label FROM item ORDER BY id")


def tables(db: ConcurrentDatabase) -> set[str]:
    return {str(row[0]) for row in run(db, TABLES[db.backend])}


def other_sessions(target: Target, db: ConcurrentDatabase) -> list[str]:
    """Sessions on ``db`` other than the one this opens to ask."""
    backend = target._backend()
    connection = db.connect()
    try:
        return list(backend.other_sessions(db.name, connection))
    finally:
        connection.close()
        backend.close()


def one_line_config_error(excinfo: pytest.ExceptionInfo[ConfigError]) -> str:
    message = str(excinfo.value)
    assert message.startswith("concurrent-db: "), message
    assert "\n" not in message, message
    return message


@dataclass
class Target:
    """One backend, with a database name unique to the test (never created by us)."""

    backend: str
    parsed: DatabaseURL
    base: str
    #: the ``directory`` passed to build_template (SQLite templates, clones, file locks)
    directory: Path
    root: Path

    @property
    def url(self) -> str:
        return self.parsed.render(hide_password=False)

    @property
    def prefix(self) -> str:
        return f"cdb_{self.base}_"

    def schema(self, text: str = SCHEMA, name: str = "schema.sql") -> Path:
        path = self.root / name
        path.write_text(text, encoding="utf-8")
        return path

    def build(self, populate: Any = None, **kwargs: Any) -> Template:
        kwargs.setdefault("directory", self.directory)
        return build_template(self.url, populate, **kwargs)

    def _backend(self) -> Any:
        return load_backend(self.parsed, template_dir=self.directory, clone_dir=self.directory)

    def ours(self) -> set[str]:
        """Our databases of this base name on the server, or SQLite files anywhere under tmp_path."""
        backend = self._backend()
        try:
            names = {info.name for info in backend.list_databases(self.prefix)}
        finally:
            backend.close()
        if self.backend == "sqlite":
            names |= {path.name.split(".", 1)[0] for path in self.root.rglob(f"{self.prefix}*.db")}
        return names

    def clones(self) -> set[str]:
        return {name for name in self.ours() if "_tpl_" not in name}

    def drop_all(self) -> None:
        drop_ours(self._backend(), self.prefix)


@pytest.fixture
def target(backend_url: DatabaseURL, tmp_path: Path) -> Iterator[Target]:
    """A backend and a base name of the test's own; fails the test if it leaves a clone behind."""
    base = "api" + secrets.token_hex(3)
    if backend_url.backend == "sqlite":
        parsed = backend_url.with_database(str(tmp_path / f"{base}.db"))
    else:
        parsed = backend_url.with_database(base)
    target = Target(backend_url.backend, parsed, base, tmp_path / "cdb", tmp_path)
    yield target
    left = target.clones()
    target.drop_all()
    assert not left, f"clones left behind: {sorted(left)}"
    if target.backend == "sqlite":
        assert not Path(parsed.database).exists(), "the URL's own SQLite file was created"


# -- get_database_url ---------------------------------------------------------------------
def test_get_database_url_explicit_then_environment_then_sqlite_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CONCURRENT_DB_URL", raising=False)
    assert get_database_url() == "sqlite:///test.db"
    assert get_database_url(None) == "sqlite:///test.db"
    monkeypatch.setenv("CONCURRENT_DB_URL", "postgresql://postgres@127.0.0.1:5432/app")
    assert get_database_url() == "postgresql://postgres@127.0.0.1:5432/app"
    assert get_database_url("mysql://root@127.0.0.1:3306/app") == "mysql://root@127.0.0.1:3306/app"
    assert not (tmp_path / "test.db").exists()


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("nope", "malformed database URL"),
        ("oracle://u:secret@h/db", "unknown database URL scheme 'oracle'"),
        ("sqlite:///:memory:", "memory"),
    ],
)
def test_get_database_url_rejects_bad_urls(url: str, fragment: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONCURRENT_DB_URL", raising=False)
    with pytest.raises(ConfigError) as excinfo:
        get_database_url(url)
    message = one_line_config_error(excinfo)
    assert fragment in message
    assert "secret" not in message
    monkeypatch.setenv("CONCURRENT_DB_URL", url)  # the same from the environment
    with pytest.raises(ConfigError) as excinfo:
        get_database_url()
    assert "secret" not in one_line_config_error(excinfo)


def test_in_memory_sqlite_cannot_build_a_template(tmp_path: Path) -> None:
    schema = tmp_path / "schema.sql"
    schema.write_text(SCHEMA, encoding="utf-8")
    with pytest.raises(ConfigError) as excinfo:
        build_template("sqlite:///:memory:", schema, directory=tmp_path / "cdb")
    assert "memory" in one_line_config_error(excinfo)


def test_sqlite_default_url_and_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No URL, no directory: ``sqlite:///test.db`` names templates and clones under
    ./.pytest_cache/d/concurrent_db; test.db itself is never created."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CONCURRENT_DB_URL", raising=False)
    (tmp_path / "schema.sql").write_text(SCHEMA, encoding="utf-8")
    template = build_template(populate="schema.sql")
    assert template.backend == "sqlite"
    assert template.name.startswith("cdb_test_tpl_")
    assert template.url.startswith("sqlite:///")
    cache = tmp_path / ".pytest_cache" / "d" / "concurrent_db"
    assert (cache / f"{template.name}.db").is_file()
    with worker_database(template) as db:
        assert items(db) == PRISTINE
        name = db.name
    assert not (tmp_path / "test.db").exists()
    assert not [p for p in tmp_path.rglob(f"{name}*") if p.suffix in (".db", ".json")]


# -- worker_database --------------------------------------------------------------------------
@ALL_BACKENDS
def test_worker_database_is_a_copy_dropped_on_exit(target: Target) -> None:
    template = target.build(target.schema())
    with worker_database(template) as first, worker_database(template, "other") as second:
        for db in (first, second):
            assert isinstance(db, ConcurrentDatabase)
            assert db.backend == target.backend == template.backend
            assert db.template_name == template.name
            assert db.name.startswith(target.prefix)
            assert db.name != template.name
        assert first.worker_id == "main"
        assert second.worker_id == "other"
        assert first.name != second.name
        assert {first.name, second.name} <= target.clones()
        assert items(first) == PRISTINE
        p = PARAM[target.backend]
        run(first, f"INSERT INTO item (id, label) VALUES ({p}, {p})", (3, "three"))
        run(first, "UPDATE item SET label = 'changed' WHERE id = 1")
        assert items(first) == [(1, "changed"), (2, "two"), (3, "three")]
        assert items(second) == PRISTINE  # a concurrent clone does not see it
        names = {first.name, second.name}
    assert not names & target.ours()
    with worker_database(template) as third:  # nor does the template
        assert items(third) == PRISTINE
    assert not target.clones()


@pytest.mark.parametrize(
    "backend_url",
    [
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgresql),
        pytest.param("mysql", id="mysql", marks=pytest.mark.mysql),
    ],
    indirect=True,
)
def test_worker_database_spares_are_taken_over_by_the_next_call(target: Target) -> None:
    """Off by default; with ``spares=1`` the exit leaves a pristine spare for the same worker id,
    which the next call takes over instead of copying (and it holds the template's rows)."""

    def spares() -> set[str]:
        return {n for n in target.ours() if "_sp" in n}

    template = target.build(target.schema())
    with worker_database(template, "job") as db:
        run(db, "DELETE FROM item")
    assert spares() == set()  # default: none
    with worker_database(template, "job", spares=1) as first:
        assert "_sp" not in first.name
        run(first, "DELETE FROM item")
    made = spares()
    assert len(made) == 1
    with worker_database(template, "other", spares=1) as stranger:
        assert stranger.name not in made  # another worker id's spare is not taken
    assert spares() >= made
    with worker_database(template, "job", spares=1) as second:
        assert second.name in made  # taken over: no copy
        assert items(second) == PRISTINE  # only read: handed on at the exit
    left = spares()
    assert len(left) == 2  # the next ones: for "job" the same database, handed on; for "other" a copy
    assert made <= left
    with worker_database(template, "job", spares=1) as third:
        assert third.name in made  # the same database once more
        assert items(third) == PRISTINE
        run(third, "DELETE FROM item")  # changed: dropped at the exit, not handed on
    left = spares()
    assert len(left) == 1  # "other"'s
    assert not left & made
    backend = target._backend()
    try:
        for name in left:
            backend.drop(name)
    finally:
        backend.close()
    with pytest.raises(ConfigError, match="spares must be"), worker_database(template, "job", spares=-1):
        pass


@ALL_BACKENDS
def test_worker_database_dropped_when_the_body_raises(target: Target) -> None:
    template = target.build(target.schema())
    boom = RuntimeError("boom")
    seen: list[str] = []

    def body() -> None:
        with worker_database(template, "gw7") as db:
            seen.append(db.name)
            assert db.worker_id == "gw7"
            assert db.name in target.clones()
            raise boom

    with pytest.raises(RuntimeError) as excinfo:
        body()
    assert excinfo.value is boom
    assert seen
    assert seen[0] not in target.ours()


# -- build_template ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend_url", [pytest.param("mysql", id="mysql", marks=pytest.mark.mysql)], indirect=True)
@pytest.mark.usefixtures("server_wide_prune_lock")
def test_build_template_warns_of_a_dead_database_it_cannot_drop(target: Target) -> None:
    """build_template reaps dead runs' databases first; one the server cannot drop is named
    in a RuntimeWarning (there is no pytest summary to show it), and the build goes on."""
    stuck = f"{target.prefix}gw7"
    backend = target._backend()
    stray: Path | None = None
    try:
        stray = dead_undroppable_mysql_database(backend, stuck, f"{target.prefix}tpl_0123456789ab")
        with pytest.warns(RuntimeWarning, match=rf"pytest-concurrent-db: not dropped: {stuck}: cannot drop MySQL"):
            template = target.build(target.schema())
        with worker_database(template) as db:
            assert items(db) == PRISTINE
        assert stuck in target.ours()
        stray.unlink()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing left that it cannot drop: no warning
            target.build(target.schema())
        assert stuck not in target.ours()
    finally:
        if stray is not None and stray.exists():
            stray.unlink()
        backend.close()


@ALL_BACKENDS
def test_build_template_reuses_and_rebuilds(target: Target) -> None:
    schema = target.schema()
    first = target.build(schema)
    assert isinstance(first, Template)
    assert first.built is True
    assert first.backend == target.backend
    assert first.name.startswith(f"{target.prefix}tpl_")
    assert first.fingerprint
    assert all(c in "0123456789abcdef" for c in first.fingerprint)
    assert first.build_id
    assert first.build_seconds > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.name = "other"  # type: ignore[misc]

    again = target.build(schema)
    assert again.built is False
    assert (again.name, again.build_id, again.fingerprint, again.url) == (
        first.name,
        first.build_id,
        first.fingerprint,
        first.url,
    )

    rebuilt = target.build(schema, rebuild=True)
    assert rebuilt.built is True
    assert rebuilt.name == first.name
    assert rebuilt.fingerprint == first.fingerprint
    assert rebuilt.build_id != first.build_id

    after = target.build(schema)
    assert after.built is False
    assert after.build_id == rebuilt.build_id
    with worker_database(after) as db:
        assert items(db) == PRISTINE
    assert target.ours() == {first.name}  # one template, no clone


@ALL_BACKENDS
def test_changed_schema_file_gives_a_new_template(target: Target) -> None:
    schema = target.schema()
    old = target.build(schema)
    schema.write_text(SCHEMA + "INSERT INTO item (id, label) VALUES (3, 'three');\n", encoding="utf-8")
    new = target.build(schema)
    assert new.built is True
    assert new.name != old.name
    assert new.fingerprint != old.fingerprint
    with worker_database(new) as db:
        assert items(db) == [*PRISTINE, (3, "three")]
    with worker_database(old) as db:  # the out-of-date one is kept (keep_templates=2)
        assert items(db) == PRISTINE


@ALL_BACKENDS
def test_populate_with_a_callable_and_a_mixed_list(target: Target) -> None:
    only_callable = target.build(add_extra)
    assert only_callable.built is True
    with worker_database(only_callable) as db:
        assert run(db, "SELECT n FROM extra") == [(42,)]
        assert "item" not in tables(db)

    mixed = target.build([str(target.schema()), add_three, add_extra])  # a str path, then callables
    assert mixed.built is True
    assert mixed.name != only_callable.name
    with worker_database(mixed) as db:
        assert items(db) == [*PRISTINE, (3, "three")]
        assert run(db, "SELECT n FROM extra") == [(42,)]
    assert target.build([str(target.schema()), add_three, add_extra]).built is False


@ALL_BACKENDS
def test_key_is_part_of_the_fingerprint(target: Target) -> None:
    schema = target.schema()
    plain = target.build(schema)
    v1 = target.build(schema, key=("v1",))
    v2 = target.build(schema, key=["v2"])
    assert v1.built is True
    assert v2.built is True
    assert len({plain.fingerprint, v1.fingerprint, v2.fingerprint}) == 3
    assert len({plain.name, v1.name, v2.name}) == 3
    again = target.build(schema, key=("v1",))
    assert again.built is False
    assert again.name == v1.name


@ALL_BACKENDS
def test_failing_sql_file_is_a_script_error_and_leaves_no_template(target: Target) -> None:
    schema = target.schema(
        "CREATE TABLE item (id INTEGER PRIMARY KEY);\n\nINSERT INTO no_such_table (id) VALUES (1);\n",
        name="broken.sql",
    )
    with pytest.raises(ScriptError) as excinfo:
        target.build(schema)
    assert "broken.sql" in excinfo.value.source
    assert excinfo.value.line == 3
    assert "broken.sql" in str(excinfo.value)
    assert not target.ours()


@ALL_BACKENDS
def test_missing_sql_file_is_a_config_error(target: Target) -> None:
    missing = target.root / "missing.sql"
    with pytest.raises(ConfigError) as excinfo:
        target.build(missing)
    assert "missing.sql" in one_line_config_error(excinfo)
    with pytest.raises(ConfigError):
        target.build([str(missing), add_extra])
    assert not target.ours()


SLOW_POPULATE = """\
import os
import time


def populate_slowly(connection):
    time.sleep(1.0)
    with open(os.environ["CDB_BUILD_COUNTER"], "a", encoding="utf-8") as counter:
        counter.write(f"{os.getpid()}\\n")
"""

RACER = """\
import pathlib, sys, time
from cdb_slow_populate import populate_slowly
from pytest_concurrent_db import build_template

url, schema, directory, ready, start = sys.argv[1:6]
pathlib.Path(ready).touch()
deadline = time.monotonic() + 60
while not pathlib.Path(start).exists():
    if time.monotonic() > deadline:
        sys.exit("the start file never appeared")
    time.sleep(0.002)
template = build_template(url, [schema, populate_slowly], directory=directory, lock_timeout=120)
print(f"built={template.built} name={template.name} build_id={template.build_id}")
"""


def _load_populate_slowly(path: Path) -> Callable[[Any], None]:
    """The same function, by the same source, as the subprocesses import."""
    spec = importlib.util.spec_from_file_location("cdb_slow_populate", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.populate_slowly  # type: ignore[no-any-return]


@ALL_BACKENDS
def test_build_template_from_two_processes_at_once_builds_once(target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    schema = target.schema()
    module = target.root / "cdb_slow_populate.py"
    module.write_text(SLOW_POPULATE, encoding="utf-8")
    counter = target.root / "builds.txt"
    start = target.root / "start"
    monkeypatch.setenv("CDB_BUILD_COUNTER", str(counter))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                RACER,
                target.url,
                str(schema),
                str(target.directory),
                str(target.root / f"ready{i}"),
                str(start),
            ],
            cwd=target.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        deadline = time.monotonic() + 60
        while not all((target.root / f"ready{i}").exists() for i in range(2)):
            assert time.monotonic() < deadline, "the subprocesses did not start"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.01)
        start.touch()  # both go at once
        outputs = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    lines = [out.strip().splitlines()[-1] for out, _ in outputs]
    fields = [dict(part.split("=", 1) for part in line.split()) for line in lines]
    assert sorted(f["built"] for f in fields) == ["False", "True"], lines
    assert fields[0]["name"] == fields[1]["name"], lines
    assert fields[0]["build_id"] == fields[1]["build_id"], lines
    assert len(counter.read_text(encoding="utf-8").splitlines()) == 1

    # and this process, with the same inputs, reuses it too
    reused = target.build([schema, _load_populate_slowly(module)])
    assert reused.built is False
    assert reused.name == fields[0]["name"]
    assert len(counter.read_text(encoding="utf-8").splitlines()) == 1


@ALL_BACKENDS
def test_build_template_from_two_threads_at_once_builds_once(target: Target) -> None:
    schema = target.schema()
    THREAD_BUILDS.clear()
    barrier = threading.Barrier(2)

    def build() -> Template:
        barrier.wait(timeout=30)
        return target.build([schema, populate_slowly_here], lock_timeout=60)

    threads = ThreadPoolExecutor(max_workers=2)
    try:
        results = [f.result(timeout=120) for f in [threads.submit(build) for _ in range(2)]]
    finally:
        threads.shutdown(wait=True)
    assert sorted(t.built for t in results) == [False, True]
    assert results[0].name == results[1].name
    assert results[0].build_id == results[1].build_id
    assert len(THREAD_BUILDS) == 1


# -- clone_many -----------------------------------------------------------------------------------
@ALL_BACKENDS
def test_clone_many_makes_distinct_clones_and_drops_them(target: Target) -> None:
    template = target.build(target.schema())
    with clone_many(template, 3) as pool:
        assert isinstance(pool, ClonePool)
        assert len(pool) == 3
        handles = list(pool)
        assert [pool[0], pool[1], pool[2]] == handles
        assert pool[-1] == handles[2]
        names = {db.name for db in handles}
        assert len(names) == 3
        assert len({db.worker_id for db in handles}) == 3
        assert names == target.clones()
        p = PARAM[target.backend]
        for db in handles:
            assert db.template_name == template.name
            assert items(db) == PRISTINE
            run(db, f"INSERT INTO item (id, label) VALUES ({p}, {p})", (10, db.worker_id))
        for db in handles:
            assert items(db) == [*PRISTINE, (10, db.worker_id)]
    assert not target.clones()
    pool.drop()  # idempotent, also after the with block


@ALL_BACKENDS
def test_clone_pool_drop_is_idempotent(target: Target) -> None:
    template = target.build(target.schema())
    pool = clone_many(template, 2)
    names = {db.name for db in pool}
    assert names == target.clones()
    pool.drop()
    assert not target.clones()
    pool.drop()
    with pool:  # exiting after a drop is fine too
        pass
    assert not target.clones()


@pytest.mark.parametrize("n", [0, -1])
@SQLITE_ONLY
def test_clone_many_needs_at_least_one(target: Target, n: int) -> None:
    template = target.build(target.schema())
    with pytest.raises(ConfigError) as excinfo:
        clone_many(template, n)
    one_line_config_error(excinfo)


@ALL_BACKENDS
def test_clone_many_is_all_or_nothing(target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    """The third clone fails once the other two are made: they are dropped, and the error
    names the failing clone and chains the original error."""
    template = target.build(target.schema())
    module, class_name = BACKEND_CLASSES[target.backend]
    backend_class = getattr(importlib.import_module(module), class_name)
    original = backend_class.clone
    lock = threading.Lock()
    started: list[str] = []
    finished: list[str] = []
    injected: list[BaseException] = []

    def clone(self: Any, template: str, name: str, marker: Any) -> None:
        with lock:
            started.append(name)
            fail = len(started) == 3
        if not fail:
            original(self, template, name, marker)
            with lock:
                finished.append(name)
            return
        deadline = time.monotonic() + 30
        while len(finished) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        error = RuntimeError(f"injected failure while cloning {name}")
        injected.append(error)
        raise error

    monkeypatch.setattr(backend_class, "clone", clone)
    with pytest.raises(ConcurrentDBError) as excinfo:
        clone_many(template, 3)
    monkeypatch.undo()
    assert len(started) == 3
    assert len(finished) == 2  # two clones were made before the failure
    failing = started[2]
    assert failing in str(excinfo.value)
    assert excinfo.value.__cause__ is injected[0]
    assert not target.clones()  # the two made are gone, and the failed one never existed


# -- verify_isolation -----------------------------------------------------------------------------
@ALL_BACKENDS
def test_verify_isolation_passes_on_distinct_clones(target: Target) -> None:
    template = target.build(target.schema())
    with clone_many(template, 3) as pool:
        report = verify_isolation(pool)
        assert isinstance(report, IsolationReport)
        assert report.ok is True
        assert report.failures == ()
        assert sorted(report.databases) == sorted(db.name for db in pool)
        for db in pool:
            assert PROBE_TABLE not in tables(db)
            assert items(db) == PRISTINE
            assert other_sessions(target, db) == []  # its probe connections are closed
        quiet = verify_isolation((db for db in pool), raise_on_failure=False)  # any iterable
        assert quiet.ok is True
        with pytest.raises(dataclasses.FrozenInstanceError):
            quiet.failures = ()  # type: ignore[misc]


@ALL_BACKENDS
def test_verify_isolation_fails_on_two_handles_to_one_database(target: Target) -> None:
    template = target.build(target.schema())
    with worker_database(template) as db:
        twin = dataclasses.replace(db, worker_id="x")
        with pytest.raises(IsolationError) as excinfo:
            verify_isolation([db, twin])
        assert excinfo.value.first == db.name
        assert excinfo.value.second == db.name
        assert db.name in str(excinfo.value)
        assert PROBE_TABLE not in tables(db)

        report = verify_isolation([db, db], raise_on_failure=False)
        assert report.ok is False
        assert len(report.failures) == 1
        failure = report.failures[0]
        assert isinstance(failure, IsolationFailure)
        assert (failure.first, failure.second) == (db.name, db.name)
        assert isinstance(failure.detail, str)
        assert PROBE_TABLE not in tables(db)
        assert items(db) == PRISTINE


@ALL_BACKENDS
def test_verify_isolation_fails_when_one_handle_points_at_another_clone(target: Target) -> None:
    """A handle whose URL leads to another clone (as a misconfigured client would): the clone
    it claims to be and the one it reaches are named."""
    template = target.build(target.schema())
    with clone_many(template, 3) as pool:
        a, b, c = pool
        liar = dataclasses.replace(c, url=a.url)
        report = verify_isolation([a, b, liar], raise_on_failure=False)
        assert report.ok is False
        assert report.failures
        assert all(a.name in (f.first, f.second) for f in report.failures)
        for db in pool:
            assert PROBE_TABLE not in tables(db)


# -- passwords ------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend_url", [pytest.param("postgresql", marks=pytest.mark.postgresql)], indirect=True)
def test_template_and_handle_reprs_hide_the_password(target: Target) -> None:
    """The local server trusts the user: a made-up password is accepted and must never show."""
    password = target.parsed.password or "s3cret-pw"
    target.parsed = dataclasses.replace(target.parsed, password=password)
    template = target.build(target.schema())
    assert f":{password}@" not in repr(template)
    with worker_database(template) as db:
        assert f":{password}@" in db.url  # usable as it is
        assert f":{password}@" not in repr(db)
        assert items(db) == PRISTINE
