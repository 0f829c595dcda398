"""Handing an untouched database on: a worker's database that its tests left equal to the
template becomes the next run's spare, instead of being dropped while another copy is made.

A run's worker that took over a spare (:func:`.spares.claim_spare`) usually gives back a
database whose rows and schema are those of its template: a Django ``TestCase``, a
transaction rolled back after each test, or a test that only reads leave nothing behind but
moved counters (sequences, ``AUTO_INCREMENT``; a rolled-back insert does not undo them).  At
teardown the worker reads the database's state (:meth:`~.backends.Backend.database_state`:
a digest of the schema and of every row, the counters apart) and compares it with the state
the spare had when it was known equal to the template (its marker's ``pristine``, read when it
was copied).  If they are equal and no other session is on it, the counters are set back and
the database is marked as a spare again (same name, same build of the template): the next run
takes it over in milliseconds, and neither run copies nor drops a database.  Anything else
(a row, a table, a column, an index, a view changed, another session still on it, any error)
and it is dropped as before.  A database whose state took more than :data:`MAX_READ_SECONDS` to
read (large tables) is not handed on: its spare is copied in the background as before.

:class:`HandOnHistory` remembers, per template and machine, how the last attempts went: after
a run whose database had changed, the next runs make their spares by copying in the
background again (a suite whose tests commit would otherwise go without spares every other
run), and handing on is tried again after :data:`HISTORY` such runs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from .backends import Backend, Marker
from .markers import new_marker
from .paths import read_json_list, write_json_list
from .template import Template

__all__ = ["HandOnHistory", "Pristine", "hand_on", "read_pristine"]

#: how many recent outcomes :class:`HandOnHistory` keeps
HISTORY = 3
#: a database whose state took longer than this to read (seconds; large tables: every row is
#: hashed), and longer than copying it took, is not handed on: a copy made in the background while
#: the tests run costs the run less
MAX_READ_SECONDS = 1.0


@dataclass(frozen=True)
class Pristine:
    """The state of a database known equal to its template: what a spare's marker keeps."""

    digest: str
    counters: dict[str, int]
    #: how long reading it took, and how long copying it took when it was made
    seconds: float = 0.0
    copy_seconds: float = 0.0

    def encode(self) -> str:
        fields = {
            "digest": self.digest,
            "counters": self.counters,
            "seconds": round(self.seconds, 3),
            "copy_seconds": round(self.copy_seconds, 3),
        }
        return json.dumps(fields, sort_keys=True, separators=(",", ":"))

    @property
    def quick(self) -> bool:
        """Whether reading it is worth doing again at teardown: quicker than
        :data:`MAX_READ_SECONDS` or than copying it (both slow down alike on a busy machine)."""
        return self.seconds <= max(MAX_READ_SECONDS, self.copy_seconds)

    @classmethod
    def decode(cls, text: str) -> Pristine | None:
        """The state in a marker's ``pristine`` field; None if empty or not ours."""
        try:
            data = json.loads(text)
            digest, counters = data["digest"], data["counters"]
            seconds, copy_seconds = data.get("seconds", 0.0), data.get("copy_seconds", 0.0)
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        if not isinstance(digest, str) or not digest or not isinstance(counters, dict):
            return None
        if not all(isinstance(k, str) and isinstance(v, int) for k, v in counters.items()):
            return None
        if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in (seconds, copy_seconds)):
            return None
        return cls(digest, dict(counters), float(seconds), float(copy_seconds))


def read_pristine(backend: Backend, name: str, copy_seconds: float) -> str:
    """The encoded state of database ``name``, just copied from its template in ``copy_seconds``
    (empty when the backend does not hand databases on, or the state cannot be read: the spare
    is then only taken over once)."""
    started = time.perf_counter()
    try:
        state = backend.database_state(name)
    except Exception:
        return ""
    if state is None or state.sessions:
        return ""
    return Pristine(state.digest, state.counters, time.perf_counter() - started, copy_seconds).encode()


def hand_on(
    backend: Backend, template: Template, name: str, pristine: Pristine, *, run_id: str, worker_id: str, wanted: int
) -> tuple[str, str]:
    """Make database ``name`` (whose lock ``backend`` holds) a spare of ``template`` for
    ``worker_id`` again if it still equals ``pristine``, releasing its lock.  Returns
    (outcome, why): ``clean`` (handed on), ``changed`` (the tests changed it, or left a session
    on it) or ``skipped`` (enough spares already); the caller drops it unless ``clean``.
    ``wanted``: spares per worker."""
    started = time.perf_counter()
    state = backend.database_state(name)
    seconds = time.perf_counter() - started
    if state is None:
        return "skipped", "the backend does not hand databases on"
    if state.sessions:
        return "changed", f"other sessions are on it: {', '.join(state.sessions[:3])}"
    if _scheme(state.digest) != _scheme(pristine.digest):  # not a change the tests made
        return "skipped", "its state was read by another version of pytest-concurrent-db when it was copied"
    if state.digest != pristine.digest:
        return "changed", "its rows or schema changed"
    from .spares import is_spare

    have = [
        i
        for i in backend.list_databases(template.site.own_prefix, sizes=False)
        if i.name != name and is_spare(i.marker, template, worker_id)
    ]
    if len(have) >= wanted:
        return "skipped", f"{worker_id} has {len(have)} spare{'s' if len(have) != 1 else ''} already"
    backend.reset_counters(name, state.counters, pristine.counters)
    kept = Pristine(pristine.digest, pristine.counters, seconds, pristine.copy_seconds)  # this reading decides next
    marker: Marker = new_marker(
        "spare", run_id, worker_id, template.name, fingerprint=template.build_id, pristine=kept.encode()
    )
    backend.set_marker(name, marker)
    backend.release_lock(f"clone:{name}")
    return "clean", ""


def _scheme(digest: str) -> str:
    """How a digest was made (``pg1:``, ``my2:``; empty for the first format, which had no tag)."""
    head, sep, _ = digest.partition(":")
    return head if sep else ""


class HandOnHistory:
    """How the latest attempts of one worker id to hand a database of one template on went, on this machine
    (a small JSON file beside the copy times of :class:`.spares.CopyHistory`): ``clean``,
    ``changed`` (the tests left it changed), or ``copied`` (a run that made its spare by
    copying).  Best effort: a file that cannot be read or written is an empty history."""

    def __init__(self, template: Template, worker_id: str) -> None:
        # one file per worker id: each worker adds one outcome per run, so three are three runs
        self.path = template.site.directories.templates / "copies" / f"{template.name}.{worker_id}.handon.json"

    def read(self) -> list[str]:
        return [str(x) for x in read_json_list(self.path)][-HISTORY:]

    def add(self, outcome: str) -> None:
        write_json_list(self.path, [*self.read(), outcome][-HISTORY:])

    def worth_trying(self) -> bool:
        """True unless one of the latest :data:`HISTORY` runs found its database changed."""
        return "changed" not in self.read()
