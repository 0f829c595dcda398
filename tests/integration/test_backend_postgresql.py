"""The PostgreSQL backend against a real server (fixture ``postgresql_url``).

Every database is named ``cdb_t_<random hex>`` and dropped in a finalizer with a raw
connection (not through the backend under test), even when a test fails.  Like the
engine, we hold ``clone:<name>`` and ``template:<name>`` on a backend for as long as each
database lives, so a reaper or prune running concurrently in another test never takes it.
"""

from __future__ import annotations

import dataclasses
import pickle
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from pytest_concurrent_db.backends import connect_url
from pytest_concurrent_db.backends.base import Marker
from pytest_concurrent_db.backends.postgresql import PostgreSQLBackend, connect_params
from pytest_concurrent_db.errors import (
    BackendUnavailableError,
    ConcurrentDBError,
    ConfigError,
    LockTimeoutError,
    NotOursError,
    PrivilegeError,
    ScriptError,
)
from pytest_concurrent_db.options import names as option_names
from pytest_concurrent_db.url import DatabaseURL, parse_url

pytestmark = pytest.mark.postgresql

Names = Callable[..., str]

SCHEMA = """
-- a comment; with a semicolon
CREATE SCHEMA app;
CREATE TABLE app.author (id serial PRIMARY KEY, name text NOT NULL UNIQUE);
CREATE TABLE app.book (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    author_id int NOT NULL REFERENCES app.author (id),
    title text NOT NULL,
    pages int CHECK (pages > 0)
);
CREATE INDEX book_title_idx ON app.book (lower(title));
CREATE VIEW app.book_view AS
    SELECT b.title, a.name FROM app.book b JOIN app.author a ON a.id = b.author_id;
CREATE FUNCTION app.shout() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.title := upper(NEW.title);  -- 100% loud; really
    RETURN NEW;
END $$;
CREATE TRIGGER book_shout BEFORE INSERT ON app.book FOR EACH ROW EXECUTE FUNCTION app.shout();
CREATE FUNCTION app.add(a int, b int) RETURNS int LANGUAGE sql AS 'SELECT a + b';
CREATE SEQUENCE app.counter START 100;
SELECT nextval('app.counter'), nextval('app.counter');
INSERT INTO app.author (name) VALUES ('ann'), ('bob');
INSERT INTO app.book (author_id, title, pages) VALUES (1, 'first', 10), (2, 'second %s', 20);
"""


def _admin(url: DatabaseURL) -> psycopg.Connection[Any]:
    conn: psycopg.Connection[Any] = connect_url(url.with_database("postgres"), autocommit=True)
    return conn


def _force_drop(admin: psycopg.Connection[Any], name: str) -> None:
    ident = sql.Identifier(name)
    row = admin.execute("SELECT datistemplate FROM pg_database WHERE datname = %s", (name,)).fetchone()
    if row and row[0]:
        admin.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(ident))
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


def _marker(kind: str = "clone", state: str = "ready", **kw: Any) -> Marker:
    return Marker(kind=kind, run_id="t" + secrets.token_hex(4), worker_id="gw0", state=state, **kw)  # type: ignore[arg-type]


@pytest.fixture
def admin(postgresql_url: DatabaseURL) -> Iterator[psycopg.Connection[Any]]:
    conn = _admin(postgresql_url)
    yield conn
    conn.close()


@pytest.fixture
def backend(postgresql_url: DatabaseURL) -> Iterator[PostgreSQLBackend]:
    b = PostgreSQLBackend(postgresql_url, application_name="cdb-test")
    yield b
    b.close()


@pytest.fixture
def names(postgresql_url: DatabaseURL) -> Iterator[Names]:
    """``names()`` -> a fresh ``cdb_t_<hex>`` name (``names(exact=n)``: ``n``), locked as the
    engine does, dropped at the end."""
    holder = PostgreSQLBackend(postgresql_url, application_name="cdb-test-holder")
    made: list[str] = []

    def new(suffix: str = "", *, exact: str | None = None) -> str:
        name = exact if exact is not None else f"cdb_t_{secrets.token_hex(5)}{suffix}"
        assert holder.try_lock("clone:" + name)
        assert holder.try_lock("template:" + name)
        made.append(name)
        return name

    yield new
    admin = _admin(postgresql_url)
    try:
        for name in made:
            _force_drop(admin, name)
    finally:
        admin.close()
        holder.close()


