"""The MySQL/MariaDB backend against a real server: clone fidelity, drop, names, locks, errors.

Every database made here is named ``cdb_t_<hex>``, its ``clone:``/``template:`` lock is
held while it lives (so concurrently running tests never reap it), and it is dropped in a
finalizer even when the test fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pymysql
import pytest

from pytest_concurrent_db.backends import Marker, connect_url
from pytest_concurrent_db.backends.mysql import REGISTRY, MySQLBackend, connect_params, quote_ident
from pytest_concurrent_db.backends.mysql_recipe import cut_schema, strip_definer
from pytest_concurrent_db.errors import (
    BackendUnavailableError,
    ConcurrentDBError,
    LockTimeoutError,
    NotOursError,
    PrivilegeError,
    ScriptError,
)
from pytest_concurrent_db.options import names as option_names
from pytest_concurrent_db.url import DatabaseURL
from tests.conftest import mysql_database_dir

pytestmark = pytest.mark.mysql

SCHEMA = """\
-- a template exercising what a clone must carry over
ALTER DATABASE CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;

CREATE TABLE author (
  id INT AUTO_INCREMENT PRIMARY KEY,
  name VARCHAR(100) NOT NULL,
  email VARCHAR(200) NOT NULL,
  mentor_id INT NULL,
  UNIQUE KEY uq_author_email (email),
  CONSTRAINT fk_author_mentor FOREIGN KEY (mentor_id) REFERENCES author (id) ON DELETE SET NULL
) ENGINE=InnoDB;

CREATE TABLE book (
  id INT AUTO_INCREMENT PRIMARY KEY,
  author_id INT NOT NULL,
  title VARCHAR(200) NOT NULL,
  body TEXT,
  price_cents INT NOT NULL DEFAULT 0,
  price DECIMAL(10,2) AS (price_cents / 100) STORED,
  title_len INT AS (CHAR_LENGTH(title)) VIRTUAL,
  KEY ix_book_author_title (author_id, title),
  FULLTEXT KEY ft_book (title, body),
  CONSTRAINT fk_book_author FOREIGN KEY (author_id) REFERENCES author (id) ON DELETE CASCADE
) ENGINE=InnoDB;

CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, event VARCHAR(50) NOT NULL, book_id INT) ENGINE=InnoDB;
CREATE TABLE counter (id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(20)) ENGINE=InnoDB AUTO_INCREMENT=1000;
CREATE TABLE `we;ird ``name``` (`50% off` INT PRIMARY KEY, `it's` VARCHAR(10)) ENGINE=InnoDB;

SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_AUTO_VALUE_ON_ZERO');
INSERT INTO counter (id, note) VALUES (0, 'zero'), (5, 'five');
INSERT INTO `we;ird ``name``` VALUES (1, 'a;b -- c');
INSERT INTO author (id, name, email, mentor_id) VALUES
  (1, 'Ann', 'ann@example.org', NULL), (2, 'Bob', 'bob@example.org', 1), (3, 'Cy', 'cy@example.org', 1);
INSERT INTO book (author_id, title, body, price_cents) VALUES
  (1, 'First', 'alpha beta', 1250), (1, 'Second', 'gamma', 990), (2, 'Third', 'delta', 100);
INSERT INTO book (author_id, title) VALUES (3, 'Gone');
DELETE FROM book WHERE title = 'Gone';

CREATE VIEW author_books AS
  SELECT a.id, a.name, COUNT(b.id) AS books FROM author a LEFT JOIN book b ON b.author_id = a.id GROUP BY a.id, a.name;
CREATE VIEW prolific AS SELECT name FROM author_books WHERE books >= 2;

DELIMITER //
CREATE TRIGGER book_bi BEFORE INSERT ON book FOR EACH ROW
BEGIN
  SET NEW.title = TRIM(NEW.title);  -- strip; then log; it's fine
END//
CREATE TRIGGER book_ai AFTER INSERT ON book FOR EACH ROW
BEGIN
  INSERT INTO audit (event, book_id) VALUES ('insert', NEW.id);
END//
CREATE TRIGGER counter_bu BEFORE UPDATE ON counter FOR EACH ROW SET NEW.note = LOWER(NEW.note) -- ends in a comment
//
CREATE PROCEDURE add_book(IN p_author INT, IN p_title VARCHAR(200))
BEGIN
  INSERT INTO book (author_id, title) VALUES (p_author, p_title);
  SELECT LAST_INSERT_ID() AS id;
END//
CREATE FUNCTION book_count(p_author INT) RETURNS INT READS SQL DATA
BEGIN
  RETURN (SELECT COUNT(*) FROM book WHERE author_id = p_author);
END//
DELIMITER ;

