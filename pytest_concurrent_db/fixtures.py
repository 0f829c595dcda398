"""The fixtures users request or override in ``conftest.py``."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from .clones import ConcurrentDatabase, handle
from .errors import ConcurrentDBError
from .options import names
from .spares import FreshPool
from .state import WorkerConnection, get_state
from .transactions import TransactionOptions, begin, transaction_options
from .url import parse_url

T = TypeVar("T")

__all__ = [
    "ConcurrentDBIsolationWarning",
    "concurrent_db",
    "concurrent_db_connection",
    "concurrent_db_fresh",
    "concurrent_db_populate",
    "concurrent_db_transaction",
    "concurrent_db_url",
]


class ConcurrentDBIsolationWarning(pytest.PytestWarning):
    """A test left something behind on its worker's database (isolation mode ``default`` or ``warn``)."""


@pytest.fixture(scope="session")
def concurrent_db_populate() -> Callable[[Any], None] | None:
    """Override to fill the template: return a callable taking a DB-API connection.

    It runs once per template fingerprint (its source code is part of the
    fingerprint), after the schema files and the
    ``pytest_concurrent_db_populate_template`` hooks::

        @pytest.fixture(scope="session")
        def concurrent_db_populate():
            def populate(connection):
                connection.cursor().execute("INSERT INTO plan (name) VALUES ('free')")
            return populate
    """
    return None


@pytest.fixture(scope="session")
def concurrent_db(
    request: pytest.FixtureRequest, concurrent_db_populate: Callable[[Any], None] | None
) -> Iterator[ConcurrentDatabase]:
    """This worker's own database, cloned from the template (session scope).

    A frozen object with ``url``, ``name``, ``backend``, ``worker_id``,
    ``template_name``, ``run_id`` and ``connect()`` (a new DB-API connection).
    The database is dropped at the end of the worker's session unless
    ``--concurrent-db-keep`` is given.
    """
    state = get_state(request.config)
    if not state.settings.enabled:
        pytest.fail(
            f"concurrent-db: the concurrent_db fixtures need the plugin enabled: pass {names('enabled')}",
            pytrace=False,
        )
    error = ""
    try:
        database = state.setup(concurrent_db_populate)
    except ConcurrentDBError as exc:
        error = str(exc)
    if error:  # outside the except block: one message, no "during handling of..." chain
        request.session.shouldstop = error
        pytest.fail(error, pytrace=False)
    yield database
    state.teardown()


@pytest.fixture(scope="session")
def concurrent_db_url(concurrent_db: ConcurrentDatabase) -> str:
    """The URL of this worker's database (with its password; do not print it)."""
    return concurrent_db.url


@pytest.fixture(scope="session")
def _concurrent_db_worker_connection(
    request: pytest.FixtureRequest, concurrent_db: ConcurrentDatabase
) -> Iterator[WorkerConnection]:
    holder = get_state(request.config).worker_connection()
    yield holder
    holder.close()


@pytest.fixture
def concurrent_db_connection(
    request: pytest.FixtureRequest, _concurrent_db_worker_connection: WorkerConnection
) -> Iterator[Any]:
    """The worker's DB-API connection to its own database (one per worker, reused by tests).

    With ``@pytest.mark.concurrent_db(fresh=True)`` it is a new connection to the test's
    own fresh database (:func:`concurrent_db_fresh`) instead, closed after the test.

    After each test the isolation check runs (``--concurrent-db-isolation``): the
    connection must still be on this worker's clone, the clone must carry this
    worker's marker and the template must be unchanged (errors); an open
    transaction is rolled back and reported (a warning by default).
    """
    if fresh_requested(request):  # @pytest.mark.concurrent_db(fresh=True): this test's own clone
        database: ConcurrentDatabase = request.getfixturevalue("concurrent_db_fresh")
        connection = or_fail(database.connect)
        try:
            yield connection
        finally:
            connection.close()
        return
    holder = _concurrent_db_worker_connection
    yield or_fail(lambda: holder.connection)  # the server refused it (no free slot, down): one line
    errors, warns = holder.check()
    report_isolation(f"{request.node.nodeid} on worker {holder.worker_id}", errors, warns)


def or_fail(call: Callable[[], T]) -> T:
    """``call()``; its :class:`ConcurrentDBError` fails the test with one line (no traceback, no
    "during handling of..." chain)."""
    __tracebackhide__ = True
    error = ""
    try:
        return call()
    except ConcurrentDBError as exc:
        error = str(exc)
    pytest.fail(error, pytrace=False)


def report_isolation(where: str, errors: list[str], warns: list[str]) -> None:
    """Turn isolation findings into warnings and a (traceback-free) failure."""
    __tracebackhide__ = True
    for message in warns:
        warnings.warn(ConcurrentDBIsolationWarning(f"concurrent-db isolation: {where}: {message}"), stacklevel=2)
    if errors:
        pytest.fail(f"concurrent-db isolation check failed for {where}: {'; '.join(errors)}", pytrace=False)


