"""``manage.py test --parallel`` on our templates: :class:`ConcurrentTestRunner`.

``TEST_RUNNER = "pytest_concurrent_db.django.ConcurrentTestRunner"`` (or ``manage.py test
--testrunner pytest_concurrent_db.django.ConcurrentTestRunner``), a ``DiscoverRunner``:

* For each test database (in ``TEST["DEPENDENCIES"]`` order) the template is built by
  ``migrate`` once, in this process, under the locks and with the fingerprint of the pytest
  plugin (:mod:`.django_common`): a pytest run and a ``manage.py test`` run of one project
  share it, and a run whose inputs did not change migrates nothing.
* The worker clones (``--parallel N``: N, else one) are made in parallel threads, each on a
  control connection of its own that holds the clone's liveness lock until the clone is
  dropped: if this process is killed, the next run (or pytest run) reaps them.
* This process points its aliases at the first clone (``check``, serialization, and the
  tests themselves without ``--parallel``).  Each worker process of the pool points its
  aliases, mirrors included, at its own clone in :func:`_init_worker`, which replaces
  Django's under every start method (fork, spawn, forkserver): the clones' names travel in
  the pool's initializer arguments, and spawned workers set Django up first.
* After every ``TestCase`` class a worker checks that its aliases are still on its clone
  and reports it with the test events; at the end each clone's marker and the template
  are checked here.  Then the clones are dropped (``--keepdb``: kept, marked kept), also
  after Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from django.core.management import CommandError
from django.test.runner import DiscoverRunner
from django.test.runner import parallel_type as _django_parallel_type

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
    url_and_base,
)
from .django_parallel import ConcurrentParallelTestSuite, Findings, WorkerPlan, _Planned
from .errors import ConcurrentDBError, ConfigError
from .naming import new_run_id
from .options import option
from .paths import Directories
from .progress import BuildProgress, ProgressLines
from .settings import Settings, resolve_one
from .site import Site
from .timings import write_timings
from .worker import WorkerDatabases, server_of

__all__ = ["ConcurrentTestRunner", "runner_settings"]

#: The options of the table that the runner uses (the URL and schema come from DATABASES).
RUNNER_OPTIONS = (
    "keep",
    "rebuild",
    "lock_timeout",
    "keep_templates",
    "clone_strategy",
    "spares",
    "isolation",
    "timings",
    "progress",
    "snapshot_dir",
    "snapshot_keep",
    "pg_bin",
)
ALTERNATIVE = "run the tests without ConcurrentTestRunner (Django's own runner: remove TEST_RUNNER or --testrunner)"
_MAX_THREADS = 8


def runner_settings(
    timings: object, configured: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None
) -> Settings:
    """The runner's options: ``--concurrent-db-timings`` (``timings``) > ``CONCURRENT_DB_*``
    environment variables > the ``CONCURRENT_DB`` settings dict (``configured``) > defaults."""
    given = {str(k).lower(): v for k, v in (configured or {}).items()}
    unknown = sorted(set(given) - set(RUNNER_OPTIONS))
    if unknown:
        raise ConfigError(
            f"settings.CONCURRENT_DB has {', '.join(map(repr, unknown))}, which the Django test runner does not "
            f"use; its keys are {', '.join(RUNNER_OPTIONS)} (the databases come from DATABASES)"
        )
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    timings_dest = option("timings").dest

    def cli(dest: str) -> object:
        return timings if dest == timings_dest else None

    def configured_value(key: str) -> object:  # the option's ini key, concurrent_db_<name>
        return given.get(key.removeprefix("concurrent_db_"))

    for name in RUNNER_OPTIONS:
        values[name], source = resolve_one(option(name), cli, configured_value, environ=environ)
        sources[name] = f"settings CONCURRENT_DB[{name!r}]" if source.startswith("ini ") else source
    return Settings(**values, sources=sources)


def parallel_type(value: str) -> int | str:
    """Django's ``--parallel`` type, with ``auto`` counted under every start method (Django's
    own counts 1 under forkserver): ``DJANGO_TEST_PROCESSES``, else the number of CPUs."""
    if value == "auto":
        return int(os.environ.get("DJANGO_TEST_PROCESSES") or multiprocessing.cpu_count())
    return _django_parallel_type(value)  # type: ignore[no-any-return]


# -- the parent: templates, clones, checks, drops --------------------------------------------------
@dataclass
class _TestDatabase:
    aliases: list[str]
    builder: WorkerDatabases
    workers: list[WorkerDatabases] = field(default_factory=list)
    futures: list[Future[Any]] = field(default_factory=list)
    mirrors: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)


class _Session:
    """The test databases of one ``manage.py test`` run."""

    def __init__(self, settings: Settings, *, workers: int, keep: bool, runner: ConcurrentTestRunner) -> None:
        self.settings = settings
        self.count = max(workers, 1)
        self.keep = keep
        self.runner = runner
        self.run_id = new_run_id()
        self.pointer = Pointer()
        self.databases: list[_TestDatabase] = []
        self.errors: list[str] = []
        self.warns: list[str] = []
        self.ran_in_workers = False
        self._bases: dict[str, str] | None = None
        self._pool: ThreadPoolExecutor | None = None

    # -- setup -------------------------------------------------------------------------------
    def setup(self, aliases: Mapping[str, Any], serialized: set[str] | None) -> None:
        from django.db import connections
        from django.test.utils import get_unique_databases_and_mirrors

        wanted = set(aliases)
        wanted |= {m for a in list(wanted) if (m := connections[a].settings_dict["TEST"].get("MIRROR"))}
        test_databases, mirrors = get_unique_databases_and_mirrors(wanted)
        groups = [list(group) for _, group in test_databases.values()]
        sites = [self._site(group[0]) for group in groups]  # every alias supported, before any work
        reaped: set[tuple[str, str]] = set()  # one reap per server, however many test databases are on it
        for group, site in zip(groups, sites):
            builder = WorkerDatabases(site, run_id=self.run_id, worker_id="main", spares=self.settings.spares)
            self.databases.append(_TestDatabase(group, builder))
            try:
                server = server_of(site)
                builder.preflight(reap=server not in reaped)
                reaped.add(server)
            except ConcurrentDBError as exc:
                raise ConcurrentDBError(server_error(exc, group[0])) from None
        keys = CodeKeys()
        self._pool = ThreadPoolExecutor(min(self.count * len(groups), _MAX_THREADS) or 1, "concurrent-db")
        for database in self.databases:
            self._template_and_clones(database, keys)
        self._wait_for_clones()
        for database in self.databases:  # it holds no lock now: its connection is not needed during the tests
            database.builder.close()
        by_alias = {alias: database for database in self.databases for alias in database.aliases}
        for alias, primary in mirrors.items():
            if primary in by_alias:  # a mirror of a database not set up keeps its settings
                by_alias[primary].mirrors.append(alias)
                self.pointer.point(alias, by_alias[primary].targets[0], test_name=False)
        serialize([database.aliases[0] for database in self.databases], serialized)
        for database in self.databases:
            self._log_setup(database)

    def _site(self, alias: str) -> Site:
        from django.conf import settings

        url, _ = url_and_base(alias, ALTERNATIVE)
        if self._bases is None:
            self._bases = base_names()  # before any alias is pointed elsewhere
        root = Path(getattr(settings, "BASE_DIR", None) or Path.cwd()).resolve()
        dirs = Directories.for_project(url, root)
        if url.backend == "sqlite":  # clones beside the templates: a killed run's are found there
            dirs = Directories.create(url, dirs.templates, dirs.templates / "runner")
        return Site(
            url,
            dirs,
            base=self._bases[alias],
            lock_timeout=self.settings.lock_timeout,
            keep_templates=self.settings.keep_templates,
            clone_strategy=self.settings.clone_strategy,
            snapshot_dir=self.settings.snapshot_dir,
            snapshot_keep=self.settings.snapshot_keep,
            pg_bin=self.settings.pg_bin,
        )

    def _template_and_clones(self, database: _TestDatabase, keys: CodeKeys) -> None:
        """Build or reuse the template (here: ``migrate`` runs in this thread), start the
        clones, and point the aliases at the first one once it exists (the next test
        database's migrations may use it)."""
        from django.db import connections

        first, builder = database.aliases[0], database.builder
        key, spent = keys.get(connections[first].settings_dict["TEST"].get("MIGRATE", True) is not False)
        applied: list[int] = []
        populator = django_populator(first, key, self._point_template, applied)
        if self.settings.progress != "off":  # this process builds: it prints the lines itself
            builder.progress = BuildProgress("main", listener=ProgressLines(self.runner.log))
        template = builder.ensure_template([populator], rebuild=self.settings.rebuild)
        self.warns += [f"snapshot: {w}" for w in (template.snapshot.warnings if template.snapshot else [])]
        builder.stats.fingerprint_seconds += spent
        builder.stats.migrations = sum(applied)
        assert self._pool is not None
        for index in range(self.count):
            worker = WorkerDatabases(
                builder.site, run_id=self.run_id, worker_id=f"gw{index}", spares=self.settings.spares
            )
            worker.stats.template = template.name
            database.workers.append(worker)
            database.futures.append(self._pool.submit(worker.create_clone, template))
        clone = database.futures[0].result()
        database.targets.append(database.workers[0].backend.location(clone.name))
        for alias in database.aliases:
            self.pointer.point(alias, database.targets[0], test_name=True)

    def _point_template(self, alias: str, name: str) -> None:
        self.pointer.point(alias, name, test_name=False)

    def _wait_for_clones(self) -> None:
        """Every clone made, or (all or nothing) the first error raised once all are done."""
        failure: BaseException | None = None
        for database in self.databases:
            for index, future in enumerate(database.futures):
                exc = future.exception()
                if exc is not None and failure is None:
                    failure = exc
                elif exc is None and index:
                    database.targets.append(database.workers[index].backend.location(future.result().name))
        if failure is not None:
            raise failure

    def _log_setup(self, database: _TestDatabase) -> None:
        stats = database.builder.stats
        if stats.template_built and stats.built_from:
            how = (
                f"built incrementally from {stats.built_from} (+{stats.migrations} migration"
                f"{'' if stats.migrations == 1 else 's'}) in {stats.template_seconds:.2f}s"
            )
        elif stats.template_built:
            how = f"built in {stats.template_seconds:.2f}s ({stats.migrations} migrations)"
        else:
            how = "reused (no migrations)"
        clones = ", ".join(f"{w.worker_id} {w.stats.clone_seconds:.3f}s" for w in database.workers)
        self.runner.log(f"concurrent-db: template {stats.template} {how} for {database.aliases[0]!r}; clones {clones}")
        if stats.reaped:
            self.runner.log(f"concurrent-db: reaped {len(stats.reaped)} databases left by dead runs: "
                            f"{', '.join(stats.reaped)}")  # fmt: skip
        for each in stats.not_dropped:
            self.runner.log(f"concurrent-db: not dropped: {each}", level=logging.WARNING)

    def plan(self) -> WorkerPlan:
        planned = []
        for d in self.databases:
            template = d.workers[0].template
            assert template is not None
            clones = tuple(w.database.name for w in d.workers if w.database is not None)
            stripped = replace(template, populators=())  # closures do not pickle
            planned.append(_Planned(tuple(d.aliases), tuple(d.mirrors), clones, tuple(d.targets), stripped))
        return WorkerPlan(self.run_id, tuple(planned))

    def record(self, index: int, checks: Findings) -> None:
        """What worker ``index`` found after a TestCase class (one entry per test database)."""
        self.ran_in_workers = True
        for database, (seconds, found) in zip(self.databases, checks):
            if index > len(database.workers):
                continue  # a replacement worker's own clone: checked by nobody else
            stats = database.workers[index - 1].stats
            stats.checks += 1
            stats.check_seconds += seconds
            self._add(found, stats, f"worker {index}, database {database.aliases[0]!r}: ")

    def _add(self, found: list[tuple[str, str]], stats: Any, prefix: str) -> None:
        errors, warns = classify(found, self.settings.isolation, prefix)
        stats.failures += bool(errors)
        stats.warnings += bool(warns)
        self.errors += [e for e in errors if e not in self.errors]
        self.warns += [w for w in warns if w not in self.warns]

    # -- teardown ----------------------------------------------------------------------------
    def teardown(self, *, check: bool = True) -> None:
        """Check the clones (``check``: the tests ran), then drop (or keep) them, restore the
        settings, close everything."""
        from django.db import connections

        with _handling(signal.SIGINT, signal.SIG_IGN):  # a second Ctrl-C waits for the drops
            try:
                for database in self.databases:  # a failed setup may have copies in flight
                    for future in database.futures:
                        future.exception()
                if check and self.settings.isolation != "off":
                    self._check_clones()
                connections.close_all()
                self._drop()
            finally:
                self.pointer.restore()
                for database in self.databases:
                    for each in (database.builder, *database.workers):
                        with contextlib.suppress(Exception):
                            each.close()
                if self._pool is not None:
                    self._pool.shutdown(wait=True)

    def _check_clones(self) -> None:
        from django.db import connections

        mode = self.settings.isolation
        for database in self.databases:
            for index, worker in enumerate(database.workers):
                checker = checker_for(worker, self.run_id, worker.worker_id, mode)
                if checker is None:
                    continue
                started = time.perf_counter()
                found: list[tuple[str, str]] = []
                if index == 0 and not self.ran_in_workers:  # the tests ran here, on the first clone
                    found += misdirected(database.aliases + database.mirrors, database.targets[0])
                    if connections[database.aliases[0]].connection is not None:
                        found += check_connection(checker, connections[database.aliases[0]].connection)
                connection = worker.backend.connect(checker.clone)
                try:
                    found += check_connection(checker, connection)
                finally:
                    connection.close()
                worker.stats.checks += 1
                worker.stats.check_seconds += time.perf_counter() - started
                prefix = f"worker {index + 1}, database {database.aliases[0]!r} ({checker.clone}): "
                self._add(found, worker.stats, prefix)

    def _drop(self) -> None:
        """Drop (or keep) every clone, in parallel: PostgreSQL's DROP DATABASE waits for a
        checkpoint, which concurrent drops share."""
        workers = [w for d in self.databases for w in d.workers if w.database is not None]
        kept = [w.database.name for w in workers if w.database is not None] if self.keep else []
        with ThreadPoolExecutor(min(len(workers), _MAX_THREADS) or 1, "concurrent-db-drop") as pool:
            futures = [pool.submit(w.keep_clone if self.keep else w.drop_clone) for w in workers]
        for future in futures:
            exc = future.exception()
            if isinstance(exc, ConcurrentDBError):
                self.warns.append(f"cleanup failed: {exc.describe()}")
            elif exc is not None:
                raise exc
        for database in self.databases:  # once all are dropped: a held lock here is a live worker's
            if database.workers:
                with contextlib.suppress(ConcurrentDBError):  # clones of replaced workers
                    database.workers[0].sweep_run()
        dropped = sum(len(w.stats.dropped) for d in self.databases for w in d.workers)
        if kept:
            # one command per test database: the CLI's scope is one database name (test_app is not
            # test_app_analytics)
            commands = dict.fromkeys(_prune_command(d.builder.site) for d in self.databases if d.workers)
            self.runner.log(
                f"concurrent-db: kept {len(kept)} clones (--keepdb): {', '.join(kept)}; "
                f"{' && '.join(commands)} drops them"
            )
        elif dropped:
            self.runner.log(f"concurrent-db: dropped {dropped} clones", logging.DEBUG)

    def reports(self) -> list[Any]:
        return [r.stats for d in self.databases for r in (d.builder, *d.workers)]


def _prune_command(site: Site) -> str:
    """The command line that drops this project's kept clones (and dead leftovers)."""
    if site.url.backend == "sqlite":
        return f"python -m pytest_concurrent_db prune --dir {site.directories.templates} --yes"
    return f"python -m pytest_concurrent_db prune --url {site.url.with_database(site.base)} --yes"


@contextlib.contextmanager
def _handling(signum: int, handler: Any, *, over_default_only: bool = False) -> Iterator[None]:
    """``handler`` for ``signum`` while the block runs, then the previous one (main thread
    only; ``over_default_only``: not where the program set a handler of its own)."""
    try:
        previous = signal.getsignal(signum)
        installed = not over_default_only or previous is signal.SIG_DFL
        if installed:
            signal.signal(signum, handler)
    except ValueError:  # not the main thread
        installed = False
    try:
        yield
    finally:
        if installed:
            signal.signal(signum, previous)


def _exit_on_signal(signum: int, frame: Any) -> None:
    """SIGTERM (CI cancelling a job) ends the run like Ctrl-C does: through the teardown."""
    raise SystemExit(128 + signum)


class ConcurrentTestRunner(DiscoverRunner):  # type: ignore[misc]
    """Django's ``DiscoverRunner`` on templates built once and cloned per worker in parallel."""

    parallel_test_suite = ConcurrentParallelTestSuite

    def __init__(self, *args: Any, concurrent_db_timings: object = None, **kwargs: Any) -> None:
        if kwargs.get("parallel") == "auto":
            kwargs["parallel"] = parallel_type("auto")
        super().__init__(*args, **kwargs)
        self.concurrent_db_timings = concurrent_db_timings
        self._session: _Session | None = None
        self._exits: contextlib.ExitStack | None = None

    @classmethod
    def add_arguments(cls, parser: Any) -> None:
        super().add_arguments(parser)
        for action in parser._actions:
            if "--parallel" in action.option_strings:
                action.type = parallel_type
        timings = option("timings")
        parser.add_argument(
            timings.flag, nargs="?", const=True, default=None, dest="concurrent_db_timings",
            metavar=timings.metavar, help=timings.help,
        )  # fmt: skip

    def setup_databases(self, **kwargs: Any) -> _Session:
        from django.conf import settings as django_settings
        from django.db import connections

        try:
            settings = runner_settings(self.concurrent_db_timings, getattr(django_settings, "CONCURRENT_DB", None))
        except ConfigError as exc:
            raise CommandError(str(exc)) from None
        session = _Session(settings, workers=self.parallel, keep=self.keepdb or settings.keep, runner=self)
        parts = [f"{name.replace('_', '-')}={_show(getattr(settings, name))} [{settings.sources[name]}]"
                 for name in RUNNER_OPTIONS]  # fmt: skip
        self.log(f"concurrent-db: run {session.run_id}, {session.count} clones; {', '.join(parts)}", logging.DEBUG)
        self._exits = contextlib.ExitStack()
        self._exits.enter_context(_handling(signal.SIGTERM, _exit_on_signal, over_default_only=True))
        try:
            session.setup(kwargs.get("aliases") or {}, kwargs.get("serialized_aliases"))
        except BaseException as exc:
            self._close(session, check=False)
            if isinstance(exc, ConcurrentDBError):
                raise CommandError(str(exc)) from None
            raise
        self._session = session
        if self.debug_sql:
            for alias in connections:
                connections[alias].force_debug_cursor = True
        return session

    def run_suite(self, suite: Any, **kwargs: Any) -> Any:
        from django.db import connections

        if isinstance(suite, ConcurrentParallelTestSuite):
            suite.session = self._session
        connections.close_all()  # no connection of this process crosses a fork
        return super().run_suite(suite, **kwargs)

    def teardown_databases(self, old_config: Any, **kwargs: Any) -> None:
        self._close(old_config)
        session: _Session = old_config
        for message in session.warns:
            print(f"concurrent-db: warning: {message}", file=sys.stderr)
        for message in session.errors:
            print(f"concurrent-db: isolation error: {message}", file=sys.stderr)
        if session.settings.timings:
            write_timings(_Printer(), session.reports(), session.run_id, session.settings.timings)

    def _close(self, session: _Session, *, check: bool = True) -> None:
        try:
            session.teardown(check=check)
        finally:
            if self._exits is not None:
                self._exits.close()
                self._exits = None

    def suite_result(self, suite: Any, result: Any, **kwargs: Any) -> int:
        failures: int = super().suite_result(suite, result, **kwargs)
        return failures + (len(self._session.errors) if self._session is not None else 0)


class _Printer:
    """The terminal of :func:`~.timings.write_timings` for ``manage.py test`` (stdout)."""

    def section(self, title: str) -> None:
        print(f"{'=' * 20} {title} {'=' * 20}")

    def write_line(self, line: str, **markup: bool) -> None:
        print(line)


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}s"
    return str(value)