CREATE VIEW author_stats AS SELECT id, book_count(id) AS n FROM author;
CREATE EVENT purge_audit ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM audit WHERE id < 0;
INSERT INTO book (author_id, title) VALUES (2, '  Fourth  ');
INSERT INTO counter (note) VALUES ('gone');
DELETE FROM counter WHERE note = 'gone';  -- next AUTO_INCREMENT (1001) is above MAX(id) + 1
"""

# MariaDB only: a sequence, and a table whose default reads it (SHOW CREATE TABLE qualifies
# it with the template's name).
MARIADB_SCHEMA = """
CREATE SEQUENCE ticket_seq START WITH 100;
CREATE TABLE ticket (id INT NOT NULL DEFAULT (NEXT VALUE FOR ticket_seq) PRIMARY KEY, what VARCHAR(20));
INSERT INTO ticket (what) VALUES ('a'), ('b');
"""

TABLES = ["audit", "author", "book", "counter", "we;ird `name`"]


def _hex() -> str:
    return secrets.token_hex(5)


def _names_on_server(url: DatabaseURL) -> set[str]:
    conn = connect_url(url.with_database(""))
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW DATABASES")
            return {row[0] for row in cur.fetchall()}
    finally:
        conn.close()


def _force_drop(url: DatabaseURL, name: str) -> None:
    """Drop ``name`` and its registry row, ours or not (test cleanup only).  A directory the
    server could not remove (error 1010: a file it did not make) is emptied first, so that one
    failed test leaves nothing on the server for the runs after it to trip on."""
    conn = connect_url(url.with_database(""), autocommit=True)
    try:
        with conn.cursor() as cur:
            try:
                cur.execute("DROP DATABASE IF EXISTS " + quote_ident(name))
            except pymysql.err.OperationalError as exc:
                if exc.args[0] != 1010:
                    raise
                for leftover in mysql_database_dir(conn, name).iterdir():
                    leftover.unlink()
                cur.execute("DROP DATABASE IF EXISTS " + quote_ident(name))
            with contextlib.suppress(pymysql.err.ProgrammingError):  # no registry yet
                cur.execute("DELETE FROM " + quote_ident(REGISTRY) + ".`databases` WHERE name = %s", (name,))
    finally:
        conn.close()


def _files_left(url: DatabaseURL, names: list[str]) -> dict[str, list[str]]:
    """The files in the server's directories of ``names`` that still exist (a server on this
    machine; DROP DATABASE fails with error 1010 when it finds one it does not know)."""
    conn = connect_url(url.with_database(""))
    try:
        folders = {name: mysql_database_dir(conn, name) for name in names}
    finally:
        conn.close()
    return {name: sorted(os.listdir(folder)) for name, folder in folders.items() if folder.is_dir()}


def _query(conn: Any, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall())


def _marker(kind: str, run_id: str, **kw: Any) -> Marker:
    return Marker(kind=kind, run_id=run_id, **kw)  # type: ignore[arg-type]


class Made:
    """Names this test creates, dropped at teardown whatever happened (ours or not)."""

    def __init__(self, url: DatabaseURL) -> None:
        self.url = url
        self.names: list[str] = []

    def name(self, suffix: str = "") -> str:
        name = f"cdb_t_{_hex()}{suffix}"
        self.names.append(name)
        return name

    def cleanup(self) -> None:
        for name in self.names:
            _force_drop(self.url, name)


@pytest.fixture
def made(mysql_url: DatabaseURL) -> Iterator[Made]:
    tracker = Made(mysql_url)
    yield tracker
    tracker.cleanup()


@pytest.fixture
def backend(mysql_url: DatabaseURL) -> Iterator[MySQLBackend]:
    be = MySQLBackend(mysql_url, application_name="cdb-test")
    yield be
    be.close()


def _build_template(be: MySQLBackend, name: str, script: str, run_id: str) -> None:
    assert be.try_lock("template:" + name)
    be.create(name, _marker("template", run_id, state="building"))
    conn = be.connect(name)
    try:
        be.run_script(conn, script, "schema.sql")
    finally:
        conn.close()
    be.set_marker(name, _marker("template", run_id, state="ready"))


@pytest.fixture(scope="module")
def template(mysql_url: DatabaseURL) -> Iterator[tuple[MySQLBackend, str]]:
    """A ready template built from SCHEMA; its backend holds the template lock."""
    be = MySQLBackend(mysql_url, application_name="cdb-test-template")
    name = f"cdb_t_{_hex()}"
    try:
        mariadb = be.server_version().startswith("MariaDB")
        _build_template(be, name, SCHEMA + (MARIADB_SCHEMA if mariadb else ""), "tpl")
        yield be, name
    finally:
        be.close()
        _force_drop(mysql_url, name)


@pytest.fixture(params=[1, 2, 3], ids=["ddl-1-connection", "ddl-2-connections", "ddl-3-connections"])
def ddl_connections(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Clones made with the tables created over this many connections side by side."""
    from pytest_concurrent_db.backends import mysql

    monkeypatch.setattr(mysql, "_DDL_CONNECTIONS", request.param)
    monkeypatch.setattr(mysql, "_PARALLEL_DDL_FROM", 1)
    return int(request.param)


@pytest.fixture
def clone_of(backend: MySQLBackend, made: Made, ddl_connections: int) -> Callable[[str], str]:
    """Clone a template into a fresh name while holding that clone's lock."""

    def make(template_name: str) -> str:
        name = made.name()
        assert backend.try_lock("clone:" + name)
        backend.clone(template_name, name, _marker("clone", "run", worker_id="gw0", template=template_name))
        return name

    return make


def _edit_recipe(url: DatabaseURL, template: str, edit: Callable[[dict[str, Any]], None]) -> None:
    """Change the clone recipe stored in the registry for ``template``."""
    admin = connect_url(url.with_database(""), autocommit=True)
    try:
        table = quote_ident(REGISTRY) + ".`databases`"
        recipe = json.loads(_query(admin, "SELECT recipe FROM " + table + " WHERE name = %s", (template,))[0][0])
        edit(recipe)
        _query(admin, "UPDATE " + table + " SET recipe = %s WHERE name = %s", (json.dumps(recipe), template))
    finally:
        admin.close()


