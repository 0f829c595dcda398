"""Every backend against the whole :class:`~pytest_concurrent_db.backends.Backend` Protocol.

The engine calls nothing a backend does not declare there; these tests hold each backend
(SQLite, and the real PostgreSQL and MySQL/MariaDB servers) to every member.  Databases are
named ``cdb_t_<hex>...``, their ``template:``/``clone:`` locks are held while they live (so a
sweep running concurrently never takes them), and they are dropped at the end.
"""

from __future__ import annotations

import inspect
import secrets
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from pytest_concurrent_db.backends import Backend, Marker, connect_url, load_backend
from pytest_concurrent_db.backends.mysql import MySQLBackend, quote_ident
from pytest_concurrent_db.backends.postgresql import PostgreSQLBackend
from pytest_concurrent_db.backends.sqlite import SQLiteBackend
from pytest_concurrent_db.url import DatabaseURL
from tests.conftest import drop_ours

SCHEMA = "CREATE TABLE t (id INTEGER PRIMARY KEY, label VARCHAR(20));\nINSERT INTO t VALUES (1, 'seed');\n"


def _marker(kind: str, **changes: Any) -> Marker:
    return Marker(kind=kind, run_id="contract", worker_id="gw0", **changes)  # type: ignore[arg-type]


@pytest.fixture
def prefix() -> str:
    return f"cdb_t_{secrets.token_hex(4)}"


@pytest.fixture
def backend(backend_url: DatabaseURL, tmp_path: Path, prefix: str) -> Iterator[Backend]:
    """Each backend in turn; every marked database named ``prefix...`` is dropped afterwards."""
    be = load_backend(
        backend_url,
        template_dir=tmp_path / "templates",
        clone_dir=tmp_path / "clones",
        application_name="cdb-test-contract",
    )
    yield be
    drop_ours(be, prefix)


def _template(backend: Backend, name: str) -> str:
    assert backend.try_lock(f"template:{name}")
    backend.create(name, _marker("template", state="building"))
    conn = backend.connect(name)
    try:
        backend.run_script(conn, SCHEMA, "schema.sql")
    finally:
        conn.close()
    backend.set_marker(name, _marker("template"))
    return name


def _clone(backend: Backend, template: str, name: str) -> str:
    assert backend.try_lock(f"clone:{name}")
    backend.clone(template, name, _marker("clone", template=template))
    return name


def _driver_connection(backend: Backend, url: DatabaseURL, name: str) -> Any:
    """A connection made by the driver alone from what :meth:`Backend.location` says."""
    if backend.name == "sqlite":
        return sqlite3.connect(backend.location(name))
    return connect_url(url.with_database(backend.location(name)))


def _rows(conn: Any) -> list[tuple[Any, ...]]:
    cur = conn.cursor()
    try:
        cur.execute("SELECT id, label FROM t ORDER BY id")
        return [tuple(row) for row in cur.fetchall()]
    finally:
        cur.close()


# -- the Protocol itself ------------------------------------------------------------------------


def _protocol_methods() -> dict[str, Any]:
    return {k: v for k, v in vars(Backend).items() if inspect.isfunction(v) and not k.startswith("_")}


def _shape(function: Any) -> list[tuple[str, Any]]:
    return [(p.name, p.kind) for p in inspect.signature(function).parameters.values()]


@pytest.mark.parametrize("cls", [SQLiteBackend, PostgreSQLBackend, MySQLBackend])
def test_every_member_of_the_protocol_is_implemented(cls: type[Any]) -> None:
    """Each backend class sets every class attribute the Protocol declares and implements
    every method with the Protocol's parameters (names and kinds)."""
    for attribute in Backend.__annotations__:
        assert attribute in vars(cls), f"{cls.__name__} does not set {attribute}"
    assert "records_intents" in Backend.__annotations__
    methods = _protocol_methods()
    assert {"adopt", "build_statements", "clone_method", "location"} <= set(methods)
    for name, declared in methods.items():
        implemented = getattr(cls, name, None)
        assert inspect.isfunction(implemented), f"{cls.__name__}.{name} is missing"
        assert _shape(implemented) == _shape(declared), f"{cls.__name__}.{name}"
        assert declared.__doc__, f"Backend.{name} is undocumented"


