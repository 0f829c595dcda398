"""What the pytest-django integration (:mod:`.django`) and the ``manage.py test`` runner
(:mod:`.django_runner`) share, so that both give the same project the same templates.

No pytest here, and Django is imported inside functions only.

* :func:`url_and_base`: the server of an alias as a URL, and the test database name that
  names its template; :func:`base_names` gives two aliases with one test database name
  a base name each.
* :func:`code_key`: the digest of the migration files (models of unmigrated apps),
  ``INSTALLED_APPS``, ``DATABASE_ROUTERS``, Django's version and whether migrations run.
* :func:`django_populator`: ``migrate`` (and ``createcachetable``) on the template, with
  the alias pointed at it; its key covers the alias's shaping settings and the code key.
* :class:`Pointer`: points aliases (and their live connections) at other databases and
  restores them.
* :func:`classify`: isolation findings as errors and warnings for the isolation mode.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import progress
from .errors import ConcurrentDBError
from .incremental import step_digest
from .isolation import IsolationChecker
from .template import Populator, tune_build_session
from .url import DatabaseURL
from .worker import WorkerDatabases

__all__ = [
    "Pointer",
    "base_names",
    "checker_for",
    "classify",
    "code_key",
    "django_populator",
    "migrate",
    "serialize",
    "server_error",
    "url_and_base",
]

SUPPORTED = ("sqlite", "postgresql", "mysql")
#: Django settings of an alias that shape its template (NAME, HOST, PORT only say where it is).
SHAPING = ("ENGINE", "USER", "OPTIONS", "TEST", "TIME_ZONE")


def url_and_base(alias: str, alternative: str = "run without --concurrent-db") -> tuple[DatabaseURL, str]:
    """The server of ``alias`` as a URL, and the test database name Django would use.

    A backend we do not clone raises a one-line ConcurrentDBError ending with ``alternative``.
    """
    from django.db import connections

    connection = connections[alias]
    settings_dict = connection.settings_dict
    vendor = connection.vendor
    if vendor not in SUPPORTED:
        raise ConcurrentDBError(
            f"Django database {alias!r} uses {settings_dict['ENGINE']} ({vendor}); "
            f"pytest-concurrent-db clones sqlite3, postgresql and mysql databases only: {alternative}"
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


def unique_test_databases() -> dict[tuple[Any, ...], list[str]]:
    """The aliases of each distinct test database by its signature, grouped as Django's
    ``get_unique_databases_and_mirrors()`` groups them (by ``test_db_signature()``, mirrors
    left out), for a process that only checks the servers: importing ``django.test`` for
    that function costs an xdist controller about 0.1 s of a 3 s warm run (jinja2 and
    ``xml.dom.minidom`` come with it), and its workers import it anyway."""
    from django.db import connections

    groups: dict[tuple[Any, ...], list[str]] = {}
    for alias in connections:
        connection = connections[alias]
        if connection.settings_dict["TEST"].get("MIRROR"):
            continue
        groups.setdefault(connection.creation.test_db_signature(), []).append(alias)
    return groups


def base_names() -> dict[str, str]:
    """The base name of every alias with a test database of its own (not a mirror, on a
    server we clone), read before any alias is pointed elsewhere.  Two aliases with one
    test database name get ``<name>_<alias>`` each."""
    from django.db import connections

    out = {}
    for alias in connections:
        if not connections[alias].settings_dict["TEST"].get("MIRROR"):
            try:
                out[alias] = url_and_base(alias)[1]
            except ConcurrentDBError:
                continue
    counts = list(out.values())
    return {alias: f"{base}_{alias}" if counts.count(base) > 1 else base for alias, base in out.items()}


def server_error(exc: ConcurrentDBError, alias: str) -> str:
    """``exc`` (a preflight failure: unreachable server, missing CREATEDB) naming the alias."""
    return f"{exc} (the server of Django's DATABASES[{alias!r}])"


# -- the template ----------------------------------------------------------------------------
def django_populator(alias: str, key: CodeKey, point: Callable[[str, str], None], applied: list[int]) -> Populator:
    """``migrate`` (and ``createcachetable``) with ``alias`` pointed at the template by
    ``point(alias, name)``; the number of migrations applied is appended to ``applied``.
    ``key`` is :func:`code_key`'s for the alias's migration setting.  With migrations, the
    populator can resume (:mod:`.incremental`): on a copy of a template that holds some of
    the migrations, ``migrate`` applies the others."""
    from django.db import connections

    shaping = {k: connections[alias].settings_dict.get(k) for k in SHAPING}
    digest = _digest({"alias": alias, "settings": shaping, "code": key.digest})

    def apply(backend: Any, connection: Any, template: str) -> None:
        name = backend.location(template)
        point(alias, name)
        try:
            connections[alias].ensure_connection()
            tune_build_session(backend, connections[alias])
            applied.append(migrate(alias, name))
        finally:
            connections[alias].close()  # the template is sealed next: no session may stay

    label = f"Django migrate (database {alias!r})"
    if not key.steps:
        return Populator(label=label, key=f"django:{digest}", apply=apply)
    return Populator(
        label=label,
        key=f"django:{digest}",
        apply=apply,
        resume_key=_digest({"alias": alias, "settings": shaping, "head": key.head}),
        steps=tuple(d for _, d in key.steps),
        can_resume=lambda old: only_added(key, old),
    )


def only_added(key: CodeKey, old: frozenset[str]) -> bool:
    """Whether the migrations of ``key`` that a template holding the steps ``old`` lacks only
    add to the graph: each is a migration Django loads, replaces none, and no migration of
    the template depends on it (else the template's order would not be a full build's)."""
    from django.db.migrations.loader import MigrationLoader

    added = [label for label, d in key.steps if d not in old]
    had = {node for label, d in key.steps if d in old and (node := _node(label)) is not None}
    try:
        loader = MigrationLoader(None, ignore_no_migrations=True)
    except Exception:  # any doubt: a full build
        return False
    for label in added:
        node = _node(label)
        if node is None:
            continue  # a file beside the migrations (a helper module): the old ones never imported it
        migration = loader.disk_migrations.get(node)
        if migration is None or getattr(migration, "replaces", None) or node not in loader.graph.nodes:
            return False
        if had & set(loader.graph.backwards_plan(node)):
            return False
    return True


def _node(label: str) -> tuple[str, str] | None:
    """The migration (app label, name) of a step label ``app:migrations:0002_x.py``."""
    app, kind, path = label.split(":", 2)
    if kind != "migrations" or "/" in path or not path.endswith(".py") or path == "__init__.py":
        return None
    return app, path[: -len(".py")]


def migrate(alias: str, name: str) -> int:
    """What Django's ``create_test_db`` does once the test database exists; returns the
    number of migrations applied."""
    from django.apps import apps
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections
    from django.db.models.signals import post_migrate, pre_migrate

    connection = connections[alias]
    if connection.vendor == "mysql":  # TEST CHARSET / COLLATION, which our CREATE DATABASE cannot take
        suffix = connection.creation.sql_table_creation_suffix()
        if suffix:
            with connection.cursor() as cursor:
                cursor.execute("ALTER DATABASE " + connection.ops.quote_name(name) + " " + suffix)
    plans: list[int] = []

    def count(plan: Any = None, **kwargs: Any) -> None:  # sent once per app, each time with the whole plan
        if plan is not None and not plans:
            plans.append(sum(1 for _, backwards in plan if not backwards))

    ahead: list[int] = []  # the migrations about to be applied (the progress line's total)

    def count_ahead(plan: Any = None, **kwargs: Any) -> None:
        if plan is not None and not ahead:
            ahead.append(sum(1 for _, backwards in plan if not backwards))

    uid = f"pytest-concurrent-db-count-{id(plans)}"
    post_migrate.connect(count, weak=False, dispatch_uid=uid)
    pre_migrate.connect(count_ahead, weak=False, dispatch_uid=uid)
    saved = settings.MIGRATION_MODULES
    try:
        if connection.settings_dict["TEST"].get("MIGRATE", True) is False:  # as create_test_db does
            settings.MIGRATION_MODULES = {app.label: None for app in apps.get_app_configs()}
        call_command(_counting_migrate(ahead), database=alias, interactive=False, run_syncdb=True, verbosity=0)
    finally:
        settings.MIGRATION_MODULES = saved
        post_migrate.disconnect(dispatch_uid=uid)
        pre_migrate.disconnect(dispatch_uid=uid)
    call_command("createcachetable", database=alias)
    return plans[0] if plans else 0


def _counting_migrate(ahead: list[int]) -> Any:
    """The project's ``migrate`` command (its own override, if any), telling the template
    build's progress line how many migrations are applied (``migrations 41/80``)."""
    from django.core.management import get_commands, load_command_class

    command = load_command_class(get_commands()["migrate"], "migrate")
    original = command.migration_progress_callback
    applied = [0]

    def callback(action: str, migration: Any = None, fake: bool = False) -> None:
        original(action, migration, fake)
        if action in ("apply_success", "unapply_success"):
            applied[0] += 1
            progress.report("migrations", applied[0], max(ahead[0] if ahead else 0, applied[0]))

    command.migration_progress_callback = callback
    return command


