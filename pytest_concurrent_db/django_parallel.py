"""The worker processes of ``manage.py test --parallel`` under :class:`~.django_runner.ConcurrentTestRunner`.

:class:`ConcurrentParallelTestSuite` is Django's ``ParallelTestSuite`` with two changes:

* its pool initializer, :func:`_init_worker`, replaces Django's under every start method
  (fork, spawn, forkserver: Django sets up spawned workers only): it sets Django up where
  the worker is a new interpreter, then points the worker's aliases (mirrors included) at
  its own clones, whose names come in the initializer's arguments as a :class:`WorkerPlan`
  (in place of Django's initial settings); a worker that replaces a dead one (its index is
  beyond the clones) makes a clone of its own, held by its lock until it exits;
* after each ``TestCase`` class a worker checks that its aliases and live connections are
  still on its clones and sends the findings back with the test events.

Workers ignore Ctrl-C (the parent stops the pool and drops the clones) and end when the
process that started them dies (Linux), so that a killed run leaves no worker on its clones.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from django.test.runner import ParallelTestSuite
from django.test.runner import _run_subsuite as _django_run_subsuite

from .backends import Backend
from .clones import make_clone
from .django_common import misdirected, point
from .template import Template

__all__ = ["ConcurrentParallelTestSuite", "Coordinator", "WorkerPlan"]

#: The event a worker adds to its test events after each TestCase class: (name, index, findings).
CHECK_EVENT = "concurrentDbCheck"
#: What a worker found: per test database, (seconds, [(severity, message)]).
Findings = list[tuple[float, list[tuple[str, str]]]]


class Coordinator(Protocol):
    """What the suite needs of the runner's session."""

    def plan(self) -> WorkerPlan: ...

    def record(self, index: int, checks: Findings) -> None: ...


@dataclass(frozen=True)
class _Planned:
    """One test database, as the workers see it: its aliases and each worker's clone."""

    aliases: tuple[str, ...]
    mirrors: tuple[str, ...]
    clones: tuple[str, ...]  # by worker index - 1
    targets: tuple[str, ...]  # the NAME Django connects to (SQLite: the file)
    template: Template  # without its populators: for a replacement worker's own clone


@dataclass(frozen=True)
class WorkerPlan:
    """The pool initializer's argument (in place of Django's initial settings): the clones,
    and the parent's connection settings for spawned workers."""

    run_id: str
    databases: tuple[_Planned, ...]
    settings: Mapping[str, Any] | None = None


@dataclass
class _Worker:
    """This worker process: its index, its clones, and a backend per test database (for the
    isolation check; replacement workers' own clones are held there)."""

    index: int
    plan: WorkerPlan
    clones: list[str]
    targets: list[str]
    backends: list[Backend]

    @classmethod
    def start(cls, plan: WorkerPlan, index: int) -> _Worker:
        clones, targets, backends = [], [], []
        for database in plan.databases:
            worker_id = f"gw{index - 1}"
            backend = database.template.site.open_backend(plan.run_id, worker_id)
            if index <= len(database.clones):
                clones.append(database.clones[index - 1])
                targets.append(database.targets[index - 1])
            else:  # a worker that died was replaced: this one makes a clone of its own
                name, _ = make_clone(backend, database.template, run_id=plan.run_id, worker_id=worker_id)
                clones.append(name)
                targets.append(backend.location(name))
            backends.append(backend)
            for alias in database.aliases:
                point(alias, targets[-1], test_name=True)
            for alias in database.mirrors:
                point(alias, targets[-1], test_name=False)
        return cls(index, plan, clones, targets, backends)

    def check(self) -> tuple[str, int, Findings]:
        """The aliases still on this worker's clones (and live connections on them)."""
        from django.db import connections

        out = []
        for database, clone, target, backend in zip(self.plan.databases, self.clones, self.targets, self.backends):
            started = time.perf_counter()
            found = misdirected(database.aliases + database.mirrors, target)
            raw = connections[database.aliases[0]].connection
            if raw is not None:
                try:
                    current = backend.current_database(raw)
                except Exception as exc:  # a broken connection cannot prove anything
                    found.append(("error", f"the check failed on the connection ({type(exc).__name__}: {exc})"))
                else:
                    if current != clone:
                        found.append(("error", f"the connection is on {current!r}, not on this worker's clone"))
            out.append((time.perf_counter() - started, found))
        return (CHECK_EVENT, self.index, out)


_WORKER: _Worker | None = None


def _init_worker(  # noqa: PLR0917 (the signature of Django's _init_worker)
    counter: Any,
    initial_settings: Any = None,
    serialized_contents: Any = None,
    process_setup: Any = None,
    process_setup_args: Any = None,
    debug_mode: Any = None,
    used_aliases: Any = None,
) -> None:
    """Django's ``_init_worker`` for every start method: set Django up (spawn, forkserver),
    then point this worker's aliases at its own clones.  ``initial_settings`` is our
    :class:`WorkerPlan`."""
    global _WORKER  # noqa: PLW0603 (one per worker process, as Django's own _worker_id)
    with counter.get_lock():
        counter.value += 1
        index = counter.value
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops the pool, drops the clones
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # how the pool stops a worker (fork copies the parent's handler)
    _die_with_parent()
    plan: WorkerPlan = initial_settings
    if multiprocessing.get_start_method() != "fork":
        import django
        from django.db import connections
        from django.test.utils import setup_test_environment

        if callable(process_setup):
            process_setup(*(process_setup_args or ()))
        django.setup()
        setup_test_environment(debug=debug_mode)
        for alias, settings_dict in (plan.settings or {}).items():
            connections[alias].settings_dict.update(settings_dict)
            if value := (serialized_contents or {}).get(alias):
                connections[alias]._test_serialized_contents = value
    _WORKER = _Worker.start(plan, index)


def _run_subsuite(args: Any) -> tuple[int, list[Any]]:
    """Django's ``_run_subsuite``, then this worker's isolation check as one more event."""
    index, events = _django_run_subsuite(args)
    if _WORKER is not None:
        events.append(_WORKER.check())
    return index, events


def _die_with_parent() -> None:
    """Linux: this worker ends when the process that started it dies (a killed run leaves no
    worker behind on its clones)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ConcurrentParallelTestSuite(ParallelTestSuite):  # type: ignore[misc]
    """Django's parallel suite with our worker initializer and per-class isolation check."""

    init_worker = _init_worker
    run_subsuite = _run_subsuite
    session: Coordinator | None = None

    def initialize_suite(self) -> None:
        from django.db import connections

        assert self.session is not None
        plan = self.session.plan()
        if multiprocessing.get_start_method() != "fork":  # Django does this for spawn only
            plan = replace(plan, settings={alias: connections[alias].settings_dict for alias in connections})
            contents = {alias: getattr(connections[alias], "_test_serialized_contents", None) for alias in connections}
            self.serialized_contents = {a: c for a, c in contents.items() if a in self.serialized_aliases and c}
        self.initial_settings = plan

    def handle_event(self, result: Any, tests: Any, event: Any) -> None:
        if event[0] == CHECK_EVENT:
            if self.session is not None:
                self.session.record(event[1], event[2])
            return
        super().handle_event(result, tests, event)
