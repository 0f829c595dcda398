"""The pytest entry point: options, hooks, report header, terminal summary, cleanup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from . import hookspecs
from . import settings as settings_module
from .engine import check_url_for_xdist
from .errors import ConcurrentDBError, ConfigError
from .fixtures import (
    _concurrent_db_worker_connection,
    concurrent_db,
    concurrent_db_connection,
    concurrent_db_populate,
    concurrent_db_transaction,
    concurrent_db_url,
)
from .naming import new_run_id
from .settings import OPTIONS, Settings, resolve, resolve_one
from .state import STATE_KEY, PluginState, get_state

__all__ = [
    "_concurrent_db_worker_connection",
    "concurrent_db",
    "concurrent_db_connection",
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


def _runs_xdist(config: pytest.Config) -> bool:
    """True in the controller of a distributed run (before or after xdist configured)."""
    if _is_worker(config):
        return True
    numprocesses = getattr(config.option, "numprocesses", None)
    dist = getattr(config.option, "dist", "no")
    return bool(numprocesses) or dist not in (None, "no")


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
        state = PluginState(
            config, settings, run_id, worker_id, is_worker=True, clone_dir=Path(clone_dir) if clone_dir else None
        )
    else:
        state = PluginState(config, settings, new_run_id(), "main", is_worker=False)
    config.stash[STATE_KEY] = state
    if settings.enabled and settings.url is not None:
        try:
            check_url_for_xdist(settings.url, _runs_xdist(config))
        except ConfigError as exc:
            raise pytest.UsageError(str(exc)) from None
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
        if self.state.settings.enabled and self.state.settings.backend == "sqlite":
            node.workerinput["concurrent_db_clone_dir"] = str(self.state.resolved_clone_dir())

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        self.state.worker_reports.extend(getattr(node, "workeroutput", {}).get("concurrent_db", []))


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    state = config.stash.get(STATE_KEY, None)
    if state is None or not state.settings.enabled or _is_worker(config):
        return None
    parts = state.settings.describe()
    if state.settings.url is None and config.pluginmanager.hasplugin("concurrent_db_django"):
        backend = "from Django's DATABASES"
        parts = [p for p in parts if not p.startswith("url=")]
    else:
        backend = state.settings.backend
    return [f"concurrent-db: backend={backend} run={state.run_id} " + ", ".join(parts)]


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    state = get_state(session.config)
    if not state.settings.enabled or state.is_worker:
        return
    try:
        state.get_engine().preflight()
    except ConcurrentDBError as exc:
        if state.engine is not None:
            state.engine.close()
            state.engine = None
        raise pytest.UsageError(str(exc)) from None


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    state = get_state(session.config)
    if not state.settings.enabled:
        return
    state.teardown()  # normally done already by the concurrent_db fixture's teardown
    if state.is_worker:
        session.config.workeroutput["concurrent_db"] = state.report()  # type: ignore[attr-defined]
    for engine in state.all_engines():
        try:
            if not state.is_worker and not state.settings.keep:
                state.swept.extend(engine.sweep_run())
        except ConcurrentDBError as exc:
            terminal = session.config.pluginmanager.get_plugin("terminalreporter")
            if terminal is not None:
                terminal.write_line(f"concurrent-db: cleanup failed: {exc}", yellow=True)
        finally:
            engine.close()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash.get(STATE_KEY, None)
    if state is None or not state.settings.enabled or _is_worker(config):
        return
    reports = state.worker_reports if _runs_xdist(config) else state.report()
    tr = terminalreporter
    tr.section("concurrent-db")
    tr.write_line(f"run: {state.run_id}")
    templates: dict[str, list[dict[str, Any]]] = {}
    for report in reports:
        templates.setdefault(report["template"], []).append(report)
    for template, group in templates.items():
        first = group[0]
        url = first.get("url") or "sqlite (default)"
        tr.write_line(f"backend: {first.get('backend', state.settings.backend)}  url: {url}")
        builders = [r for r in group if r.get("template_built")]
        if builders:
            how = f"built by {builders[0]['worker_id']} in {builders[0]['template_seconds']:.2f}s"
        elif any(r.get("clone") for r in group):
            how = "reused (inputs unchanged)"
        else:
            how = "not ready (setup failed)"
        waited = max(r.get("lock_wait_seconds", 0.0) for r in group)
        tr.write_line(f"template: {template} {how}; longest lock wait {waited:.2f}s")
        ordered = sorted(group, key=_worker_order)
        clones = ", ".join(
            f"{r['worker_id']} {r['clone_seconds']:.3f}s{' (spare)' if r.get('spare_claimed') else ''}"
            for r in ordered
            if r.get("clone")
        )
        copied = [r["method"] for r in ordered if r.get("method") and not r.get("spare_claimed")]
        method = (copied or [r["method"] for r in ordered if r.get("method")] or [""])[0]
        tr.write_line(f"clones ({method}): {clones}" if method else f"clones: {clones}")
        made = [r for r in ordered if r.get("spares_made")]
        if made:
            each = ", ".join(f"{r['worker_id']} {r['spare_seconds']:.2f}s" for r in made)
            total = sum(r["spares_made"] for r in made)
            tr.write_line(f"spares for the next run: {total} made in the background while the tests ran ({each})")
        _write_teardown(tr, ordered)
        for r in ordered:
            if r.get("spare_error"):
                tr.write_line(f"spares: {r['worker_id']} could not make one: {r['spare_error']}", yellow=True)
    if reports:
        checks = sum(r.get("checks", 0) for r in reports)
        failures = sum(r.get("failures", 0) for r in reports)
        warns = sum(r.get("warnings", 0) for r in reports)
        tr.write_line(f"isolation ({state.settings.isolation}): {checks} checks, {failures} failed, {warns} warned")
    dropped = sum(len(r.get("dropped", [])) for r in reports) + len(state.swept)
    kept = " (kept: --concurrent-db-keep)" if state.settings.keep else ""
    tr.write_line(f"dropped: {dropped} databases ({len(state.swept)} left by crashed workers){kept}")


def _write_teardown(tr: Any, reports: list[dict[str, Any]]) -> None:
    """The teardown phases of the worker whose teardown took longest."""
    phases = ("check_seconds", "spare_wait_seconds", "drop_seconds")
    timed = [r for r in reports if r.get("clone")]
    if not timed:
        return
    slowest = max(timed, key=lambda r: sum(r.get(p, 0.0) for p in phases))
    parts = [f"isolation checks {slowest.get('check_seconds', 0.0):.2f}s"]
    if slowest.get("spares_made"):
        parts.append(f"waiting for its spare {slowest.get('spare_wait_seconds', 0.0):.2f}s")
    parts.append(f"drop {slowest.get('drop_seconds', 0.0):.2f}s")
    tr.write_line(f"teardown (slowest, {slowest['worker_id']}): {', '.join(parts)}")


def _worker_order(report: dict[str, Any]) -> tuple[int, str]:
    worker = str(report.get("worker_id", ""))
    digits = "".join(ch for ch in worker if ch.isdigit())
    return (int(digits) if digits else -1, worker)
