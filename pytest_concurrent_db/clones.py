"""Clones of a :class:`~.template.Template`: make one, keep it, drop it.

A clone is made under its liveness lock ``clone:<name>`` (see :mod:`.markers`), which
its maker holds on its control connection until the clone is dropped or kept; the
result is the frozen :class:`ConcurrentDatabase` handle given to users.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from .backends import Backend, connect_url
from .errors import ConcurrentDBError
from .markers import create_marked, new_marker
from .naming import clone_name
from .template import Template

__all__ = ["ConcurrentDatabase", "drop_clone", "keep_clone", "make_clone"]


@dataclass(frozen=True)
class ConcurrentDatabase:
    """One isolated database, cloned from a template (a worker's, or one from the API).

    ``url`` includes the password (so that it can be used); ``repr`` hides it.
    """

    url: str = field(repr=False)
    name: str
    backend: str
    worker_id: str
    template_name: str
    run_id: str

    def connect(self, **kwargs: Any) -> Any:
        """A new DB-API connection to this database (the caller closes it)."""
        return connect_url(self.url, **kwargs)

    @property
    def sqlalchemy_url(self) -> str:
        """The URL for SQLAlchemy's ``create_engine``, with the installed driver
        (``postgresql+psycopg://``, ``mysql+pymysql://``, ``sqlite:///``); it has the password."""
        from .sqla.urls import sqlalchemy_url

        return sqlalchemy_url(self.url)

    def transaction(self, isolation_level: str | None = None, read_only: bool = False) -> Any:
        """A context manager: a new connection in one transaction, committed at the end of the
        block, rolled back if it raises, then closed.  ``isolation_level``: ``READ
        UNCOMMITTED``, ``READ COMMITTED``, ``REPEATABLE READ`` or ``SERIALIZABLE`` where the
        backend really runs it (else a ConfigError); ``read_only`` refuses writes."""
        from .transactions import transaction

        return transaction(self, isolation_level, read_only)

    def thread_connection(self) -> Any:
        """The calling thread's own connection to this database, made on first use and kept
        until :meth:`close_thread_connections` (the plugin calls it after every test)."""
        from .transactions import thread_connections

        registry = thread_connections(self)
        assert registry is not None
        return registry.get()

    def close_thread_connections(self) -> int:
        """Close the connections :meth:`thread_connection` made, of every thread; returns how many."""
        from .transactions import thread_connections

        registry = thread_connections(self, create=False)
        return registry.close_all() if registry is not None else 0


def handle(backend: Backend, template: Template, name: str, run_id: str, worker_id: str) -> ConcurrentDatabase:
    """The user's handle of clone ``name``."""
    return ConcurrentDatabase(
        url=backend.url_for(name),
        name=name,
        backend=backend.name,
        worker_id=worker_id,
        template_name=template.name,
        run_id=run_id,
    )


def make_clone(
    backend: Backend,
    template: Template,
    *,
    run_id: str,
    worker_id: str,
    name: str | None = None,
    rebuild: Callable[[], Template] | None = None,
    locked: bool = False,
) -> tuple[str, Template]:
    """Copy ``template`` into a new clone (default name ``cdb_<base>_<run>_<worker>``) whose
    lock this backend then holds; returns its name and the template it was copied from.

    ``locked``: the caller already holds the clone's lock (on another control connection,
    as :func:`pytest_concurrent_db.clone_many` does) and keeps it.  If the template was
    pruned or rebuilt by another run between our check and our copy, ``rebuild()`` (when
    given) makes it again and the copy is tried once more.
    """
    name = name or clone_name(template.site.base, run_id, worker_id)
    key = f"clone:{name}"
    if not locked and not backend.try_lock(key):
        raise ConcurrentDBError(
            f"database {name} is in use by another live process (its lock is held); "
            f"this should not happen with unique run ids: stop the other run and retry"
        )
    try:
        if backend.exists(name):  # left by an earlier process of this worker id
            backend.drop(name)
        try:
            copy(backend, template, name, new_marker("clone", run_id, worker_id, template.name))
        except Exception:  # the backends' own errors too (e.g. SQLite: the file is gone)
            if rebuild is None or _still_there(backend, template):
                raise
            # gone since we checked: build it again (outside the handler: its errors are its own)
        else:
            return name, template
        template = rebuild()
        copy(backend, template, name, new_marker("clone", run_id, worker_id, template.name))
    except BaseException:
        if not locked:
            backend.release_lock(key)
        raise
    return name, template


def _still_there(backend: Backend, template: Template) -> bool:
    """Whether ``template`` still exists (an error while asking counts as yes: the copy's
    own error is the one to report)."""
    try:
        return backend.exists(template.name)
    except Exception:
        return True


def copy(backend: Backend, template: Template, name: str, marker: Any) -> None:
    """Copy ``template`` into ``name`` marked with ``marker``, its intent recorded."""
    create_marked(template.site, backend, name, marker, lambda: backend.clone(template.name, name, marker))


def keep_clone(backend: Backend, name: str) -> None:
    """Mark clone ``name`` as kept (no later run reaps it; ``python -m pytest_concurrent_db
    prune`` removes it) and release its lock."""
    try:
        marker = backend.get_marker(name)
        if marker is not None:
            backend.set_marker(name, replace(marker, state="kept"))
    finally:
        backend.release_lock(f"clone:{name}")


def drop_clone(backend: Backend, name: str) -> None:
    """Drop clone ``name`` and release its lock (also when the drop fails: then a failing
    release cannot replace the drop's error)."""
    key = f"clone:{name}"
    try:
        backend.drop(name)
    except BaseException:
        with contextlib.suppress(Exception):
            backend.release_lock(key)
        raise
    backend.release_lock(key)
