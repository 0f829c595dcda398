"""Spares: pristine clones made during one run for the same worker id of the next.

While the tests run, a worker may copy the template once more in a background thread on
a connection of its own; the next run's worker of that id takes the copy over in
milliseconds instead of copying (:func:`claim_spare`).  A spare belongs to one *build*
of its template (its marker's ``fingerprint`` field holds the build id): a rebuild
under the same name makes every older spare stale, and the janitor reaps it.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .backends import Backend, Marker
from .errors import ConcurrentDBError
from .markers import new_marker, ready
from .naming import spare_name
from .template import Template

__all__ = ["SPARES_AUTO_MIN_SECONDS", "CopyHistory", "SpareMaker", "claim_spare", "is_spare", "spares_pay_off"]

#: ``--concurrent-db-spares auto`` makes spares once copying the template took this long (seconds).
#: MySQL: the copy is our own DDL replay, and a spare costs little more than that.  PostgreSQL: the
#: run's closing ``DROP DATABASE`` forces a checkpoint, which must also write the freshly copied
#: spare back to disk (measured +0.8 s for a 26 MB template), so only a slower copy is worth sparing.
SPARES_AUTO_MIN_SECONDS = {"mysql": 0.25, "postgresql": 1.0}


def wanted_spares(setting: int | str, backend: str) -> int:
    """How many spares per worker the setting asks for (``auto``: one, if it pays off).
    SQLite clones are files copied in milliseconds into a per-run directory: never."""
    if backend == "sqlite":
        return 0
    return 1 if setting == "auto" else int(setting)


#: how many of a template's latest copies (on this machine) the ``auto`` rule looks at
HISTORY = 3


def spares_pay_off(setting: int | str, backend: str, *, copies: Sequence[float]) -> bool:
    """With ``auto``, spares are made only for templates that are slow to copy, judged on
    stable evidence: the median of the template's latest :data:`HISTORY` copies on this
    machine (``copies``, oldest first, this run's included; spares made count as copies) is
    :data:`SPARES_AUTO_MIN_SECONDS` or more.  One copy alone decides only when it took three
    times that: a single copy slowed down by a checkpoint or a busy machine does not switch
    spares on (and the next fast ones switch them off).  A faster copy costs less than a spare
    does (an extra connection while it is made, a database waiting on the server between
    runs and, on PostgreSQL, writing it back at the closing checkpoint)."""
    if setting != "auto":
        return True
    threshold = SPARES_AUTO_MIN_SECONDS.get(backend)
    if threshold is None or not copies:
        return False
    latest = sorted(copies[-HISTORY:])
    if len(latest) == 1:
        return latest[0] >= 3 * threshold
    middle = len(latest) // 2
    median = latest[middle] if len(latest) % 2 else (latest[middle - 1] + latest[middle]) / 2
    return median >= threshold


class CopyHistory:
    """The latest copy times of one template on this machine (a small JSON file beside the
    project's SQLite templates), the evidence of the ``auto`` spares rule.  Best effort: a file
    that cannot be read or written is an empty history."""

    def __init__(self, template: Template) -> None:
        self.path = template.site.directories.templates / "copies" / f"{template.name}.json"

    def read(self) -> list[float]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []
        return [float(x) for x in data if isinstance(x, (int, float))][-HISTORY * 2 :] if isinstance(data, list) else []

    def add(self, seconds: float) -> list[float]:
        """Record one copy; returns the history with it."""
        copies = [*self.read(), round(seconds, 4)][-HISTORY * 2 :]
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps(copies))
            os.replace(temporary, self.path)
        return copies


def is_spare(marker: Marker | None, template: Template, worker_id: str, *, ready_only: bool = False) -> bool:
    """A spare (``ready_only``: a finished one) of this build of ``template`` for ``worker_id``."""
    return (
        marker is not None
        and marker.kind == "spare"
        and (marker.state == "ready" or not ready_only)
        and marker.template == template.name
        and marker.fingerprint == template.build_id
        and marker.worker_id == worker_id
    )


def claim_spare(backend: Backend, template: Template, *, run_id: str, worker_id: str) -> str | None:
    """Take over a ready spare of ``template`` made for ``worker_id``: its lock is kept (as a
    clone's) and its marker says it is this worker's clone now.  None if there is none."""
    for info in backend.list_databases(template.site.own_prefix, sizes=False):
        if not is_spare(info.marker, template, worker_id, ready_only=True):
            continue
        key = f"clone:{info.name}"
        if not backend.try_lock(key):
            continue  # still being made, or taken by a worker of a concurrent run
        try:
            marker = backend.get_marker(info.name)  # again, under the lock
            if is_spare(marker, template, worker_id, ready_only=True):
                backend.set_marker(info.name, new_marker("clone", run_id, worker_id, template.name))
                return info.name
        except ConcurrentDBError:
            pass  # gone meanwhile: make a clone instead
        backend.release_lock(key)
    return None


@dataclass
class SpareMaker:
    """Makes ``count`` spares of ``template`` for ``worker_id`` in a thread with its own
    backend (control connection), while the tests run; :meth:`wait` joins it."""

    template: Template
    run_id: str
    worker_id: str
    count: int
    made: int = 0
    seconds: float = 0.0
    wait_seconds: float = 0.0
    error: str = ""
    _thread: threading.Thread | None = None

    def start(self) -> None:
        if self.count <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"concurrent-db spares {self.worker_id}")
        self._thread.start()

    def _run(self) -> None:
        try:
            self.make()
        except Exception as exc:  # a spare is an optimisation: the run goes on without it
            self.error = str(exc) or type(exc).__name__

    def make(self) -> int:
        """Make spares until :attr:`count` are ready (in this thread); returns how many were made."""
        started = time.perf_counter()
        made = 0
        site = self.template.site
        backend = site.open_backend(self.run_id, self.worker_id, "spares")
        try:
            while True:
                have = [
                    i
                    for i in backend.list_databases(site.own_prefix, sizes=False)
                    if is_spare(i.marker, self.template, self.worker_id)
                ]
                if len(have) >= self.count:
                    return made
                self._make_one(backend)
                made += 1
                self.made += 1
        finally:
            with contextlib.suppress(Exception):
                backend.close()
            self.seconds += time.perf_counter() - started

    def _make_one(self, backend: Backend) -> None:
        """One spare: ``building`` while it is copied (reaped if we die), ``ready`` after."""
        from .clones import copy

        name = spare_name(self.template.site.base, self.worker_id)
        key = f"clone:{name}"
        if not backend.try_lock(key):
            raise ConcurrentDBError(f"the lock of new spare {name} is held by another process")
        try:
            marker = new_marker(
                "spare",
                self.run_id,
                self.worker_id,
                self.template.name,
                state="building",
                fingerprint=self.template.build_id,
            )
            copy(backend, self.template, name, marker)
            try:
                backend.set_marker(name, ready(marker))
            except BaseException:
                with contextlib.suppress(Exception):
                    backend.drop(name)
                raise
        finally:
            backend.release_lock(key)

    def wait(self) -> None:
        """Wait until the spares are made (they are left for the next run)."""
        if self._thread is not None:
            started = time.perf_counter()
            self._thread.join()
            self._thread = None
            self.wait_seconds += time.perf_counter() - started