@dataclass(frozen=True)
class CodeKey:
    """What of the project's code shapes its test databases: ``head`` (Django's version,
    INSTALLED_APPS, DATABASE_ROUTERS, whether migrations are used, the models of unmigrated
    apps) and ``steps``, (label, digest) of each file of the apps' migration packages."""

    head: str
    steps: tuple[tuple[str, str], ...] = ()

    @property
    def digest(self) -> str:
        return _digest({"head": self.head, "steps": list(self.steps)})


def code_key(migrations: bool) -> CodeKey:
    """The :class:`CodeKey` of the project (with or without migrations)."""
    import django
    from django.apps import apps
    from django.conf import settings
    from django.db.migrations.loader import MigrationLoader

    head = hashlib.sha256()
    info = [django.get_version(), list(settings.INSTALLED_APPS), _plain(settings.DATABASE_ROUTERS), migrations]
    head.update(json.dumps(info, default=repr).encode())
    steps = []
    for app in apps.get_app_configs():
        module = MigrationLoader.migrations_module(app.label)[0] if migrations else None
        files = _module_files(module) if module else None
        if files is not None:
            for rel, path in files:
                steps.append((f"{app.label}:migrations:{rel}", step_digest(f"{app.label}:{rel}", path.read_bytes())))
            continue
        # unmigrated: ``run_syncdb`` creates the tables from the models (any change: a full build)
        files = _module_files(app.models_module.__name__) if app.models_module is not None else []
        for rel, path in files or []:
            head.update(f"\0{app.label}:models:{rel}\0".encode())
            head.update(path.read_bytes())
    return CodeKey(head.hexdigest(), tuple(steps))


