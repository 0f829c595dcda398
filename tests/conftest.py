"""Shared test configuration: real servers, gated like psycopg's suite.

``CONCURRENT_DB_TEST_POSTGRESQL_URL`` / ``CONCURRENT_DB_TEST_MYSQL_URL`` point at the
servers (defaults: the local ones).  When a server cannot be reached its tests are
skipped with the reason, unless ``CONCURRENT_DB_REQUIRE_BACKENDS=1`` (CI), where they fail.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_concurrent_db.backends import connect_url
from pytest_concurrent_db.paths import Directories
from pytest_concurrent_db.site import Site
from pytest_concurrent_db.url import DatabaseURL, parse_url
from pytest_concurrent_db.worker import WorkerDatabases

pytest_plugins = ["pytester"]

POSTGRESQL_URL = os.environ.get("CONCURRENT_DB_TEST_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432/cdbtest")
MYSQL_URL = os.environ.get("CONCURRENT_DB_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/cdbtest")
REQUIRE_BACKENDS = os.environ.get("CONCURRENT_DB_REQUIRE_BACKENDS", "") not in ("", "0")

_probe_cache: dict[str, str | None] = {}


def drop_ours(backend: Any, prefix: str) -> dict[str, Any]:
    """Drop every database carrying our marker whose name starts with ``prefix``, then close
    ``backend`` (a test's cleanup: unmarked databases are never ours to drop).  Returns the
    marked ones still there after the drops (name -> marker; one made meanwhile, say)."""
    try:
        for info in backend.list_databases(prefix):
            if info.marker is not None:
                backend.drop(info.name)
        return {i.name: i.marker for i in backend.list_databases(prefix) if i.marker is not None}
    finally:
        backend.close()


@pytest.fixture
def server_wide_prune_lock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Held by the tests that leave a database the server cannot drop and by those that prune
    every project's templates on the server (``prune --templates``), across xdist workers:
    that prune would meet the undroppable database (exit 1), and hold its lock for the drop's
    retries while the other test's run looks for it."""
    from filelock import FileLock

    with FileLock(str(tmp_path_factory.getbasetemp().parent / "cdb-server-wide-prune.lock")):
        yield


def mysql_database_dir(conn: Any, name: str) -> Path:
    """The directory where the MySQL server of ``conn`` (on this machine) keeps database ``name``."""
    with conn.cursor() as cur:
        cur.execute("SELECT @@datadir")
        return Path(cur.fetchone()[0]) / name


def dead_undroppable_mysql_database(backend: Any, name: str, template: str) -> Path:
    """Make ``name``, a MySQL clone of a dead run (``template``'s), that the server cannot drop:
    its directory holds a file the server did not make (``SELECT ... INTO OUTFILE``), so
    ``DROP DATABASE`` drops the tables and fails with error 1010.  Returns that file: unlink
    it and the database can be dropped again."""
    from pytest_concurrent_db.backends import Marker

    assert backend.try_lock("clone:" + name)  # no other test's run reaps it before it is ready
    try:
        backend.create(name, Marker(kind="clone", run_id="deadrun", worker_id=name[-3:], template=template))
        conn = backend.connect(name)
        try:
            stray = mysql_database_dir(conn, name) / "stray.txt"
            with conn.cursor() as cur:
                cur.execute("SELECT 1 INTO OUTFILE 'stray.txt'")  # relative: into the database's directory
        finally:
            conn.close()
    finally:
        backend.release_lock("clone:" + name)
    assert stray.exists()
    return stray


def worker_databases(
    url: DatabaseURL,
    *,
    run_id: str,
    worker_id: str,
    lock_dir: Path,
    base: str | None = None,
    spares: int | str = 0,
    template_dir: Path | None = None,
    clone_dir: Path | None = None,
) -> WorkerDatabases:
    """The databases of one simulated process, with its file locks (and, for SQLite, its
    templates and clones) in directories of the test's own: another "machine" is another
    ``lock_dir``."""
    root = Path(lock_dir)
    directories = Directories(templates=Path(template_dir or root), clones=Path(clone_dir or root), locks=root)
    return WorkerDatabases(Site(url, directories, base=base or ""), run_id=run_id, worker_id=worker_id, spares=spares)


def require_module(name: str) -> Any:
    """Import ``name`` for a test module; skipped with the reason when it is missing, failed on CI
    (``CONCURRENT_DB_REQUIRE_BACKENDS``), where every extra of the test suite must be installed."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if REQUIRE_BACKENDS:
            pytest.fail(f"{name} is not installed ({exc}); CONCURRENT_DB_REQUIRE_BACKENDS is set", pytrace=False)
        pytest.skip(f"{name} is not installed", allow_module_level=True)


def _probe(url: str) -> str | None:
    """None if the server answers, else the reason."""
    if url not in _probe_cache:
        parsed = parse_url(url)
        server = parsed.with_database("postgres" if parsed.backend == "postgresql" else "")
        try:
            conn = connect_url(server, connect_timeout=3)
            conn.close()
            _probe_cache[url] = None
        except Exception as exc:  # any driver error means "not available"
            _probe_cache[url] = f"{type(exc).__name__}: {exc}"
    return _probe_cache[url]


def _require(url: str, backend: str) -> DatabaseURL:
    reason = _probe(url)
    if reason is not None:
        message = f"{backend} server at {parse_url(url)} not available ({reason})"
        if REQUIRE_BACKENDS:
            pytest.fail(f"{message}; CONCURRENT_DB_REQUIRE_BACKENDS is set", pytrace=False)
        pytest.skip(message)
    return parse_url(url)


@pytest.fixture(scope="session")
def postgresql_url() -> DatabaseURL:
    """The PostgreSQL server the tests use (skipped, or failed on CI, if it is down)."""
    return _require(POSTGRESQL_URL, "postgresql")


@pytest.fixture(scope="session")
def mysql_url() -> DatabaseURL:
    """The MySQL/MariaDB server the tests use (skipped, or failed on CI, if it is down)."""
    return _require(MYSQL_URL, "mysql")


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def backend_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabaseURL]:
    """Each backend in turn, as a URL whose database name is unique to the test."""
    name = request.param
    if name == "sqlite":
        yield parse_url(f"sqlite:///{tmp_path_factory.mktemp('sqlite')}/app.db")
    else:
        yield request.getfixturevalue(f"{name}_url")
