"""Per-process plugin state kept in ``config.stash``: the glue between pytest and the engine."""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .engine import ConcurrentDatabase, Engine, Populator, callable_populator, schema_populator, server_lock_dir
from .isolation import IsolationChecker
from .settings import Settings
from .url import DatabaseURL

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
    engine: Engine | None = None
    checker: IsolationChecker | None = None
    database: ConcurrentDatabase | None = None
    #: Engines of integrations (one per Django database alias...), besides ``engine``.
    extra_engines: list[Engine] = field(default_factory=list)
    worker_reports: list[dict[str, Any]] = field(default_factory=list)
    swept: list[str] = field(default_factory=list)

    # -- directories -------------------------------------------------------------------
    def template_dir(self) -> Path:
        """SQLite templates: pytest's cache dir, so that they survive between runs; without
        the cache plugin, a stable per-project directory under the system temp dir."""
        cache = getattr(self.config, "cache", None)
        if cache is not None:
            return Path(cache.mkdir("concurrent_db"))
        project = hashlib.sha256(str(self.config.rootpath).encode()).hexdigest()[:12]
        return server_lock_dir() / "sqlite-templates" / project

    def _basetemp(self) -> Path:
        factory = getattr(self.config, "_tmp_path_factory", None)
        if factory is not None:
            return Path(factory.getbasetemp())
        return Path(tempfile.mkdtemp(prefix="pytest-concurrent-db-"))

    def lock_dir(self, url: DatabaseURL) -> Path:
        """Template file locks: beside SQLite templates, machine-wide for servers."""
        if url.backend == "sqlite":
            return self.template_dir() / "locks"
        return server_lock_dir()

    def resolved_clone_dir(self) -> Path:
        if self.clone_dir is None:
            self.clone_dir = self._basetemp() / "concurrent_db"
        return self.clone_dir

    # -- engine --------------------------------------------------------------------------
    def new_engine(self, url: DatabaseURL, *, base: str | None = None) -> Engine:
        """An engine for ``url`` using this process's run id, worker id and directories."""
        sqlite = url.backend == "sqlite"
        return Engine(
            url,
            run_id=self.run_id,
            worker_id=self.worker_id,
            lock_dir=self.lock_dir(url),
            lock_timeout=self.settings.lock_timeout,
            keep_templates=self.settings.keep_templates,
            clone_strategy=self.settings.clone_strategy,
            template_dir=self.template_dir() if sqlite else None,
            clone_dir=self.resolved_clone_dir() if sqlite else None,
            base=base,
            spares=self.settings.spares,
        )

    def get_engine(self) -> Engine:
        """The engine of the ``concurrent_db`` fixtures (the configured URL)."""
        if self.engine is None:
            self.engine = self.new_engine(self.settings.url or DatabaseURL(backend="sqlite", database=""))
        return self.engine

    def all_engines(self) -> list[Engine]:
        return ([self.engine] if self.engine is not None else []) + self.extra_engines

    def populators(self, fixture_populate: Callable[[Any], None] | None) -> list[Populator]:
        out = [schema_populator(path) for path in self.settings.schema]
        hook = self.config.hook.pytest_concurrent_db_populate_template
        impls = hook.get_hookimpls()
        if impls:
            backend = self.get_engine().backend.name
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
        engine = self.get_engine()
        populators = self.populators(fixture_populate)
        keys = [k for k in self.config.hook.pytest_concurrent_db_template_key(config=self.config) if k]
        engine.ensure_template(populators, extra=[str(k) for k in keys], rebuild=self.settings.rebuild)
        self.database = engine.create_clone()
        self.checker = IsolationChecker(
            backend=engine.backend,
            clone=self.database.name,
            template=self.database.template_name,
            run_id=self.run_id,
            worker_id=self.worker_id,
            fingerprint=engine.template_fingerprint,
            mode=self.settings.isolation,
        )
        return self.database

    def teardown(self) -> None:
        """Drop this process's clones (unless ``--concurrent-db-keep``)."""
        for engine in self.all_engines():
            if self.settings.keep:
                engine.keep_clone()
            else:
                engine.drop_clone()
        self.database = None

    def worker_connection(self) -> WorkerConnection:
        assert self.engine is not None
        assert self.checker is not None
        return WorkerConnection(self.engine, self.checker, self.worker_id)

    def report(self) -> list[dict[str, Any]]:
        """One stats dict per engine that made a database in this process."""
        out = []
        for engine in self.all_engines():
            if engine.stats.template:
                stats = engine.stats.as_dict()
                stats["worker_id"] = self.worker_id
                out.append(stats)
        return out


class WorkerConnection:
    """The one connection a worker's tests share; re-opened after an isolation error."""

    def __init__(self, engine: Engine, checker: IsolationChecker, worker_id: str) -> None:
        self.engine = engine
        self.checker = checker
        self.worker_id = worker_id
        self._connection: Any = None

    @property
    def connection(self) -> Any:
        if self._connection is None:
            self._connection = self.engine.backend.connect(self.checker.clone)
            self.checker.baseline(self._connection)
        return self._connection

    def check(self) -> tuple[list[str], list[str]]:
        """(errors, warnings) of the isolation check; counts them in the engine's stats."""
        stats = self.engine.stats
        stats.checks += 1
        started = time.perf_counter()
        try:
            findings = self.checker.check(self.connection)
        except Exception as exc:  # the connection itself is broken: a fresh one for the next test
            self.close()
            findings = []
            detail = str(exc).strip()
            reason = f" ({type(exc).__name__}: {detail})" if detail and detail != "(0, '')" else ""
            errors = [f"the connection to the database was lost{reason}; a new one is opened for the next test"]
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


STATE_KEY = pytest.StashKey[PluginState]()


def get_state(config: pytest.Config) -> PluginState:
    return config.stash[STATE_KEY]