@pytest.fixture
def make_role(postgresql_url: DatabaseURL) -> Iterator[Callable[..., DatabaseURL]]:
    """``make_role("cdb_t_x", "CREATEDB")`` -> a URL for a new LOGIN role, dropped (with its
    databases) at the end."""
    made: list[str] = []

    def new(name: str, *options: str) -> DatabaseURL:
        with _admin(postgresql_url) as admin:
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN " + " ".join(options)).format(sql.Identifier(name)))
        made.append(name)
        return DatabaseURL(**{**postgresql_url.__dict__, "username": name})

    yield new
    with _admin(postgresql_url) as admin:
        for name in made:
            for (db,) in admin.execute(
                "SELECT datname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba WHERE r.rolname = %s", (name,)
            ).fetchall():
                _force_drop(admin, db)
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture
def template(backend: PostgreSQLBackend, names: Names, admin: psycopg.Connection[Any]) -> str:
    """A sealed template built from SCHEMA, with database-level settings."""
    name = names("_tpl")
    backend.create(name, _marker("template", "building"))
    with backend.connect(name) as conn:
        backend.run_script(conn, SCHEMA, "schema.sql")
    ident = sql.Identifier(name)
    admin.execute(sql.SQL('ALTER DATABASE {} SET search_path = app, "$user", public, "My Sch""ema"').format(ident))
    admin.execute(sql.SQL("ALTER DATABASE {} SET work_mem = '8MB'").format(ident))
    admin.execute(sql.SQL("ALTER DATABASE {} SET datestyle = 'ISO, DMY'").format(ident))
    admin.execute(sql.SQL("ALTER DATABASE {} SET cdb.flag = 'x y'").format(ident))
    backend.set_marker(name, _marker("template", "ready"))
    return name


def _names_like(admin: psycopg.Connection[Any], token: str) -> list[str]:
    rows = admin.execute("SELECT datname FROM pg_database WHERE strpos(datname, %s) > 0", (token,))
    return sorted(r[0] for r in rows.fetchall())


def test_server_version(backend: PostgreSQLBackend) -> None:
    assert backend.server_version().startswith("PostgreSQL 1")
    assert backend.name == "postgresql"
    assert backend.max_name_length == 63


def test_constructor_does_not_connect() -> None:
    url = DatabaseURL("postgresql", "x", "postgres", None, "127.0.0.1", _free_port())
    PostgreSQLBackend(url).close()  # no error: nothing was connected


def test_create_and_marker_roundtrip(backend: PostgreSQLBackend, names: Names) -> None:
    name = names()
    marker = _marker("template", "building", fingerprint="abc", template="")
    assert not backend.exists(name)
    assert backend.get_marker(name) is None
    backend.create(name, marker)
    assert backend.exists(name)
    assert backend.get_marker(name) == marker
    [info] = backend.list_databases(name)
    assert info.name == name
    assert info.marker == marker
    assert info.size_bytes is not None
    assert info.size_bytes > 0
    new = _marker("template", "building", fingerprint="def")
    backend.set_marker(name, new)
    assert backend.get_marker(name) == new
    with pytest.raises(ConcurrentDBError, match="already exists"):
        backend.create(name, marker)
    assert backend.get_marker(name) == new  # the existing database was not touched


def test_list_databases_escapes_like_wildcards(backend: PostgreSQLBackend, names: Names) -> None:
    plain = names("_a")
    base = plain[:-2]
    wild = names(exact=base + "xa")  # would match base + "_" if "_" were a LIKE wildcard
    backend.create(plain, _marker())
    backend.create(wild, _marker())
    assert [i.name for i in backend.list_databases(base + "_")] == [plain]
    assert sorted(i.name for i in backend.list_databases(base)) == sorted([plain, wild])
    assert backend.list_databases(base[:-1] + "%") == []
    assert backend.list_databases("cdb\\t") == []


