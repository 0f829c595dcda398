"""The engine: template built once under a lock, one clone per worker, cleanup.

Nothing here knows pytest.  The pytest plugin, and later a programmatic API, a
Django test runner and a CLI, drive an :class:`Engine`.

Liveness rule, used for every cleanup decision: the process that creates a clone
first takes the session-level lock ``clone:<name>`` on its control connection and
keeps it until the clone is dropped.  A clone whose lock can be taken therefore
belongs to a dead process and may be dropped; a clone whose lock is held is never
touched.  Template builds hold ``template:<name>`` the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from . import __version__
from .backends import Backend, Marker, connect_url, load_backend
from .backends.base import Kind
from .errors import ConcurrentDBError, ConfigError, LockTimeoutError, NotOursError, PrivilegeError
from .naming import PREFIX, clone_name, sanitize, spare_name, template_name
from .url import DatabaseURL

__all__ = [
    "ConcurrentDatabase",
    "Engine",
    "Entry",
    "Populator",
    "callable_populator",
    "schema_populator",
    "server_lock_dir",
]


@dataclass(frozen=True)
class ConcurrentDatabase:
    """The database of one worker, as handed to tests.

    ``url`` includes the password (so that it can be used); ``repr`` hides it.
    """

    url: str = field(repr=False)
    name: str
    backend: str
    worker_id: str
    template_name: str
    run_id: str

    def connect(self, **kwargs: Any) -> Any:
        """A new DB-API connection to this worker's database (the caller closes it)."""
        return connect_url(self.url, **kwargs)


@dataclass(frozen=True)
class Populator:
    """One way of filling the template: ``key`` enters the fingerprint, ``apply`` does the work."""

    label: str
    key: str
    apply: Callable[[Backend, Any], None]


