"""The pytest entry point: options, hooks, report header, cleanup; the summary is :mod:`.summary`."""

from __future__ import annotations

import importlib.util
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from . import hookspecs
from . import settings as settings_module
from .errors import ConcurrentDBError, ConfigError
from .fixtures import (
    FRESH_KEY,
    PHASE_REPORTS_KEY,
    _concurrent_db_worker_connection,
    concurrent_db,
    concurrent_db_connection,
    concurrent_db_fresh,
    concurrent_db_populate,
    concurrent_db_transaction,
    concurrent_db_url,
    kept_section,
)
from .naming import new_run_id
from .progress_display import ProgressDisplay, display_mode, new_progress_dir
from .report import WorkerReport
from .settings import OPTIONS, Settings, check_url_for_xdist, resolve, resolve_one
from .state import STATE_KEY, PluginState, get_state, runs_xdist
from .summary import write_summary

__all__ = [
    "_concurrent_db_worker_connection",
    "concurrent_db",
    "concurrent_db_connection",
    "concurrent_db_fresh",
    "concurrent_db_populate",
    "concurrent_db_transaction",
    "concurrent_db_url",
]


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("concurrent-db", "database per xdist worker (pytest-concurrent-db)")
    for option in OPTIONS:
        kwargs: dict[str, Any] = {"dest": option.dest, "default": None, "help": option.help}
        if option.kind == "bool":
            kwargs.update(action="store_const", const=True)
        elif option.kind == "paths":
            kwargs.update(action="append", metavar=option.metavar)
        elif option.kind == "choice":
            kwargs.update(choices=option.choices)
        elif option.kind == "flag_or_path":  # --concurrent-db-timings[=FILE.json]
            kwargs.update(nargs="?", const=True, metavar=option.metavar)
        else:
            kwargs.update(metavar=option.metavar)
        group.addoption(option.flag, **kwargs)
        if option.kind == "paths":
            parser.addini(option.ini, option.help, type="paths", default=None)
        else:
            parser.addini(option.ini, option.help, type="string", default=None)


def _resolve(config: pytest.Config) -> Settings:
    inipath = config.inipath
    return resolve(
        cli=config.getoption,
        ini=config.getini,
        cwd=Path(config.invocation_params.dir),
        ini_dir=inipath.parent if inipath else None,
    )


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    try:
        settings = _resolve(config)
    except ConfigError as exc:  # a bad value only matters when the plugin is on
        try:
            enabled, _ = resolve_one(settings_module.option("enabled"), config.getoption, config.getini)
        except ConfigError:
            enabled = True  # the switch itself is bad: say so
        if enabled:
            raise pytest.UsageError(str(exc)) from None
        settings = Settings()
    if _is_worker(config):
        workerinput: dict[str, Any] = config.workerinput  # type: ignore[attr-defined]
        run_id = workerinput.get("concurrent_db_run_id") or new_run_id()
        worker_id = str(workerinput.get("workerid", "gw"))
        clone_dir = workerinput.get("concurrent_db_clone_dir")
        progress_dir = workerinput.get("concurrent_db_progress_dir")
        state = PluginState(
            config, settings, run_id, worker_id, is_worker=True, clone_dir=Path(clone_dir) if clone_dir else None
        )
        state.progress_dir = Path(progress_dir) if progress_dir else None
    else:
        state = PluginState(config, settings, new_run_id(), "main", is_worker=False)
    config.stash[STATE_KEY] = state
    if settings.enabled and settings.url is not None:
        try:
            check_url_for_xdist(settings.url, runs_xdist(config))
        except ConfigError as exc:
            raise pytest.UsageError(str(exc)) from None
    config.addinivalue_line(
        "markers",
        "concurrent_db(isolation_level=None, read_only=False, fresh=False): the transaction of concurrent_db_session "
        "and concurrent_db_transaction: READ UNCOMMITTED, READ COMMITTED, REPEATABLE READ or SERIALIZABLE; "
        "read-only; fresh: concurrent_db_connection and concurrent_db_session on a database made for the test",
    )
    if settings.enabled and importlib.util.find_spec("sqlalchemy") is not None:
        from .sqla import fixtures as sqlalchemy_fixtures

        config.pluginmanager.register(sqlalchemy_fixtures, "concurrent_db_sqlalchemy")
        if importlib.util.find_spec("greenlet") is not None:  # SQLAlchemy's asyncio extension needs it
            from .sqla import async_fixtures

            config.pluginmanager.register(async_fixtures, "concurrent_db_sqlalchemy_async")
        if _has_plugin(config, "pytest_alembic", "pytest_alembic.plugin"):  # after it: our alembic_engine wins
            from .sqla import alembic_fixtures

            config.pluginmanager.register(alembic_fixtures, "concurrent_db_pytest_alembic")
    if _has_plugin(config, "xdist", "xdist.plugin"):
        config.pluginmanager.register(_XdistHooks(state), "concurrent_db_xdist")
    if settings.enabled and _has_plugin(config, "django", "pytest_django.plugin"):  # after it: our fixtures win
        from . import django as django_integration

        config.pluginmanager.register(django_integration, "concurrent_db_django")


def _has_plugin(config: pytest.Config, entry_point: str, module: str) -> bool:
    """Whether a plugin is active, loaded by its entry point or by ``-p <module>`` (as with
    ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``)."""
    manager = config.pluginmanager
    return manager.hasplugin(entry_point) or manager.hasplugin(module)