def test_template_seal_refuses_connections(
    backend: PostgreSQLBackend, template: str, admin: psycopg.Connection[Any]
) -> None:
    row = admin.execute(
        "SELECT datistemplate, datallowconn FROM pg_database WHERE datname = %s", (template,)
    ).fetchone()
    assert row == (True, False)
    marker = backend.get_marker(template)
    assert marker is not None
    assert (marker.kind, marker.state) == ("template", "ready")
    with pytest.raises(BackendUnavailableError, match="not currently accepting connections"):
        backend.connect(template)
    backend.drop(template)  # un-templates it first
    assert not backend.exists(template)


def test_clone_keeps_everything(backend: PostgreSQLBackend, template: str, names: Names) -> None:
    name = names()
    marker = _marker(template=template)
    backend.clone(template, name, marker)
    assert backend.get_marker(name) == marker
    with backend.connect(name, autocommit=True) as conn:

        def one(query: Any, *params: Any) -> Any:
            row = conn.execute(query, params or None).fetchone()
            assert row is not None
            return row[0]

        assert one("SHOW search_path") == 'app, "$user", public, "My Sch""ema"'
        assert one("SHOW work_mem") == "8MB"
        assert one("SHOW datestyle") == "ISO, DMY"
        assert one("SELECT current_setting('cdb.flag')") == "x y"
        assert one("SELECT count(*) FROM author") == 2  # unqualified: search_path
        assert one("SELECT string_agg(title, ',' ORDER BY id) FROM book") == "FIRST,SECOND %S"
        assert one("SELECT count(*) FROM book_view") == 2
        assert one("SELECT app.add(2, 3)") == 5
        assert one("SELECT nextval('app.counter')") == 102
        assert one("INSERT INTO author (name) VALUES ('cy') RETURNING id") == 3
        assert one("INSERT INTO book (author_id, title) VALUES (3, 'x') RETURNING title") == "X"
        assert one("SELECT count(*) FROM pg_indexes WHERE indexname = 'book_title_idx'") == 1
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("INSERT INTO book (author_id, title) VALUES (99, 'y')")
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO book (author_id, title, pages) VALUES (1, 'y', -1)")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO author (name) VALUES ('ann')")


@pytest.mark.parametrize("strategy", ["wal_log", "FILE_COPY"])
def test_clone_strategies(postgresql_url: DatabaseURL, template: str, names: Names, strategy: str) -> None:
    backend = PostgreSQLBackend(postgresql_url, strategy=strategy)
    try:
        name = names()
        backend.clone(template, name, _marker())
        with backend.connect(name) as conn:
            assert backend.row_counts(conn) == {"app.author": 2, "app.book": 2}
    finally:
        backend.close()


def test_unknown_strategy_is_a_config_error(postgresql_url: DatabaseURL) -> None:
    with pytest.raises(ConfigError, match="wal_log or file_copy"):
        PostgreSQLBackend(postgresql_url, strategy="copy; DROP")


def test_concurrent_clones_from_one_template(postgresql_url: DatabaseURL, template: str, names: Names) -> None:
    clones = [names(f"_c{i}") for i in range(4)]
    backends = [PostgreSQLBackend(postgresql_url, application_name=f"cdb-test-{i}") for i in range(4)]
    barrier = threading.Barrier(4)
    failures: list[BaseException] = []

    def work(b: PostgreSQLBackend, name: str) -> None:
        try:
            b.server_version()  # connect before the barrier, so the CREATEs overlap
            barrier.wait(timeout=30)
            b.clone(template, name, _marker(template=template))
            with b.connect(name) as conn:
                b.run_script(conn, f"INSERT INTO app.author (name) VALUES ('{name}')", "t.sql")
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=pair) for pair in zip(backends, clones)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for b in backends:
        b.close()
    assert not failures, failures
    checker = PostgreSQLBackend(postgresql_url)
    try:
        for name in clones:
            with checker.connect(name) as conn:
                assert checker.row_counts(conn) == {"app.author": 3, "app.book": 2}
                rows = conn.execute("SELECT name FROM app.author WHERE id = 3").fetchall()
                assert rows == [(name,)]  # each clone got its own write only
    finally:
        checker.close()


