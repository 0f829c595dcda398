"""Hostile names and passwords against the real servers, property-based.

Whatever a project's database is called (quotes, backticks, spaces, unicode, SQL
fragments, more than 63 bytes, differing only after byte 63), the engine creates,
clones and drops exactly one database per name and nothing else changes on the
server.  Names handed to a backend directly are quoted, never interpreted.  Passwords
with ``@``, ``:`` and ``/`` work when percent-encoded in the URL and never appear in
the output.

Other tests create and drop databases concurrently: every comparison looks at the
databases carrying this module's unique token (among them a decoy that the SQL
fragments name), plus the server's own databases.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from pytest_concurrent_db import ConcurrentDBError
from pytest_concurrent_db.backends import Backend, Marker, connect_url, load_backend
from pytest_concurrent_db.backends.mysql import REGISTRY, quote_ident
from pytest_concurrent_db.naming import clone_name, sanitize, template_name
from pytest_concurrent_db.template import callable_populator
from pytest_concurrent_db.url import DatabaseURL, parse_url
from pytest_concurrent_db.worker import WorkerDatabases
from tests.conftest import worker_databases

TOKEN = "nm" + secrets.token_hex(3)  # in every database this module makes
SYSTEM = {"postgres", "template0", "template1", "information_schema", "mysql", "performance_schema", "sys"}
few = settings(
    database=None,
    deadline=None,
    max_examples=12,
    suppress_health_check=[HealthCheck.too_slow],
)


@dataclass
class Server:
    """One backend under test and how to list everything on it."""

    name: str
    url: DatabaseURL
    root: Path  # SQLite: every file lives below; servers: the lock directory
    decoy: str  # a database of ours, without marker, that an injection would drop

    def backend(self, application_name: str = "pytest-concurrent-db names") -> Backend:
        if self.name == "sqlite":
            return load_backend(self.url, template_dir=self.root / "templates", clone_dir=self.root / "clones")
        return load_backend(self.url, application_name=application_name)

    def engine(self, base: str, run_id: str, worker_id: str) -> WorkerDatabases:
        return worker_databases(
            self.url,
            run_id=run_id,
            worker_id=worker_id,
            lock_dir=self.root / "locks",
            base=base,
            template_dir=self.root / "templates",
            clone_dir=self.root / "clones",
        )

    def everything(self) -> set[str]:
        """Our databases and the server's own: what no example may change but its own."""
        if self.name == "sqlite":
            return {
                str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file() and "locks" not in p.parts
            }
        admin = _admin(self.url)
        try:
            cur = admin.cursor()
            if self.name == "postgresql":
                cur.execute("SELECT datname FROM pg_database")
            else:
                cur.execute("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")
            names = {str(row[0]) for row in cur.fetchall()}
        finally:
            admin.close()
        return {n for n in names if TOKEN in n or n in SYSTEM}

    def registry_rows(self) -> set[str]:
        """MySQL: our rows in the registry (a database dropped must lose its row too)."""
        if self.name != "mysql":
            return set()
        admin = _admin(self.url)
        try:
            cur = admin.cursor()
            cur.execute("SELECT name FROM " + quote_ident(REGISTRY) + ".databases")
            return {str(row[0]) for row in cur.fetchall() if TOKEN in str(row[0])}
        finally:
            admin.close()


def _admin(url: DatabaseURL) -> Any:
    return connect_url(url.with_database("postgres" if url.backend == "postgresql" else ""), autocommit=True)


def _admin_run(url: DatabaseURL, statement: str, args: Any = None) -> None:
    admin = _admin(url)
    try:
        admin.cursor().execute(statement, args)
    finally:
        admin.close()


def _quote(url: DatabaseURL, name: str) -> str:
    if url.backend == "postgresql":
        return '"' + name.replace('"', '""') + '"'
    return quote_ident(name)


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "mysql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("names")
    decoy = f"cdb_{TOKEN}_decoy"
    if request.param == "sqlite":
        yield Server("sqlite", parse_url(f"sqlite:///{root}/app.db"), root, decoy)
        return
    url: DatabaseURL = request.getfixturevalue(f"{request.param}_url")
    _admin_run(url, "CREATE DATABASE " + _quote(url, decoy))
    try:
        yield Server(request.param, url, root, decoy)
    finally:
        _admin_run(url, "DROP DATABASE IF EXISTS " + _quote(url, decoy))


