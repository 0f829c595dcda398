"""Spares and the warm pool: pristine clones made in the background.

Spares are made during one run for the same worker id of the next, or handed on: a
worker's database that its tests left equal to the template becomes the next run's spare
again (:mod:`.recycle`).

While the tests run, a worker may copy the template once more in a background thread on
a connection of its own; the next run's worker of that id takes the copy over in
milliseconds instead of copying (:func:`claim_spare`).  A spare belongs to one *build*
of its template (its marker's ``fingerprint`` field holds the build id): a rebuild
under the same name makes every older spare stale, and the janitor reaps it.

The warm pool (:class:`FreshPool`) keeps a few pristine clones ready during a run for the
tests that want a database of their own (``concurrent_db_fresh``); its clones are marked
and locked like a worker's clone (kind ``clone``, this run and worker), so a crashed worker's
pool is swept by its run's controller or reaped by the next run, and ``prune`` removes the kept.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from .backends import Backend, Marker
from .errors import ConcurrentDBError
from .markers import new_marker, ready
from .naming import fresh_name, spare_name
from .paths import read_json_list, write_json_list
from .recycle import Pristine, read_pristine
from .template import Template

__all__ = [
    "SPARES_AUTO_MIN_SECONDS",
    "CopyHistory",
    "FreshPool",
    "PoolStats",
    "SpareMaker",
    "claim_spare",
    "is_spare",
    "spares_pay_off",
]

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
        return [float(x) for x in read_json_list(self.path) if isinstance(x, (int, float))][-HISTORY * 2 :]

    def add(self, seconds: float) -> list[float]:
        """Record one copy; returns the history with it."""
        copies = [*self.read(), round(seconds, 4)][-HISTORY * 2 :]
        write_json_list(self.path, copies)
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


def claim_spare(
    backend: Backend, template: Template, *, run_id: str, worker_id: str
) -> tuple[str, Pristine | None] | None:
    """Take over a ready spare of ``template`` made for ``worker_id``: its lock is kept (as a
    clone's) and its marker says it is this worker's clone now.  Returns its name and the state
    it had when known equal to the template (None if its marker has none), or None if there
    is no spare."""
    for info in backend.list_databases(template.site.own_prefix, sizes=False):
        if not is_spare(info.marker, template, worker_id, ready_only=True):
            continue
        key = f"clone:{info.name}"
        if not backend.try_lock(key):
            continue  # still being made, or taken by a worker of a concurrent run
        try:
            marker = backend.get_marker(info.name)  # again, under the lock
            if marker is not None and is_spare(marker, template, worker_id, ready_only=True):
                backend.set_marker(info.name, new_marker("clone", run_id, worker_id, template.name))
                return info.name, Pristine.decode(marker.pristine)
        except ConcurrentDBError:
            pass  # gone meanwhile: make a clone instead
        backend.release_lock(key)
    return None


def make_locked(
    backend: Backend,
    template: Template,
    name: str,
    marker: Marker,
    *,
    keep_lock: bool,
    annotate: Callable[[Marker], Marker] | None = None,
) -> None:
    """Copy ``template`` into ``name`` under its liveness lock ``clone:<name>`` (taken on
    ``backend``'s control connection).  A ``building`` marker becomes ``ready`` once the
    copy is complete (a crash in between leaves an unfinished database, which is reaped);
    ``annotate`` may add to it then.  ``keep_lock``: the lock stays held (the database is in
    use) unless the copy fails."""
    from .clones import copy

    key = f"clone:{name}"
    if not backend.try_lock(key):
        raise ConcurrentDBError(f"the lock of new database {name} is held by another process")
    try:
        copy(backend, template, name, marker)
        if marker.state == "building":
            try:
                final = ready(marker)
                backend.set_marker(name, annotate(final) if annotate is not None else final)
            except BaseException:
                with contextlib.suppress(Exception):
                    backend.drop(name)
                raise
    except BaseException:
        backend.release_lock(key)
        raise
    if not keep_lock:
        backend.release_lock(key)


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
        name = spare_name(self.template.site.base, self.worker_id)
        marker = new_marker(
            "spare",
            self.run_id,
            self.worker_id,
            self.template.name,
            state="building",
            fingerprint=self.template.build_id,
        )
        started = time.perf_counter()

        def annotate(final: Marker) -> Marker:  # the state it has now, just copied
            return replace(final, pristine=read_pristine(backend, name, time.perf_counter() - started))

        make_locked(backend, self.template, name, marker, keep_lock=False, annotate=annotate)

    def wait(self) -> None:
        """Wait until the spares are made (they are left for the next run)."""
        if self._thread is not None:
            started = time.perf_counter()
            self._thread.join()
            self._thread = None
            self.wait_seconds += time.perf_counter() - started


@dataclass
class PoolStats:
    """What a worker's warm pool did: fresh clones handed out, how long each take waited
    (seconds), how often the pool was empty when a test asked (after the first, which
    starts it), and what it kept."""

    size: int = 0
    used: int = 0
    waits: list[float] = field(default_factory=list)
    dry: int = 0
    made: int = 0
    kept: list[str] = field(default_factory=list)
    error: str = ""


class FreshPool:
    """``size`` pristine clones of ``template`` kept ready for one worker's tests.

    One background thread (the maker) with its own backend (control connection, holding
    every pool clone's liveness lock) makes them while the tests run; a second one (the
    dropper, on a connection of its own) drops the used ones, so that a slow drop
    (PostgreSQL's checkpoint) never holds up a refill.  :meth:`take` waits only when none is
    ready; :meth:`release` and :meth:`keep` return at once.  The threads start on the first
    :meth:`take` (a run that never asks for a fresh database never pays for them);
    :meth:`close` drops what is left."""

    def __init__(self, template: Template, run_id: str, worker_id: str, size: int) -> None:
        self.template = template
        self.run_id = run_id
        self.worker_id = worker_id
        self.stats = PoolStats(size=size)
        self._cond = threading.Condition()
        self._ready: deque[str] = deque()
        self._jobs: deque[tuple[str, str]] = deque()  # the maker's: ("keep" | "unlock" | "drop", name)
        self._drops: deque[str] = deque()  # the dropper's
        self._waiting = 0
        self._closing = False
        self._dropper_done = False
        self._threads: list[threading.Thread] = []
        self.drop_errors: list[str] = []

    # -- the tests' side ---------------------------------------------------------------
    def take(self) -> str:
        """A pristine clone's name (its lock held by the pool); waits while none is ready."""
        started = time.perf_counter()
        with self._cond:
            if self._closing:
                raise ConcurrentDBError("the pool of fresh databases is closed")
            if not self._threads:  # the first take waits for the first copy: not "dry"
                for target, job in ((self._make_loop, "pool"), (self._drop_loop, "drops")):
                    thread = threading.Thread(target=target, name=f"concurrent-db {job} {self.worker_id}", daemon=True)
                    thread.start()
                    self._threads.append(thread)
            elif not self._ready:
                self.stats.dry += 1
            self._waiting += 1
            self._cond.notify_all()
            try:
                while not self._ready and not self.stats.error:
                    self._cond.wait(1.0)
                if not self._ready:
                    raise ConcurrentDBError(f"could not make a fresh database: {self.stats.error}")
                name = self._ready.popleft()
            finally:
                self._waiting -= 1
            self.stats.used += 1
            self.stats.waits.append(time.perf_counter() - started)
            self._cond.notify_all()  # refill
        return name

    def release(self, name: str) -> None:
        """Drop a used clone (in the background)."""
        with self._cond:
            self._drops.append(name)
            self._cond.notify_all()

    def keep(self, name: str) -> None:
        """Keep a used clone (marked kept, its lock released; in the background)."""
        with self._cond:
            self.stats.kept.append(name)
            self._jobs.append(("keep", name))
            self._cond.notify_all()

    def close(self) -> None:
        """Finish the pending drops and keeps, drop the unused clones, stop the threads."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            threads = list(self._threads)
        for thread in threads:
            thread.join()

    @property
    def ready(self) -> int:
        """How many pristine clones are ready now."""
        with self._cond:
            return len(self._ready)

    # -- the maker -------------------------------------------------------------------------
    def _next(self) -> tuple[str, str] | None:
        """The maker's next job (under the condition): a clone for a waiting test first, then
        keeps and unlocks (quick), then the refill; at the end, the unused clones are dropped
        once the dropper is done.  None to stop."""
        while True:
            short = not self.stats.error and not self._closing
            if short and self._waiting and not self._ready:
                return ("make", "")
            if self._jobs:
                return self._jobs.popleft()
            if short and len(self._ready) < self.stats.size:
                return ("make", "")
            if self._closing and self._dropper_done:
                if self._ready:
                    return ("drop", self._ready.popleft())
                return None
            self._cond.wait()

    def _make_loop(self) -> None:
        backend = self._open()
        if backend is None:
            return
        try:
            while True:
                with self._cond:
                    job = self._next()
                if job is None:
                    return
                self._make_job(backend, *job)
        finally:
            with contextlib.suppress(Exception):
                backend.close()  # releases the locks of anything still held

    def _make_job(self, backend: Backend, job: str, name: str) -> None:
        from .clones import drop_clone, keep_clone

        try:
            if job == "make":
                name = fresh_name(self.template.site.base, self.run_id, self.worker_id)
                marker = new_marker("clone", self.run_id, self.worker_id, self.template.name)
                make_locked(backend, self.template, name, marker, keep_lock=True)
                with self._cond:
                    self.stats.made += 1
                    self._ready.append(name)
                    self._cond.notify_all()
            elif job == "keep":
                keep_clone(backend, name)
            elif job == "unlock":  # dropped by the dropper
                backend.release_lock(f"clone:{name}")
            else:
                drop_clone(backend, name)
        except Exception as exc:
            self._failed(job, name, exc)

    # -- the dropper -------------------------------------------------------------------------
    def _drop_loop(self) -> None:
        backend = self._open("drops", quiet=True)
        try:
            while True:
                with self._cond:
                    while not self._drops and not self._closing:
                        self._cond.wait()
                    if not self._drops:
                        return
                    name = self._drops.popleft()
                if backend is None:  # no connection of its own: the maker drops it
                    job = "drop"
                else:
                    job = "unlock"  # its lock, held by the maker's connection, is free then
                    try:
                        backend.drop(name)
                    except Exception:  # the maker tries again on its connection (and says why)
                        job = "drop"
                with self._cond:
                    self._jobs.append((job, name))
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._dropper_done = True
                self._cond.notify_all()
            if backend is not None:
                with contextlib.suppress(Exception):
                    backend.close()

    # -- both --------------------------------------------------------------------------------
    def _open(self, purpose: str = "pool", *, quiet: bool = False) -> Backend | None:
        """A backend of this thread's own; None if it cannot connect (an error for the maker)."""
        try:
            return self.template.site.open_backend(self.run_id, self.worker_id, purpose)
        except Exception as exc:
            if not quiet:
                self._failed("make", "", exc)
            return None

    def _failed(self, job: str, name: str, exc: Exception) -> None:
        message = str(exc) or type(exc).__name__
        with self._cond:
            if job == "make":
                self.stats.error = message  # the waiting tests fail with it; no more attempts
            else:
                self.drop_errors.append(f"{name}: {message}")
            self._cond.notify_all()