def test_clone_waits_for_then_names_sessions_on_template(backend: PostgreSQLBackend, names: Names) -> None:
    source = names("_src")
    backend.create(source, _marker("template", "building"))
    blocker = backend.connect(source)  # an unsealed template with a session on it
    blocker_app = "cdb-test-blocker-" + secrets.token_hex(3)
    blocker.execute("SELECT set_config('application_name', %s, false)", (blocker_app,))
    blocker.commit()
    target = names()
    backend.in_use_timeout = 0.5  # PostgreSQL itself waits ~5 s per attempt
    try:
        with pytest.raises(ConcurrentDBError) as info:
            backend.clone(source, target, _marker())
    finally:
        blocker.close()
    message = str(info.value)
    assert blocker_app in message
    assert "pid " in message
    assert "\n" not in message
    assert not backend.exists(target)


def test_clone_of_a_missing_template(backend: PostgreSQLBackend, names: Names) -> None:
    missing, name = names("_tpl"), names()
    with pytest.raises(ConcurrentDBError, match=f"{missing}' does not exist"):
        backend.clone(missing, name, _marker())
    assert not backend.exists(name)


def test_clone_cleans_up_when_settings_cannot_be_copied(
    postgresql_url: DatabaseURL,
    names: Names,
    admin: psycopg.Connection[Any],
    make_role: Callable[..., DatabaseURL],
) -> None:
    """A CREATEDB role may clone a template, but not copy a superuser-only setting."""
    tpl = names("_tpl")
    owner = PostgreSQLBackend(postgresql_url)
    try:
        owner.create(tpl, _marker("template", "building"))
        admin.execute(sql.SQL("ALTER DATABASE {} SET log_statement = 'all'").format(sql.Identifier(tpl)))
        owner.set_marker(tpl, _marker("template", "ready"))
    finally:
        owner.close()
    creator = PostgreSQLBackend(make_role(f"cdb_t_creator_{secrets.token_hex(3)}", "CREATEDB"))
    try:
        creator.preflight()
        name = names()
        with pytest.raises(PrivilegeError, match="log_statement"):
            creator.clone(tpl, name, _marker())
        assert not creator.exists(name)
    finally:
        creator.close()


def test_a_failing_drop_never_hides_why_the_clone_failed(
    postgresql_url: DatabaseURL,
    names: Names,
    admin: psycopg.Connection[Any],
    make_role: Callable[..., DatabaseURL],
) -> None:
    """Copying a setting fails, and dropping the half-made clone fails too (a superuser session
    sits on it, which a CREATEDB role may not end): the error is still the setting's, and it
    says the database stays instead of claiming it was dropped."""
    tpl = names("_tpl")
    owner = PostgreSQLBackend(postgresql_url)
    try:
        owner.create(tpl, _marker("template", "building"))
        admin.execute(sql.SQL("ALTER DATABASE {} SET log_statement = 'all'").format(sql.Identifier(tpl)))
        owner.set_marker(tpl, _marker("template", "ready"))
    finally:
        owner.close()
    creator = PostgreSQLBackend(make_role(f"cdb_t_creator_{secrets.token_hex(3)}", "CREATEDB"))
    name = names()
    outcome: list[BaseException] = []

    def clone() -> None:
        try:
            creator.clone(tpl, name, _marker())
        except BaseException as exc:  # handed to the test
            outcome.append(exc)

    gate: psycopg.Connection[Any] = connect_url(postgresql_url.with_database("postgres"))
    intruder: psycopg.Connection[Any] | None = None
    worker = threading.Thread(target=clone)
    try:
        # COMMENT ON DATABASE waits while we hold pg_shdescription: the clone exists by then
        gate.execute("LOCK TABLE pg_shdescription IN EXCLUSIVE MODE")
        worker.start()
        deadline = time.monotonic() + 30
        while not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            assert worker.is_alive(), outcome
            assert time.monotonic() < deadline, "the clone was never created"
            time.sleep(0.02)
        intruder = connect_url(postgresql_url.with_database(name), autocommit=True)
        gate.commit()
        worker.join(60)
        assert not worker.is_alive()
        assert len(outcome) == 1
        error = outcome[0]
        assert isinstance(error, PrivilegeError), repr(error)
        message = str(error)
        assert "log_statement" in message
        assert "was dropped" not in message
        assert f"dropping the new database {name!r} failed too: " in message
        assert "\n" not in message
        cause = error.__cause__
        assert isinstance(cause, psycopg.errors.InsufficientPrivilege)
        assert sys.version_info < (3, 11) or any(f"{name!r} stays" in n for n in getattr(cause, "__notes__", []))
        assert creator.exists(name)
    finally:
        gate.close()
        if intruder is not None:
            intruder.close()
        if worker.ident is not None:
            worker.join(60)
        creator.close()


