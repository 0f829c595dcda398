"""pytest-django integration: Django's migrations build one template per test
database, and every worker points its connections at its own clone.

Registered by :mod:`pytest_concurrent_db.plugin` only when ``--concurrent-db`` is on
and pytest-django is active; Django and pytest-django are imported inside functions.

* ``django_db_setup`` (replacing pytest-django's) runs in a pytest process of the run,
  after the user's conftest and session fixtures: for each test database (in
  ``TEST["DEPENDENCIES"]`` order) the template is built by ``migrate`` (data
  migrations, ``pre_migrate``/``post_migrate`` handlers, cache tables) once, under the
  plugin's locks, then cloned; ``settings.DATABASES`` and the live connections of
  the database's aliases and of its ``TEST["MIRROR"]`` aliases point at the clone.
* The template fingerprint covers the migration files of every installed app (the
  models of apps without migrations), ``INSTALLED_APPS``, ``DATABASE_ROUTERS``, the
  alias's settings (not its password), Django's version and ``--no-migrations``.
* ``--reuse-db`` is accepted (reusing an unchanged template is the default);
  ``--create-db`` rebuilds the template once in this run, like ``--concurrent-db-rebuild``.
* At the end of the session each worker checks that its connections are still on
  its own clone (``--concurrent-db-isolation``), then drops the clone.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from .django_common import (
    CodeKeys,
    Pointer,
    base_names,
    check_connection,
    checker_for,
    classify,
    django_populator,
    misdirected,
    serialize,
    server_error,
    unique_test_databases,
    url_and_base,
)
from .django_fresh import FreshDjango, wants_fresh
from .errors import ConcurrentDBError
from .fixtures import report_isolation
from .state import PluginState, get_state, runs_xdist
from .worker import WorkerDatabases, server_of

__all__ = [
    "ConcurrentTestRunner",  # noqa: F822 (imported on first use: __getattr__ below)
    "DjangoIntegration",
    "django_db_modify_db_settings_xdist_suffix",
    "django_db_setup",
]


def __getattr__(name: str) -> Any:
    """``ConcurrentTestRunner`` (``TEST_RUNNER = "pytest_concurrent_db.django.ConcurrentTestRunner"``),
    imported on first use: the runner needs no pytest-django."""
    if name == "ConcurrentTestRunner":
        from .django_runner import ConcurrentTestRunner

        return ConcurrentTestRunner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class _TestDatabase:
    """One test database of this process: its aliases (the first one owns it) and clone."""

    aliases: list[str]
    databases: WorkerDatabases
    target: str = ""  # the NAME Django connects to: the clone's name, or its file for SQLite
    mirrors: list[str] = field(default_factory=list)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """In the controller: the databases of each test database, checked now and swept at the
    end (which drops the clones of crashed workers)."""
    from pytest_django.lazy_django import django_settings_is_configured

    integration = _integration(session.config)
    if integration.state.is_worker or not django_settings_is_configured():
        return
    reaped: set[tuple[str, str]] = set()  # one reap per server, however many test databases are on it
    for signature, aliases in unique_test_databases().items():
        databases = integration.databases_for(signature, aliases[0], required=False)
        if databases is None:
            continue
        server = server_of(databases.site)
        try:  # an xdist controller reaps while its workers start
            databases.preflight(reap=server not in reaped, reap_in_background=runs_xdist(session.config))
            reaped.add(server)
        except ConcurrentDBError as exc:
            raise pytest.UsageError(server_error(exc, aliases[0])) from None


@pytest.fixture(scope="session")
def django_db_modify_db_settings_xdist_suffix() -> None:
    """No ``_gwN`` suffix: with ``--concurrent-db`` every worker gets its own clone."""


@pytest.fixture(scope="session")
def django_db_setup(  # noqa: PLR0917 (fixture arguments)
    request: pytest.FixtureRequest,
    django_test_environment: None,
    django_db_blocker: Any,
    django_db_use_migrations: bool,
    django_db_createdb: bool,
    django_db_modify_db_settings: None,
) -> Iterator[None]:
    """The test databases of this worker: clones of templates built once by ``migrate``.

    Replaces pytest-django's ``django_db_setup`` when ``--concurrent-db`` is given;
    override or extend it in ``conftest.py`` the same way.
    """
    integration = _integration(request.config)
    aliases, serialized = _databases_for_setup(request.session.items)
    rebuild = integration.state.settings.rebuild or django_db_createdb
    with django_db_blocker.unblock():
        try:
            integration.setup(aliases, serialized, migrations=django_db_use_migrations, rebuild=rebuild)
        except ConcurrentDBError as exc:
            request.session.shouldstop = str(exc)
            pytest.fail(str(exc), pytrace=False)
    yield
    with django_db_blocker.unblock():
        errors, warns = integration.teardown()
    report_isolation(f"Django databases of worker {integration.state.worker_id}", errors, warns)


class DjangoIntegration:
    """What this process knows about its Django test databases (kept in ``config.stash``)."""

    def __init__(self, state: PluginState) -> None:
        self.state = state
        self.by_signature: dict[tuple[Any, ...], WorkerDatabases] = {}  # by Django's test_db_signature()
        self.databases: list[_TestDatabase] = []
        self.pointer = Pointer()
        self.bases: dict[str, str] | None = None

    # -- setup -------------------------------------------------------------------------
    def setup(self, aliases: Iterable[str], serialized: set[str] | None, *, migrations: bool, rebuild: bool) -> None:
        """Template (built if needed) and clone for each test database, in dependency order."""
        from django.db import connections
        from django.test.utils import get_unique_databases_and_mirrors

        wanted = set(aliases)
        wanted |= {m for a in list(wanted) if (m := connections[a].settings_dict["TEST"].get("MIRROR"))}
        test_databases, mirrors = get_unique_databases_and_mirrors(wanted)
        keys = CodeKeys()
        if migrations:
            keys.get(True)  # before migrations are disabled
        else:
            from pytest_django.fixtures import _disable_migrations

            _disable_migrations()
        config = self.state.config
        extra = [str(k) for k in config.hook.pytest_concurrent_db_template_key(config=config) if k]
        for signature, (_, group) in test_databases.items():
            first = group[0]
            databases = self.databases_for(signature, first)
            assert databases is not None
            migrate = migrations and connections[first].settings_dict["TEST"].get("MIGRATE", True) is not False
            key, spent = keys.get(migrate)
            applied: list[int] = []
            populator = django_populator(first, key, self._point_template, applied)
            databases.ensure_template([populator], extra=extra, rebuild=rebuild)
            databases.stats.fingerprint_seconds += spent
            databases.stats.migrations = sum(applied)
            clone = databases.create_clone()
            database = _TestDatabase(list(group), databases, target=databases.backend.location(clone.name))
            self.databases.append(database)
            for alias in group:
                self.pointer.point(alias, database.target, test_name=True)
        by_alias = {alias: db for db in self.databases for alias in db.aliases}
        for alias, primary in mirrors.items():
            if primary in by_alias:  # a mirror of a database we did not set up keeps its settings
                by_alias[primary].mirrors.append(alias)
                self.pointer.point(alias, by_alias[primary].target, test_name=False)
        serialize([database.aliases[0] for database in self.databases], serialized)

    def _point_template(self, alias: str, name: str) -> None:
        self.pointer.point(alias, name, test_name=False)

    def databases_for(self, signature: tuple[Any, ...], alias: str, *, required: bool = True) -> WorkerDatabases | None:
        """This process's databases for the test database of ``alias`` (None if it is not on
        a supported server and not ``required``)."""
        if signature not in self.by_signature:
            try:
                url, _ = url_and_base(alias)
            except ConcurrentDBError:
                if required:
                    raise
                return None
            if self.bases is None:  # before any alias is pointed elsewhere
                self.bases = base_names()
            databases = self.state.new_databases(url, base=self.bases[alias])
            self.by_signature[signature] = databases
            self.state.extra.append(databases)
        return self.by_signature[signature]

    # -- teardown ------------------------------------------------------------------------
    def teardown(self) -> tuple[list[str], list[str]]:
        """Isolation check, then close the connections, drop the clones, restore the settings."""
        from django.db import connections

        errors: list[str] = []
        warns: list[str] = []
        for database in self.databases:
            self._check(database, errors, warns)
        connections.close_all()  # threads' connections are ended by the backend's drop
        try:
            if not self.state.settings.keep:
                for database in self.databases:
                    try:
                        database.databases.drop_clone()
                    except ConcurrentDBError as exc:
                        message = f"concurrent-db: cleanup failed: {exc.describe()}"
                        warnings.warn(pytest.PytestWarning(message), stacklevel=1)
        finally:
            self.pointer.restore()
            self.databases.clear()
        return errors, warns

    def _check(self, database: _TestDatabase, errors: list[str], warns: list[str]) -> None:
        """This worker's aliases still on its clone, and the clone still its own."""
        from django.db import connections

        mode = self.state.settings.isolation
        databases = database.databases
        checker = checker_for(databases, self.state.run_id, self.state.worker_id, mode)
        if checker is None:
            return
        stats = databases.stats
        stats.checks += 1
        started = time.perf_counter()
        found = misdirected(database.aliases + database.mirrors, database.target)
        connection = connections[database.aliases[0]]
        try:
            connection.ensure_connection()
        except Exception as exc:  # a broken connection cannot prove anything
            found.append(("error", f"the check failed on the connection ({type(exc).__name__}: {exc})"))
        else:
            found += check_connection(checker, connection.connection)
        more_errors, more_warns = classify(found, mode, f"database {database.aliases[0]!r} ({checker.clone}): ")
        errors += more_errors
        warns += more_warns
        stats.failures += bool(more_errors)
        stats.warnings += bool(more_warns)
        stats.check_seconds += time.perf_counter() - started


