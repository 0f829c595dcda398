"""Markers as the lifecycle modules use them: who made a database, which build of a
template it is, which lock proves its owner alive, and intents for copies in flight.

Liveness rule, used for every cleanup decision: the process that creates a clone first
takes the session-level lock ``clone:<name>`` on its control connection and keeps it
until the clone is dropped.  A clone whose lock can be taken therefore belongs to a
dead process and may be dropped; a clone whose lock is held is never touched.
Template builds hold ``template:<name>`` the same way.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from .backends import Backend, Marker
from .backends.base import Kind
from .site import Site

__all__ = ["build_id", "intent_files", "lock_key", "new_marker", "ready", "recording_intent"]


def new_marker(kind: Kind, run_id: str, worker_id: str, template: str, **changes: Any) -> Marker:
    """The marker of a database this process creates now."""
    return Marker(
        kind=kind,
        run_id=run_id,
        worker_id=worker_id,
        template=template,
        host=socket.gethostname(),
        pid=os.getpid(),
        **changes,
    )


def ready(marker: Marker) -> Marker:
    """``marker`` of a database that is complete now."""
    return replace(marker, state="ready", created=time.time())


def build_id(marker: Marker | None) -> str:
    """One build of a template: who built it, and when (a rebuild under the same name is
    another build)."""
    return "" if marker is None else f"{marker.run_id}@{marker.created!r}"


def lock_key(kind: str, name: str) -> str:
    """The liveness lock of one of our databases: a spare's is the clone lock it keeps when
    a worker takes it over."""
    return f"{'template' if kind == 'template' else 'clone'}:{name}"


@contextmanager
def recording_intent(site: Site, backend: Backend, name: str, marker: Marker) -> Iterator[None]:
    """Around the creation of ``name``: when the backend can only mark a database after the
    server has made it (:attr:`~.backends.Backend.records_intents`), the marker is first
    written to an intent file, so that if this process dies in between, the janitor
    marks the database (:meth:`.janitor.Janitor.adopt_orphans`) and the usual reaping
    drops it."""
    if not backend.records_intents:
        yield
        return
    directory = site.directories.intents
    directory.mkdir(parents=True, exist_ok=True)
    intent = directory / f"{site.intent_prefix}{name}.json"
    intent.write_text(replace(marker, state="building").encode(), encoding="utf-8")
    try:
        yield
    finally:
        intent.unlink(missing_ok=True)


def create_marked(site: Site, backend: Backend, name: str, marker: Marker, create: Callable[[], None]) -> None:
    """Run ``create`` (which makes ``name`` and marks it) with its intent recorded."""
    with recording_intent(site, backend, name, marker):
        create()


def intent_files(site: Site, prefix: str) -> Iterator[tuple[str, Marker]]:
    """The intents recorded on this machine for databases of ``site``'s server whose names
    start with ``prefix``: (name, marker the creator meant to write)."""
    directory = site.directories.intents
    if not directory.is_dir():
        return
    server = site.intent_prefix
    for intent in sorted(directory.glob(f"{server}{prefix}*.json")):
        try:
            marker = Marker.decode(intent.read_text(encoding="utf-8"))
        except OSError:
            continue  # removed meanwhile: its creator finished
        if marker is not None:
            yield intent.name[len(server) : -len(".json")], marker


def forget_intent(site: Site, name: str) -> None:
    (site.directories.intents / f"{site.intent_prefix}{name}.json").unlink(missing_ok=True)
