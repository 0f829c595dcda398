"""Template build progress: what a building (or waiting) process tells, and the lines that show it.

The channel.  A template is built inside an xdist *worker*, but the user watches the
*controller's* terminal.  xdist delivers a worker's messages to the controller only
with its test reports (``workeroutput`` only at the very end), and a build happens
before the worker's first report, so xdist cannot carry it.  Each process therefore
writes its state to a small JSON file, ``<worker id>-<template>.json``, in a directory the
controller made and handed to its workers (``workerinput``); the controller reads
the directory from a thread (:mod:`.progress_display`).  Files need no connection,
no protocol and no cooperation from xdist, survive a worker that dies mid-build
(its state simply stops changing), and are replaced atomically (``os.replace``), so
a reader never sees half a state.  A single process (``-p no:xdist``, ``-n 0``) and
the ``manage.py test`` runner build in the process that prints: there the state goes
straight to a ``listener``.

This module knows nothing of pytest: :class:`BuildProgress` is the writer
:func:`~.template.ensure_template` drives, :func:`report` lets a populator (Django's
``migrate``, a user's hook) say how far its own steps are, and :func:`live_line` /
:func:`end_line` render states as the text a user reads.  Progress never breaks a run:
every error of the writer is swallowed.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .template import Populator

__all__ = [
    "ACTIVE",
    "BuildProgress",
    "BuildState",
    "ProgressLines",
    "active",
    "end_line",
    "live_line",
    "read_states",
    "report",
    "short_name",
]

#: phases in which a process is busy with a template (the live line shows them)
ACTIVE = ("waiting", "building")
#: seconds between two writes of a step's detail (a phase change is written at once)
WRITE_EVERY = 0.2
#: seconds between two progress lines where they cannot be rewritten in place (a CI log)
LINE_EVERY = 10.0
#: seconds a build (or a wait) goes on before it is shown: a quick one is not worth a line
SHOW_AFTER = 1.0
PREFIX = "concurrent-db: "


@dataclass(frozen=True)
class BuildState:
    """One process and one template: ``phase`` is ``waiting`` (for the template lock, while
    another process builds), ``building``, ``built``, ``failed`` or ``ready`` (found ready);
    ``since`` is when the phase began, ``ended`` when a build ended (wall clock, seconds)."""

    worker: str
    template: str
    phase: str
    since: float
    step: str = ""
    ended: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BuildState:
        return cls(
            worker=str(data["worker"]),
            template=str(data["template"]),
            phase=str(data["phase"]),
            since=float(data["since"]),
            step=str(data.get("step", "")),
            ended=float(data.get("ended", 0.0)),
        )


class BuildProgress:
    """The progress of one process's template builds: written to ``directory`` (read by the
    controller; a file per template, ``<worker>-<template>.json``: a Django worker builds one
    template after another) and handed to ``listener`` (a process that prints itself)."""

    def __init__(
        self, worker_id: str, directory: Path | None = None, listener: Callable[[BuildState], None] | None = None
    ) -> None:
        self.worker_id = worker_id
        self.directory = directory
        self.listener = listener
        self.state: BuildState | None = None
        self._kinds: list[str] = []
        self._labels: list[str] = []
        self._written = 0.0

    # -- driven by ensure_template ---------------------------------------------------------
    def waiting(self, template: str) -> None:
        self._set(BuildState(self.worker_id, template, "waiting", time.time()))

    def building(self, template: str, populators: Sequence[Populator]) -> None:
        self._kinds = [p.key.split(":", 1)[0] for p in populators]
        self._labels = [p.label for p in populators]
        self._set(BuildState(self.worker_id, template, "building", time.time()))

    def step(self, index: int) -> None:
        """Populator ``index`` starts."""
        self._update(self._step_text(index), force=True)

    def detail(self, what: str, done: int, total: int) -> None:
        """The running populator's own steps (``migrations 41/80``)."""
        self._update(f"{what} {done}/{total}" if total else f"{what} {done}", force=done >= total)

    def finished(self, *, built: bool, failed: bool = False) -> None:
        """The build ended (``built``), failed, or the template was found ready."""
        if self.state is None:
            return
        phase = "failed" if failed else "built" if built else "ready"
        now = time.time()
        since = self.state.since if self.state.phase == "building" else now
        self._set(replace(self.state, phase=phase, since=since, ended=now))

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """Make this the build :func:`report` talks to (in this thread)."""
        token = _CURRENT.set(self)
        try:
            yield
        finally:
            _CURRENT.reset(token)

    # -- internals -------------------------------------------------------------------------
    def _step_text(self, index: int) -> str:
        if not self._kinds or index >= len(self._kinds):
            return ""
        if self._kinds[index] == "schema":
            total = self._kinds.count("schema")
            applied = self._kinds[:index].count("schema")
            return f"schema files {applied}/{total}"
        label = self._labels[index]
        if label.startswith("pytest_concurrent_db_"):
            label = "populate hook"
        return f"{label} (step {index + 1}/{len(self._kinds)})" if len(self._kinds) > 1 else label

    def _update(self, step: str, *, force: bool) -> None:
        if self.state is None or self.state.phase != "building":
            return
        self.state = replace(self.state, step=step)
        if force or time.monotonic() - self._written >= WRITE_EVERY:
            self._publish()

    def _set(self, state: BuildState) -> None:
        self.state = state
        self._publish()

    def _publish(self) -> None:
        """Write the state; never raises (progress must not break a run)."""
        state = self.state
        if state is None:
            return
        self._written = time.monotonic()
        with contextlib.suppress(Exception):
            if self.listener is not None:
                self.listener(state)
        if self.directory is None:
            return
        with contextlib.suppress(Exception):
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{state.worker}-{state.template}.json"
            partial = path.with_name(f".{path.name}.{os.getpid()}")
            partial.write_text(json.dumps(state.to_json()), encoding="utf-8")
            os.replace(partial, path)