@dataclass
class CodeKeys:
    """:func:`code_key` per migration setting, computed once, and the seconds it took."""

    keys: dict[bool, CodeKey] = field(default_factory=dict)
    seconds: float = 0.0

    def get(self, migrations: bool) -> tuple[CodeKey, float]:
        """The key, and the seconds spent on it now (0 when it was known already)."""
        if migrations in self.keys:
            return self.keys[migrations], 0.0
        started = time.perf_counter()
        self.keys[migrations] = code_key(migrations)
        spent = time.perf_counter() - started
        self.seconds += spent
        return self.keys[migrations], spent


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


# -- pointing aliases ------------------------------------------------------------------------
class Pointer:
    """Points aliases at other databases, remembering their original names to restore."""

    def __init__(self) -> None:
        self.original: dict[str, tuple[Any, Any]] = {}  # alias -> (NAME, TEST NAME)

    def point(self, alias: str, name: str, *, test_name: bool) -> None:
        """Close ``alias``'s connection and make it (and new threads) connect to ``name``;
        ``test_name``: set ``TEST["NAME"]`` too (a test database's own aliases)."""
        from django.db import connections

        settings_dict = connections[alias].settings_dict
        self.original.setdefault(alias, (settings_dict["NAME"], settings_dict["TEST"].get("NAME")))
        point(alias, name, test_name=test_name)

    def restore(self) -> None:
        """Every alias pointed so far back at its original names."""
        from django.conf import settings
        from django.db import connections

        for alias, (name, test_name) in self.original.items():
            for settings_dict in distinct(settings.DATABASES[alias], connections[alias].settings_dict):
                settings_dict["NAME"] = name
                settings_dict.setdefault("TEST", {})["NAME"] = test_name
        self.original.clear()