@pytest.fixture
def concurrent_db_transaction(
    request: pytest.FixtureRequest, concurrent_db: ConcurrentDatabase, concurrent_db_connection: Any
) -> Iterator[Any]:
    """The worker's connection inside a transaction that is rolled back after the test.

    ``@pytest.mark.concurrent_db(isolation_level="SERIALIZABLE", read_only=True)`` sets the
    transaction's isolation level and read-only mode (an error where the backend lacks it).
    """
    options = marker_options(request, concurrent_db.backend)
    if not options.default:
        concurrent_db_connection.rollback()  # the options apply from the start of a transaction
    undo = begin(concurrent_db.backend, concurrent_db_connection, options)
    yield concurrent_db_connection
    concurrent_db_connection.rollback()
    undo()


def marker_options(request: pytest.FixtureRequest, backend: str) -> TransactionOptions:
    """The test's ``@pytest.mark.concurrent_db(isolation_level=..., read_only=...)``, checked
    for ``backend`` (a bad value fails the test with one line)."""
    __tracebackhide__ = True
    marker = request.node.get_closest_marker("concurrent_db")
    if marker is None:
        return TransactionOptions()
    unknown = sorted(set(marker.kwargs) - MARKER_KWARGS) or (["positional"] if marker.args else [])
    error = ""
    if unknown:
        error = (
            f"concurrent-db: @pytest.mark.concurrent_db takes isolation_level=, read_only= and fresh= only, "
            f"not {', '.join(unknown)}"
        )
    else:
        try:
            level, read_only = marker.kwargs.get("isolation_level"), marker.kwargs.get("read_only", False)
            return transaction_options(backend, level, read_only)
        except ConcurrentDBError as exc:
            error = str(exc)
    pytest.fail(error, pytrace=False)


#: the keyword arguments of ``@pytest.mark.concurrent_db``
MARKER_KWARGS = {"isolation_level", "read_only", "fresh"}
#: the fresh databases of the running test (for ``--concurrent-db-keep-failed``)
FRESH_KEY = pytest.StashKey[list[ConcurrentDatabase]]()
#: the reports of the running test's phases so far (``setup``, ``call``)
PHASE_REPORTS_KEY = pytest.StashKey[dict[str, pytest.TestReport]]()


def fresh_requested(request: pytest.FixtureRequest) -> bool:
    """Whether the test is marked ``@pytest.mark.concurrent_db(fresh=True)`` (a value
    other than True or False fails the test with one line)."""
    __tracebackhide__ = True
    marker = request.node.get_closest_marker("concurrent_db")
    if marker is None:
        return False
    fresh = marker.kwargs.get("fresh", False)
    if not isinstance(fresh, bool):
        pytest.fail(
            f"concurrent-db: @pytest.mark.concurrent_db(fresh=...) must be True or False, not {fresh!r}", pytrace=False
        )
    return fresh


def failed(item: pytest.Item) -> bool:
    """Whether the test failed so far (its setup or its call)."""
    return any(report.failed for report in item.stash.get(PHASE_REPORTS_KEY, {}).values())


@pytest.fixture
def concurrent_db_fresh(
    request: pytest.FixtureRequest, concurrent_db: ConcurrentDatabase
) -> Iterator[ConcurrentDatabase]:
    """A database made for this test only, dropped after it (function scope).

    The same kind of handle as ``concurrent_db`` (``url``, ``name``, ``connect()``...), of a
    pristine clone of the template taken from the worker's warm pool
    (``--concurrent-db-pool``, default 2 ready clones, refilled in the background): whatever
    the test or its threads commit, create or drop there vanishes with it.  With
    ``--concurrent-db-keep-failed`` the database of a failed test is kept and its URL shown
    in the failure report.  ``@pytest.mark.concurrent_db(fresh=True)`` points
    ``concurrent_db_connection`` and ``concurrent_db_session`` at it.
    """
    fresh_requested(request)  # a bad fresh= value fails here too, with one line
    state = get_state(request.config)
    databases = state.get_databases()
    pool = or_fail(databases.fresh_pool)
    name = or_fail(pool.take)
    database = handle(databases.backend, pool.template, name, state.run_id, state.worker_id)
    item = request.node
    fresh = item.stash.setdefault(FRESH_KEY, [])
    fresh.append(database)
    try:
        yield database
    finally:
        fresh.remove(database)
        database.close_thread_connections()
        give_back(pool, name, keep=state.settings.keep_failed and failed(item))


def give_back(pool: FreshPool, name: str, *, keep: bool) -> None:
    """Return a used fresh database to its pool: kept (``--concurrent-db-keep-failed`` and its
    test failed) or dropped, in the background."""
    if keep:
        pool.keep(name)
    else:
        pool.release(name)


def kept_section(database: ConcurrentDatabase) -> tuple[str, str]:
    """The failure report's section naming a kept fresh database (password hidden)."""
    url = parse_url(database.url).render(hide_password=True)
    return (
        "concurrent-db",
        f"fresh database kept (--concurrent-db-keep-failed): {database.name}\n"
        f"  url: {url}\n"
        f"  remove it with: python -m pytest_concurrent_db prune",
    )