# -- the members the engine once reached with getattr ------------------------------------------


def test_records_intents_and_adopt(backend: Backend, backend_url: DatabaseURL, prefix: str, tmp_path: Path) -> None:
    """Only PostgreSQL marks a database after making it, so only it records intents and adopts
    an unmarked one; nobody adopts a marked or a missing database."""
    assert backend.records_intents is (backend.name == "postgresql")
    ours = prefix + "_ours"
    assert backend.try_lock(f"template:{ours}")
    built = _marker("template", state="building")
    backend.create(ours, built)
    assert backend.adopt(ours, _marker("template")) is False
    assert backend.get_marker(ours) == built
    assert backend.adopt(prefix + "_missing", built) is False
    assert not backend.exists(prefix + "_missing")

    orphan = prefix + "_orphan"
    assert backend.try_lock(f"template:{orphan}")
    _make_unmarked(backend, backend_url, orphan, tmp_path)
    try:
        assert backend.exists(orphan)
        assert backend.get_marker(orphan) is None
        adopted = backend.adopt(orphan, built)
        assert adopted is backend.records_intents
        assert backend.get_marker(orphan) == (built if adopted else None)
    finally:
        _drop_unmarked(backend, backend_url, orphan, tmp_path)


def _make_unmarked(backend: Backend, url: DatabaseURL, name: str, tmp_path: Path) -> None:
    """Create ``name`` as the server would leave it after a crash between making and marking."""
    if backend.name == "sqlite":
        (tmp_path / "clones").mkdir(exist_ok=True)
        sqlite3.connect(tmp_path / "clones" / f"{name}.db").close()
        return
    admin = connect_url(url.with_database("postgres" if backend.name == "postgresql" else ""), autocommit=True)
    try:
        if backend.name == "postgresql":
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        else:
            with admin.cursor() as cur:
                cur.execute("CREATE DATABASE " + quote_ident(name))
    finally:
        admin.close()


def _drop_unmarked(backend: Backend, url: DatabaseURL, name: str, tmp_path: Path) -> None:
    if backend.name == "sqlite":
        (tmp_path / "clones" / f"{name}.db").unlink(missing_ok=True)
        return
    if backend.name == "postgresql":
        backend.drop(name)  # adopted: ours now
        return
    admin = connect_url(url.with_database(""), autocommit=True)
    try:
        with admin.cursor() as cur:
            cur.execute("DROP DATABASE IF EXISTS " + quote_ident(name))
    finally:
        admin.close()


def test_location_is_what_a_driver_connects_to(backend: Backend, backend_url: DatabaseURL, prefix: str) -> None:
    """A driver given :meth:`location` as the database name reaches that database: SQLite the
    file (:meth:`SQLiteBackend.path`), a server the name itself."""
    template = _template(backend, prefix + "_tpl")
    clone = _clone(backend, template, prefix + "_c")
    for name in (template, clone):
        if isinstance(backend, SQLiteBackend):
            assert backend.location(name) == str(backend.path(name))
        else:
            assert backend.location(name) == name
    writer = backend.connect(clone)
    try:
        cur = writer.cursor()
        cur.execute("INSERT INTO t VALUES (2, 'clone')")
        cur.close()
        writer.commit()
    finally:
        writer.close()
    conn = _driver_connection(backend, backend_url, clone)
    try:
        assert _rows(conn) == [(1, "seed"), (2, "clone")]
    finally:
        conn.close()


