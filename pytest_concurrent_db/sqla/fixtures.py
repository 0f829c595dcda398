"""SQLAlchemy fixtures on the worker's clone; registered by the plugin when SQLAlchemy is
importable and ``--concurrent-db`` is on.

* ``concurrent_db_engine`` (session): an ``Engine`` with a pool of
  ``concurrent_db_pool_min``..``concurrent_db_pool_max`` connections;
* ``concurrent_db_session`` (function): an ORM ``Session`` inside an outer transaction
  that is rolled back after the test, also when the code under test commits
  (``join_transaction_mode="create_savepoint"``);
* ``concurrent_db_scoped_session`` (function): a thread-local ``scoped_session``; every
  thread's session is closed when the test ends;
* ``_concurrent_db_sqlalchemy_bind`` (session, autouse): the application's engines and
  sessionmakers of ``concurrent_db_sqlalchemy_bind`` rebound to the clone, and restored.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from ..clones import ConcurrentDatabase
from ..errors import ConcurrentDBError
from ..fixtures import fresh_requested, marker_options
from ..state import get_state
from ..transactions import begin
from .rebind import Rebinding
from .urls import make_engine

__all__ = [
    "_concurrent_db_sqlalchemy_bind",
    "concurrent_db_engine",
    "concurrent_db_scoped_session",
    "concurrent_db_session",
]


def _fail(exc: ConcurrentDBError) -> None:
    __tracebackhide__ = True
    pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def concurrent_db_engine(request: pytest.FixtureRequest, concurrent_db: ConcurrentDatabase) -> Iterator[Any]:
    """A SQLAlchemy ``Engine`` on this worker's database (session scope).

    Its pool opens ``concurrent_db_pool_min`` connections up front and keeps at most
    ``concurrent_db_pool_max``; it is disposed before the clone is dropped.
    """
    settings = get_state(request.config).settings
    try:
        engine = make_engine(
            concurrent_db.sqlalchemy_url, concurrent_db.backend, pool_min=settings.pool_min, pool_max=settings.pool_max
        )
    except ConcurrentDBError as exc:
        _fail(exc)
    yield engine
    engine.dispose()


@pytest.fixture
def concurrent_db_session(request: pytest.FixtureRequest, concurrent_db_engine: Any) -> Iterator[Any]:
    """An ORM ``Session`` on this worker's database whose work is rolled back after the test.

    The session joins an outer transaction with ``join_transaction_mode="create_savepoint"``:
    ``session.commit()`` in the code under test releases a savepoint, and the outer
    transaction is rolled back at the end.  ``@pytest.mark.concurrent_db(isolation_level=...,
    read_only=True)`` applies to that transaction; ``fresh=True`` puts the session on a
    database made for the test (``concurrent_db_fresh``) instead of the worker's.
    """
    engine = concurrent_db_engine
    fresh_engine = None
    if fresh_requested(request):  # @pytest.mark.concurrent_db(fresh=True): the test's own clone
        database: ConcurrentDatabase = request.getfixturevalue("concurrent_db_fresh")
        try:
            engine = fresh_engine = make_engine(database.sqlalchemy_url, database.backend, pool_min=0, pool_max=1)
        except ConcurrentDBError as exc:
            _fail(exc)
    backend = options_backend(engine.dialect.name)
    options = marker_options(request, backend)
    connection = engine.connect()
    undo = begin(backend, connection.connection.dbapi_connection, options)
    outer = connection.begin()
    from sqlalchemy.orm import Session  # here, not at import: the plugin loads this module in every run

    session = Session(bind=connection, join_transaction_mode="create_savepoint")
    try:
        yield session
    finally:
        session.close()
        outer.rollback()
        try:
            undo()
        finally:
            connection.close()
            if fresh_engine is not None:
                fresh_engine.dispose()


def options_backend(dialect: str) -> str:
    """Our backend name for a SQLAlchemy dialect name."""
    return "mysql" if dialect in ("mysql", "mariadb") else dialect


def _thread_sessions(engine: Any) -> Any:
    """A ``sessionmaker`` on ``engine`` that remembers every session it made, in any thread
    (``close_all_made()`` closes them)."""
    from sqlalchemy.orm import Session, sessionmaker

    class ThreadSessions(sessionmaker[Session]):
        def __init__(self) -> None:
            super().__init__(bind=engine)
            self._lock = threading.Lock()
            self.made: list[Session] = []

        def __call__(self, **kwargs: Any) -> Session:
            session = super().__call__(**kwargs)
            with self._lock:
                self.made.append(session)
            return session

        def close_all_made(self) -> None:
            """Close every session; those of threads still running lose their connections."""
            with self._lock:
                made, self.made = self.made, []
            for session in made:
                try:
                    session.close()
                except Exception:  # in use by a live thread: drop its connection instead
                    session.invalidate()

    return ThreadSessions()


@pytest.fixture
def concurrent_db_scoped_session(concurrent_db_engine: Any) -> Iterator[Any]:
    """A SQLAlchemy ``scoped_session`` on this worker's database: each thread that calls it
    gets its own ``Session`` (and connection from ``concurrent_db_engine``'s pool).  After
    the test every thread's session is closed, also for threads still running or dead.
    What the threads commit stays committed (they do not share the test's transaction)."""
    from sqlalchemy.orm import scoped_session

    factory = _thread_sessions(concurrent_db_engine)
    registry = scoped_session(factory)
    try:
        yield registry
    finally:
        factory.close_all_made()
        registry.registry.clear()


@pytest.fixture(scope="session", autouse=True)
def _concurrent_db_sqlalchemy_bind(request: pytest.FixtureRequest) -> Iterator[None]:
    """Rebind the objects of ``concurrent_db_sqlalchemy_bind`` to the worker's database for the
    session (an ``Engine`` is replaced, a ``sessionmaker`` reconfigured) and restore them."""
    paths = get_state(request.config).settings.sqlalchemy_bind.split()
    if not paths:
        yield
        return
    engine = request.getfixturevalue("concurrent_db_engine")
    database = request.getfixturevalue("concurrent_db")
    try:
        rebinding = Rebinding.resolve(paths)
        rebinding.apply(engine, database)
    except ConcurrentDBError as exc:
        _fail(exc)
    try:
        yield
    finally:
        rebinding.restore()
