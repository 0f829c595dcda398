"""Cleanup of what runs leave on a server: sweep, reap, prune, inventory.

The decisions (what is dead, what is doomed, what a prune may drop) are pure functions
over markers and :class:`Entry` lists, unit-tested without a server.  :class:`Janitor`
gathers the facts (markers, which liveness locks are free, when the server started) from a
backend, asks those functions, and drops what they name, never a database whose owner's
lock is held, never one whose owner may be alive after a server restart
(:func:`presumed_alive`) and never one without our marker (the backends refuse those).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from .backends import Backend, DatabaseInfo, Marker
from .errors import ConcurrentDBError, LockTimeoutError, NotOursError, PrivilegeError, describe_error
from .markers import build_id, forget_intent, intent_files, lock_key
from .naming import PREFIX
from .site import Site

__all__ = [
    "CLOCK_SKEW",
    "RESTART_GRACE",
    "Entry",
    "Janitor",
    "ServerStart",
    "entries",
    "presumed_alive",
    "project_prefix",
    "prune_plan",
    "ready_builds",
    "reapable",
    "sweepable",
    "unchanged",
]

#: How long after the server started a database made before that start, whose owner is on
#: another machine, is presumed alive although its liveness lock is free (seconds).  The
#: restart ended every session and its locks; a live owner's control connection notices
#: within :attr:`~.backends.base.ControlConnection.heartbeat` seconds of the server being up
#: and takes its locks back, after which the lock speaks for it again.
RESTART_GRACE = 60.0
#: How far the clocks of the server and of the machines that mark databases may disagree (seconds).
CLOCK_SKEW = 5.0


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine is running (a zombie is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (not Linux), or gone meanwhile
        return True


@dataclass(frozen=True)
class ServerStart:
    """The facts that judge a free liveness lock that may have died with a server restart:
    when the server last started (its clock; None: no server, e.g. SQLite), the time now,
    this machine's name, and how to tell whether one of its processes is alive."""

    started: float | None
    now: float = field(default_factory=time.time)
    host: str = field(default_factory=socket.gethostname)
    pid_alive: Callable[[int], bool] = field(default=pid_alive, repr=False, compare=False)


@dataclass(frozen=True)
class Entry:
    """One of our databases as the inventory sees it."""

    name: str
    kind: str
    state: str
    run_id: str
    worker_id: str
    template: str
    fingerprint: str
    live: bool
    age_seconds: float
    size_bytes: int | None


# -- decisions: pure functions ------------------------------------------------------------
def project_prefix(info: DatabaseInfo) -> str:
    """``cdb_<base>_`` of the project a database of ours belongs to: from its template's name
    (``cdb_<base>_tpl_<fingerprint>``; a template's marker names the template itself)."""
    template = (info.marker.template if info.marker is not None else "") or info.name
    base, found, _ = template.rpartition("_tpl_")
    return base + "_" if found else ""



#: how long a run waits for the lock of an intent whose creator's process has ended on this
#: machine (seconds): its server session may still be running the ``CREATE DATABASE`` it sent
ENDED_CREATOR_WAIT = 10.0


def intent_wait(marker: Marker, run_id: str, wait: float, start: ServerStart) -> float:
    """How long to wait for the lock of the intent ``marker`` before leaving it to a later run:
    :data:`ENDED_CREATOR_WAIT` at least when its creator's process has ended on this machine (its
    session is about to end: a database left unmarked otherwise stays so until the project runs
    again), else ``wait`` for this run's own, and not at all for another run's (its creator may be
    alive elsewhere)."""
    ended = bool(marker.host) and marker.host == start.host and marker.pid > 0 and not start.pid_alive(marker.pid)
    if marker.run_id == run_id:
        return max(wait, ENDED_CREATOR_WAIT) if ended else wait
    return ENDED_CREATOR_WAIT if ended else 0.0