def test_location_of_an_in_memory_sqlite_clone(tmp_path: Path, prefix: str) -> None:
    """An in-memory clone is found at its shared-cache URI while its backend keeps it alive."""
    url = DatabaseURL(backend="sqlite", database=str(tmp_path / "app.db"))
    files = SQLiteBackend(url, template_dir=tmp_path / "templates", clone_dir=tmp_path / "clones")
    memory = SQLiteBackend(url, template_dir=tmp_path / "templates", clone_dir=tmp_path / "clones", memory=True)
    try:
        template = _template(files, prefix + "_tpl")
        clone = _clone(memory, template, prefix + "_mem")
        location = memory.location(clone)
        assert location.startswith("file:")
        assert "mode=memory" in location
        conn = sqlite3.connect(location, uri=True)
        try:
            assert _rows(conn) == [(1, "seed")]
        finally:
            conn.close()
    finally:
        drop_ours(memory, prefix)
        drop_ours(files, prefix)


@pytest.mark.parametrize("directory", ["what?", "hash#tag", "per%41cent", "all of ?#%25 ü"])
def test_sqlite_files_in_a_directory_a_uri_would_misread(tmp_path: Path, prefix: str, directory: str) -> None:
    """The template is opened read-only through an SQLite URI: ``?``, ``#`` and ``%`` in its
    path are %-encoded, so the clone is a copy of the right file; the clone's URL round-trips."""
    root = tmp_path / directory
    url = DatabaseURL(backend="sqlite", database=str(root / "app.db"))
    backend = SQLiteBackend(url, template_dir=root / "templates", clone_dir=root / "clones")
    try:
        template = _template(backend, prefix + "_tpl")
        clone = _clone(backend, template, prefix + "_c")
        assert backend.path(clone).parent == root / "clones"
        conn = connect_url(backend.url_for(clone))
        try:
            assert _rows(conn) == [(1, "seed")]
            assert backend.current_database(conn) == clone
        finally:
            conn.close()
    finally:
        drop_ours(backend, prefix)
    assert sorted(p.name for p in (root / "clones").iterdir()) == []


def test_build_statements_run_on_a_build_connection(backend: Backend, prefix: str) -> None:
    """The build settings are SQL the backend's own connection accepts, and they take effect."""
    expected = {
        "sqlite": ("PRAGMA synchronous=OFF", "PRAGMA journal_mode=MEMORY"),
        "postgresql": ("SET synchronous_commit TO off",),
        "mysql": (),
    }
    assert backend.build_statements() == expected[backend.name]
    name = prefix + "_tpl"
    assert backend.try_lock(f"template:{name}")
    backend.create(name, _marker("template", state="building"))
    conn = backend.connect(name)
    try:
        cur = conn.cursor()
        for statement in backend.build_statements():
            cur.execute(statement)
        if backend.name == "sqlite":
            cur.execute("PRAGMA synchronous")
            assert cur.fetchone()[0] == 0
        elif backend.name == "postgresql":
            cur.execute("SHOW synchronous_commit")
            assert cur.fetchone()[0] == "off"
        cur.close()
    finally:
        conn.close()


def test_clone_method_says_how_clones_are_made(backend: Backend, prefix: str) -> None:
    """The summary's words for the copy, as they were before the Protocol declared them; on
    PostgreSQL 15+ with the strategy the last clone used."""
    if isinstance(backend, PostgreSQLBackend):
        assert backend.clone_method() == "CREATE DATABASE TEMPLATE"  # nothing cloned yet
    template = _template(backend, prefix + "_tpl")
    _clone(backend, template, prefix + "_c")
    method = backend.clone_method()
    if isinstance(backend, PostgreSQLBackend):
        if int(backend.server_version().split()[1].split(".")[0]) >= 15:
            assert backend.chosen_strategy.startswith("WAL_LOG (auto, ")
            assert method == f"CREATE DATABASE TEMPLATE, STRATEGY {backend.chosen_strategy}"
        else:
            assert method == "CREATE DATABASE TEMPLATE"
    else:
        assert method == {"sqlite": "sqlite3 backup API", "mysql": "DDL replay + INSERT ... SELECT"}[backend.name]


