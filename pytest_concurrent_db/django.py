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

import contextlib
import hashlib
import importlib.util
import json
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .errors import ConcurrentDBError
from .fixtures import report_isolation
from .isolation import IsolationChecker
from .state import PluginState, get_state
from .template import Populator, tune_build_session
from .url import DatabaseURL
from .worker import WorkerDatabases

__all__ = ["DjangoIntegration", "django_db_modify_db_settings_xdist_suffix", "django_db_setup"]

_SUPPORTED = ("sqlite", "postgresql", "mysql")
#: Django settings of an alias that shape its template (NAME, HOST, PORT only say where it is).
_SHAPING = ("ENGINE", "USER", "OPTIONS", "TEST", "TIME_ZONE")


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
    from django.test.utils import get_unique_databases_and_mirrors

    test_databases, _ = get_unique_databases_and_mirrors()
    for signature, (_, aliases) in test_databases.items():
        databases = integration.databases_for(signature, aliases[0], required=False)
        if databases is None:
            continue
        try:
            databases.preflight()
        except ConcurrentDBError as exc:
            raise pytest.UsageError(f"{exc} (the server of Django's DATABASES[{aliases[0]!r}])") from None


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
        self.original: dict[str, tuple[Any, Any]] = {}  # alias -> (NAME, TEST NAME)
        self.bases: list[str] | None = None

    # -- setup -------------------------------------------------------------------------
    def setup(self, aliases: Iterable[str], serialized: set[str] | None, *, migrations: bool, rebuild: bool) -> None:
        """Template (built if needed) and clone for each test database, in dependency order."""
        from django.db import connections
        from django.test.utils import get_unique_databases_and_mirrors

        wanted = set(aliases)
        wanted |= {m for a in list(wanted) if (m := connections[a].settings_dict["TEST"].get("MIRROR"))}
        test_databases, mirrors = get_unique_databases_and_mirrors(wanted)
        keys = {True: _code_key(True)} if migrations else {}  # before migrations are disabled
        if not migrations:
            from pytest_django.fixtures import _disable_migrations

            _disable_migrations()
        config = self.state.config
        extra = [str(k) for k in config.hook.pytest_concurrent_db_template_key(config=config) if k]
        for signature, (_, group) in test_databases.items():
            first = group[0]
            databases = self.databases_for(signature, first)
            assert databases is not None
            migrate = migrations and connections[first].settings_dict["TEST"].get("MIGRATE", True) is not False
            if migrate not in keys:
                keys[migrate] = _code_key(migrate)
            populator = self._populator(databases, first, keys[migrate])
            databases.ensure_template([populator], extra=extra, rebuild=rebuild)
            clone = databases.create_clone()
            database = _TestDatabase(list(group), databases, target=databases.backend.location(clone.name))
            self.databases.append(database)
            for alias in group:
                self._point(alias, database.target, test_name=True)
        by_alias = {alias: db for db in self.databases for alias in db.aliases}
        for alias, primary in mirrors.items():
            if primary in by_alias:  # a mirror of a database we did not set up keeps its settings
                by_alias[primary].mirrors.append(alias)
                self._point(alias, by_alias[primary].target, test_name=False)
        for database in self.databases:
            connection = connections[database.aliases[0]]
            if (serialized is None or database.aliases[0] in serialized) and connection.settings_dict["TEST"].get(
                "SERIALIZE", True
            ) is not False:
                connection._test_serialized_contents = connection.creation.serialize_db_to_string()

    def databases_for(
        self, signature: tuple[Any, ...], alias: str, *, required: bool = True
    ) -> WorkerDatabases | None:
        """This process's databases for the test database of ``alias`` (None if it is not on
        a supported server and not ``required``)."""
        if signature not in self.by_signature:
            try:
                url, base = _url_and_base(alias)
            except ConcurrentDBError:
                if required:
                    raise
                return None
            if self.bases is None:  # before any alias is pointed elsewhere
                self.bases = list(_bases().values())
            if self.bases.count(base) > 1:  # two aliases, one test database name: each gets its own
                base = f"{base}_{alias}"
            databases = self.state.new_databases(url, base=base)
            self.by_signature[signature] = databases
            self.state.extra.append(databases)
        return self.by_signature[signature]

    def _populator(self, databases: WorkerDatabases, alias: str, code_key: str) -> Populator:
        """``migrate`` (and ``createcachetable``) with the alias pointed at the template."""
        from django.db import connections

        shaping = {k: connections[alias].settings_dict.get(k) for k in _SHAPING}
        key = _digest({"alias": alias, "settings": shaping, "code": code_key})

        def apply(backend: Any, connection: Any, template: str) -> None:
            name = backend.location(template)
            self._point(alias, name, test_name=False)
            try:
                connections[alias].ensure_connection()
                tune_build_session(backend, connections[alias])
                _migrate(alias, name)
            finally:
                connections[alias].close()  # the template is sealed next: no session may stay

        return Populator(label=f"Django migrate (database {alias!r})", key=f"django:{key}", apply=apply)

    def _point(self, alias: str, name: str, *, test_name: bool) -> None:
        """Close ``alias``'s connection and make it (and new threads) connect to ``name``."""
        from django.conf import settings
        from django.db import connections

        connection = connections[alias]
        connection.close()
        settings_dict = connection.settings_dict
        self.original.setdefault(alias, (settings_dict["NAME"], settings_dict["TEST"].get("NAME")))
        for each in _distinct(settings.DATABASES[alias], settings_dict):
            each["NAME"] = name
            if test_name:
                each.setdefault("TEST", {})["NAME"] = name

    # -- teardown ------------------------------------------------------------------------
    def teardown(self) -> tuple[list[str], list[str]]:
        """Isolation check, then close the connections, drop the clones, restore the settings."""
        from django.conf import settings
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
            for alias, (name, test_name) in self.original.items():
                for settings_dict in _distinct(settings.DATABASES[alias], connections[alias].settings_dict):
                    settings_dict["NAME"] = name
                    settings_dict.setdefault("TEST", {})["NAME"] = test_name
            self.original.clear()
            self.databases.clear()
        return errors, warns

    def _check(self, database: _TestDatabase, errors: list[str], warns: list[str]) -> None:
        """This worker's aliases still on its clone, and the clone still its own."""
        from django.db import connections

        mode = self.state.settings.isolation
        databases = database.databases
        clone, template = databases.database, databases.template
        if mode == "off" or clone is None or template is None:
            return
        stats = databases.stats
        stats.checks += 1
        started = time.perf_counter()
        found: list[tuple[str, str]] = []
        for alias in database.aliases + database.mirrors:
            name = connections[alias].settings_dict["NAME"]
            if name != database.target:
                found.append(("error", f"alias {alias!r} points at {name!r}, not at this worker's clone"))
        checker = IsolationChecker(
            backend=databases.backend,
            clone=clone.name,
            template=template.name,
            run_id=self.state.run_id,
            worker_id=self.state.worker_id,
            fingerprint=template.fingerprint,
            mode="default" if mode == "strict" else mode,  # row counts: Django flushes tables
        )
        connection = connections[database.aliases[0]]
        try:
            connection.ensure_connection()
            found += [(f.severity, f.message) for f in checker.check(connection.connection)]
        except Exception as exc:  # a broken connection cannot prove anything
            found.append(("error", f"the check failed on the connection ({type(exc).__name__}: {exc})"))
        if mode == "warn":
            found = [("warning", message) for _, message in found]
        elif mode == "strict":
            found = [("error", message) for _, message in found]
        prefix = f"database {database.aliases[0]!r} ({clone.name}): "
        errors += [prefix + m for s, m in found if s == "error"]
        warns += [prefix + m for s, m in found if s == "warning"]
        stats.failures += any(s == "error" for s, _ in found)
        stats.warnings += any(s == "warning" for s, _ in found)
        stats.check_seconds += time.perf_counter() - started


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