def presumed_alive(marker: Marker, start: ServerStart | None) -> bool:
    """Whether the owner of a database marked ``marker`` may be alive although its liveness
    lock is free: the server restarted after the database was made (every session lock
    died with it) and

    * its owner is on this machine (``host``) and its process (``pid``) runs: alive for as
      long as it runs, whatever the time since the restart;
    * its owner is elsewhere (or unknown): for :data:`RESTART_GRACE` seconds after the start,
      the time a live owner needs to take its locks back.

    A database made after the start (:data:`CLOCK_SKEW` allowed) had its lock taken on this
    server: a free lock means its owner is gone.  No server (``started`` None), no restart."""
    if start is None or start.started is None:
        return False
    if marker.created > start.started + CLOCK_SKEW:
        return False
    if marker.host and marker.host == start.host and marker.pid > 0:
        return start.pid_alive(marker.pid)
    return start.now - start.started < RESTART_GRACE


def sweepable(marker: Marker, run_id: str, start: ServerStart | None = None) -> bool:
    """Left by a crashed worker of run ``run_id``: its clones (unless kept) and the spares it
    was still making; none whose owner is :func:`presumed_alive` after a restart (``start``)."""
    if marker.run_id != run_id or presumed_alive(marker, start):
        return False
    return (marker.kind == "clone" and marker.state != "kept") or (
        marker.kind == "spare" and marker.state == "building"
    )


def ready_builds(infos: Iterable[DatabaseInfo]) -> set[tuple[str, str]]:
    """(template name, build id) of every ready template among ``infos``."""
    return {
        (i.name, build_id(i.marker))
        for i in infos
        if i.marker is not None and i.marker.kind == "template" and i.marker.state == "ready"
    }


def reapable(
    marker: Marker, run_id: str, builds: set[tuple[str, str]], start: ServerStart | None = None
) -> bool:
    """Left by a dead run, seen from run ``run_id``: clones of other runs (unless kept),
    unfinished templates, and spares that are unfinished or whose build of their template
    (``builds``, from :func:`ready_builds`) is gone; none whose owner is
    :func:`presumed_alive` after a restart (``start``).  (The caller drops only those whose
    liveness lock it can take.)"""
    if presumed_alive(marker, start):
        return False
    if marker.kind == "clone":
        return marker.run_id != run_id and marker.state != "kept"
    if marker.kind == "template":
        return marker.state != "ready"
    return marker.state != "ready" or (marker.template, marker.fingerprint) not in builds


def entries(
    infos: Iterable[DatabaseInfo],
    *,
    live_clones: set[str],
    live_builds: set[str],
    current_template: str | None = None,
    now: float | None = None,
) -> list[Entry]:
    """The inventory of ``infos`` (ours only: those with a marker).  ``live_clones``: clones
    and spares whose lock is held; ``live_builds``: unfinished templates whose build lock
    is held.  A ready template is live while a live clone uses it, or it is
    ``current_template`` (this process's)."""
    ours = [i for i in infos if i.marker is not None]
    used = {i.marker.template for i in ours if i.marker and i.marker.kind == "clone" and i.name in live_clones}
    now = time.time() if now is None else now
    out = []
    for info in ours:
        marker = info.marker
        assert marker is not None
        if marker.kind in ("clone", "spare"):
            live = info.name in live_clones
        elif marker.state != "ready":
            live = info.name in live_builds
        else:
            live = info.name in used or info.name == current_template
        out.append(
            Entry(
                info.name,
                marker.kind,
                marker.state,
                marker.run_id,
                marker.worker_id,
                marker.template,
                marker.fingerprint,
                live,
                max(now - marker.created, 0.0),
                info.size_bytes,
            )
        )
    return out


def prune_plan(
    inventory: Sequence[Entry],
    *,
    keep: int,
    base_prefix: str,
    everything: bool = False,
    current_template: str | None = None,
) -> list[Entry]:
    """What a prune drops: ready templates beyond the newest ``keep`` per base name that no
    live run uses, with their spares.  Only the base name ``base_prefix``
    (``cdb_<base>``, this project's) is considered, unless ``everything`` (the CLI), which
    also drops dead clones, kept clones, dead spares and abandoned builds."""
    doomed = [
        e for e in inventory if everything and not e.live and (e.kind in ("clone", "spare") or e.state != "ready")
    ]
    by_base: dict[str, list[Entry]] = {}
    for entry in inventory:
        if entry.kind != "template" or entry.state != "ready" or entry.name == current_template:
            continue
        base = entry.name.rsplit("_tpl_", 1)[0]
        if everything or base == base_prefix:
            by_base.setdefault(base, []).append(entry)
    for group in by_base.values():
        group.sort(key=lambda e: e.age_seconds)
        doomed.extend(e for e in group[keep:] if not e.live)
    gone = {e.name for e in doomed if e.kind == "template"}  # their spares go with them
    doomed.extend(e for e in inventory if e.kind == "spare" and e.template in gone and not e.live)
    return list({e.name: e for e in doomed}.values())