def test_server_started_is_the_servers_start(backend: Backend, backend_url: DatabaseURL) -> None:
    """When the server last started (its clock, seconds since the epoch): before now, stable from
    one call to the next (MySQL's ``Uptime`` counts whole seconds), the same as the server's own
    answer; SQLite has no server."""
    started = backend.server_started()
    if backend.name == "sqlite":
        assert started is None
        return
    assert started is not None
    assert started <= time.time() + 5  # the server's clock against ours
    assert abs(backend.server_started() - started) <= 1.0  # type: ignore[operator]
    conn = connect_url(backend_url.with_database("postgres" if backend.name == "postgresql" else ""))
    try:
        cur = conn.cursor()
        if backend.name == "postgresql":
            cur.execute("SELECT extract(epoch FROM pg_postmaster_start_time())::float8")
            assert cur.fetchone()[0] == pytest.approx(started)
        else:
            cur.execute(
                "SELECT UNIX_TIMESTAMP() - VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS"
                " WHERE VARIABLE_NAME = 'UPTIME'"
            )
            assert float(cur.fetchone()[0]) == pytest.approx(started, abs=1.0)
    finally:
        conn.close()


def _execute(conn: Any, *statements: str, commit: bool = True) -> list[tuple[Any, ...]]:
    cur = conn.cursor()
    rows: list[tuple[Any, ...]] = []
    for statement in statements:
        cur.execute(statement)
        if cur.description is not None:
            rows = [tuple(row) for row in cur.fetchall()]
    cur.close()
    if commit:
        conn.commit()
    else:
        conn.rollback()
    return rows


def test_database_state_sees_rows_and_schema_and_keeps_counters_apart(
    backend: Backend, backend_url: DatabaseURL, prefix: str
) -> None:
    """What handing a database on relies on: the digest changes with a value in place (same row
    count) and with the schema, comes back with the content; a rolled-back insert moves only
    the counters, and ``reset_counters`` sets them back so that the next id is the first again;
    another session on the database is named.  SQLite's copies are file copies: no state."""
    template = _template(backend, prefix + "_tpl")
    clone = _clone(backend, template, prefix + "_c")
    if backend.name == "sqlite":
        assert backend.database_state(clone) is None
        return
    auto = "SERIAL PRIMARY KEY" if backend.name == "postgresql" else "INTEGER AUTO_INCREMENT PRIMARY KEY"
    conn = _driver_connection(backend, backend_url, clone)
    try:
        _execute(conn, f"CREATE TABLE s (id {auto}, v INTEGER)")
        busy = backend.database_state(clone)
        assert busy is not None
        assert len(busy.sessions) == 1  # ours: the reader's own session is not counted
    finally:
        conn.close()

    def state() -> Any:
        read = backend.database_state(clone)
        assert read is not None
        return read

    base = state()
    assert base.sessions == []
    assert state() == base
    assert base.counters == {}

    conn = _driver_connection(backend, backend_url, clone)
    try:
        _execute(conn, "INSERT INTO s (v) VALUES (1)", "INSERT INTO s (v) VALUES (2)", commit=False)
        moved = state()
        assert moved.digest == base.digest  # rolled back: only the counter moved
        assert moved.counters != base.counters
        assert backend.reset_counters(clone, moved.counters, base.counters) == 1
        assert (state().digest, state().counters) == (base.digest, base.counters)
        assert backend.reset_counters(clone, base.counters, base.counters) == 0

        _execute(conn, "UPDATE t SET label = 'changed'")  # the same row count
        assert state().digest != base.digest
        _execute(conn, "UPDATE t SET label = 'seed'")
        assert state().digest == base.digest  # the content decides, not its history

        _execute(conn, "CREATE INDEX t_label ON t (label)")
        assert state().digest != base.digest
    finally:
        conn.close()
    conn = _driver_connection(backend, backend_url, clone)
    try:
        assert _execute(conn, "INSERT INTO s (v) VALUES (3)", "SELECT id FROM s") == [(1,)]
    finally:
        conn.close()