def _bases() -> dict[str, str]:
    """The base name of every alias with a test database of its own."""
    from django.db import connections

    out = {}
    for alias in connections:
        if not connections[alias].settings_dict["TEST"].get("MIRROR"):
            with contextlib.suppress(ConcurrentDBError):
                out[alias] = _url_and_base(alias)[1]
    return out


def _url_and_base(alias: str) -> tuple[DatabaseURL, str]:
    """The server of ``alias`` as a URL, and the test database name Django would use."""
    from django.db import connections

    connection = connections[alias]
    settings_dict = connection.settings_dict
    vendor = connection.vendor
    if vendor not in _SUPPORTED:
        raise ConcurrentDBError(
            f"Django database {alias!r} uses {settings_dict['ENGINE']} ({vendor}); "
            f"--concurrent-db supports sqlite3, postgresql and mysql: run without --concurrent-db"
        )
    if vendor == "sqlite":
        test_name = connection.creation._get_test_db_name()
        if connection.creation.is_in_memory_db(test_name):
            return DatabaseURL(backend="sqlite", database=""), f"test_{alias}"
        return DatabaseURL(backend="sqlite", database=str(test_name)), Path(test_name).stem
    if not settings_dict.get("NAME") and not settings_dict["TEST"].get("NAME"):
        raise ConcurrentDBError(f"Django database {alias!r} has no NAME; set DATABASES[{alias!r}]")
    host = settings_dict.get("HOST") or ("localhost" if vendor == "mysql" else None)
    options = settings_dict.get("OPTIONS") or {}
    query = tuple((str(k), str(v)) for k, v in options.items() if isinstance(v, (str, int)) and not isinstance(v, bool))
    url = DatabaseURL(
        backend=vendor,
        database=str(settings_dict.get("NAME") or ""),
        username=settings_dict.get("USER") or None,
        password=settings_dict.get("PASSWORD") or None,
        host=host,
        port=int(settings_dict["PORT"]) if settings_dict.get("PORT") else {"postgresql": 5432, "mysql": 3306}[vendor],
        query=query if vendor == "postgresql" else (),
    )
    return url, str(connection.creation._get_test_db_name())