def test_drop_while_sessions_are_connected(backend: PostgreSQLBackend, names: Names) -> None:
    name = names()
    backend.create(name, _marker())
    busy = backend.connect(name)
    busy.execute("SELECT 1")  # leaves a transaction open
    idle = backend.connect(name, autocommit=True)
    try:
        backend.drop(name)
        assert not backend.exists(name)
        with pytest.raises(psycopg.OperationalError):
            idle.execute("SELECT 1")
    finally:
        busy.close()
        idle.close()
    backend.drop(name)  # missing: a no-op


@pytest.mark.parametrize("comment", [None, "someone else's database"])
def test_drop_refuses_a_database_without_our_marker(
    backend: PostgreSQLBackend, names: Names, admin: psycopg.Connection[Any], comment: str | None
) -> None:
    name = names()
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    if comment is not None:
        admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), comment))
    with pytest.raises(NotOursError, match="refusing to drop"):
        backend.drop(name)
    with pytest.raises(NotOursError, match="refusing to mark"):
        backend.set_marker(name, _marker())
    assert backend.exists(name)
    assert backend.get_marker(name) is None
    assert [(i.name, i.marker) for i in backend.list_databases(name)] == [(name, None)]
    _force_drop(admin, name)  # the finalizer would too; be explicit about manual cleanup


def test_drop_refuses_the_database_of_the_url(
    postgresql_url: DatabaseURL, backend: PostgreSQLBackend, names: Names
) -> None:
    name = names()
    backend.create(name, _marker())
    user_backend = PostgreSQLBackend(postgresql_url.with_database(name))
    try:
        with pytest.raises(NotOursError, match="never dropped"):
            user_backend.drop(name)
    finally:
        user_backend.close()
    assert backend.exists(name)


@pytest.mark.parametrize("suffix", [' "quoted"', " with space", "_ünïcødé", '"; DROP DATABASE {decoy}; --', "'; --"])
def test_odd_names_create_and_drop_exactly_one_database(
    backend: PostgreSQLBackend, names: Names, admin: psycopg.Connection[Any], suffix: str
) -> None:
    decoy = names("_decoy")
    backend.create(decoy, _marker())
    token = decoy[: -len("_decoy")]
    name = names(exact=token + suffix.format(decoy=decoy))
    names_made = [decoy, name]
    backend.create(name, _marker("template", "building"))
    assert _names_like(admin, token) == sorted(names_made)
    assert backend.get_marker(name) is not None
    backend.set_marker(name, _marker("template", "ready"))
    clone = names(exact=token + "_clone" + suffix.format(decoy=decoy)[:20])
    backend.clone(name, clone, _marker())
    assert _names_like(admin, token) == sorted([*names_made, clone])
    backend.drop(clone)
    backend.drop(name)
    assert _names_like(admin, token) == [decoy]


def test_too_long_name_is_refused(backend: PostgreSQLBackend, names: Names) -> None:
    name = names() + "_" + "é" * 30  # < 63 characters, > 63 bytes
    with pytest.raises(ConcurrentDBError, match="1 to 63 bytes"):
        backend.create(name, _marker())
    assert backend.list_databases(name[:20]) == []