def schema_populator(path: Path) -> Populator:
    """Apply the SQL file ``path`` (its content is part of the fingerprint)."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()

    def apply(backend: Backend, connection: Any) -> None:
        backend.run_script(connection, data.decode("utf-8"), str(path))

    return Populator(label=str(path), key=f"schema:{path.name}:{digest}", apply=apply)


def callable_populator(
    label: str,
    func: Callable[..., Any],
    call: Callable[[Any], None] | None = None,
    extra_key: str = "",
    also: Sequence[Callable[..., Any]] = (),
) -> Populator:
    """Run ``call`` (default: ``func``); the source of ``func`` and of the functions in ``also``
    (and ``extra_key``) is part of the fingerprint."""
    source = "".join(_source(f) for f in (func, *also))
    key = f"callable:{label}:{hashlib.sha256((source + extra_key).encode()).hexdigest()}"

    def apply(backend: Backend, connection: Any) -> None:
        (call or func)(connection)
        connection.commit()

    return Populator(label=label, key=key, apply=apply)


@dataclass
class Stats:
    """What happened in this process, for the terminal summary."""

    template: str = ""
    template_built: bool = False
    template_seconds: float = 0.0
    lock_wait_seconds: float = 0.0
    clone: str = ""
    clone_seconds: float = 0.0
    drop_seconds: float = 0.0
    dropped: list[str] = field(default_factory=list)
    reaped: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    check_seconds: float = 0.0
    method: str = ""
    #: the clone was a spare made by an earlier run (no copy in this run)
    spare_claimed: bool = False
    #: spares made in the background for the next run, how long that took, what failed
    spares_made: int = 0
    spare_seconds: float = 0.0
    #: how long the teardown waited for the spares still being made
    spare_wait_seconds: float = 0.0
    spare_error: str = ""
    backend: str = ""
    url: str = ""
    checks: int = 0
    warnings: int = 0
    failures: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


#: ``--concurrent-db-spares auto`` makes spares once copying the template took this long (seconds).
#: MySQL: the copy is our own DDL replay, and a spare costs little more than that.  PostgreSQL: the
#: run's closing ``DROP DATABASE`` forces a checkpoint, which must also write the freshly copied
#: spare back to disk (measured +0.8 s for a 26 MB template), so only a slower copy is worth sparing.
SPARES_AUTO_MIN_SECONDS = {"mysql": 0.25, "postgresql": 1.0}


class Engine:
    """Creates and removes the databases of one process (a worker or the controller)."""

    def __init__(
        self,
        url: DatabaseURL,
        *,
        run_id: str,
        worker_id: str,
        lock_dir: Path,
        lock_timeout: float = 300.0,
        keep_templates: int = 2,
        clone_strategy: str | None = None,
        template_dir: Path | None = None,
        clone_dir: Path | None = None,
        base: str | None = None,
        spares: int | str = 0,
    ) -> None:
        self.url = url
        self.run_id = run_id
        self.worker_id = worker_id
        self.lock_dir = Path(lock_dir)
        self.lock_timeout = lock_timeout
        self.keep_templates = keep_templates
        self._inputs: tuple[tuple[Populator, ...], tuple[str, ...]] = ((), ())
        self.base = base or _base_name(url)
        label = str(url) if url.backend != "sqlite" or url.database else "sqlite (default: pytest cache + temp dirs)"
        self.stats = Stats(backend=url.backend, url=label)
        self._backend_options: dict[str, Any] = {
            "template_dir": template_dir,
            "clone_dir": clone_dir,
            "strategy": None if clone_strategy in (None, "auto") else clone_strategy,
        }
        self.backend: Backend = load_backend(
            url, application_name=f"pytest-concurrent-db {run_id} {worker_id}", **self._backend_options
        )
        #: ``auto``: one spare per worker, made only when copying the template proved slow
        self.spares_auto = spares == "auto"
        # SQLite clones are files copied in milliseconds into a per-run directory: no spares
        self.spares = (1 if self.spares_auto else int(spares)) if self.backend.name != "sqlite" else 0
        self._refill: threading.Thread | None = None
        self.template: str | None = None
        self.template_fingerprint = ""
        #: which build of the template this is (a rebuild under the same name is another)
        self.template_build = ""
        self.database: ConcurrentDatabase | None = None

    # -- checks ---------------------------------------------------------------------
    def preflight(self) -> None:
        """Connect, check privileges, and reap what dead runs left behind."""
        self.backend.preflight()
        self.reap_dead()

    # -- template ---------------------------------------------------------------------
    def fingerprint(self, populators: Sequence[Populator], extra: Sequence[str] = ()) -> str:
        data = {
            "plugin": __version__,
            "backend": self.backend.name,
            "server": self.backend.server_version(),
            "populators": [p.key for p in populators],
            "extra": list(extra),
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def ensure_template(
        self, populators: Sequence[Populator], *, extra: Sequence[str] = (), rebuild: bool = False
    ) -> str:
        """Return the name of a ready template for these inputs, building it if needed.

        Built at most once per run, even with ``rebuild``: a template built by this
        run is always reused.
        """
        self._inputs = (tuple(populators), tuple(extra))
        fingerprint = self.fingerprint(populators, extra)
        name = template_name(self.base, fingerprint)
        self.template = self.stats.template = name
        self.template_fingerprint = fingerprint
        marker = self.backend.get_marker(name)
        if self._usable(marker, fingerprint, rebuild):
            self.template_build = _build_id(marker)
            return name
        started = time.perf_counter()
        with self._template_lock(name):
            self.stats.lock_wait_seconds = time.perf_counter() - started
            marker = self.backend.get_marker(name)
            if self._usable(marker, fingerprint, rebuild):
                self.template_build = _build_id(marker)
                return name
            begun = time.perf_counter()
            self.template_build = self._build(name, fingerprint, populators)
            self.stats.template_built = True
            self.stats.template_seconds = time.perf_counter() - begun
            self.stats.pruned.extend(e.name for e in self.prune(keep_templates=self.keep_templates))
        return name

    def _usable(self, marker: Marker | None, fingerprint: str, rebuild: bool) -> bool:
        if marker is None or marker.kind != "template" or marker.state != "ready":
            return False
        if marker.fingerprint != fingerprint:
            return False
        return not rebuild or marker.run_id == self.run_id

    def _build(self, name: str, fingerprint: str, populators: Sequence[Populator]) -> str:
        """Build template ``name``; returns its build id."""
        if self.backend.exists(name):  # stale, unfinished or forced rebuild
            self.backend.drop(name)
        marker = Marker(
            kind="template",
            run_id=self.run_id,
            worker_id=self.worker_id,
            template=name,
            fingerprint=fingerprint,
            state="building",
            host=socket.gethostname(),
            pid=os.getpid(),
        )
        self._with_intent(self.backend, name, marker, lambda: self.backend.create(name, marker))
        try:
            connection = self.backend.connect(name)
            try:
                tune_build_session(self.backend, connection)
                for populator in populators:
                    populator.apply(self.backend, connection)
                connection.commit()
            finally:
                connection.close()
            ready = _ready(marker)
            self.backend.set_marker(name, ready)
        except BaseException:
            with contextlib.suppress(Exception):  # the original error matters more; leftovers are reaped
                self.backend.drop(name)
            raise
        return _build_id(ready)

    @contextmanager
    def _template_lock(self, name: str) -> Iterator[None]:
        """The machine-wide file lock, then the server-side lock (for other machines)."""
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        path = self.lock_dir / f"{name}.lock"
        file_lock = FileLock(path, timeout=self.lock_timeout)
        started = time.monotonic()
        try:
            file_lock.acquire()
        except Timeout:
            raise LockTimeoutError(f"the template lock {path}", self.lock_timeout, _holder(path)) from None
        try:
            _write_holder(path, self.run_id, self.worker_id)
            remaining = max(self.lock_timeout - (time.monotonic() - started), 0.1)
            key = f"template:{name}"
            try:
                self.backend.acquire_lock(key, remaining)
            except LockTimeoutError as exc:
                lock = f"the template lock of {name} ({exc.lock})"
                raise LockTimeoutError(lock, self.lock_timeout, exc.holder) from None
            try:
                yield
            finally:
                self.backend.release_lock(key)
        finally:
            file_lock.release()

    # -- clones ---------------------------------------------------------------------------
    def create_clone(self, *, refill: bool = True) -> ConcurrentDatabase:
        """This worker's clone of the template (call :meth:`ensure_template` first): a spare
        made for this worker id by an earlier run if one is ready, else a new copy.  With
        spares enabled (and ``refill``), a spare for the next run is then made in the
        background."""
        if self.template is None:
            raise ConcurrentDBError("internal error: create_clone() before ensure_template()")
        started = time.perf_counter()
        name = self._claim_spare()
        self.stats.spare_claimed = name is not None
        if name is None:
            name = self._new_clone()
        self.stats.clone = name
        self.stats.clone_seconds = time.perf_counter() - started
        self.stats.method = "spare made by an earlier run" if self.stats.spare_claimed else _clone_method(self.backend)
        assert self.template is not None
        self.database = ConcurrentDatabase(
            url=self.backend.url_for(name),
            name=name,
            backend=self.backend.name,
            worker_id=self.worker_id,
            template_name=self.template,
            run_id=self.run_id,
        )
        if refill and self._spares_pay_off():
            self._start_refill(self.template, self.template_build)
        return self.database

    def _spares_pay_off(self) -> bool:
        """With ``spares="auto"``, spares are made only for templates that are slow to copy: this
        worker's copy took :data:`SPARES_AUTO_MIN_SECONDS` or more, or it took over a spare (an
        earlier run found the copy slow).  A faster copy costs less than a spare does (an extra
        connection while it is made, a database waiting on the server between runs and, on
        PostgreSQL, writing it back at the closing checkpoint)."""
        if not self.spares_auto:
            return True
        threshold = SPARES_AUTO_MIN_SECONDS.get(self.backend.name)
        if threshold is None:
            return False
        return self.stats.spare_claimed or self.stats.clone_seconds >= threshold

    def _new_clone(self) -> str:
        assert self.template is not None
        name = clone_name(self.base, self.run_id, self.worker_id)
        if not self.backend.try_lock(f"clone:{name}"):
            raise ConcurrentDBError(
                f"database {name} is in use by another live process (its lock is held); "
                f"this should not happen with unique run ids: stop the other run and retry"
            )
        if self.backend.exists(name):  # left by an earlier process of this worker id
            self.backend.drop(name)
        marker = self._marker("clone")
        try:
            try:
                self._clone_with_intent(self.backend, self.template, name, marker)
            except Exception:
                if self.backend.exists(self.template):
                    raise
                # pruned or rebuilt by another run between our check and our clone: once more
                populators, extra = self._inputs
                self.ensure_template(populators, extra=extra)
                marker = self._marker("clone")
                self._clone_with_intent(self.backend, self.template, name, marker)
        except BaseException:
            self.backend.release_lock(f"clone:{name}")
            raise
        return name

    # -- intents: a database the server made for a process that died before marking it ---
    @property
    def _intents(self) -> tuple[Path, str]:
        """The machine-wide intent directory, and the file-name prefix of this server's intents."""
        server = f"{self.url.backend}://{self.url.host or ''}:{self.url.port or ''}"
        return self.lock_dir / "intents", hashlib.sha256(server.encode()).hexdigest()[:12] + "-"

    def _with_intent(self, backend: Backend, name: str, marker: Marker, create: Callable[[], None]) -> None:
        """Run ``create`` (which makes ``name`` and marks it), the marker first recorded in an
        intent file when the backend can only mark a database after the server has made it
        (PostgreSQL): if this process dies in between, :meth:`adopt_orphans` marks the database
        so that the usual reaping drops it."""
        if getattr(backend, "adopt", None) is None:
            create()
            return
        directory, server = self._intents
        directory.mkdir(parents=True, exist_ok=True)
        intent = directory / f"{server}{name}.json"
        intent.write_text(replace(marker, state="building").encode(), encoding="utf-8")
        try:
            create()
        finally:
            intent.unlink(missing_ok=True)

    def _clone_with_intent(self, backend: Backend, template: str, name: str, marker: Marker) -> None:
        self._with_intent(backend, name, marker, lambda: backend.clone(template, name, marker))

    def adopt_orphans(self, wait: float = 0.0) -> list[str]:
        """Mark the databases of this server whose creator (its lock free) died before marking
        them, from the intents recorded on this machine; returns their names.  They are then
        reaped as unfinished.  ``wait``: how long to wait for the lock of this run's own
        intents (a worker killed a moment ago)."""
        adopt = getattr(self.backend, "adopt", None)
        directory, server = self._intents
        if adopt is None or not directory.is_dir():
            return []
        adopted = []
        for intent in sorted(directory.glob(f"{server}{PREFIX}*.json")):
            name = intent.name[len(server) : -len(".json")]
            marker = Marker.decode(intent.read_text(encoding="utf-8")) if intent.is_file() else None
            if marker is None:
                continue
            # the lock is free once the creator's session has ended, and with it its CREATE DATABASE
            key = _lock_key(marker.kind, name)
            if not self._take(key, wait if marker.run_id == self.run_id else 0.0):
                continue  # its creator is alive
            try:
                if adopt(name, marker):
                    adopted.append(name)
                intent.unlink(missing_ok=True)
            except ConcurrentDBError:
                pass  # the server is busy with it; the next run looks again
            finally:
                self.backend.release_lock(key)
        return adopted

    def _marker(self, kind: Kind, template: str | None = None, **changes: Any) -> Marker:
        return Marker(
            kind=kind,
            run_id=self.run_id,
            worker_id=self.worker_id,
            template=template or self.template or "",
            host=socket.gethostname(),
            pid=os.getpid(),
            **changes,
        )

    # -- spares: pristine clones made during one run for the same worker id of the next ----
    def _is_spare(self, marker: Marker | None, template: str, build: str, *, ready: bool = False) -> bool:
        """A spare (``ready`` ones only) of this build of ``template`` (its ``fingerprint``
        field holds the build id) for this worker id."""
        return (
            marker is not None
            and marker.kind == "spare"
            and (marker.state == "ready" or not ready)
            and marker.template == template
            and marker.fingerprint == build
            and marker.worker_id == self.worker_id
        )

    def _claim_spare(self) -> str | None:
        """Take over a ready spare of the current template made for this worker id: its lock
        is kept (as a clone's) and its marker says it is this worker's clone now."""
        if self.spares <= 0 or self.template is None:
            return None
        for info in self.backend.list_databases(self.own_prefix, sizes=False):
            if not self._is_spare(info.marker, self.template, self.template_build, ready=True):
                continue
            key = f"clone:{info.name}"
            if not self.backend.try_lock(key):
                continue  # still being made, or taken by a worker of a concurrent run
            try:
                marker = self.backend.get_marker(info.name)  # again, under the lock
                if self._is_spare(marker, self.template, self.template_build, ready=True):
                    self.backend.set_marker(info.name, self._marker("clone"))
                    return info.name
            except ConcurrentDBError:
                pass  # gone meanwhile: make a clone instead
            self.backend.release_lock(key)
        return None

    def _start_refill(self, template: str, build: str) -> None:
        """Make this worker id's spares of ``template`` for the next run, in a thread (with
        its own server connection) that runs while the tests do; joined at teardown."""
        if self.spares <= 0 or self._refill is not None:
            return
        self._refill = threading.Thread(
            target=self._refill_spares, args=(template, build), name=f"concurrent-db spares {self.worker_id}"
        )
        self._refill.start()

    def _refill_spares(self, template: str, build: str) -> None:
        try:
            self.make_spares(template, build)
        except Exception as exc:  # a spare is an optimisation: the run goes on without it
            self.stats.spare_error = str(exc) or type(exc).__name__

    def make_spares(self, template: str | None = None, build: str | None = None) -> int:
        """Make spares of the current template (call :meth:`ensure_template` first) for this
        worker id until :attr:`spares` are ready, on a connection of their own; returns how
        many were made.  :meth:`create_clone` runs this in a thread."""
        template = template or self.template
        build = self.template_build if build is None else build
        if template is None or self.spares <= 0:
            return 0
        started = time.perf_counter()
        made = 0
        backend = load_backend(
            self.url,
            application_name=f"pytest-concurrent-db {self.run_id} {self.worker_id} spares",
            **self._backend_options,
        )
        try:
            while True:
                have = [
                    i
                    for i in backend.list_databases(self.own_prefix, sizes=False)
                    if self._is_spare(i.marker, template, build)
                ]
                if len(have) >= self.spares:
                    return made
                self._make_spare(backend, template, build)
                made += 1
                self.stats.spares_made += 1
        finally:
            with contextlib.suppress(Exception):
                backend.close()
            self.stats.spare_seconds += time.perf_counter() - started

    def _make_spare(self, backend: Backend, template: str, build: str) -> None:
        """One spare: ``building`` while it is copied (reaped if we die), ``ready`` after."""
        name = spare_name(self.base, self.worker_id)
        key = f"clone:{name}"
        if not backend.try_lock(key):
            raise ConcurrentDBError(f"the lock of new spare {name} is held by another process")
        try:
            marker = self._marker("spare", template, state="building", fingerprint=build)
            self._clone_with_intent(backend, template, name, marker)
            try:
                backend.set_marker(name, _ready(marker))
            except BaseException:
                with contextlib.suppress(Exception):
                    backend.drop(name)
                raise
        finally:
            backend.release_lock(key)

    def wait_for_spares(self) -> None:
        """Wait until the spares of this process are made (they are left for the next run)."""
        if self._refill is not None:
            started = time.perf_counter()
            self._refill.join()
            self.stats.spare_wait_seconds += time.perf_counter() - started

    def keep_clone(self) -> None:
        """Mark this worker's clone as kept (``--concurrent-db-keep``): no later run reaps it;
        ``python -m pytest_concurrent_db prune`` removes it."""
        if self.database is None:
            return
        marker = self.backend.get_marker(self.database.name)
        if marker is not None:
            self.backend.set_marker(self.database.name, replace(marker, state="kept"))
        self.backend.release_lock(f"clone:{self.database.name}")
        self.database = None
        self.wait_for_spares()

    def drop_clone(self) -> None:
        """Drop this worker's clone and release its lock."""
        if self.database is None:
            return
        name = self.database.name
        started = time.perf_counter()
        try:
            self.backend.drop(name)
            self.stats.dropped.append(name)
        finally:
            self.backend.release_lock(f"clone:{name}")
            self.stats.drop_seconds = time.perf_counter() - started
            self.database = None
            self.wait_for_spares()

    # -- cleanup of others ---------------------------------------------------------------
    def sweep_run(self) -> list[str]:
        """Drop clones (and unfinished spares) of this run whose owner is gone (crashed workers)."""
        own = self.database.name if self.database is not None else None
        # a worker killed a moment ago may still hold its server session for a little while
        self.adopt_orphans(wait=3.0)
        return self._drop_dead(
            lambda m: (
                m.run_id == self.run_id
                and ((m.kind == "clone" and m.state != "kept") or (m.kind == "spare" and m.state == "building"))
            ),
            skip=own,
            wait=3.0,
        )

    def reap_dead(self) -> list[str]:
        """Drop clones of other runs whose owner is gone, unfinished templates, and spares
        that are unfinished or whose template is no longer a ready one."""
        self.adopt_orphans()
        infos = self.backend.list_databases(PREFIX, sizes=False)
        builds = {
            (i.name, _build_id(i.marker))
            for i in infos
            if i.marker and i.marker.kind == "template" and i.marker.state == "ready"
        }
        reaped = self._drop_dead(
            lambda m: (
                (m.kind == "clone" and m.run_id != self.run_id and m.state != "kept")
                or (m.kind == "template" and m.state != "ready")
                or (m.kind == "spare" and (m.state != "ready" or (m.template, m.fingerprint) not in builds))
            ),
            infos=infos,
        )
        self.stats.reaped.extend(reaped)
        return reaped

    def _drop_dead(
        self,
        wanted: Callable[[Marker], bool],
        skip: str | None = None,
        wait: float = 0.0,
        infos: list[Any] | None = None,
    ) -> list[str]:
        dropped = []
        for info in self.backend.list_databases(PREFIX, sizes=False) if infos is None else infos:
            if info.marker is None or info.name == skip or not wanted(info.marker):
                continue
            if self._drop_if_dead(info.name, _lock_key(info.marker.kind, info.name), wait):
                dropped.append(info.name)
        return dropped

    def _drop_if_dead(self, name: str, key: str, wait: float = 0.0) -> bool:
        """Drop ``name`` if its owner's lock ``key`` can be taken; True if dropped."""
        if not self._take(key, wait):
            return False  # its owner is alive
        try:
            self.backend.drop(name)
        except (NotOursError, PrivilegeError):  # not ours, or another user's: leave it
            return False
        finally:
            self.backend.release_lock(key)
        return True

    @property
    def own_prefix(self) -> str:
        """The name prefix of this project's databases (``cdb_<base>_``)."""
        return f"{PREFIX}{sanitize(self.base)}_"

    def inventory(self, prefix: str = PREFIX) -> list[Entry]:
        """Every database of ours on the server (or those starting with ``prefix``), with
        whether its owner is alive."""
        infos = [i for i in self.backend.list_databases(prefix) if i.marker is not None]
        own = {self.database.name} if self.database is not None else set()
        live_clones: dict[str, bool] = {}
        for info in infos:
            assert info.marker is not None
            if info.marker.kind in ("clone", "spare"):  # a spare is live while it is being made
                live_clones[info.name] = info.name in own or self._is_live(f"clone:{info.name}")
        used = {i.marker.template for i in infos if i.marker and i.marker.kind == "clone" and live_clones[i.name]}
        entries = []
        now = time.time()
        for info in infos:
            marker = info.marker
            assert marker is not None
            if marker.kind in ("clone", "spare"):
                live = live_clones[info.name]
            elif marker.state != "ready":
                live = self._is_live(f"template:{info.name}")
            else:
                live = info.name in used or info.name == self.template
            entries.append(
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
        return entries

    def prune(
        self,
        *,
        keep_templates: int | None = None,
        dry_run: bool = False,
        everything: bool = False,
        prefix: str = PREFIX,
    ) -> list[Entry]:
        """Drop stale ready templates beyond the newest ``keep_templates`` that no live run uses.

        By default (after a template build) only templates of this engine's base name,
        i.e. this project's, are considered.  With ``everything`` (the CLI's ``prune``)
        every base name is (limited to names starting with ``prefix``), and so are dead
        clones, kept clones and abandoned builds.
        Returns what was (or, with ``dry_run``, would be) dropped.
        """
        keep = self.keep_templates if keep_templates is None else keep_templates
        entries = self.inventory(prefix)
        doomed = [
            e for e in entries if everything and not e.live and (e.kind in ("clone", "spare") or e.state != "ready")
        ]
        by_base: dict[str, list[Entry]] = {}
        for entry in entries:
            if entry.kind != "template" or entry.state != "ready" or entry.name == self.template:
                continue
            base = entry.name.rsplit("_tpl_", 1)[0]
            if everything or base == f"{PREFIX}{sanitize(self.base)}":
                by_base.setdefault(base, []).append(entry)
        for group in by_base.values():
            group.sort(key=lambda e: e.age_seconds)
            doomed.extend(e for e in group[keep:] if not e.live)
        gone = {e.name for e in doomed if e.kind == "template"}  # their spares go with them
        doomed.extend(e for e in entries if e.kind == "spare" and e.template in gone and not e.live)
        doomed = list({e.name: e for e in doomed}.values())
        if dry_run:
            return doomed
        return [e for e in doomed if self._drop_if_dead(e.name, _lock_key(e.kind, e.name))]

    def _take(self, key: str, wait: float) -> bool:
        if wait <= 0:
            return self.backend.try_lock(key)
        try:
            self.backend.acquire_lock(key, wait)
        except LockTimeoutError:
            return False
        return True

    def _is_live(self, key: str) -> bool:
        if self.backend.try_lock(key):
            self.backend.release_lock(key)
            return False
        return True

    def close(self) -> None:
        self.wait_for_spares()
        self.backend.close()


@dataclass(frozen=True)
class Entry:
    """One of our databases as :meth:`Engine.inventory` sees it."""

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


def _ready(marker: Marker) -> Marker:
    """``marker`` of a database that is complete now."""
    return replace(marker, state="ready", created=time.time())


def _build_id(marker: Marker | None) -> str:
    """One build of a template: who built it, and when."""
    return "" if marker is None else f"{marker.run_id}@{marker.created!r}"


def _lock_key(kind: str, name: str) -> str:
    """The liveness lock of one of our databases: a spare's is the clone lock it keeps when
    a worker takes it over."""
    return f"{'template' if kind == 'template' else 'clone'}:{name}"


def _source(func: Callable[..., Any]) -> str:
    try:
        return inspect.getsource(func)
    except (OSError, TypeError):
        return str(getattr(func, "__qualname__", repr(func)))


def tune_build_session(backend: Backend, connection: Any) -> None:
    """Apply the backend's optional ``build_statements()`` (faster, crash-safe settings for
    the one session that builds a template) on ``connection`` (DB-API or Django)."""
    statements = getattr(backend, "build_statements", lambda: ())()
    if not statements:
        return
    cursor = connection.cursor()
    try:
        for statement in statements:
            cursor.execute(statement)
    finally:
        cursor.close()


def _clone_method(backend: Backend) -> str:
    """How clones are made, for the summary."""
    if backend.name == "postgresql":
        chosen = getattr(backend, "chosen_strategy", "")
        return f"CREATE DATABASE TEMPLATE, STRATEGY {chosen}" if chosen else "CREATE DATABASE TEMPLATE"
    if backend.name == "mysql":
        return "DDL replay + INSERT ... SELECT"
    return "sqlite3 backup API"


def server_lock_dir() -> Path:
    """The machine-wide directory of template file locks for server backends."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"pytest-concurrent-db-{uid}"


def _base_name(url: DatabaseURL) -> str:
    if url.backend == "sqlite":
        return Path(url.database).stem if url.database and not url.is_memory else "test"
    return url.database or "test"


def _write_holder(path: Path, run_id: str, worker_id: str) -> None:
    with contextlib.suppress(OSError):
        path.with_suffix(".holder").write_text(
            f"pid {os.getpid()} on {socket.gethostname()} (run {run_id}, worker {worker_id})", encoding="utf-8"
        )


def _holder(path: Path) -> str:
    try:
        return path.with_suffix(".holder").read_text(encoding="utf-8").strip()
    except OSError:
        return "an unknown process"


def check_url_for_xdist(url: DatabaseURL, parallel: bool) -> None:
    """An in-memory SQLite URL cannot be shared between processes."""
    if parallel and url.is_memory:
        raise ConfigError(
            "an in-memory SQLite URL cannot be shared by xdist workers; use a file URL "
            "such as sqlite:///tests.db or omit --concurrent-db-url for the SQLite default"
        )