def unchanged(entry: Entry) -> Callable[[Marker | None], bool]:
    """Whether a marker read again is still that of ``entry`` (same kind, state and run): a
    spare taken over, a template finished, a clone kept since the inventory are not dropped
    on its word."""
    listed = (entry.kind, entry.state, entry.run_id)
    return lambda marker: marker is not None and (marker.kind, marker.state, marker.run_id) == listed


# -- the janitor: facts from the server, drops ----------------------------------------------
class Janitor:
    """Sweeps, reaps and prunes our databases on ``backend`` for run ``run_id``."""

    def __init__(self, backend: Backend, site: Site, run_id: str) -> None:
        self.backend = backend
        self.site = site
        self.run_id = run_id
        #: ``"name: why"`` for each database a drop of this janitor failed on (it stays; the
        #: other databases are still dropped, and the run goes on)
        self.not_dropped: list[str] = []

    def sweep_run(self, own: str | None = None, wait: float = 3.0) -> list[str]:
        """Drop clones (and unfinished spares) of this run whose owner is gone (crashed
        workers), except ``own``.  ``wait``: a worker killed a moment ago may still hold its
        server session for a little while."""
        self.adopt_orphans(wait=wait)
        infos = self.backend.list_databases(PREFIX, sizes=False)
        start = self.server_start()
        return self._drop_dead(infos, lambda m: sweepable(m, self.run_id, start), skip=own, wait=wait)

    def reap_dead(self) -> list[str]:
        """Drop what dead runs left: clones of other runs, unfinished templates, stale spares."""
        self.adopt_orphans()
        infos = self.backend.list_databases(PREFIX, sizes=False)
        builds = ready_builds(infos)
        start = self.server_start()
        return self._drop_dead(infos, lambda m: reapable(m, self.run_id, builds, start))

    def server_start(self) -> ServerStart:
        """The facts :func:`presumed_alive` needs, now."""
        return ServerStart(self.backend.server_started())

    def inventory(
        self,
        prefix: str | Sequence[str] = PREFIX,
        *,
        own: str | None = None,
        current_template: str | None = None,
        exact: bool = False,
    ) -> list[Entry]:
        """Every database of ours on the server whose name starts with ``prefix`` (or one of
        several prefixes), with whether its owner is alive (``own``: this process's clone,
        alive by definition).  ``exact``: the prefixes are projects' (``cdb_<base>_``), and a
        database counts only if its template is named for one of them exactly, so that
        ``cdb_app_`` does not take in project ``app_v2``'s ``cdb_app_v2_…``."""
        prefixes = (prefix,) if isinstance(prefix, str) else tuple(prefix)
        found: dict[str, DatabaseInfo] = {}
        for each in prefixes:
            for info in self.backend.list_databases(each):
                if info.marker is not None and (not exact or project_prefix(info) in prefixes):
                    found.setdefault(info.name, info)
        infos = list(found.values())
        start = self.server_start()
        live_clones = set()
        live_builds = set()
        for info in infos:
            marker = info.marker
            assert marker is not None
            if marker.kind in ("clone", "spare"):  # a spare is live while it is being made
                if info.name == own or self._is_live(f"clone:{info.name}", marker, start):
                    live_clones.add(info.name)
            elif marker.state != "ready" and self._is_live(f"template:{info.name}", marker, start):
                live_builds.add(info.name)
        return entries(infos, live_clones=live_clones, live_builds=live_builds, current_template=current_template)

    def prune(
        self,
        *,
        keep_templates: int | None = None,
        dry_run: bool = False,
        everything: bool = False,
        prefix: str | Sequence[str] = PREFIX,
        own: str | None = None,
        current_template: str | None = None,
        exact: bool = False,
    ) -> list[Entry]:
        """Drop what :func:`prune_plan` names (default ``keep_templates``: the site's);
        returns what was (or, with ``dry_run``, would be) dropped.  ``prefix`` and ``exact``:
        as for :meth:`inventory`."""
        keep = self.site.keep_templates if keep_templates is None else keep_templates
        inventory = self.inventory(prefix, own=own, current_template=current_template, exact=exact)
        doomed = prune_plan(
            inventory,
            keep=keep,
            base_prefix=self.site.own_prefix.rstrip("_"),
            everything=everything,
            current_template=current_template,
        )
        if dry_run:
            return doomed
        return [e for e in doomed if self.drop_if_dead(e.name, lock_key(e.kind, e.name), still=unchanged(e))]

    def adopt_orphans(self, wait: float = 0.0) -> list[str]:
        """Mark the databases of this server whose creator (its lock free) died before marking
        them, from the intents recorded on this machine; returns their names.  They are
        then reaped as unfinished.  ``wait``: how long to wait for the lock of this run's
        own intents (a worker killed a moment ago)."""
        if not self.backend.records_intents:
            return []
        adopted = []
        start: ServerStart | None = None
        for name, marker in intent_files(self.site, PREFIX):
            start = start or self.server_start()
            if presumed_alive(marker, start):
                continue  # its creator runs on: the lock it takes back must be free for it
            # the lock is free once the creator's session has ended, and with it its CREATE DATABASE
            key = lock_key(marker.kind, name)
            if not self._take(key, intent_wait(marker, self.run_id, wait, start)):
                continue  # its creator is alive
            try:
                if self.backend.adopt(name, marker):
                    adopted.append(name)
                forget_intent(self.site, name)
            except ConcurrentDBError:
                pass  # the server is busy with it; the next run looks again
            finally:
                self.backend.release_lock(key)
        return adopted

    def _drop_dead(
        self,
        infos: Iterable[DatabaseInfo],
        wanted: Callable[[Marker], bool],
        skip: str | None = None,
        wait: float = 0.0,
    ) -> list[str]:
        def still(marker: Marker | None) -> bool:
            return marker is not None and wanted(marker)

        dropped = []
        for info in infos:
            if info.marker is None or info.name == skip or not wanted(info.marker):
                continue
            if self.drop_if_dead(info.name, lock_key(info.marker.kind, info.name), wait, still=still):
                dropped.append(info.name)
        return dropped

    def drop_if_dead(
        self, name: str, key: str, wait: float = 0.0, *, still: Callable[[Marker | None], bool]
    ) -> bool:
        """Drop ``name`` if its owner's lock ``key`` can be taken and, under the lock, its marker
        read again is ``still`` one to drop; True if dropped.  (Its owner may have finished it
        and let its lock go between the listing and the lock: a spare or template listed as
        ``building`` is ``ready`` now, a clone listed in use is ``kept``.)"""
        if not self._take(key, wait):
            return False  # its owner is alive
        try:
            if not still(self.backend.get_marker(name)):
                return False
            self.backend.drop(name)
        except (NotOursError, PrivilegeError):  # not ours, or another user's: leave it
            return False
        except Exception as exc:  # one database the server cannot drop must not stop a run
            self.not_dropped.append(f"{name}: {describe_error(exc)}")
            return False
        finally:
            self.backend.release_lock(key)
        return True

    def _take(self, key: str, wait: float) -> bool:
        if wait <= 0:
            return self.backend.try_lock(key)
        try:
            self.backend.acquire_lock(key, wait)
        except LockTimeoutError:
            return False
        return True

    def _is_live(self, key: str, marker: Marker, start: ServerStart) -> bool:
        """Whether the owner of a database marked ``marker`` lives: its lock ``key`` is held,
        or it is :func:`presumed_alive` after a restart (then the lock is not even tried: its
        owner may be taking it back right now)."""
        if presumed_alive(marker, start):
            return True
        if self.backend.try_lock(key):
            self.backend.release_lock(key)
            return False
        return True