# -- fresh clones for transactional tests (django_fresh) -----------------------------------------
_FRESH_KEY = pytest.StashKey[FreshDjango]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, Any, None]:
    """Before the test's fixtures: a transactional test that wants fresh clones
    (``@pytest.mark.concurrent_db(fresh=True)``, ``--concurrent-db-fresh-transactional``)
    gets them when Django's test case sets it up, instead of a flush after it."""
    integration = _integration(item.config)
    if wants_fresh(item, integration.state.settings.fresh_transactional):
        fresh = FreshDjango(integration, item)
        fresh.install()
        item.stash[_FRESH_KEY] = fresh
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, Any, None]:
    """After the test's fixtures: back on the worker's clones; the fresh ones are dropped
    (or kept) in the background."""
    yield
    fresh = item.stash.get(_FRESH_KEY, None)
    if fresh is not None:
        del item.stash[_FRESH_KEY]
        fresh.finish()


# -- helpers ---------------------------------------------------------------------------------
_KEY = pytest.StashKey["DjangoIntegration"]()


def _integration(config: pytest.Config) -> DjangoIntegration:
    if _KEY not in config.stash:
        config.stash[_KEY] = DjangoIntegration(get_state(config))
    return config.stash[_KEY]


def _databases_for_setup(items: list[pytest.Item]) -> tuple[set[str], set[str] | None]:
    """The aliases the tests use and those to serialize (pytest-django's own rule)."""
    try:
        from pytest_django.fixtures import _get_databases_for_setup
    except ImportError:  # older pytest-django: every alias, all serialized (Django's default)
        from django.db import connections

        return set(connections), None
    aliases, serialized = _get_databases_for_setup(items)
    return set(aliases), set(serialized)