def test_locks_between_two_backends(postgresql_url: DatabaseURL, admin: psycopg.Connection[Any]) -> None:
    tag = secrets.token_hex(3)
    holder = PostgreSQLBackend(postgresql_url, application_name=f"cdb-test-holder-{tag}")
    taker = PostgreSQLBackend(postgresql_url, application_name=f"cdb-test-taker-{tag}")
    key = f"test:{tag}"
    try:
        assert holder.try_lock(key)
        assert holder.try_lock(key)  # already ours
        assert not taker.try_lock(key)
        row = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (f"cdb-test-holder-{tag}",)
        ).fetchone()
        assert row is not None
        started = time.monotonic()
        with pytest.raises(LockTimeoutError) as info:
            taker.acquire_lock(key, 0.3)
        assert 0.3 <= time.monotonic() - started < 3
        message = str(info.value)
        assert key in message
        assert f"pid {row[0]} " in message
        assert f"cdb-test-holder-{tag}" in message
        assert f"raise {option_names('lock_timeout')} or stop that process" in message
        assert "\n" not in message
        assert pickle.loads(pickle.dumps(info.value)).args == info.value.args

        releaser = threading.Timer(0.2, holder.release_lock, (key,))
        releaser.start()
        taker.acquire_lock(key, 10)  # gets it once released
        releaser.join()
        assert not holder.try_lock(key)
        holder.release_lock(key)  # not held: a no-op
        taker.close()  # closing the control connection frees its locks
        assert holder.try_lock(key)
        holder.release_lock(key)
    finally:
        holder.close()
        taker.close()


def test_run_script_applies_and_commits(backend: PostgreSQLBackend, names: Names) -> None:
    name = names()
    backend.create(name, _marker())
    with backend.connect(name) as conn:
        backend.run_script(conn, SCHEMA, "schema.sql")
        backend.run_script(conn, "-- nothing but a comment\n", "empty.sql")
        assert not backend.in_transaction(conn)
    with backend.connect(name) as other:
        assert backend.row_counts(other) == {"app.author": 2, "app.book": 2}


@pytest.mark.parametrize(
    "case",
    [
        (
            "CREATE TABLE a (id int);\n\nINSERT INTO a VALUES (1);\nSELEC 1;\n",
            4,
            "SELEC 1",
            'syntax error at or near "SELEC"',
        ),
        (
            "CREATE TABLE a (id int);\n/* ; */ SELECT 1;\nSELECT *\n  FROM missing_t;",
            3,
            "SELECT * FROM missing_t",
            'relation "missing_t" does not exist',
        ),
        (
            "CREATE TABLE a (id int PRIMARY KEY);\nINSERT INTO a VALUES (1);\nINSERT INTO a VALUES\n (1);\n",
            3,
            "INSERT INTO a VALUES (1)",
            "duplicate key value violates unique constraint",
        ),
        ("CREATE TABLE a (id int); SELECT 1 / 0; SELECT 2;", 1, "SELECT 1 / 0", "division by zero"),
        (
            "CREATE TABLE a (id int);\nCREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$\n"
            "BEGIN\n  RETURN 1 +;\nEND $$;\n",
            2,
            "CREATE FUNCTION f()",
            "syntax error",
        ),
    ],
)
def test_run_script_error_names_file_line_and_statement(
    backend: PostgreSQLBackend, names: Names, case: tuple[str, int, str, str]
) -> None:
    """(script, line, statement snippet, server reason)"""
    script, line, snippet, reason = case
    name = names()
    backend.create(name, _marker())
    with backend.connect(name) as conn:
        with pytest.raises(ScriptError) as info:
            backend.run_script(conn, script, "db/schema.sql")
        err = info.value
        assert (err.source, err.line) == ("db/schema.sql", line)
        assert err.statement.startswith(snippet)
        assert str(err).startswith(f"concurrent-db: db/schema.sql:{line}: {snippet}")
        assert reason in str(err)
        assert "\n" not in str(err)
        assert pickle.loads(pickle.dumps(err)).args == err.args
        assert not backend.in_transaction(conn)
        assert backend.row_counts(conn) == {}  # all rolled back: no table "a"