_CURRENT: ContextVar[BuildProgress | None] = ContextVar("pytest_concurrent_db_progress", default=None)


def report(what: str, done: int, total: int) -> None:
    """Say how far the running template build's current step is: ``report("rows", 3, 10)``
    shows ``rows 3/10`` on the progress line.  Does nothing outside a build; never raises."""
    with contextlib.suppress(Exception):
        progress = _CURRENT.get()
        if progress is not None:
            progress.detail(what, done, total)


def read_states(directory: Path) -> list[BuildState]:
    """The states in ``directory`` (a file being replaced or unreadable is skipped)."""
    out = []
    with contextlib.suppress(OSError):
        for path in sorted(directory.glob("*.json")):
            try:
                out.append(BuildState.from_json(json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return out


# -- rendering ---------------------------------------------------------------------------------
def short_name(template: str) -> str:
    """``cdb_app_tpl_3f9c…``: the fingerprint cut to 4 characters."""
    head, sep, tail = template.rpartition("_tpl_")
    if not sep or len(tail) <= 4:
        return template
    return f"{head}_tpl_{tail[:4]}…"


def _seconds(value: float) -> str:
    return f"{max(int(value), 0)} s"


def active(states: Sequence[BuildState]) -> list[BuildState]:
    """The states the live line shows: builds, and waits for a template nobody of this run
    has finished building yet (a waiter of a built one is about to find it ready)."""
    built = {s.template for s in states if s.phase == "built"}
    return [s for s in states if s.phase == "building" or (s.phase == "waiting" and s.template not in built)]


def live_line(states: Sequence[BuildState], now: float) -> str | None:
    """The one line of what is going on: every build, then who waits for which
    (``concurrent-db: building cdb_app_tpl_3f9c… on gw0 — migrations 41/80, 23 s; gw1 waiting
    for the template (gw0 builds it, 12 s)``); None when nothing is going on."""
    shown = active(states)
    builds = [s for s in shown if s.phase == "building"]
    waits = [s for s in shown if s.phase == "waiting"]
    if not builds and not waits:
        return None
    parts = []
    for build in sorted(builds, key=lambda s: s.worker):
        how = f"{build.step}, " if build.step else ""
        parts.append(f"building {short_name(build.template)} on {build.worker} — {how}{_seconds(now - build.since)}")
    by_template: dict[str, list[BuildState]] = {}
    for wait in waits:
        by_template.setdefault(wait.template, []).append(wait)
    for template, group in by_template.items():
        builder = next((b.worker for b in builds if b.template == template), "another process")
        who = ", ".join(sorted(w.worker for w in group))
        longest = now - min(w.since for w in group)
        parts.append(f"{who} waiting for the template ({builder} builds it, {_seconds(longest)})")
    return PREFIX + "; ".join(parts)


def end_line(state: BuildState) -> str:
    """The line that closes a build: ``concurrent-db: built cdb_app_tpl_3f9c… on gw0 in 23.4 s``."""
    took = max(state.ended - state.since, 0.0)
    name = short_name(state.template)
    if state.phase == "failed":
        return f"{PREFIX}building {name} on {state.worker} failed after {took:.1f} s"
    if state.phase == "built":
        return f"{PREFIX}built {name} on {state.worker} in {took:.1f} s"
    return f"{PREFIX}{name} is ready"


class ProgressLines:
    """A :class:`BuildProgress` listener for a process that builds and prints itself (the
    ``manage.py test`` runner): the first line once the build has gone on for :data:`SHOW_AFTER`
    seconds, at most one line every ``every`` seconds while it goes on, and the end line.
    No thread: it writes when the build tells (Django's ``migrate`` after each migration)."""

    def __init__(self, write: Callable[[str], None], every: float = LINE_EVERY) -> None:
        self.write = write
        self.every = every
        self._going = False
        self._last = 0.0

    def __call__(self, state: BuildState) -> None:
        now = time.time()
        if state.phase in ACTIVE:
            if not self._going and now - state.since < SHOW_AFTER:
                return
            if not self._going or now - self._last >= self.every:
                line = live_line([state], now)
                if line is not None:
                    self._going, self._last = True, now
                    self.write(line)
        elif self._going:
            self._going = False
            self.write(end_line(state))