def _show_create(conn: Any, table: str) -> str:
    return str(_query(conn, "SHOW CREATE TABLE " + quote_ident(table))[0][1])


def _all_rows(conn: Any, table: str) -> list[tuple[Any, ...]]:
    return _query(conn, "SELECT * FROM " + quote_ident(table) + " ORDER BY 1")


# -- clone fidelity ---------------------------------------------------------------------


def test_clone_is_a_full_copy(template: tuple[MySQLBackend, str], backend: MySQLBackend,
                              clone_of: Callable[[str], str]) -> None:
    _, tpl = template
    name = clone_of(tpl)
    marker = backend.get_marker(name)
    assert marker is not None
    assert (marker.kind, marker.template) == ("clone", tpl)
    src, dst = backend.connect(tpl), backend.connect(name, autocommit=True)
    try:
        # structure, AUTO_INCREMENT positions and rows are identical
        for table in TABLES:
            assert _show_create(dst, table) == _show_create(src, table)
            assert _all_rows(dst, table) == _all_rows(src, table)
        expected = {"audit": 1, "author": 3, "book": 4, "counter": 2, "we;ird `name`": 1}
        if backend.server_version().startswith("MariaDB"):
            expected["ticket"] = 2
            ticket = _show_create(dst, "ticket")
            assert ticket == _show_create(src, "ticket").replace(quote_ident(tpl), quote_ident(name))
            assert quote_ident(name) + ".`ticket_seq`" in ticket
            assert _all_rows(dst, "ticket") == _all_rows(src, "ticket")
            _query(dst, "INSERT INTO ticket (what) VALUES ('c')")  # from the clone's own sequence
            assert _query(dst, "SELECT id > 101 FROM ticket WHERE what = 'c'") == [(1,)]
            assert _query(src, "SELECT COUNT(*) FROM ticket") == [(2,)]
        assert backend.row_counts(src) == expected
        assert {k: v for k, v in backend.row_counts(dst).items() if k != "ticket"} == {
            k: v for k, v in expected.items() if k != "ticket"}
        events = "SELECT EVENT_NAME, STATUS FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s"
        assert _query(dst, events, (name,)) == _query(dst, events, (tpl,)) == [("purge_audit", "DISABLED")]
        book = _show_create(dst, "book")
        assert ("CONSTRAINT `fk_book_author` FOREIGN KEY (`author_id`) REFERENCES `author` (`id`)"
                " ON DELETE CASCADE") in book
        assert "FULLTEXT KEY `ft_book`" in book
        assert "AUTO_INCREMENT=6" in book  # 1-3 seeded, 4 deleted, 5 'Fourth'
        assert "CONSTRAINT `fk_author_mentor` FOREIGN KEY (`mentor_id`) REFERENCES `author` (`id`)" in _show_create(
            dst, "author")
        assert "AUTO_INCREMENT=1001" in _show_create(dst, "counter")  # 1000 was deleted
        assert _query(dst, "SELECT note FROM counter WHERE id = 0") == [("zero",)]
        # database collation
        collation = "SELECT DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s"
        assert _query(dst, collation, (name,)) == _query(dst, collation, (tpl,)) == [("utf8mb4_unicode_ci",)]
        # nothing in the clone points at the template
        for (view,) in _query(dst, "SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = %s", (name,)):
            text = _query(dst, "SHOW CREATE VIEW " + quote_ident(view))[0][1]
            assert tpl not in text, text
    finally:
        src.close()
        dst.close()


def test_clone_behaves_like_the_template(template: tuple[MySQLBackend, str], backend: MySQLBackend,
                                         clone_of: Callable[[str], str]) -> None:
    _, tpl = template
    name = clone_of(tpl)
    src, dst = backend.connect(tpl), backend.connect(name, autocommit=True)
    try:
        before = backend.row_counts(src)
        prolific_before = _query(src, "SELECT name FROM prolific ORDER BY name")
        # triggers fire in the clone and write into the clone
        _query(dst, "INSERT INTO book (author_id, title) VALUES (3, '  Cy one ')")
        _query(dst, "INSERT INTO book (author_id, title) VALUES (3, 'Cy two')")
        assert _query(dst, "SELECT title FROM book WHERE author_id = 3 ORDER BY id") == [("Cy one",), ("Cy two",)]
        assert _query(dst, "SELECT COUNT(*) FROM audit") == [(3,)]
        # generated columns computed
        assert _query(dst, "SELECT price, title_len FROM book WHERE title = 'First'")[0][1] == 5
        # views read the clone's own rows (a view on a view, and one calling a function)
        assert _query(dst, "SELECT name FROM prolific ORDER BY name") == [("Ann",), ("Bob",), ("Cy",)]
        assert _query(dst, "SELECT n FROM author_stats WHERE id = 3") == [(2,)]
        # routines
        with dst.cursor() as cur:
            cur.execute("CALL add_book(2, 'Via proc')")
            new_id = cur.fetchall()[0][0]
            while cur.nextset():
                pass
        assert new_id == 8  # AUTO_INCREMENT carried over: 6 and 7 went to Cy's books
        assert _query(dst, "SELECT book_count(2)") == [(3,)]
        _query(dst, "UPDATE counter SET note = 'FIVE' WHERE id = 5")
        assert _query(dst, "SELECT note FROM counter WHERE id = 5") == [("five",)]
        # foreign key enforced
        with pytest.raises(pymysql.err.IntegrityError) as info:
            _query(dst, "INSERT INTO book (author_id, title) VALUES (999, 'orphan')")
        assert info.value.args[0] == 1452
        # full-text index usable
        hits = _query(dst, "SELECT title FROM book WHERE MATCH(title, body) AGAINST ('gamma')")
        assert hits == [("Second",)]
        # cascade
        _query(dst, "DELETE FROM author WHERE id = 1")
        assert _query(dst, "SELECT COUNT(*) FROM book WHERE author_id = 1") == [(0,)]
        assert _query(dst, "SELECT mentor_id FROM author WHERE id = 2") == [(None,)]
        # the template did not change
        assert backend.row_counts(src) == before
        assert _query(src, "SELECT name FROM prolific ORDER BY name") == prolific_before == [("Ann",), ("Bob",)]
    finally:
        src.close()
        dst.close()