def test_isolation_probes(backend: PostgreSQLBackend, names: Names) -> None:
    name = names()
    backend.create(name, _marker())
    conn = backend.connect(name)
    other = backend.connect(name, autocommit=True)
    try:
        other.execute("SELECT set_config('application_name', 'cdb-test-other', false)")
        assert backend.current_database(conn) == name
        assert not backend.in_transaction(conn)
        assert backend.row_counts(conn) == {}
        assert not backend.in_transaction(conn)  # the probe rolled back what it opened
        backend.run_script(
            conn,
            'CREATE SCHEMA "we ird"; CREATE TABLE "we ird"."ta ble" (x int);'
            "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2);",
            "s.sql",
        )
        other.execute("CREATE TEMP TABLE mine (x int)")  # another session's temp table: skipped
        assert backend.row_counts(conn) == {"public.t": 2, "we ird.ta ble": 0}
        sessions = backend.other_sessions(name, conn)
        assert len(sessions) == 1
        assert "cdb-test-other" in sessions[0]
        assert f"pid {other.info.backend_pid} " in sessions[0]
        assert backend.other_sessions(name, other)[0].startswith(f"pid {conn.info.backend_pid} ")
        conn.execute("SELECT count(*) FROM t")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert not backend.in_transaction(conn)  # only read: not a leftover
        assert backend.row_counts(conn)["public.t"] == 2
        conn.execute("INSERT INTO t VALUES (3)")
        assert backend.in_transaction(conn)  # wrote
        assert backend.row_counts(conn)["public.t"] == 3  # inside the open transaction
        assert backend.in_transaction(conn)  # the user's transaction is left alone
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / 0")
        assert backend.in_transaction(conn)  # aborted counts
        conn.rollback()
        assert not backend.in_transaction(other)
    finally:
        conn.close()
        other.close()


def test_url_for_roundtrips(backend: PostgreSQLBackend, names: Names) -> None:
    name = names(" x")
    backend.create(name, _marker())
    with connect_url(backend.url_for(name)) as conn:
        assert backend.current_database(conn) == name


def _with_query(url: DatabaseURL, **query: str) -> DatabaseURL:
    return dataclasses.replace(url, query=(*url.query, *query.items()))


def test_the_url_query_reaches_every_connection(
    postgresql_url: DatabaseURL, backend: PostgreSQLBackend, names: Names
) -> None:
    """libpq keywords in the URL's query reach connect_url (ConcurrentDatabase.connect) as they
    reach the backend's own connections, from one computation (connect_params)."""
    name = names()
    backend.create(name, _marker())
    app = "cdb-test-query-" + secrets.token_hex(3)
    url = _with_query(postgresql_url.with_database(name), options="-c search_path=cdbq", application_name=app)
    assert connect_params(url)["dbname"] == name
    assert {k: connect_params(url)[k] for k in ("options", "application_name", "connect_timeout")} == {
        "options": "-c search_path=cdbq",
        "application_name": app,
        "connect_timeout": 10,
    }
    assert "maintenance_db" not in connect_params(_with_query(url, maintenance_db="postgres"))  # ours, not libpq's
    through_url: psycopg.Connection[Any] = connect_url(url.render(hide_password=False))
    user_backend = PostgreSQLBackend(url, application_name="cdb-test-own-name")
    try:
        with through_url, user_backend.connect(name) as own:
            assert through_url.execute("SHOW search_path").fetchone() == ("cdbq",)
            assert through_url.execute("SHOW application_name").fetchone() == (app,)
            assert own.execute("SHOW search_path").fetchone() == ("cdbq",)
            assert own.execute("SHOW application_name").fetchone() == ("cdb-test-own-name",)  # the backend's
    finally:
        user_backend.close()


def _socket_directory(admin: psycopg.Connection[Any]) -> str:
    row = admin.execute("SHOW unix_socket_directories").fetchone()
    assert row is not None
    directory = str(row[0]).split(",")[0].strip()
    if not directory:
        pytest.skip("the server listens on no Unix socket")
    return directory