# -- strategies ------------------------------------------------------------------------------
FRAGMENTS = [
    'x"; DROP DATABASE "{decoy}"; --',
    "x`; DROP DATABASE `{decoy}`; -- ",
    "x'; DROP DATABASE {decoy}; --",
    "Robert'); DROP TABLE students;--",
    "a\"b'c`d\\e",
    "with space",
    "trailing space ",
    "%_wild%_card_",
    "ünïcødé ñame",
    "名前のデータベース",
    "emoji 🐍 name",
    "Mixed CASE",
    "$1 $$ $tag$",
    "/etc/passwd ../..",
    "",
]


_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")  # no NUL: no C string holds it


def _hostile(decoy: str) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from([f.format(decoy=decoy) for f in FRAGMENTS]),
        st.text(_CHARS, max_size=30),
        st.text(_CHARS, min_size=64, max_size=120),
    )


# -- through the engine: the names it generates --------------------------------------------
def _populate(connection: Any) -> None:
    cur = connection.cursor()
    cur.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, label VARCHAR(50))")
    cur.execute("INSERT INTO item (id, label) VALUES (1, 'seed')")


def _make(server: Server, base: str, run_id: str, worker_id: str) -> tuple[WorkerDatabases, str, str]:
    """Template and clone for ``base`` through real WorkerDatabases: (databases, template, clone)."""
    engine = server.engine(base, run_id, worker_id)
    try:
        template = engine.ensure_template([callable_populator("names", _populate)]).name
        clone = engine.create_clone().name
    except BaseException:
        _unmake(engine)
        raise
    return engine, template, clone


def _unmake(engine: WorkerDatabases) -> None:
    try:
        engine.drop_clone()
        if engine.template is not None:
            engine.backend.drop(engine.template.name)
    finally:
        engine.close()


def _rows(engine: WorkerDatabases) -> list[tuple[Any, ...]]:
    assert engine.database is not None
    connection = engine.database.connect()
    try:
        cur = connection.cursor()
        cur.execute("SELECT id, label FROM item")
        return [tuple(row) for row in cur.fetchall()]
    finally:
        connection.close()


@few
@given(data=st.data())
def test_any_base_name_makes_exactly_one_template_and_one_clone(server: Server, data: st.DataObject) -> None:
    base = TOKEN + data.draw(_hostile(server.decoy), label="base")
    run_id = data.draw(st.one_of(st.sampled_from(FRAGMENTS), st.text(_CHARS, max_size=30)), label="run_id")
    worker_id = data.draw(st.sampled_from(["gw0", "gw15", "main", "gw0'; --", "gw ü"]), label="worker_id")
    before, registry = server.everything(), server.registry_rows()
    engine, template, clone = _make(server, base, run_id, worker_id)
    try:
        assert template == template_name(base, engine.template.fingerprint)
        assert clone == clone_name(base, run_id, worker_id)
        for name in (template, clone):
            assert re.fullmatch(r"[a-z0-9_]+", name), name
            assert name.startswith(f"cdb_{TOKEN}")
            assert len(name.encode()) <= 63
        if server.name == "sqlite":  # a file and a marker file each
            made = {f"templates/{template}.db", f"templates/{template}.json"}
            made |= {f"clones/{clone}.db", f"templates/clones/{clone}.json"}
        else:
            made = {template, clone}
        after = server.everything()
        assert after - before == made
        assert before <= after  # nothing else touched
        assert _rows(engine) == [(1, "seed")]
        marker = engine.backend.get_marker(clone)
        assert marker is not None
        assert (marker.run_id, marker.worker_id, marker.template) == (run_id, worker_id, template)
    finally:
        _unmake(engine)
    assert server.everything() == before
    assert server.registry_rows() == registry


