"""The template: populators, fingerprint, and the build under the file lock + server lock.

The result is a frozen :class:`Template` that every later step (clones, spares, the
isolation check) takes as an argument.  A template is built once per fingerprint
across processes, runs and machines sharing a server, marked ready only when
complete, and reused while its inputs are unchanged.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import inspect
import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

from filelock import FileLock, Timeout

from . import __version__
from .backends import Backend, Marker
from .backends.base import restarted_since, server_start
from .errors import ConfigError, LockTimeoutError
from .incremental import Base, encode_manifest, find_base
from .markers import build_id, create_marked, new_marker, ready
from .naming import template_name
from .progress import BuildProgress
from .site import Site
from .snapshot import SnapshotOutcome, restore_snapshot, write_snapshot

T = TypeVar("T")

__all__ = [
    "PopulateSpec",
    "Populator",
    "Template",
    "callable_populator",
    "ensure_template",
    "fingerprint",
    "populators_for",
    "schema_populator",
    "tune_build_session",
]


@dataclass(frozen=True)
class Populator:
    """One way of filling the template: ``key`` enters the fingerprint, ``apply(backend,
    connection, template_name)`` does the work on a DB-API connection to the template."""

    label: str
    key: str
    apply: Callable[[Backend, Any, str], None]
    #: Set on populators that can resume (Django ``migrate``, Alembic ``upgrade head``): run on
    #: a copy of a template that holds some of their steps, they apply only the others.  The
    #: digest of everything they are apart from their steps (``key`` covers both).
    resume_key: str = ""
    #: the digests of their steps, one per migration file (:func:`.incremental.step_digest`)
    steps: tuple[str, ...] = ()
    #: whether a template holding the steps of these digests may be resumed (e.g. no old
    #: migration depends on a new one); None: always
    can_resume: Callable[[frozenset[str]], bool] | None = field(default=None, compare=False, repr=False)


#: What the public API's ``populate`` accepts: an SQL file, a callable taking a DB-API
#: connection, or a list of those.
PopulateSpec = Union[str, "os.PathLike[str]", Callable[[Any], Any], Sequence[Any], None]


def schema_populator(path: Path) -> Populator:
    """Apply the SQL file ``path`` (its content is part of the fingerprint)."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()

    def apply(backend: Backend, connection: Any, template: str) -> None:
        backend.run_script(connection, data.decode("utf-8"), str(path))

    return Populator(label=str(path), key=f"schema:{path.name}:{digest}", apply=apply)


def callable_populator(
    label: str,
    func: Callable[..., Any],
    call: Callable[[Any], None] | None = None,
    extra_key: str = "",
    also: Sequence[Callable[..., Any]] = (),
) -> Populator:
    """Run ``call`` (default: ``func``) on a DB-API connection and commit; the source of
    ``func`` and of the functions in ``also`` (and ``extra_key``) is part of the fingerprint."""
    source = "".join(_source(f) for f in (func, *also))
    key = f"callable:{label}:{hashlib.sha256((source + extra_key).encode()).hexdigest()}"

    def apply(backend: Backend, connection: Any, template: str) -> None:
        (call or func)(connection)
        connection.commit()

    return Populator(label=label, key=key, apply=apply)


def populators_for(populate: PopulateSpec, base: Path | None = None) -> list[Populator]:
    """The populators of the public API's ``populate`` argument (relative paths against
    ``base``, default the working directory).  Raises ConfigError for a missing file or a
    value of another type."""
    if populate is None:
        return []
    items = list(populate) if isinstance(populate, (list, tuple)) else [populate]
    out = []
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            path = Path(item)
            path = path if path.is_absolute() else (base or Path.cwd()) / path
            if not path.is_file():
                raise ConfigError(f"schema file {str(path)!r} does not exist; pass an existing SQL file as populate")
            out.append(schema_populator(path))
        elif callable(item):
            label = getattr(item, "__qualname__", type(item).__name__)
            out.append(callable_populator(f"populate {label}", item))
        else:
            raise ConfigError(
                f"populate takes an SQL file path, a callable taking a DB-API connection, or a list of those; "
                f"not {type(item).__name__}"
            )
    return out


def fingerprint(backend: Backend, populators: Sequence[Populator], extra: Sequence[str] = ()) -> str:
    """Hash of everything that shapes a template: plugin and server version, backend, the
    populators' keys (file contents, function sources) and ``extra`` keys."""
    return _fingerprints(backend, populators, extra)[0]