def test_a_socket_directory_in_the_query_is_used(
    postgresql_url: DatabaseURL, admin: psycopg.Connection[Any], names: Names
) -> None:
    """``postgresql://user@/db?host=/socket/dir``: the query's host wins over the default
    127.0.0.1, for connect_url and every connection of the backend, and the URL round-trips."""
    directory = _socket_directory(admin)
    text = f"postgresql://{postgresql_url.username}@/postgres?host={quote(directory, safe='')}"
    url = parse_url(text)
    assert url.host is None
    assert url.option("host") == directory
    assert parse_url(str(url)) == url
    assert parse_url(url.render(hide_password=False)) == url
    with connect_url(text) as conn:
        assert conn.execute("SELECT inet_client_addr()").fetchone() == (None,)  # not TCP
    app = "cdb-test-socket-" + secrets.token_hex(3)
    backend = PostgreSQLBackend(url, application_name=app)
    try:
        backend.preflight()
        name = names()
        backend.create(name, _marker())
        with backend.connect(name) as conn:
            assert conn.execute("SELECT inet_client_addr()").fetchone() == (None,)
        with connect_url(backend.url_for(name)) as conn:
            assert conn.execute("SELECT current_database(), inet_client_addr()").fetchone() == (name, None)
        rows = admin.execute("SELECT client_addr FROM pg_stat_activity WHERE application_name = %s", (app,)).fetchall()
        assert rows == [(None,)]  # the control connection
    finally:
        backend.close()


def test_connect_url_errors_are_one_line_without_password(postgresql_url: DatabaseURL) -> None:
    url = dataclasses.replace(postgresql_url, port=_free_port(), password="s3cr3t")
    with pytest.raises(BackendUnavailableError) as info:
        connect_url(url)
    message = str(info.value)
    assert message.startswith(f"concurrent-db: cannot connect to PostgreSQL at {url}: ")
    assert message.endswith(f"; start the server or fix {option_names('url')}")
    assert "\n" not in message
    assert "s3cr3t" not in message


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_preflight_unreachable_server_is_one_line_without_password(postgresql_url: DatabaseURL) -> None:
    port = _free_port()
    url = DatabaseURL("postgresql", "cdbtest", "postgres", "s3cr3t", "127.0.0.1", port)
    backend = PostgreSQLBackend(url)
    try:
        with pytest.raises(BackendUnavailableError) as info:
            backend.preflight()
        with pytest.raises(BackendUnavailableError) as info2:
            backend.connect("cdb_t_x")
    finally:
        backend.close()
    message = str(info.value)
    assert message.startswith(
        f"concurrent-db: cannot connect to PostgreSQL at postgresql://postgres:***@127.0.0.1:{port}/cdbtest: "
    )
    assert message.endswith(
        "; start the server or fix --concurrent-db-url (ini concurrent_db_url, env CONCURRENT_DB_URL)"
    )
    assert "\n" not in message
    for text in (message, str(info2.value), repr(info.value), repr(url)):
        assert "s3cr3t" not in text


def test_preflight_without_createdb_is_a_privilege_error(make_role: Callable[..., DatabaseURL], names: Names) -> None:
    role = f"cdb_t_nocreate_{secrets.token_hex(3)}"
    backend = PostgreSQLBackend(make_role(role, "NOCREATEDB"))
    try:
        with pytest.raises(PrivilegeError) as info:
            backend.preflight()
        message = str(info.value)
        assert f"ALTER ROLE {role} CREATEDB" in message
        assert "\n" not in message
        name = names()
        with pytest.raises(PrivilegeError, match="CREATEDB"):
            backend.create(name, _marker())
        assert not backend.exists(name)
    finally:
        backend.close()


@pytest.mark.parametrize(("threshold", "expected"), [(1 << 40, "WAL_LOG (auto"), (0, "FILE_COPY (auto")])
def test_auto_strategy_by_template_size(  # noqa: PLR0917  (fixtures)
    postgresql_url: DatabaseURL,
    template: str,
    names: Names,
    monkeypatch: pytest.MonkeyPatch,
    threshold: int,
    expected: str,
) -> None:
    """auto: WAL_LOG for small templates, FILE_COPY above the size threshold; forced wins."""
    from pytest_concurrent_db.backends import postgresql

    monkeypatch.setattr(postgresql, "FILE_COPY_ABOVE", threshold)
    auto = PostgreSQLBackend(postgresql_url)
    forced = PostgreSQLBackend(postgresql_url, strategy="file_copy")
    try:
        clone = names()
        auto.clone(template, clone, _marker(template=template))
        assert auto.chosen_strategy.startswith(expected)
        other = names()
        forced.clone(template, other, _marker(template=template))
        assert forced.chosen_strategy == "FILE_COPY"
    finally:
        auto.close()
        forced.close()
