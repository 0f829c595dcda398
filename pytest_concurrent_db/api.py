"""The public API: isolated clones of a template outside pytest.

For data-migration scripts, notebooks, other test runners and CI tooling::

    from pytest_concurrent_db import build_template, worker_database

    template = build_template("postgresql://app@localhost/app", "schema.sql")
    with worker_database(template, "job-1") as db:
        connection = db.connect()

Everything here works on SQLite, PostgreSQL and MySQL/MariaDB, takes the same options
as the plugin, coordinates with pytest runs on the same machine and server (the same
locks, fingerprints and markers), and never touches the URL's own database.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

from .backends import Backend
from .clones import ConcurrentDatabase, drop_clone, handle, make_clone
from .errors import ConcurrentDBError, ConfigError, IsolationError, describe_error
from .janitor import Janitor
from .naming import PREFIX, clone_name, new_run_id
from .options import names, option
from .paths import Directories
from .site import Site
from .template import PopulateSpec, Template, ensure_template, populators_for
from .url import DatabaseURL, parse_url
from .worker import WorkerDatabases

__all__ = [
    "DEFAULT_URL",
    "ClonePool",
    "IsolationFailure",
    "IsolationReport",
    "build_template",
    "clone_many",
    "get_database_url",
    "verify_isolation",
    "worker_database",
]

#: The URL used when none is given: SQLite, templates and clones under ``directory``
#: (the file ``test.db`` itself is never created).
DEFAULT_URL = "sqlite:///test.db"
#: Clones made in parallel by :func:`clone_many` at most at once.
_MAX_PARALLEL = 8
#: The probe of :func:`verify_isolation`: a table of its own (a constant name, no user input).
_PROBE_CREATE = "CREATE TABLE IF NOT EXISTS cdb_isolation_probe (token VARCHAR(100))"
_PROBE_INSERT = {"sqlite": "INSERT INTO cdb_isolation_probe (token) VALUES (?)"}
_PROBE_INSERT_DEFAULT = "INSERT INTO cdb_isolation_probe (token) VALUES (%s)"
_PROBE_SELECT = "SELECT token FROM cdb_isolation_probe"
_PROBE_DROP = "DROP TABLE IF EXISTS cdb_isolation_probe"


def get_database_url(url: str | None = None) -> str:
    """The database URL to use outside pytest: ``url`` if given, else the environment
    variable ``CONCURRENT_DB_URL``, else :data:`DEFAULT_URL` (SQLite).

    Validated as the plugin validates ``--concurrent-db-url``: a malformed URL, an unknown
    scheme or an in-memory SQLite URL (nothing another process could share) raises
    :class:`~pytest_concurrent_db.ConfigError` with a one-line fix.
    """
    text = url if url is not None else os.environ.get(option("url").env) or DEFAULT_URL
    _parse(text)
    return text.strip()


def _parse(text: str) -> DatabaseURL:
    parsed = parse_url(text)
    if parsed.is_memory:
        raise ConfigError(
            "an in-memory SQLite URL cannot be cloned for other connections or processes; use a file URL "
            f"such as {DEFAULT_URL}, or none for that default; fix {names('url')}"
        )
    return parsed


def build_template(
    url: str | None = None,
    populate: PopulateSpec = None,
    *,
    key: Sequence[str] = (),
    rebuild: bool = False,
    lock_timeout: float = 300.0,
    clone_strategy: str = "auto",
    keep_templates: int = 2,
    directory: str | os.PathLike[str] | None = None,
    snapshot_dir: str | os.PathLike[str] | None = None,
    snapshot_keep: int = 3,
) -> Template:
    """The ready template for ``url`` filled by ``populate``, built if needed.

    ``populate`` is an SQL file path, a callable taking a DB-API connection (committed
    after it returns), or a list of those, applied in order.  The template is built once
    per fingerprint (file contents, callables' source, ``key``, backend, server and
    plugin version) across threads, processes, runs and machines sharing the server
    (a file lock, then a server lock), and reused while its inputs are unchanged;
    ``rebuild`` builds it once more.  Out-of-date templates of the same database name
    beyond the newest ``keep_templates`` are dropped after a build.  ``directory`` holds
    the SQLite templates and clones and the file locks (default
    ``./.pytest_cache/d/concurrent_db``, shared with pytest runs of the project).
    ``lock_timeout`` (seconds) bounds the wait for another process's build;
    ``clone_strategy`` is PostgreSQL's (``auto``, ``wal_log``, ``file_copy``).
    ``snapshot_dir``: a template built is written there as ``<fingerprint>.<backend>.snap``
    and restored from there when the server has none (the newest ``snapshot_keep`` are
    kept); ``Template.snapshot`` says what happened, warnings included.

    Databases that dead runs of the same database name left behind are dropped first; one
    the server cannot drop is named in a ``RuntimeWarning`` (``pytest-concurrent-db: not
    dropped: <name>: <why>``) and the build goes on.
    """
    site = _site(get_database_url(url), lock_timeout, clone_strategy, keep_templates, directory)
    if snapshot_dir is not None:
        site = _with_snapshots(site, snapshot_dir, snapshot_keep)
    populators = populators_for(populate)
    extra = [str(k) for k in ([key] if isinstance(key, str) else key)]
    run_id = new_run_id()
    with _backend(site, run_id, "api") as backend:
        backend.preflight()
        janitor = Janitor(backend, site, run_id)
        try:
            janitor.reap_dead()

            def prune(template: Template) -> None:
                janitor.prune(current_template=template.name)

            return ensure_template(
                backend, site, populators, run_id=run_id, worker_id="api", extra=extra, rebuild=rebuild, on_built=prune
            )
        finally:
            for each in janitor.not_dropped:  # outside pytest no summary shows them
                warnings.warn(f"pytest-concurrent-db: not dropped: {each}", RuntimeWarning, stacklevel=2)


def _with_snapshots(site: Site, snapshot_dir: str | os.PathLike[str], snapshot_keep: int) -> Site:
    from dataclasses import replace

    from .snapshot import check_directory

    if not isinstance(snapshot_keep, int) or snapshot_keep < 0:
        raise ConfigError(f"snapshot_keep must be a whole number >= 0, not {snapshot_keep!r}")
    directory = check_directory(option("snapshot_dir"), os.fspath(snapshot_dir), "snapshot_dir", Path.cwd())
    return replace(site, snapshot_dir=directory, snapshot_keep=snapshot_keep)


def _site(
    url: str, lock_timeout: float, clone_strategy: str, keep_templates: int, directory: str | os.PathLike[str] | None
) -> Site:
    parsed = _parse(url)
    if not isinstance(lock_timeout, (int, float)) or not lock_timeout > 0:
        raise ConfigError(f"lock_timeout must be a positive number of seconds, not {lock_timeout!r}")
    if clone_strategy not in option("clone_strategy").choices:
        raise ConfigError(
            f"clone_strategy must be one of {', '.join(option('clone_strategy').choices)}, not {clone_strategy!r}"
        )
    if not isinstance(keep_templates, int) or keep_templates < 0:
        raise ConfigError(f"keep_templates must be a whole number >= 0, not {keep_templates!r}")
    root = Path(directory).resolve() if directory is not None else None
    if root is None:
        dirs = Directories.for_project(parsed, Path.cwd().resolve(), clones=None)
        dirs = Directories.create(parsed, dirs.templates, dirs.templates / "api")
    else:
        dirs = Directories.create(parsed, root, root / "api")
    return Site(
        parsed,
        dirs,
        lock_timeout=float(lock_timeout),
        keep_templates=keep_templates,
        clone_strategy=clone_strategy,
    )


@contextmanager
def _backend(site: Site, run_id: str, worker_id: str) -> Iterator[Backend]:
    backend = site.open_backend(run_id, worker_id)
    try:
        yield backend
    finally:
        with contextlib.suppress(Exception):
            backend.close()


@contextmanager
def worker_database(
    template: Template, worker_id: str = "main", *, spares: int | str = 0
) -> Iterator[ConcurrentDatabase]:
    """A fresh clone of ``template`` for the ``with`` block, dropped on exit, also when the
    block raises (the exception reaches the caller unchanged).

    While the block runs, this process holds the clone's lock: no other run reaps it.
    ``spares`` (PostgreSQL, MySQL; off by default outside pytest): ``1`` (or ``auto``, as
    ``--concurrent-db-spares auto``) also keeps a spare that the next ``worker_database`` call
    with the same ``worker_id`` takes over in milliseconds: the database of a block that took
    one over and left it untouched, handed on at the exit, or else a copy made in the
    background (the block's exit waits for it).
    """
    if spares != "auto" and (isinstance(spares, bool) or not isinstance(spares, int) or spares < 0):
        raise ConfigError(f"spares must be a whole number >= 0 or 'auto', not {spares!r}")
    databases = WorkerDatabases(template.site, run_id=new_run_id(), worker_id=worker_id, spares=spares)
    try:
        database = databases.create_clone(template)
        try:
            yield database
        except BaseException:
            with contextlib.suppress(Exception):  # the caller's exception matters more
                databases.drop_clone()
            raise
        databases.drop_clone()
    finally:
        with contextlib.suppress(Exception):
            databases.close()


class ClonePool(Sequence[ConcurrentDatabase]):
    """The clones :func:`clone_many` made: a sequence of handles, and a context manager that
    drops them all on exit (so does :meth:`drop`, once)."""

    def __init__(self, databases: Sequence[ConcurrentDatabase], backend: Backend) -> None:
        self._databases = tuple(databases)
        self._backend: Backend | None = backend

    @overload
    def __getitem__(self, index: int) -> ConcurrentDatabase: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[ConcurrentDatabase]: ...

    def __getitem__(self, index: int | slice) -> ConcurrentDatabase | Sequence[ConcurrentDatabase]:
        return self._databases[index]

    def __len__(self) -> int:
        return len(self._databases)

    def __repr__(self) -> str:
        state = "dropped" if self._backend is None else "live"
        return f"<ClonePool {state}: {', '.join(d.name for d in self._databases)}>"

    def __enter__(self) -> ClonePool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.drop()

    def drop(self) -> None:
        """Drop every clone of the pool (idempotent); the first error is raised after all
        were tried."""
        backend, self._backend = self._backend, None
        if backend is None:
            return
        errors: list[BaseException] = []
        try:
            for database in self._databases:
                try:
                    drop_clone(backend, database.name)
                except Exception as exc:
                    errors.append(exc)
        finally:
            with contextlib.suppress(Exception):
                backend.close()
        if errors:
            raise errors[0]


def clone_many(template: Template, n: int) -> ClonePool:
    """``n`` clones of ``template`` made in parallel (threads, each copying on its own
    control connection), all or nothing: if one fails, those already made are dropped and
    a :class:`~pytest_concurrent_db.ConcurrentDBError` names the failing one (the
    original error is its ``__cause__``).  Use the result as a context manager (or call
    its ``drop()``) to drop them all."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"clone_many needs a whole number of clones >= 1, not {n!r}")
    run_id = new_run_id()
    workers = [f"c{i}" for i in range(n)]
    names = [clone_name(template.site.base, run_id, w) for w in workers]
    holder = template.site.open_backend(run_id, "pool")
    made: dict[int, str] = {}
    try:
        _fill_pool(holder, template, run_id=run_id, workers=workers, names=names, made=made)
    except BaseException:
        for index in sorted(made):
            with contextlib.suppress(Exception):
                holder.drop(made[index])
        with contextlib.suppress(Exception):
            holder.close()  # releases the locks
        raise
    databases = [handle(holder, template, names[i], run_id, workers[i]) for i in range(n)]
    return ClonePool(databases, holder)


def _fill_pool(
    holder: Backend, template: Template, *, run_id: str, workers: list[str], names: list[str], made: dict[int, str]
) -> None:
    """Take the pool's liveness locks on ``holder`` (held there for the pool's lifetime),
    then copy the clones in parallel; raise naming the first clone that failed."""
    for name in names:
        if not holder.try_lock(f"clone:{name}"):
            raise ConcurrentDBError(f"database {name} is in use by another live process (its lock is held)")
    failure = _copy_in_parallel(template, run_id, workers, names, made)
    if failure is not None:
        index, exc = failure
        reason = describe_error(exc)
        raise ConcurrentDBError(
            f"clone_many: clone {index + 1} of {len(names)} ({names[index]}) failed: {reason}; "
            f"the {len(made)} clones already made were dropped"
        ) from exc


def _copy_in_parallel(
    template: Template, run_id: str, workers: list[str], names: list[str], made: dict[int, str]
) -> tuple[int, BaseException] | None:
    """Copy the clones on up to :data:`_MAX_PARALLEL` threads, each with its own backend;
    fills ``made`` and returns the first failure (index, error), if any."""
    local = threading.local()
    backends: list[Backend] = []
    guard = threading.Lock()

    def copy(index: int) -> None:
        backend = getattr(local, "backend", None)
        if backend is None:
            backend = local.backend = template.site.open_backend(run_id, workers[index], "copy")
            with guard:
                backends.append(backend)
        make_clone(backend, template, run_id=run_id, worker_id=workers[index], name=names[index], locked=True)
        with guard:
            made[index] = names[index]

    failures: list[tuple[int, BaseException]] = []
    try:
        with ThreadPoolExecutor(max_workers=min(len(names), _MAX_PARALLEL), thread_name_prefix="concurrent-db") as pool:
            futures = [pool.submit(copy, i) for i in range(len(names))]
            for index, future in enumerate(futures):
                exc = future.exception()
                if exc is not None:
                    failures.append((index, exc))
    finally:
        for backend in backends:
            with contextlib.suppress(Exception):
                backend.close()
    return failures[0] if failures else None


@dataclass(frozen=True)
class IsolationFailure:
    """Two databases that are not isolated: ``second`` saw what was written into ``first``
    (or both are the same database)."""

    first: str
    second: str
    detail: str


@dataclass(frozen=True)
class IsolationReport:
    """What :func:`verify_isolation` checked and found."""

    databases: tuple[str, ...]
    failures: tuple[IsolationFailure, ...] = ()

    @property
    def ok(self) -> bool:
        """True when every database was isolated from every other."""
        return not self.failures


def verify_isolation(handles: Iterable[ConcurrentDatabase], *, raise_on_failure: bool = True) -> IsolationReport:
    """Prove that the given clones are isolated from each other.

    A marker row is written into each clone, in a table of its own
    (``cdb_isolation_probe``, dropped afterwards), and every clone is read back: a clone
    that sees another's marker, or two handles that point at the same database, is a
    failure.  Raises :class:`~pytest_concurrent_db.IsolationError` naming the two
    databases (``first``, ``second``), unless ``raise_on_failure`` is false: then the
    :class:`IsolationReport` says what failed.
    """
    handles = list(handles)
    for each in handles:
        if not each.name.startswith(PREFIX):
            raise ConfigError(
                f"verify_isolation writes into the databases it checks: {each.name!r} is not one of ours "
                "(use handles from worker_database or clone_many)"
            )
    failures: list[IsolationFailure] = []
    distinct: dict[tuple[Any, ...], ConcurrentDatabase] = {}
    for each in handles:
        identity = _identity(each)
        if identity in distinct:
            failures.append(
                IsolationFailure(distinct[identity].name, each.name, "both handles point at the same database")
            )
        else:
            distinct[identity] = each
    failures += _probe(list(distinct.values()))
    report = IsolationReport(tuple(h.name for h in handles), tuple(failures))
    if failures and raise_on_failure:
        first = failures[0]
        raise IsolationError(first.first, first.second, first.detail)
    return report


def _identity(database: ConcurrentDatabase) -> tuple[Any, ...]:
    url = parse_url(database.url)
    if url.backend == "sqlite":
        return ("sqlite", str(Path(url.database).resolve()))
    return (url.backend, url.host, url.port, url.database)


def _probe(databases: list[ConcurrentDatabase]) -> list[IsolationFailure]:
    """Write a token into each database, then read every database's tokens back."""
    tokens = {d.name: f"{d.name}:{secrets.token_hex(8)}" for d in databases}
    connections = {}
    failures = []
    try:
        for database in databases:
            url = parse_url(database.url)
            if url.backend == "sqlite" and not Path(url.database).is_file():  # connecting would create it
                raise ConfigError(f"database {database.name!r} does not exist (dropped already?)")
            connection = connections[database.name] = database.connect()
            cursor = connection.cursor()
            cursor.execute(_PROBE_CREATE)
            cursor.execute(_PROBE_INSERT.get(database.backend, _PROBE_INSERT_DEFAULT), (tokens[database.name],))
            connection.commit()
        owners = {token: name for name, token in tokens.items()}
        for database in databases:
            cursor = connections[database.name].cursor()
            cursor.execute(_PROBE_SELECT)
            seen = {row[0] for row in cursor.fetchall()}
            connections[database.name].rollback()
            for token in sorted(seen - {tokens[database.name]}):
                owner = owners.get(token, "another database")
                failures.append(
                    IsolationFailure(owner, database.name, f"{database.name} sees the marker row written into {owner}")
                )
    finally:
        for connection in connections.values():
            with contextlib.suppress(Exception):
                connection.rollback()
                connection.cursor().execute(_PROBE_DROP)
                connection.commit()
            with contextlib.suppress(Exception):
                connection.close()
    return failures