def _fingerprints(backend: Backend, populators: Sequence[Populator], extra: Sequence[str]) -> tuple[str, str]:
    """(the fingerprint, the digest of its inputs other than the populators)."""
    data: dict[str, Any] = {
        "plugin": __version__,
        "backend": backend.name,
        "server": backend.server_version(),
        "extra": list(extra),
    }
    outside = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    data["populators"] = [p.key for p in populators]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest(), outside


@dataclass(frozen=True)
class Template:
    """A ready template, as :func:`pytest_concurrent_db.build_template` returns it.

    ``url`` is the template database's URL (with its password; ``repr`` hides it).
    ``built`` says whether this call built it (False: an up-to-date one was reused);
    ``build_id`` tells two builds under the same name apart.
    """

    name: str
    fingerprint: str
    build_id: str
    site: Site = field(repr=False)
    built: bool = False
    build_seconds: float = 0.0
    lock_wait_seconds: float = 0.0
    #: the template this one was built from incrementally ("" for a full build or a reuse)
    built_from: str = ""
    #: how many steps (migrations) that incremental build added
    steps_added: int = 0
    #: why an incremental build was given up for a full one ("" if none was tried or it worked)
    incremental_error: str = ""
    #: seconds spent computing the fingerprint (hashing the inputs, asking the server's version)
    fingerprint_seconds: float = 0.0
    #: what built it: a clone that finds it pruned by another run rebuilds it from these
    populators: tuple[Populator, ...] = field(default=(), repr=False, compare=False)
    extra: tuple[str, ...] = field(default=(), repr=False, compare=False)
    #: what the snapshot step did (:mod:`.snapshot`): restored, written, warnings
    snapshot: SnapshotOutcome | None = field(default=None, repr=False, compare=False)

    @property
    def backend(self) -> str:
        """``"sqlite"``, ``"postgresql"`` or ``"mysql"``."""
        return self.site.url.backend

    @property
    def url(self) -> str:
        """The template database's URL (with password; do not print it)."""
        if self.backend == "sqlite":
            return f"sqlite:///{self.site.directories.templates / (self.name + '.db')}"
        return self.site.url.with_database(self.name).render(hide_password=False)


def ensure_template(
    backend: Backend,
    site: Site,
    populators: Sequence[Populator],
    *,
    run_id: str,
    worker_id: str,
    extra: Sequence[str] = (),
    rebuild: bool = False,
    on_built: Callable[[Template], None] | None = None,
    on_name: Callable[[str], None] | None = None,
    progress: BuildProgress | None = None,
) -> Template:
    """A ready template for these inputs on ``backend``, built under the locks if needed.

    ``rebuild`` builds once more unless this run (``run_id``) built it already: a template
    built by this run is always reused.  ``on_built`` runs after a build, still under
    the lock (the caller prunes out-of-date templates there).  ``on_name`` learns the
    template's name before any build (so that a failed one can still be reported).
    ``progress`` hears when this process waits for the lock, builds (step by step) and is done.
    """
    started = time.perf_counter()
    print_, outside = _fingerprints(backend, populators, extra)
    hashing = time.perf_counter() - started
    name = template_name(site.base, print_)
    if on_name is not None:
        on_name(name)

    def made(build: str, **timing: Any) -> Template:
        return Template(
            name, print_, build, site, fingerprint_seconds=hashing, populators=tuple(populators), extra=tuple(extra),
            **timing,
        )  # fmt: skip

    found = _usable(backend.get_marker(name), print_, rebuild, run_id)
    if found is not None:
        return made(found)
    started = time.perf_counter()
    on_wait = (lambda: progress.waiting(name)) if progress is not None else None
    with template_lock(backend, site, name, run_id, worker_id, on_wait=on_wait):
        waited = time.perf_counter() - started
        found = _usable(backend.get_marker(name), print_, rebuild, run_id)
        if found is not None:
            if progress is not None:
                progress.finished(built=False)
            return made(found, lock_wait_seconds=waited)
        begun = time.perf_counter()
        manifest = encode_manifest(outside, populators)
        snap, base = SnapshotOutcome(), None
        if not rebuild:  # a rebuild runs the populators, never a restore
            snap = restore_snapshot(
                backend, site, name, print_, run_id=run_id, worker_id=worker_id, manifest=manifest
            )  # fmt: skip
        build = snap.build_id
        failures: list[str] = []
        if build and progress is not None:
            progress.finished(built=False)  # restored: nothing was built
        if not build:
            base = None if rebuild else _base(backend, site, manifest, populators)
            if progress is not None:
                progress.building(name, populators)
            try:
                with progress.current() if progress is not None else contextlib.nullcontext():
                    build, base = _build(
                        backend, site, name, print_, populators, run_id=run_id, worker_id=worker_id,
                        manifest=manifest, base=base, progress=progress, failures=failures,
                    )  # fmt: skip
            except BaseException:
                if progress is not None:
                    progress.finished(built=False, failed=True)
                raise
            if progress is not None:
                progress.finished(built=True)
        template = made(
            build,
            built=True,
            build_seconds=time.perf_counter() - begun,
            lock_wait_seconds=waited,
            built_from=base.name if base else "",
            steps_added=base.added if base else 0,
            incremental_error="; ".join(failures),
            snapshot=snap,
        )
        if on_built is not None:
            on_built(template)
    if not snap.restored:  # outside the lock: the other processes clone meanwhile
        written = write_snapshot(backend, site, name, print_, run_id=run_id)
        snap.written, snap.seconds = written.written, written.seconds
        snap.warnings += [w for w in written.warnings if w not in snap.warnings]
    return template


