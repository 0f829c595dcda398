"""Per-process plugin state kept in ``config.stash``: the glue between pytest and the lifecycle modules."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .backends.base import restarted_since, server_start
from .clones import ConcurrentDatabase
from .isolation import IsolationChecker
from .paths import Directories
from .progress import BuildProgress
from .report import WorkerReport
from .settings import Settings
from .site import Site
from .sources import populators_from
from .template import Populator, callable_populator, schema_populator
from .url import DatabaseURL
from .worker import WorkerDatabases

__all__ = ["PluginState", "WorkerConnection", "get_state"]


@dataclass
class PluginState:
    """What one pytest process (xdist controller, worker, or a plain run) knows."""

    config: pytest.Config
    settings: Settings
    run_id: str
    worker_id: str
    is_worker: bool
    clone_dir: Path | None = None
    databases: WorkerDatabases | None = None
    checker: IsolationChecker | None = None
    database: ConcurrentDatabase | None = None
    #: Databases of integrations (one per Django test database...), besides ``databases``.
    extra: list[WorkerDatabases] = field(default_factory=list)
    worker_reports: list[WorkerReport] = field(default_factory=list)
    swept: list[str] = field(default_factory=list)
    #: where this run's processes write their build progress (xdist; None: no progress files)
    progress_dir: Path | None = None
    #: the controller's (or a single process's) progress display, a ProgressDisplay
    display: Any = None
    _scratch: list[Directories] = field(default_factory=list)

    # -- directories -------------------------------------------------------------------
    def directories(self, url: DatabaseURL) -> Directories:
        """Where this process keeps SQLite templates (pytest's cache dir, so that they survive
        between runs; without the cache plugin, a stable per-project directory), SQLite
        clones (this run's base temp dir) and template file locks."""
        clones = self.resolved_clone_dir()
        cache = getattr(self.config, "cache", None)
        if cache is not None:
            return Directories.create(url, Path(cache.mkdir("concurrent_db")), clones)
        return Directories.without_cache(url, Path(self.config.rootpath), clones)

    def resolved_clone_dir(self) -> Path | None:
        """This run's SQLite clone directory: pytest's base temp dir (shared with the workers);
        None without the tmpdir plugin (a temporary directory, removed at the end)."""
        if self.clone_dir is None:
            factory = getattr(self.config, "_tmp_path_factory", None)
            if factory is not None:
                self.clone_dir = Path(factory.getbasetemp()) / "concurrent_db"
        return self.clone_dir

    # -- databases -----------------------------------------------------------------------
    def site(self, url: DatabaseURL, *, base: str | None = None) -> Site:
        """The site of ``url`` with this run's settings and directories."""
        dirs = self.directories(url)
        if dirs.scratch:
            self._scratch.append(dirs)
        return Site(
            url,
            dirs,
            base=base or "",
            lock_timeout=self.settings.lock_timeout,
            keep_templates=self.settings.keep_templates,
            clone_strategy=self.settings.clone_strategy,
            snapshot_dir=self.settings.snapshot_dir,
            snapshot_keep=self.settings.snapshot_keep,
            pg_bin=self.settings.pg_bin,
        )

    def new_databases(self, url: DatabaseURL, *, base: str | None = None) -> WorkerDatabases:
        """The databases of this process on ``url`` (run id, worker id, settings)."""
        databases = WorkerDatabases(
            self.site(url, base=base),
            run_id=self.run_id,
            worker_id=self.worker_id,
            spares=self.settings.spares,
            pool=self.settings.pool,
        )
        databases.progress = self.build_progress()
        return databases

    def build_progress(self) -> BuildProgress | None:
        """Where this process tells how its template builds go: a file the controller reads
        (an xdist worker), the display itself (a run without xdist), or nobody."""
        if self.is_worker and self.progress_dir is not None:
            return BuildProgress(self.worker_id, directory=self.progress_dir)
        if not self.is_worker and self.display is not None and self.display.directory is None:
            return BuildProgress(self.worker_id, listener=self.display.update)
        return None

    def get_databases(self) -> WorkerDatabases:
        """The databases of the ``concurrent_db`` fixtures (the configured URL)."""
        if self.databases is None:
            self.databases = self.new_databases(self.settings.url or DatabaseURL(backend="sqlite", database=""))
        return self.databases

    def all_databases(self) -> list[WorkerDatabases]:
        return ([self.databases] if self.databases is not None else []) + self.extra

    def populators(self, fixture_populate: Callable[[Any], None] | None) -> list[Populator]:
        out = [schema_populator(path) for path in self.settings.schema]
        out += populators_from(self.settings)  # Alembic, SQLAlchemy metadata, seed files
        hook = self.config.hook.pytest_concurrent_db_populate_template
        impls = hook.get_hookimpls()
        if impls:
            backend = self.settings.backend
            out.append(
                callable_populator(
                    "pytest_concurrent_db_populate_template",
                    impls[0].function,
                    call=lambda connection: hook(config=self.config, connection=connection, backend=backend),
                    also=[impl.function for impl in impls[1:]],
                )
            )
        if fixture_populate is not None:
            out.append(callable_populator("concurrent_db_populate", fixture_populate))
        return out

    def setup(self, fixture_populate: Callable[[Any], None] | None) -> ConcurrentDatabase:
        """Ensure the template and this worker's clone (once per process)."""
        if self.database is not None:
            return self.database
        databases = self.get_databases()
        populators = self.populators(fixture_populate)
        keys = [k for k in self.config.hook.pytest_concurrent_db_template_key(config=self.config) if k]
        template = databases.ensure_template(populators, extra=[str(k) for k in keys], rebuild=self.settings.rebuild)
        self.database = databases.create_clone()
        self.checker = IsolationChecker(
            backend=databases.backend,
            clone=self.database.name,
            template=self.database.template_name,
            run_id=self.run_id,
            worker_id=self.worker_id,
            fingerprint=template.fingerprint,
            mode=self.settings.isolation,
        )
        return self.database

    def teardown(self) -> None:
        """Drop this process's clones (unless ``--concurrent-db-keep``)."""
        if self.database is not None:
            self.database.close_thread_connections()
        for databases in self.all_databases():
            if self.settings.keep:
                databases.keep_clone()
            else:
                databases.drop_clone()
        self.database = None

    def close(self) -> None:
        """Close every control connection and remove temporary directories."""
        try:
            for databases in self.all_databases():
                databases.close()
        finally:
            for dirs in self._scratch:
                dirs.cleanup()

    def worker_connection(self) -> WorkerConnection:
        assert self.databases is not None
        assert self.checker is not None
        return WorkerConnection(self.databases, self.checker, self.worker_id)

    def reports(self) -> list[WorkerReport]:
        """One report per template this process made a database of."""
        return [d.report() for d in self.all_databases() if d.stats.template]


class WorkerConnection:
    """The one connection a worker's tests share; re-opened after an isolation error."""

    def __init__(self, databases: WorkerDatabases, checker: IsolationChecker, worker_id: str) -> None:
        self.databases = databases
        self.checker = checker
        self.worker_id = worker_id
        self._connection: Any = None
        self._server_started: float | None = None

    def _restart_note(self) -> str:
        """Why a connection that worked died, when the reason is a server restart: the server
        started again after this connection was opened (checked once it fails, not per test)."""
        again = restarted_since(self.databases.backend, self._server_started)
        if again is None:
            return ""
        self._server_started = again
        at = time.strftime("%H:%M:%S", time.localtime(again))
        return f"the database server restarted (up again since {at}), so "

    @property
    def connection(self) -> Any:
        if self._connection is None:
            self._server_started = server_start(self.databases.backend)
            self._connection = self.databases.backend.connect(self.checker.clone)
            self.checker.baseline(self._connection)
        return self._connection

    def check(self) -> tuple[list[str], list[str]]:
        """(errors, warnings) of the isolation check; counts them in the stats."""
        stats = self.databases.stats
        stats.checks += 1
        started = time.perf_counter()
        try:
            findings = self.checker.check(self.connection)
        except Exception as exc:  # the connection itself is broken: a fresh one for the next test
            self.close()
            restart = self._restart_note()
            findings = []
            detail = str(exc).strip()
            reason = f" ({type(exc).__name__}: {detail})" if detail and detail != "(0, '')" else ""
            errors = [
                f"{restart}the connection to the database was lost{reason}; a new one is opened for the next test"
            ]
            warns = []
        else:
            errors = [f.message for f in findings if f.severity == "error"]
            warns = [f.message for f in findings if f.severity == "warning"]
        if errors:
            self.close()
        stats.failures += bool(errors)
        stats.warnings += bool(warns)
        stats.check_seconds += time.perf_counter() - started
        return errors, warns

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None


def runs_xdist(config: pytest.Config) -> bool:
    """True in an xdist worker and in the controller of a distributed run (before or after
    xdist configured)."""
    if hasattr(config, "workerinput"):
        return True
    numprocesses = getattr(config.option, "numprocesses", None)
    dist = getattr(config.option, "dist", "no")
    return bool(numprocesses) or dist not in (None, "no")


STATE_KEY = pytest.StashKey[PluginState]()


def get_state(config: pytest.Config) -> PluginState:
    return config.stash[STATE_KEY]