@settings(few, max_examples=6)
@given(
    common=st.text(_CHARS, min_size=64, max_size=90),
    tails=st.lists(st.text(max_size=8), min_size=2, max_size=2, unique=True),
)
def test_long_names_that_differ_only_after_byte_63_never_collide(server: Server, common: str, tails: list[str]) -> None:
    bases = [TOKEN + common + tail for tail in tails]
    assert bases[0].encode()[:63] == bases[1].encode()[:63]
    before = server.everything()
    made: list[tuple[WorkerDatabases, str, str]] = []
    try:
        for base in bases:
            made.append(_make(server, base, "r" + secrets.token_hex(4), "gw0"))
        names = [name for _, template, clone in made for name in (template, clone)]
        assert len(set(names)) == 4, names
        if server.name != "sqlite":
            assert server.everything() - before == set(names)
        for engine, _, _ in made:
            assert _rows(engine) == [(1, "seed")]
    finally:
        for engine, _, _ in made:
            _unmake(engine)
    assert server.everything() == before


# -- straight to the backend: names quoted, never interpreted ----------------------------------
def _raw_names(server: Server) -> st.SearchStrategy[str]:
    """Hostile names within the server's limits, behind a prefix of ours."""
    prefix = f"cdb_{TOKEN}_"

    def fit(text: str) -> str:
        name = prefix + text
        if server.name == "postgresql":
            while len(name.encode()) > 63:
                name = name[:-1]
        return name[:64]

    return _hostile(server.decoy).map(fit).filter(lambda n: n != server.decoy)


def _refused(action: Callable[[], None]) -> Exception | None:
    """The error ``action`` raised (not an assertion), or None."""
    try:
        action()
    except AssertionError:
        raise
    except Exception as exc:
        return exc
    return None


def _held(backend: Backend, key: str) -> Callable[[], None]:
    """Take ``key`` as a live owner does (so that concurrent runs never reap what we make)."""
    assert backend.try_lock(key)
    return lambda: backend.release_lock(key)


@pytest.mark.parametrize("server", ["postgresql", "mysql"], indirect=True)  # SQLite names are file names
@few
@given(data=st.data())
def test_hostile_names_given_to_a_backend_are_quoted_not_interpreted(server: Server, data: st.DataObject) -> None:
    names = data.draw(st.lists(_raw_names(server), min_size=2, max_size=2, unique=True), label="names")
    template, clone = names
    backend = server.backend()
    before, registry = server.everything(), server.registry_rows()
    releases: list[Callable[[], None]] = []
    try:
        releases += [_held(backend, f"template:{template}"), _held(backend, f"clone:{clone}")]
        refused = _refused(lambda: backend.create(template, Marker(kind="template", run_id="raw", state="building")))
        if refused is not None:  # the server may refuse a name (MySQL: trailing space, 4-byte UTF-8): cleanly
            assert server.name == "mysql", refused
            assert server.everything() == before
            assert server.registry_rows() == registry
            return
        assert server.everything() - before == {template}
        listed = [info.name for info in backend.list_databases(template)]  # % and _ are no wildcards
        assert set(listed) == {n for n in server.everything() if n.startswith(template)}
        backend.set_marker(template, Marker(kind="template", run_id="raw", state="ready"))
        marker = Marker(kind="clone", run_id="raw", worker_id="gw0", template=template)
        refused = _refused(lambda: backend.clone(template, clone, marker))
        if refused is not None:
            assert server.name == "mysql", refused
        else:
            assert server.everything() - before == {template, clone}
            assert backend.get_marker(clone) == marker
            backend.drop(clone)
        assert server.everything() - before == {template}
        backend.drop(template)
    finally:
        with contextlib.suppress(ConcurrentDBError):
            backend.drop(clone)
            backend.drop(template)
        for release in releases:
            release()
        backend.close()
    assert server.everything() == before  # the decoy too
    assert server.registry_rows() == registry


# -- passwords ---------------------------------------------------------------------------------
PASSWORD = "p@ss:w/rd%40?#&x y'\""