def test_concurrent_clones_from_separate_backends(template: tuple[MySQLBackend, str], mysql_url: DatabaseURL,
                                                  made: Made) -> None:
    _, tpl = template
    names = [made.name() for _ in range(4)]
    errors: list[BaseException] = []
    counts: dict[str, dict[str, int]] = {}
    barrier = threading.Barrier(len(names))

    def work(name: str) -> None:
        be = MySQLBackend(mysql_url)
        try:
            assert be.try_lock("clone:" + name)
            barrier.wait(timeout=30)
            be.clone(tpl, name, _marker("clone", "conc", worker_id=name, template=tpl))
            conn = be.connect(name)
            try:
                counts[name] = be.row_counts(conn)
            finally:
                conn.close()
            be.drop(name)
        except BaseException as exc:
            errors.append(exc)
        finally:
            be.close()

    threads = [threading.Thread(target=work, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, (errors, _files_left(mysql_url, names))  # what a failed DROP left in the directories
    assert len({tuple(sorted(c.items())) for c in counts.values()}) == 1
    assert len(counts) == 4
    assert not set(names) & _names_on_server(mysql_url)


def test_failed_clone_leaves_nothing(backend: MySQLBackend, made: Made, mysql_url: DatabaseURL) -> None:
    tpl = made.name()
    _build_template(backend, tpl, "CREATE TABLE a (id INT PRIMARY KEY);\nINSERT INTO a VALUES (1);\n", "fail")
    _force_drop_table = connect_url(mysql_url.with_database(tpl), autocommit=True)
    try:
        _query(_force_drop_table, "DROP TABLE a")  # the template changed under its recipe
    finally:
        _force_drop_table.close()
    name = made.name()
    assert backend.try_lock("clone:" + name)
    with pytest.raises(pymysql.err.ProgrammingError) as info:
        backend.clone(tpl, name, _marker("clone", "fail", template=tpl))
    assert info.value.args[0] == 1146
    assert not backend.exists(name)
    assert backend.get_marker(name) is None
    assert name not in [i.name for i in backend.list_databases("cdb_t_")]
    conn = connect_url(mysql_url.with_database(""))
    try:
        assert _query(conn, "SELECT COUNT(*) FROM " + quote_ident(REGISTRY) + ".`databases` WHERE name = %s",
                      (name,)) == [(0,)]
    finally:
        conn.close()


def test_a_clone_cut_short_by_a_crash_that_lost_its_registry_row_is_marked_again(
    backend: MySQLBackend, made: Made, mysql_url: DatabaseURL, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that does not flush every commit (innodb_flush_log_at_trx_commit = 0) loses the
    registry row written just before it crashed; the copy made again after the crash writes it
    again, so the clone is ours (the server-fault test that found it crashes MariaDB mid-copy)."""
    tpl = made.name()
    _build_template(backend, tpl, "CREATE TABLE a (id INT PRIMARY KEY);\nINSERT INTO a VALUES (1);\n", "crash")
    name = made.name()
    assert backend.try_lock("clone:" + name)
    replay = backend._replay
    calls: list[int] = []

    def crash_once(recipe: dict[str, Any], target: str) -> None:
        calls.append(1)
        if len(calls) == 1:  # what the server lost in its crash, then the lost connection
            conn = connect_url(mysql_url.with_database(""), autocommit=True)
            try:
                _query(conn, "DELETE FROM " + quote_ident(REGISTRY) + ".`databases` WHERE name = %s", (target,))
            finally:
                conn.close()
            raise pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query")
        replay(recipe, target)

    monkeypatch.setattr(backend, "_replay", crash_once)
    marker = _marker("clone", "crash", worker_id="gw0", template=tpl)
    backend.clone(tpl, name, marker)
    assert len(calls) == 2
    assert backend.get_marker(name) == marker
    conn = connect_url(mysql_url.with_database(name))
    try:
        assert _query(conn, "SELECT id FROM a") == [(1,)]
    finally:
        conn.close()


def test_a_table_that_fails_on_any_connection_leaves_nothing(
    backend: MySQLBackend, made: Made, mysql_url: DatabaseURL, ddl_connections: int
) -> None:
    """The error of a table created on a helper connection reaches the caller, named, and the
    half-made clone is removed with its registry row."""
    tpl = made.name()
    script = "".join(f"CREATE TABLE t{i} (id INT PRIMARY KEY);\n" for i in range(6))
    _build_template(backend, tpl, script, "fail")

    def break_last_share(recipe: dict[str, Any]) -> None:
        recipe["tables"][ddl_connections - 1]["create"] = ["CREATE TABLE broken (id NOT_A_TYPE)"]

    _edit_recipe(mysql_url, tpl, break_last_share)
    other = MySQLBackend(mysql_url)  # no cached recipe
    try:
        name = made.name()
        assert other.try_lock("clone:" + name)
        with pytest.raises(pymysql.err.MySQLError, match="NOT_A_TYPE") as info:
            other.clone(tpl, name, _marker("clone", "fail", template=tpl))
        notes = getattr(info.value, "__notes__", [])
        assert sys.version_info < (3, 11) or any("broken" in note for note in notes), notes
        assert not other.exists(name)
        assert other.get_marker(name) is None
    finally:
        other.close()


@contextlib.contextmanager
def _registry_row_kept(url: DatabaseURL, name: str) -> Iterator[None]:
    """While inside, the server refuses to delete the registry row of ``name`` (a trigger that
    signals an error): every cleanup that removes it fails."""
    trigger = quote_ident(REGISTRY) + "." + quote_ident(f"refuse_{name}")
    admin = connect_url(url.with_database(""), autocommit=True)
    try:
        _query(
            admin,
            "CREATE TRIGGER " + trigger + " BEFORE DELETE ON " + quote_ident(REGISTRY) + ".`databases` FOR EACH ROW"
            " IF OLD.name = %s THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'registry row pinned by the test';"
            " END IF",
            (name,),
        )
        try:
            yield
        finally:
            _query(admin, "DROP TRIGGER IF EXISTS " + trigger)
    finally:
        admin.close()


@pytest.mark.parametrize("how", ["create", "clone"])
def test_a_failing_cleanup_never_hides_why_the_database_was_not_made(
    backend: MySQLBackend, made: Made, mysql_url: DatabaseURL, how: str
) -> None:
    """CREATE DATABASE fails (a database of that name exists, not ours), and removing the
    registry row claimed for it fails too: the caller sees the CREATE DATABASE error, with the
    cleanup's failure as a note."""
    tpl = made.name()
    if how == "clone":
        _build_template(backend, tpl, "CREATE TABLE a (id INT PRIMARY KEY);\n", "pinned")
    name = made.name()
    admin = connect_url(mysql_url.with_database(""), autocommit=True)
    try:
        _query(admin, "CREATE DATABASE " + quote_ident(name))  # someone else's, with no registry row
    finally:
        admin.close()
    assert backend.try_lock("clone:" + name)
    marker = _marker("clone", "pinned", template=tpl)
    make = {"create": lambda: backend.create(name, marker), "clone": lambda: backend.clone(tpl, name, marker)}[how]
    with _registry_row_kept(mysql_url, name), pytest.raises(pymysql.err.MySQLError) as info:
        make()
    assert info.value.args[0] == 1007, info.value  # ER_DB_CREATE_EXISTS, not the trigger's error
    notes = getattr(info.value, "__notes__", [])
    assert sys.version_info < (3, 11) or any(
        f"registry row of {name!r}" in note and "pinned by the test" in note for note in notes
    ), notes
    assert backend.exists(name)  # not ours: untouched


def test_create_twice_keeps_the_first(backend: MySQLBackend, made: Made) -> None:
    name = made.name()
    assert backend.try_lock("clone:" + name)
    first = _marker("clone", "one")
    backend.create(name, first)
    with pytest.raises(pymysql.err.ProgrammingError) as info:
        backend.create(name, _marker("clone", "two"))
    assert info.value.args[0] == 1007
    assert backend.get_marker(name) == first
    backend.drop(name)


def test_views_out_of_order_are_retried(backend: MySQLBackend, made: Made, mysql_url: DatabaseURL) -> None:
    tpl = made.name()
    script = (
        "CREATE TABLE t (id INT PRIMARY KEY);\nINSERT INTO t VALUES (1), (2);\n"
        "CREATE VIEW v_base AS SELECT id FROM t;\nCREATE VIEW v_mid AS SELECT id FROM v_base WHERE id > 1;\n"
        "CREATE VIEW a_top AS SELECT COUNT(*) AS n FROM v_mid;\n"
    )
    _build_template(backend, tpl, script, "views")

    def hide_dependencies(recipe: dict[str, Any]) -> None:
        assert [v["name"] for v in recipe["views"]] == ["v_base", "v_mid", "a_top"]  # dependency order
        recipe["views"].reverse()  # as if the dependencies could not be seen

    _edit_recipe(mysql_url, tpl, hide_dependencies)
    other = MySQLBackend(mysql_url)  # no cached recipe
    try:
        name = made.name()
        assert other.try_lock("clone:" + name)
        other.clone(tpl, name, _marker("clone", "views", template=tpl))
        conn = other.connect(name)
        try:
            assert _query(conn, "SELECT n FROM a_top") == [(1,)]
        finally:
            conn.close()
        other.drop(name)
    finally:
        other.close()


def test_clone_needs_a_ready_template(backend: MySQLBackend, made: Made) -> None:
    tpl = made.name()
    backend.create(tpl, _marker("template", "r", state="building"))
    name = made.name()
    with pytest.raises(ConcurrentDBError, match="not a ready template"):
        backend.clone(tpl, name, _marker("clone", "r", template=tpl))
    assert not backend.exists(name)


# -- drop -------------------------------------------------------------------------------


def test_drop_kills_an_open_transaction(template: tuple[MySQLBackend, str], backend: MySQLBackend,
                                        clone_of: Callable[[str], str]) -> None:
    _, tpl = template
    name = clone_of(tpl)
    holder = backend.connect(name)
    bystander = backend.connect(name, autocommit=True)
    _query(holder, "START TRANSACTION")
    _query(holder, "SELECT * FROM author FOR UPDATE")
    _query(holder, "INSERT INTO counter (note) VALUES ('open')")
    assert backend.in_transaction(holder)
    assert backend.other_sessions(name, bystander)  # sees the holder
    started = time.monotonic()
    backend.drop(name)
    assert time.monotonic() - started < 20
    assert not backend.exists(name)
    assert backend.get_marker(name) is None
    with pytest.raises(pymysql.err.MySQLError):
        _query(holder, "SELECT 1")
    holder.close()
    bystander.close()
    backend.drop(name)  # missing: no-op


def test_drop_refuses_a_database_without_marker(backend: MySQLBackend, made: Made, mysql_url: DatabaseURL) -> None:
    name = made.name()
    conn = connect_url(mysql_url.with_database(""), autocommit=True)
    try:
        _query(conn, "CREATE DATABASE " + quote_ident(name))
    finally:
        conn.close()
    assert backend.get_marker(name) is None
    assert [i.marker for i in backend.list_databases(name)] == [None]
    with pytest.raises(NotOursError, match="refusing to drop"):
        backend.drop(name)
    with pytest.raises(NotOursError):
        backend.set_marker(name, _marker("template", "x"))
    assert backend.exists(name)
    with pytest.raises(pymysql.err.ProgrammingError) as info:
        backend.create(name, _marker("clone", "x"))
    assert info.value.args[0] == 1007
    assert backend.get_marker(name) is None  # create did not claim it
    with pytest.raises(NotOursError):
        backend.drop(name)
    with pytest.raises(NotOursError):
        backend.drop(REGISTRY)
    assert backend.exists(REGISTRY)


def test_odd_names_create_and_drop_exactly_one_database(backend: MySQLBackend, made: Made,
                                                        mysql_url: DatabaseURL) -> None:
    token = f"cdb_t_{secrets.token_hex(3)}"
    decoy = token + "y"  # what an injection would drop
    name = token + " 'q` `x`; DROP DATABASE " + decoy + ";-- é中 %s"
    made.names += [decoy, name]
    assert len(name) <= backend.max_name_length
    assert backend.try_lock("clone:" + name)
    admin = connect_url(mysql_url.with_database(""), autocommit=True)
    try:
        _query(admin, "CREATE DATABASE " + quote_ident(decoy))
    finally:
        admin.close()

    def names() -> set[str]:  # other tests create databases concurrently: look at ours only
        return {n for n in _names_on_server(mysql_url) if n.startswith(token)}

    before = names()
    marker = _marker("clone", "odd", worker_id="gw1")
    backend.create(name, marker)
    assert names() - before == {name}
    assert decoy in before
    assert backend.exists(name)
    assert not backend.exists(name.upper())
    assert backend.get_marker(name) == marker
    infos = backend.list_databases(token)
    assert sorted((i.name, i.marker) for i in infos if i.marker) == [(name, marker)]
    assert [i.name for i in infos if not i.marker] == [decoy]
    conn = backend.connect(name)
    try:
        assert backend.current_database(conn) == name
        backend.run_script(conn, "CREATE TABLE `t``1` (a INT);\nINSERT INTO `t``1` VALUES (1), (2);", "odd.sql")
        assert backend.row_counts(conn) == {"t`1": 2}
    finally:
        conn.close()
    conn = connect_url(backend.url_for(name))
    try:
        assert backend.current_database(conn) == name
    finally:
        conn.close()
    backend.drop(name)
    assert names() == before


def test_list_databases_hides_the_registry(backend: MySQLBackend, made: Made) -> None:
    name = made.name()
    backend.create(name, _marker("clone", "ls"))
    assert backend.try_lock("clone:" + name)
    listed = backend.list_databases("cdb_")
    assert REGISTRY not in [i.name for i in listed]
    assert name in [i.name for i in listed]
    assert backend.exists(REGISTRY)
    assert backend.get_marker("cdb_t_does_not_exist") is None
    backend.drop(name)


# -- probes -------------------------------------------------------------------------------


def test_isolation_probes(backend: MySQLBackend, made: Made) -> None:
    name = made.name()
    assert backend.try_lock("clone:" + name)
    backend.create(name, _marker("clone", "probe"))
    conn = backend.connect(name)
    other = backend.connect(name, autocommit=True)
    try:
        assert backend.current_database(conn) == name
        assert backend.row_counts(conn) == {}
        backend.run_script(conn, "CREATE TABLE a (id INT);\nCREATE TABLE b (id INT);\nINSERT INTO a VALUES (1);",
                           "p.sql")
        assert not backend.in_transaction(conn)
        assert _query(conn, "SELECT a.id, COUNT(*) FROM a JOIN b GROUP BY a.id") == []
        assert not backend.in_transaction(conn)  # a transaction that only read is no leftover
        conn.rollback()
        _query(conn, "INSERT INTO b VALUES (1), (2)")
        assert backend.in_transaction(conn)
        assert backend.in_transaction(conn)  # asking again changes nothing
        conn.rollback()
        _query(conn, "INSERT INTO b VALUES (3)")
        conn.commit()
        _query(conn, "SELECT COUNT(*) FROM b")
        assert not backend.in_transaction(conn)  # the writes were committed
        _query(conn, "DELETE FROM b WHERE id = 3")
        conn.commit()
        assert not backend.in_transaction(conn)
        _query(conn, "INSERT INTO b VALUES (1), (2)")
        assert backend.in_transaction(conn)
        assert backend.row_counts(conn) == {"a": 1, "b": 2}
        conn.rollback()
        assert not backend.in_transaction(conn)
        assert backend.row_counts(conn) == {"a": 1, "b": 0}
        sessions = backend.other_sessions(name, conn)
        assert len(sessions) == 1
        assert f"connection {other.thread_id()}" in sessions[0]
        other.close()
        deadline = time.monotonic() + 10  # the server notices the disconnect asynchronously
        while backend.other_sessions(name, conn) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert backend.other_sessions(name, conn) == []
    finally:
        conn.close()
    backend.drop(name)


# -- scripts --------------------------------------------------------------------------------


def test_run_script_error_names_file_line_and_statement(backend: MySQLBackend, made: Made) -> None:
    name = made.name()
    assert backend.try_lock("clone:" + name)
    backend.create(name, _marker("clone", "script"))
    conn = backend.connect(name)
    try:
        script = "CREATE TABLE a (id INT);\n\n-- comment\nINSERT INTO a VALUES (1);\nINSERT INTO\n  nope VALUES (2);\n"
        with pytest.raises(ScriptError) as info:
            backend.run_script(conn, script, "migrations/001.sql")
        err = info.value
        assert (err.source, err.line) == ("migrations/001.sql", 5)
        assert err.statement == "INSERT INTO nope VALUES (2)"
        message = str(err)
        assert "\n" not in message
        assert message.startswith("concurrent-db: migrations/001.sql:5: INSERT INTO nope VALUES (2): ")
        assert "doesn't exist" in message
    finally:
        conn.close()
    backend.drop(name)


# -- locks ----------------------------------------------------------------------------------


def test_locks_between_two_backends(mysql_url: DatabaseURL) -> None:
    key = "template:cdb_t_" + _hex() + " é " + "x" * 100
    a, b = MySQLBackend(mysql_url, application_name="holder"), MySQLBackend(mysql_url)
    try:
        assert a.try_lock(key)
        assert a.try_lock(key)  # already ours
        assert not b.try_lock(key)
        started = time.monotonic()
        with pytest.raises(LockTimeoutError) as info:
            b.acquire_lock(key, 0.3)
        assert time.monotonic() - started < 5
        message = str(info.value)
        holder_id = a._query("SELECT CONNECTION_ID()")[0][0]
        assert f"MySQL connection {holder_id} (" in message
        assert key in message
        assert "--concurrent-db-lock-timeout" in message
        assert "\n" not in message
        a.release_lock(key)
        b.acquire_lock(key, 5)
        assert not a.try_lock(key)
        b.close()  # closing releases (once the server has processed the disconnect)
        a.acquire_lock(key, 10)
        a.release_lock(key)
    finally:
        a.close()
        b.close()


# -- preflight and errors -------------------------------------------------------------------


def test_server_version_and_preflight(backend: MySQLBackend) -> None:
    version = backend.server_version()
    assert re.fullmatch(r"(MariaDB|MySQL) \d+\.\d+\.\d+", version), version
    backend.preflight()
    assert backend.exists(REGISTRY)


def test_preflight_unreachable_hides_password(mysql_url: DatabaseURL) -> None:
    from dataclasses import replace

    url = replace(mysql_url, port=1, password="s3cr3t")
    be = MySQLBackend(url)
    with pytest.raises(BackendUnavailableError) as info:
        be.preflight()
    message = str(info.value)
    assert "s3cr3t" not in message
    assert "\n" not in message
    assert message.startswith(f"concurrent-db: cannot connect to MySQL at mysql://{url.username}:***@")
    assert ":1/" in message
    assert message.endswith(
        "start the server or fix --concurrent-db-url (ini concurrent_db_url, env CONCURRENT_DB_URL)")


def test_unix_socket_in_the_query_reaches_every_connection(backend: MySQLBackend, made: Made,
                                                           mysql_url: DatabaseURL) -> None:
    """``?unix_socket=`` reaches connect_url (ConcurrentDatabase.connect) as it reaches the
    backend's own connections, from one computation (connect_params)."""
    admin = connect_url(mysql_url.with_database(""))
    try:
        socket_path = str(_query(admin, "SELECT @@socket")[0][0])
    finally:
        admin.close()
    url = dataclasses.replace(mysql_url, query=(("unix_socket", socket_path),))
    assert connect_params(url)["unix_socket"] == socket_path
    name = made.name()
    assert backend.try_lock("clone:" + name)
    backend.create(name, _marker("clone", "socket"))
    over_socket = MySQLBackend(url)
    try:
        for conn in (connect_url(url.with_database(name)), connect_url(over_socket.url_for(name)),
                     over_socket.connect(name)):
            try:
                rows = _query(conn, "SELECT HOST, DB FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()")
                assert rows == [("localhost", name)]  # TCP connections show an address and a port
            finally:
                conn.close()
    finally:
        over_socket.close()


@pytest.mark.parametrize("how", ["connect_url", "backend.connect"])
def test_connection_errors_are_one_line_without_password(mysql_url: DatabaseURL, how: str) -> None:
    def connect(url: DatabaseURL) -> Any:
        if how == "connect_url":
            return connect_url(url)
        return MySQLBackend(url).connect(url.database)

    closed = dataclasses.replace(mysql_url, port=1, password="s3cr3t")
    with pytest.raises(BackendUnavailableError) as info:
        connect(closed)
    message = str(info.value)
    assert message.startswith(f"concurrent-db: cannot connect to MySQL at {closed}: ")
    assert message.endswith(f"; start the server or fix {option_names('url')}")
    assert "s3cr3t" not in message
    assert "\n" not in message

    missing = mysql_url.with_database("cdb_t_" + _hex() + "_missing")
    with pytest.raises(BackendUnavailableError) as info:
        connect(missing)
    message = str(info.value)
    assert message.startswith(f"concurrent-db: cannot connect to MySQL at {missing}: ")
    assert "(MySQL error 1049)" in message
    assert message.endswith(f"; check that database {missing.database!r} exists or fix {option_names('url')}")


def test_preflight_access_denied_hides_password(mysql_url: DatabaseURL) -> None:
    from dataclasses import replace

    be = MySQLBackend(replace(mysql_url, username="cdb_t_nobody", password="s3cr3t"))
    with pytest.raises(BackendUnavailableError) as info:
        be.preflight()
    message = str(info.value)
    assert "s3cr3t" not in message
    assert "1045" in message
    assert "\n" not in message


def test_preflight_without_create_privilege(mysql_url: DatabaseURL) -> None:
    from dataclasses import replace

    user = "cdb_t_" + _hex()
    admin = connect_url(mysql_url.with_database(""), autocommit=True)
    try:
        try:
            _query(admin, "CREATE USER %s@'%%' IDENTIFIED BY %s", (user, "s3cr3t"))
        except pymysql.err.MySQLError as exc:
            pytest.skip(f"cannot create a test user: {exc}")
        try:
            be = MySQLBackend(replace(mysql_url, username=user, password="s3cr3t"))
            try:
                with pytest.raises(PrivilegeError) as info:
                    be.preflight()
            finally:
                be.close()
            message = str(info.value)
            assert f"'{user}'@'%'" in message
            assert "GRANT CREATE, DROP" in message
            assert "s3cr3t" not in message
        finally:
            _query(admin, "DROP USER %s@'%%'", (user,))
    finally:
        admin.close()


# -- recipe text handling (no server needed) --------------------------------------------


def test_quote_ident() -> None:
    assert quote_ident("a`b") == "`a``b`"
    assert quote_ident("x'; DROP DATABASE y; --") == "`x'; DROP DATABASE y; --`"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("CREATE ALGORITHM=UNDEFINED DEFINER=`root`@`127.0.0.1` SQL SECURITY DEFINER VIEW `v` AS select 1",
         "CREATE ALGORITHM=UNDEFINED SQL SECURITY DEFINER VIEW `v` AS select 1"),
        ("CREATE DEFINER=`a``b`@`%` TRIGGER t BEFORE INSERT ON x FOR EACH ROW SET NEW.a = 'DEFINER=`x`@`y` '",
         "CREATE TRIGGER t BEFORE INSERT ON x FOR EACH ROW SET NEW.a = 'DEFINER=`x`@`y` '"),
        ("CREATE DEFINER='u'@'localhost' PROCEDURE `p`() BEGIN END", "CREATE PROCEDURE `p`() BEGIN END"),
        ("CREATE DEFINER=`some_role` EVENT `e` ON SCHEDULE EVERY 1 DAY DO SELECT 1",
         "CREATE EVENT `e` ON SCHEDULE EVERY 1 DAY DO SELECT 1"),
        ("CREATE TABLE `t` (a INT)", "CREATE TABLE `t` (a INT)"),
    ],
)
def test_strip_definer(text: str, expected: str) -> None:
    assert strip_definer(text) == expected


def test_cut_schema_rewrites_only_qualifiers() -> None:
    text = (
        "select `tpl`.`t`.`id` AS `tpl`, 'tpl.t' AS s, \"tpl\".x, tpl.f(1), tpl . `v`.a, `x`.`tpl`.c "
        "/* tpl.t */ -- tpl.t\n# tpl.t\n/*!50100 tpl.z */ from `tpl`.`t` join `tpl``s`.`t`"
    )
    segments, targets = cut_schema(text, "tpl")
    assert "`C`".join(segments) == (
        "select `C`.`t`.`id` AS `tpl`, 'tpl.t' AS s, \"tpl\".x, `C`.f(1), `C` . `v`.a, `x`.`tpl`.c "
        "/* tpl.t */ -- tpl.t\n# tpl.t\n/*!50100 `C`.z */ from `C`.`t` join `tpl``s`.`t`"
    )
    assert targets == ["t", "f", "v", "z", "t"]
    ansi = cut_schema('select "tpl"."t".a from "tpl"."t"', "tpl", sql_mode="ANSI_QUOTES")[0]
    assert "`C`".join(ansi) == 'select `C`."t".a from `C`."t"'
    escaped = cut_schema("select 'it\\'s tpl.t', tpl.t", "tpl")[0]
    assert "`C`".join(escaped) == "select 'it\\'s tpl.t', `C`.t"