def point(alias: str, name: str, *, test_name: bool) -> None:
    """Close ``alias``'s connection and set its ``NAME`` (and ``TEST["NAME"]``) to ``name`` in
    ``settings.DATABASES`` and in the connection's own settings (which new threads copy)."""
    from django.conf import settings
    from django.db import connections

    connection = connections[alias]
    connection.close()
    for each in distinct(settings.DATABASES[alias], connection.settings_dict):
        each["NAME"] = name
        if test_name:
            each.setdefault("TEST", {})["NAME"] = name


def distinct(*dicts: dict[str, Any]) -> list[dict[str, Any]]:
    """The given dicts without repeats (``settings.DATABASES[alias]`` is often the connection's own)."""
    return list({id(d): d for d in dicts}.values())


def serialize(aliases: Iterable[str], serialized: set[str] | None) -> None:
    """Serialize the contents of the test databases of ``aliases`` (first aliases) for
    ``serialized_rollback``, as Django's ``setup_databases`` does (None: all of them)."""
    from django.db import connections

    for alias in aliases:
        connection = connections[alias]
        if (serialized is None or alias in serialized) and connection.settings_dict["TEST"].get(
            "SERIALIZE", True
        ) is not False:
            connection._test_serialized_contents = connection.creation.serialize_db_to_string()


# -- the isolation check -----------------------------------------------------------------------
def checker_for(databases: WorkerDatabases, run_id: str, worker_id: str, mode: str) -> IsolationChecker | None:
    """The isolation checker of the clone of ``databases`` (None: mode off, or no clone)."""
    clone, template = databases.database, databases.template
    if mode == "off" or clone is None or template is None:
        return None
    return IsolationChecker(
        backend=databases.backend,
        clone=clone.name,
        template=template.name,
        run_id=run_id,
        worker_id=worker_id,
        fingerprint=template.fingerprint,
        mode="default" if mode == "strict" else mode,  # row counts: Django flushes tables
    )


def misdirected(aliases: Iterable[str], target: str) -> list[tuple[str, str]]:
    """An error for every alias whose ``NAME`` is no longer ``target``."""
    from django.db import connections

    found = []
    for alias in aliases:
        name = connections[alias].settings_dict["NAME"]
        if str(name) != target:
            found.append(("error", f"alias {alias!r} points at {str(name)!r}, not at this worker's clone"))
    return found


def check_connection(checker: IsolationChecker, connection: Any) -> list[tuple[str, str]]:
    """The checker's findings on the DB-API ``connection`` (a broken one is an error)."""
    try:
        return [(f.severity, f.message) for f in checker.check(connection)]
    except Exception as exc:  # a broken connection cannot prove anything
        return [("error", f"the check failed on the connection ({type(exc).__name__}: {exc})")]


def classify(found: list[tuple[str, str]], mode: str, prefix: str) -> tuple[list[str], list[str]]:
    """(errors, warnings) of ``found`` ((severity, message) pairs) in isolation ``mode``."""
    if mode == "warn":
        found = [("warning", message) for _, message in found]
    elif mode == "strict":
        found = [("error", message) for _, message in found]
    errors = [prefix + m for s, m in found if s == "error"]
    warns = [prefix + m for s, m in found if s == "warning"]
    return errors, warns