@pytest.fixture(params=["postgresql", "mysql"])
def password_url(request: pytest.FixtureRequest) -> Iterator[DatabaseURL]:
    """A user whose password has ``@``, ``:``, ``/`` (and more), and its percent-encoded URL.

    PostgreSQL here trusts local connections (the password is not checked): the test
    then proves the exact password reaches libpq.  MariaDB checks it.  Superuser/all
    privileges on ``cdb_%`` so that a run can reap any leftover of another test."""
    server: DatabaseURL = request.getfixturevalue(f"{request.param}_url")
    user = f"cdb_pw_{TOKEN}"
    if server.backend == "postgresql":  # no parameters in utility statements: a literal, quoted by psycopg
        create = [f'CREATE ROLE "{user}" LOGIN SUPERUSER PASSWORD {sql.Literal(PASSWORD).as_string()}']
        drop = [f'DROP ROLE IF EXISTS "{user}"']
    else:
        create = [f"CREATE USER '{user}'@'{host}' IDENTIFIED BY %s" for host in ("%%", "localhost")]
        create += [
            f"GRANT ALL PRIVILEGES ON {db}.* TO '{user}'@'{host}'"
            for db in ("`cdb\\_%`", quote_ident(REGISTRY))
            for host in ("%", "localhost")
        ]
        drop = [f"DROP USER IF EXISTS '{user}'@'{host}'" for host in ("%", "localhost")]
    for statement in create:
        _admin_run(server, statement, (PASSWORD,) if server.backend == "mysql" and "%s" in statement else None)
    url = parse_url(f"{server.backend}://{user}:{quote(PASSWORD, safe='')}@{server.host}:{server.port}/pw{TOKEN}")
    try:
        yield url
    finally:
        cleaner = load_backend(server)  # what the runs left (their template) first: a role owning
        try:  # a database cannot be dropped
            for prefix in (f"cdb_pw{TOKEN}_", f"cdb_{TOKEN}_pw"):
                for info in cleaner.list_databases(prefix):
                    cleaner.drop(info.name)
        finally:
            cleaner.close()
        for statement in drop:
            _admin_run(server, statement)


def test_a_password_with_url_delimiters_connects(password_url: DatabaseURL) -> None:
    assert password_url.password == PASSWORD
    assert password_url.database == f"pw{TOKEN}"
    backend = load_backend(password_url)
    name = f"cdb_{TOKEN}_pw"
    try:
        backend.preflight()
        assert backend.try_lock(f"clone:{name}")
        backend.create(name, Marker(kind="clone", run_id="pw", worker_id="gw0"))
        connection = backend.connect(name)
        try:
            if password_url.backend == "postgresql":
                assert connection.info.password == PASSWORD  # what libpq sent
                assert connection.info.user == password_url.username
            cur = connection.cursor()
            cur.execute("SELECT 1")
            assert cur.fetchone()[0] == 1
        finally:
            connection.close()
        backend.drop(name)
        assert not backend.exists(name)
    finally:
        with contextlib.suppress(ConcurrentDBError):
            backend.drop(name)
        backend.close()
    if password_url.backend == "mysql":  # the server checks it: a wrong one is refused
        wrong = parse_url(password_url.render(hide_password=False).replace("x%20y", "x%20z"))
        with pytest.raises(ConcurrentDBError, match="cannot connect") as info:
            load_backend(wrong).preflight()
        assert PASSWORD not in str(info.value)


def test_a_password_never_appears_in_the_output(password_url: DatabaseURL, pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(
        test_pw="""
        import pytest

        def test_passes(concurrent_db, concurrent_db_connection):
            print(concurrent_db)  # the repr hides the URL

        def test_fails(concurrent_db_connection):
            pytest.fail("on purpose")
        """
    )
    result = pytester.runpytest_subprocess(
        "-n",
        "2",
        "-v",
        "-rA",
        "--concurrent-db",
        "--concurrent-db-url",
        password_url.render(hide_password=False),
        timeout=240,
    )
    output = result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=1, failed=1)
    assert "concurrent-db: backend=" in output
    assert "***" in output  # the URL is shown, masked
    for form in (PASSWORD, quote(PASSWORD, safe=""), quote(PASSWORD), "p@ss", "w/rd"):
        assert form not in output, form
    backend = load_backend(password_url)
    try:  # the clones are gone; the template stays for the next run (dropped by the fixture)
        infos = backend.list_databases(f"cdb_{sanitize(password_url.database)}_")
        assert [i.name for i in infos if i.marker is None or i.marker.kind == "clone"] == []  # spares may wait
    finally:
        backend.close()
