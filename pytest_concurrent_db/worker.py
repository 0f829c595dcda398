"""The databases of one process (an xdist worker, the controller, or a plain run) for one
site: its control connection, its template, its clone, its spares, and its stats.

A small coordinator over the lifecycle modules (:mod:`.template`, :mod:`.clones`,
:mod:`.spares`, :mod:`.janitor`): it holds what one process must keep between
setup and teardown (the backend whose session holds the clone's lock, the spare
thread) and records what happened in a :class:`~.report.WorkerReport`.  The pytest plugin
and the Django integration use one per database; the public API
(:mod:`.api`) uses the same lifecycle functions directly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from .backends import Backend
from .clones import ConcurrentDatabase, drop_clone, handle, keep_clone, make_clone
from .errors import describe_error
from .janitor import Janitor
from .progress import BuildProgress
from .recycle import MAX_READ_SECONDS, HandOnHistory, Pristine, hand_on
from .report import WorkerReport
from .site import Site
from .snapshot import record_snapshot
from .spares import CopyHistory, FreshPool, SpareMaker, claim_spare, spares_pay_off, wanted_spares
from .template import Populator, Template, ensure_template

__all__ = ["WorkerDatabases", "server_of"]


class WorkerDatabases:
    """Template, clone and spares of one process on one :class:`~.site.Site`."""

    def __init__(self, site: Site, *, run_id: str, worker_id: str, spares: int | str = 0, pool: int = 2) -> None:
        self.site = site
        self.run_id = run_id
        self.worker_id = worker_id
        self.spares = spares
        self.pool_size = pool
        self._pool: FreshPool | None = None
        self.backend: Backend = site.open_backend(run_id, worker_id, wait=True)
        self.janitor = Janitor(self.backend, site, run_id)
        self.stats = WorkerReport(worker_id=worker_id, backend=site.url.backend, url=site.label)
        self.stats.not_dropped = self.janitor.not_dropped  # the janitor's drops that failed, as they come
        self.template: Template | None = None
        self.database: ConcurrentDatabase | None = None
        self._spares: SpareMaker | None = None
        #: the claimed spare's state when it was pristine: this database is handed on at teardown if untouched
        self._hand_on: Pristine | None = None
        #: told when this process waits for, builds, or finds its template (None: nobody listens)
        self.progress: BuildProgress | None = None
        self._reaper: threading.Thread | None = None
        self._reap_error: Exception | None = None

    def preflight(self, *, reap: bool = True, reap_in_background: bool = False) -> None:
        """Connect, check privileges, and reap what dead runs left behind.

        ``reap``: False when another :class:`WorkerDatabases` of this process reaps the same
        server (see :func:`server_of`).  ``reap_in_background``: reap in a thread, for a process
        whose backend is otherwise idle until :meth:`wait_for_reap` (an xdist controller: its
        workers start meanwhile)."""
        self.backend.preflight()
        if not reap:
            return
        if not reap_in_background:
            self.stats.reaped.extend(self.janitor.reap_dead())
            return
        self._reaper = threading.Thread(target=self._reap, name="concurrent-db-reaper", daemon=True)
        self._reaper.start()

    def _reap(self) -> None:
        try:
            self.stats.reaped.extend(self.janitor.reap_dead())
        except Exception as exc:  # reported by wait_for_reap
            self._reap_error = exc

    def wait_for_reap(self) -> str:
        """Wait for a reap started by :meth:`preflight`; returns what went wrong (empty: nothing)."""
        reaper, self._reaper = self._reaper, None
        if reaper is not None:
            reaper.join()
        error, self._reap_error = self._reap_error, None
        if error is None:
            return ""
        return describe_error(error)

    def ensure_template(
        self, populators: Sequence[Populator], *, extra: Sequence[str] = (), rebuild: bool = False
    ) -> Template:
        """The ready template for these inputs (built once per run at most)."""
        started = time.perf_counter()
        self.template = ensure_template(
            self.backend,
            self.site,
            populators,
            run_id=self.run_id,
            worker_id=self.worker_id,
            extra=extra,
            rebuild=rebuild,
            on_built=self._after_build,
            on_name=self._name_known,  # a build that fails is still reported as "not ready"
            progress=self.progress,
        )
        self.stats.lock_wait_seconds = self.template.lock_wait_seconds
        self.stats.fingerprint_seconds = self.template.fingerprint_seconds
        if self.template.built:
            self.stats.template_built = True
            self.stats.template_seconds = self.template.build_seconds
            self.stats.built_from = self.template.built_from
            self.stats.steps_added = self.template.steps_added
            self.stats.incremental_error = self.template.incremental_error
            record_snapshot(self.stats, self.template.snapshot)
        else:
            spent = time.perf_counter() - started - self.template.fingerprint_seconds - self.template.lock_wait_seconds
            self.stats.reuse_seconds = max(spent, 0.0)
        return self.template

    def _name_known(self, name: str) -> None:
        self.stats.template = name

    def _after_build(self, template: Template) -> None:
        pruned = self.janitor.prune(current_template=template.name)
        self.stats.pruned.extend(e.name for e in pruned)

    def _rebuild(self) -> Template:
        assert self.template is not None
        return self.ensure_template(self.template.populators, extra=self.template.extra)

    def create_clone(self, template: Template | None = None, *, refill: bool = True) -> ConcurrentDatabase:
        """This process's clone of the template: a spare made for this worker id by an
        earlier run if one is ready, else a new copy.  With spares on (and ``refill``), the
        next run's spare is then either this very database, handed on at teardown if the
        tests leave it untouched (:mod:`.recycle`), or a copy made in the background."""
        template = template or self.template
        if template is None:
            raise ValueError("create_clone() needs a template: call ensure_template() first")
        self.template = template
        count = wanted_spares(self.spares, self.backend.name)
        started = time.perf_counter()
        claimed = claim_spare(self.backend, template, run_id=self.run_id, worker_id=self.worker_id) if count else None
        name, pristine = claimed if claimed is not None else (None, None)
        self.stats.spare_claimed = name is not None
        if name is None:
            name, template = make_clone(
                self.backend, template, run_id=self.run_id, worker_id=self.worker_id, rebuild=self._rebuild
            )
        self.template = template
        self.stats.clone = name
        self.stats.clone_seconds = time.perf_counter() - started
        self.stats.method = "spare made by an earlier run" if self.stats.spare_claimed else self.backend.clone_method()
        self.database = handle(self.backend, template, name, self.run_id, self.worker_id)
        if refill and count and self._spares is None:
            self._plan_spares(template, count, pristine)
        return self.database

    def _plan_spares(self, template: Template, count: int, pristine: Pristine | None) -> None:
        """Hand this database on at teardown (a spare that was pristine, unless a recent run's
        tests changed theirs), or copy a spare in the background now if spares pay off."""
        history = HandOnHistory(template, self.worker_id)
        worth_trying = history.worth_trying()
        if pristine is not None and pristine.quick and worth_trying:
            self._hand_on = pristine
            return
        if self.stats.spare_claimed:
            self.stats.hand_on_unchecked = _unchecked(pristine, worth_trying)
        if not worth_trying:
            history.add("copied")
        copies: list[float] = []
        if self.spares == "auto":
            times = CopyHistory(template)
            copies = times.read() if self.stats.spare_claimed else times.add(self.stats.clone_seconds)
        # a spare handed on from run to run costs one copy in all: worth it whenever handing on works
        if worth_trying or spares_pay_off(self.spares, self.backend.name, copies=copies):
            self._spares = SpareMaker(template, self.run_id, self.worker_id, count)
            self._spares.start()

    def make_spares(self) -> int:
        """Make this worker id's spares of the current template now, in this thread."""
        assert self.template is not None
        count = wanted_spares(self.spares, self.backend.name)
        maker = self._spares or SpareMaker(self.template, self.run_id, self.worker_id, count)
        self._spares = maker
        return maker.make()

    def wait_for_spares(self) -> None:
        """Wait until the spares of this process are made (they are left for the next run)."""
        if self._spares is not None:
            self._spares.wait()
            recorded = self.stats.spares_made > 0  # by an earlier call
            self.stats.spares_made = self._spares.made
            self.stats.spare_seconds = self._spares.seconds
            self.stats.spare_wait_seconds = self._spares.wait_seconds
            self.stats.spare_error = self._spares.error
            if self.spares == "auto" and self._spares.made and not recorded and self.template is not None:
                CopyHistory(self.template).add(self._spares.seconds / self._spares.made)  # evidence too

    def fresh_pool(self) -> FreshPool:
        """The warm pool of fresh databases of this process (made on first use; its thread
        starts on the first take)."""
        if self._pool is None:
            if self.template is None:
                raise ValueError("fresh_pool() needs a template: call ensure_template() first")
            self._pool = FreshPool(self.template, self.run_id, self.worker_id, self.pool_size)
        return self._pool

    def close_pool(self) -> None:
        """Drop the pool's clones (waiting for its pending drops and keeps) and record its stats."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        pool.close()
        stats = pool.stats
        self.stats.fresh_used += stats.used
        self.stats.fresh_waits.extend(stats.waits)
        self.stats.fresh_dry += stats.dry
        self.stats.fresh_pool = stats.size
        self.stats.fresh_made += stats.made
        self.stats.fresh_kept.extend(stats.kept)
        self.stats.fresh_error = stats.error or "; ".join(pool.drop_errors)

    def keep_clone(self) -> None:
        """Mark this process's clone as kept (``--concurrent-db-keep``)."""
        self.close_pool()
        if self.database is not None:
            name, self.database = self.database.name, None
            try:
                keep_clone(self.backend, name)
            finally:
                self.wait_for_spares()

    def drop_clone(self) -> None:
        """Drop this process's clone and release its lock; a spare it took over that the tests
        left untouched is handed on to the next run instead (:mod:`.recycle`)."""
        self.close_pool()
        if self.database is None:
            return
        name, self.database = self.database.name, None
        try:
            if self._hand_on is not None and self._handed_on(name, self._hand_on):
                return
            started = time.perf_counter()
            try:
                drop_clone(self.backend, name)
                self.stats.dropped.append(name)
            finally:
                self.stats.drop_seconds = time.perf_counter() - started
        finally:
            self.wait_for_spares()

    def _handed_on(self, name: str, pristine: Pristine) -> bool:
        """Whether ``name`` was still pristine and is now the next run's spare."""
        assert self.template is not None
        self._hand_on = None
        started = time.perf_counter()
        try:
            outcome, why = hand_on(
                self.backend,
                self.template,
                name,
                pristine,
                run_id=self.run_id,
                worker_id=self.worker_id,
                wanted=wanted_spares(self.spares, self.backend.name),
            )
        except Exception as exc:  # handing on is an optimisation: the database is dropped instead
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            outcome, why = "skipped", f"could not compare it with the template: {reason}"
        self.stats.hand_on_seconds = time.perf_counter() - started
        if outcome != "skipped":
            HandOnHistory(self.template, self.worker_id).add(outcome)
        if outcome == "clean":
            self.stats.handed_on = name
            return True
        self.stats.hand_on_skipped = why
        return False

    def sweep_run(self) -> list[str]:
        """Drop the clones of this run's crashed workers (the controller, at the end)."""
        own = self.database.name if self.database is not None else None
        return self.janitor.sweep_run(own)

    def report(self) -> WorkerReport:
        return self.stats

    def close(self) -> None:
        """Wait for the reaper, the spares and the pool, then close the control connection
        (releasing its locks)."""
        self.wait_for_reap()
        self.close_pool()
        self.wait_for_spares()
        self.backend.close()


def server_of(site: Site) -> tuple[str, str]:
    """What one reap covers, whatever the URL's database name: the databases the URL's user
    sees on its server, and the template directory (SQLite's databases)."""
    return site.url.with_database("").render(hide_password=False), str(site.directories.templates)


def _unchecked(pristine: Pristine | None, worth_trying: bool) -> str:
    """Why a spare taken over is dropped at teardown without checking it (see ``_plan_spares``)."""
    if pristine is None:
        return "its state was not read when it was copied"
    if not pristine.quick:
        return (
            f"reading its state took {pristine.seconds:.2f}s when it was copied "
            f"(more than {MAX_READ_SECONDS:g}s and than the copy, {pristine.copy_seconds:.2f}s)"
        )
    assert not worth_trying
    return "a recent run's tests changed their database"