def _migrate(alias: str, name: str) -> None:
    """What Django's ``create_test_db`` does once the test database exists."""
    from django.apps import apps
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections

    connection = connections[alias]
    if connection.vendor == "mysql":  # TEST CHARSET / COLLATION, which our CREATE DATABASE cannot take
        suffix = connection.creation.sql_table_creation_suffix()
        if suffix:
            with connection.cursor() as cursor:
                cursor.execute("ALTER DATABASE " + connection.ops.quote_name(name) + " " + suffix)
    if connection.settings_dict["TEST"].get("MIGRATE", True) is False:  # as create_test_db does
        saved = settings.MIGRATION_MODULES
        settings.MIGRATION_MODULES = {app.label: None for app in apps.get_app_configs()}
        try:
            call_command("migrate", database=alias, interactive=False, run_syncdb=True, verbosity=0)
        finally:
            settings.MIGRATION_MODULES = saved
    else:
        call_command("migrate", database=alias, interactive=False, run_syncdb=True, verbosity=0)
    call_command("createcachetable", database=alias)


def _code_key(migrations: bool) -> str:
    """Digest of the migration files of every app (models of unmigrated apps), INSTALLED_APPS,
    DATABASE_ROUTERS, Django's version and whether migrations are used."""
    import django
    from django.apps import apps
    from django.conf import settings
    from django.db.migrations.loader import MigrationLoader

    digest = hashlib.sha256()
    head = [django.get_version(), list(settings.INSTALLED_APPS), _plain(settings.DATABASE_ROUTERS), migrations]
    digest.update(json.dumps(head, default=repr).encode())
    for app in apps.get_app_configs():
        module = MigrationLoader.migrations_module(app.label)[0] if migrations else None
        files = _module_files(module) if module else None
        kind = "migrations"
        if files is None:  # unmigrated: ``run_syncdb`` creates the tables from the models
            kind = "models"
            files = _module_files(app.models_module.__name__) if app.models_module is not None else []
        for label, path in files or []:
            digest.update(f"\0{app.label}:{kind}:{label}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _module_files(module: str) -> list[tuple[str, Path]] | None:
    """Every file of the package ``module`` (or its one file); None if it does not exist."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        out = []
        for root in map(Path, spec.submodule_search_locations):
            for path in sorted(root.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                    out.append((path.relative_to(root).as_posix(), path))
        return out
    if spec.origin and Path(spec.origin).is_file():
        return [(Path(spec.origin).name, Path(spec.origin))]
    return None


def _plain(value: Any) -> Any:
    """``value`` with objects replaced by their class path (a repr may hold an address)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_plain(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    cls = value if isinstance(value, type) else type(value)
    return f"{cls.__module__}.{cls.__qualname__}"


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(_plain(value), sort_keys=True).encode()).hexdigest()


def _distinct(*dicts: dict[str, Any]) -> list[dict[str, Any]]:
    """The given dicts without repeats (``settings.DATABASES[alias]`` is often the connection's own)."""
    return list({id(d): d for d in dicts}.values())