def _usable(marker: Marker | None, print_: str, rebuild: bool, run_id: str) -> str | None:
    """The build id of a ready template with this fingerprint, or None."""
    if marker is None or marker.kind != "template" or marker.state != "ready" or marker.fingerprint != print_:
        return None
    if rebuild and marker.run_id != run_id:
        return None
    return build_id(marker)


def _base(backend: Backend, site: Site, manifest: str, populators: Sequence[Populator]) -> Base | None:
    """The ready template of this project that a template with ``manifest`` can start from."""
    if not any(p.resume_key for p in populators):
        return None
    infos = backend.list_databases(site.own_prefix, sizes=False)  # this project's only
    return find_base(infos, lambda print_: template_name(site.base, print_), manifest, populators)


def _build(
    backend: Backend,
    site: Site,
    name: str,
    print_: str,
    populators: Sequence[Populator],
    *,
    run_id: str,
    worker_id: str,
    manifest: str = "",
    base: Base | None = None,
    progress: BuildProgress | None = None,
    failures: list[str] | None = None,
) -> tuple[str, Base | None]:
    """Build template ``name``; returns its build id, and ``base`` if it was built from it.

    With ``base`` (see :mod:`.incremental`), the template starts as a copy of ``base`` and
    only the resumable populators run (they apply only their new steps); if that fails, it
    is dropped and built in full (why is appended to ``failures``).  A server restart during
    the build ends its sessions:
    once the server is up again (the control connection waits for it) and while this
    process holds the template lock (taken back with the control connection), the build
    starts over, until the lock timeout.  A build cut short is never marked ready, and is
    dropped."""

    failures = [] if failures is None else failures

    def once(base: Base | None) -> str:
        if backend.exists(name):  # stale, unfinished or forced rebuild
            backend.drop(name)
        marker = new_marker(
            "template", run_id, worker_id, name, fingerprint=print_, state="building", manifest=manifest
        )
        if base is None:
            create_marked(site, backend, name, marker, lambda: backend.create(name, marker))
        else:
            create_marked(site, backend, name, marker, lambda: backend.clone(base.name, name, marker))
        try:
            connection = backend.connect(name)
            try:
                tune_build_session(backend, connection)
                def populate() -> None:
                    for index, populator in enumerate(populators):
                        if base is None or populator.resume_key:
                            if progress is not None:
                                progress.step(index)
                            populator.apply(backend, connection, name)

                with frozen_heap():
                    with_stack_room(populate)
                connection.commit()
            finally:
                connection.close()
            done = ready(marker)
            backend.set_marker(name, done)
        except BaseException:
            with contextlib.suppress(Exception):  # the original error matters more; leftovers are reaped
                backend.drop(name)
            raise
        return build_id(done)

    if base is not None:
        try:
            return once(base), base
        except Exception as exc:  # any doubt: a full build (which reports its own errors)
            detail = " ".join(str(exc).split())[:300]
            failures.append(f"the incremental build from {base.name} failed ({type(exc).__name__}: {detail})")
    deadline = time.monotonic() + site.lock_timeout
    while True:
        started = server_start(backend)
        try:
            return once(None), None
        except Exception:
            if time.monotonic() >= deadline or restarted_since(backend, started) is None:
                raise
            if not backend.try_lock(f"template:{name}"):
                raise  # another process took the lock meanwhile: it builds


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Leave the objects that exist now out of the garbage collector's scans until the block
    ends.  A migrate makes and drops objects by the million, and each full collection it
    triggers would walk the whole session too (pytest's items, every module imported): the
    benchmark project's build of 95 migrations (SQLite, no xdist) took 23.5-24.1 s, and
    21.8-22.9 s with them left out, in interleaved runs.  Turning the collector off instead
    made it slower."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _with_room(call: Callable[[], T]) -> T:
    return call()


# A frame as large as 2**17 slots (1 MiB) makes CPython >= 3.11 give it a 2 MiB chunk; on
# another Python this stays a plain call.
with contextlib.suppress(AttributeError, TypeError, ValueError):
    _with_room.__code__ = _with_room.__code__.replace(co_stacksize=1 << 17)


def with_stack_room(call: Callable[[], T]) -> T:
    """Return ``call()``, run with 1 MiB of room on the Python stack that no deeper call can
    cross.  CPython 3.11 and later keep frames on a per-thread stack of 16 KiB chunks, and
    unmap a chunk as soon as the stack shrinks out of it: code that calls and returns over a
    chunk's edge maps and unmaps it each time.  A migrate does that, at a depth set by
    whoever called it, so the same build was 5-10% slower in an xdist worker (deeper) than
    in a plain pytest process: 274,000 ``mmap``/``munmap`` pairs of 16 KiB there against
    53,000 (``strace -c``, the benchmark project's 95 migrations).  This frame asks for
    more stack than it uses, so its chunk is large and everything it calls runs inside it
    (the room is mapped lazily: pages no frame reaches cost nothing)."""
    return _with_room(call)


def tune_build_session(backend: Backend, connection: Any) -> None:
    """Apply the backend's ``build_statements()`` (faster, crash-safe settings for the one
    session that builds a template) on ``connection`` (DB-API or Django)."""
    statements = backend.build_statements()
    if not statements:
        return
    cursor = connection.cursor()
    try:
        for statement in statements:
            cursor.execute(statement)
    finally:
        cursor.close()


@contextmanager
def template_lock(
    backend: Backend,
    site: Site,
    name: str,
    run_id: str,
    worker_id: str,
    *,
    on_wait: Callable[[], None] | None = None,
) -> Iterator[None]:
    """The lock of template ``name``: the machine-wide file lock (waiting there costs the
    server nothing), then the server-side lock (for other machines).  SQLite's server
    lock is itself a file lock beside its templates: one is enough.  ``on_wait`` is called
    once if a lock is not free at once (another process holds it)."""
    timeout = site.lock_timeout
    started = time.monotonic()
    waits = [on_wait] if on_wait is not None else []

    def wait() -> None:
        while waits:
            with contextlib.suppress(Exception):
                waits.pop()()

    with contextlib.ExitStack() as stack:
        if backend.name != "sqlite":
            stack.enter_context(_file_lock(site, name, run_id, worker_id, on_wait=wait))
        remaining = max(timeout - (time.monotonic() - started), 0.1)
        key = f"template:{name}"
        try:
            if not waits or not _try_lock(backend, key):
                wait()
                backend.acquire_lock(key, remaining)
        except LockTimeoutError as exc:
            raise LockTimeoutError(f"the template lock of {name} ({exc.lock})", timeout, exc.holder) from None
        try:
            yield
        finally:
            backend.release_lock(key)


def _try_lock(backend: Backend, key: str) -> bool:
    """``backend.try_lock(key)``; False when it cannot say (``acquire_lock`` then waits)."""
    try:
        return backend.try_lock(key)
    except Exception:
        return False


@contextmanager
def _file_lock(
    site: Site, name: str, run_id: str, worker_id: str, *, on_wait: Callable[[], None] | None = None
) -> Iterator[None]:
    site.directories.locks.mkdir(parents=True, exist_ok=True)
    path = site.directories.locks / f"{name}.lock"
    lock = FileLock(path, timeout=site.lock_timeout)
    try:
        if on_wait is not None:
            try:
                lock.acquire(timeout=0)
            except Timeout:
                on_wait()
                lock.acquire()
        else:
            lock.acquire()
    except Timeout:
        raise LockTimeoutError(f"the template lock {path}", site.lock_timeout, _holder(path)) from None
    try:
        with contextlib.suppress(OSError):
            path.with_suffix(".holder").write_text(
                f"pid {os.getpid()} on {socket.gethostname()} (run {run_id}, worker {worker_id})", encoding="utf-8"
            )
        yield
    finally:
        lock.release()


def _holder(path: Path) -> str:
    try:
        return path.with_suffix(".holder").read_text(encoding="utf-8").strip()
    except OSError:
        return "an unknown process"


def _source(func: Callable[..., Any]) -> str:
    try:
        return inspect.getsource(func)
    except (OSError, TypeError):
        return str(getattr(func, "__qualname__", repr(func)))