class _XdistHooks:
    """Hooks that exist only when pytest-xdist is installed."""

    def __init__(self, state: PluginState) -> None:
        self.state = state

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["concurrent_db_run_id"] = self.state.run_id
        clone_dir = self.state.resolved_clone_dir() if self.state.settings.enabled else None
        if clone_dir is not None:  # SQLite clones of the whole run in one directory
            node.workerinput["concurrent_db_clone_dir"] = str(clone_dir)
        if self.state.progress_dir is not None:  # build progress, read by the controller's display
            node.workerinput["concurrent_db_progress_dir"] = str(self.state.progress_dir)

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        wire = getattr(node, "workeroutput", {}).get("concurrent_db", [])
        self.state.worker_reports.extend(WorkerReport.from_wire(report) for report in wire)


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    state = config.stash.get(STATE_KEY, None)
    if state is None or not state.settings.enabled or _is_worker(config):
        return None
    parts = state.settings.describe()
    if state.settings.url is None and _django_configured(config):
        backend = "from Django's DATABASES"
        parts = [p for p in parts if not p.startswith("url=")]
    else:
        backend = state.settings.backend
    return [f"concurrent-db: backend={backend} run={state.run_id} " + ", ".join(parts)]


def _django_configured(config: pytest.Config) -> bool:
    """Whether the run takes its databases from Django's settings (not merely has
    pytest-django installed)."""
    if not config.pluginmanager.hasplugin("concurrent_db_django"):
        return False
    from pytest_django.lazy_django import django_settings_is_configured

    return bool(django_settings_is_configured())


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    state = get_state(session.config)
    if not state.settings.enabled or state.is_worker:
        return
    try:  # the reap is not needed before the workers start: it runs while they do
        state.get_databases().preflight(reap_in_background=runs_xdist(session.config))
    except ConcurrentDBError as exc:
        state.close()
        state.databases = None
        raise pytest.UsageError(str(exc)) from None
    _start_progress(session.config, state)


def _start_progress(config: pytest.Config, state: PluginState) -> None:
    """The display of template builds (``--concurrent-db-progress``); a failure only loses it."""
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if terminal is None:
        return
    mode = display_mode(state.settings.progress, isatty=bool(terminal.isatty()), verbosity=config.get_verbosity())
    if mode is None:
        return
    try:
        directory = new_progress_dir() if runs_xdist(config) else None
        state.display = ProgressDisplay(terminal, config.pluginmanager.get_plugin("capturemanager"), mode, directory)
        state.progress_dir = directory
        if state.databases is not None:  # made before the display: it builds too
            state.databases.progress = state.build_progress()
        state.display.start()
        if directory is not None:
            config.pluginmanager.register(_ProgressHooks(state.display), _PROGRESS_HOOKS)
    except Exception:  # progress must never break a run
        state.display = None
        state.progress_dir = None


def _stop_progress(state: PluginState) -> None:
    display, state.display = state.display, None
    if display is not None:
        display.stop()
    manager = state.config.pluginmanager
    if manager.has_plugin(_PROGRESS_HOOKS):
        manager.unregister(name=_PROGRESS_HOOKS)


_PROGRESS_HOOKS = "concurrent_db_progress"


class _ProgressHooks:
    """The xdist controller's hook that keeps its test reports off the live line."""

    def __init__(self, display: ProgressDisplay) -> None:
        self.display = display

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.display.erase()


@pytest.hookimpl(hookwrapper=True)  # old style: pytest 7.4 has no wrapper=True
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """Remember each phase's report on the item (``--concurrent-db-keep-failed`` keeps the
    fresh database of a failed test) and name the kept database in the failure report."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    item.stash.setdefault(PHASE_REPORTS_KEY, {})[report.when] = report
    if report.failed and report.when in ("setup", "call"):
        state = item.config.stash.get(STATE_KEY, None)
        if state is not None and state.settings.keep_failed:
            for database in item.stash.get(FRESH_KEY, []):
                report.sections.append(kept_section(database))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    """After the test's fixtures: close the connections ``concurrent_db.thread_connection()``
    gave its threads (also of threads still running or dead)."""
    yield
    state = item.config.stash.get(STATE_KEY, None)
    if state is not None and state.database is not None:
        state.database.close_thread_connections()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    state = get_state(session.config)
    if not state.settings.enabled:
        return
    _stop_progress(state)
    state.teardown()  # normally done already by the concurrent_db fixture's teardown
    try:
        if state.is_worker:
            session.config.workeroutput["concurrent_db"] = [r.to_wire() for r in state.reports()]  # type: ignore[attr-defined]
        else:
            terminal = session.config.pluginmanager.get_plugin("terminalreporter")
            for databases in state.all_databases():
                problem = databases.wait_for_reap()
                if problem and terminal is not None:
                    terminal.write_line(f"concurrent-db: reaping dead runs' databases failed: {problem}", yellow=True)
                if state.settings.keep:
                    continue
                try:
                    state.swept.extend(databases.sweep_run())
                except ConcurrentDBError as exc:
                    if terminal is not None:
                        terminal.write_line(f"concurrent-db: cleanup failed: {exc.describe()}", yellow=True)
    finally:
        state.close()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash.get(STATE_KEY, None)
    if state is None or not state.settings.enabled or _is_worker(config):
        return
    xdist = runs_xdist(config)
    controller = state.all_databases() if xdist else []  # what it reaped at the start (workers report their own)
    write_summary(
        terminalreporter,
        state.worker_reports if xdist else state.reports(),
        run_id=state.run_id,
        isolation=state.settings.isolation,
        swept=state.swept,
        keep=state.settings.keep,
        default_backend=state.settings.backend,
        reaped=[name for d in controller for name in d.stats.reaped],
        not_dropped=[each for d in controller for each in d.stats.not_dropped],
        verbose=config.get_verbosity() > 0,
    )
    if state.settings.timings:  # --concurrent-db-timings
        from .timings import write_timings

        reports = state.worker_reports if xdist else state.reports()
        write_timings(terminalreporter, reports, state.run_id, state.settings.timings)
