"""What one process did, as a typed report: collected while it works, frozen when it ends.

A worker fills its :class:`WorkerReport` while it builds, clones, checks and drops; at the
end of its session it sends :meth:`WorkerReport.to_wire` (plain builtins, which is all xdist's
``workeroutput`` carries) to the controller, which reads it back with
:meth:`WorkerReport.from_wire` and renders the terminal summary (:mod:`.summary`) from
typed fields, never from string keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["WorkerReport"]


@dataclass
class WorkerReport:
    """One template's databases in one process (an xdist worker, or a plain run), filled
    while the process works and read by the summary once it is done."""

    worker_id: str = ""
    template: str = ""
    backend: str = ""
    #: the server URL without password, or a description of the SQLite default
    url: str = ""
    template_built: bool = False
    template_seconds: float = 0.0
    lock_wait_seconds: float = 0.0
    #: seconds spent on the template's fingerprint (its inputs hashed: files, Django's migrations)
    fingerprint_seconds: float = 0.0
    #: seconds spent finding the template ready, when this process did not build it
    reuse_seconds: float = 0.0
    #: migrations Django's ``migrate`` applied while this process built the template
    migrations: int = 0
    #: the template this process's build started from (an incremental build; "" otherwise)
    built_from: str = ""
    #: the steps (migration files, revisions) that incremental build added
    steps_added: int = 0
    #: why this process's incremental build was given up for a full build
    incremental_error: str = ""
    #: this process's clone (empty: setup failed before it was made)
    clone: str = ""
    clone_seconds: float = 0.0
    #: how the clone was made (e.g. ``CREATE DATABASE TEMPLATE, STRATEGY WAL_LOG``)
    method: str = ""
    #: the clone was a spare made by an earlier run (no copy in this run)
    spare_claimed: bool = False
    spares_made: int = 0
    spare_seconds: float = 0.0
    spare_wait_seconds: float = 0.0
    spare_error: str = ""
    #: the database this process handed on to the next run as its spare (empty: none)
    handed_on: str = ""
    #: how long comparing it with the template (and handing it on) took
    hand_on_seconds: float = 0.0
    #: why the spare this process took over was not handed on (dropped instead)
    hand_on_skipped: str = ""
    #: why the spare this process took over was not even checked to be handed on (dropped)
    hand_on_unchecked: str = ""
    #: fresh databases (``concurrent_db_fresh``) handed to tests, from a pool of ``fresh_pool``
    fresh_used: int = 0
    fresh_pool: int = 0
    #: pristine clones the pool made (used ones plus those still ready at the end)
    fresh_made: int = 0
    #: how long each test waited for its fresh database (seconds)
    fresh_waits: list[float] = field(default_factory=list)
    #: how many tests found the pool empty (besides the first, which starts the pool)
    fresh_dry: int = 0
    #: fresh databases of failed tests kept (``--concurrent-db-keep-failed``)
    fresh_kept: list[str] = field(default_factory=list)
    fresh_error: str = ""
    checks: int = 0
    warnings: int = 0
    failures: int = 0
    check_seconds: float = 0.0
    drop_seconds: float = 0.0
    dropped: list[str] = field(default_factory=list)
    #: databases of dead runs this process dropped
    reaped: list[str] = field(default_factory=list)
    #: out-of-date templates this process dropped after building a new one
    pruned: list[str] = field(default_factory=list)
    #: ``"name: why"`` for each database of dead runs (or out-of-date template) this process
    #: could not drop: it stays on the server
    not_dropped: list[str] = field(default_factory=list)
    #: the template snapshot this process restored the template from (empty: none)
    snapshot_restored: str = ""
    #: the template snapshot this process wrote after building the template (empty: none)
    snapshot_written: str = ""
    snapshot_seconds: float = 0.0
    #: one-line snapshot warnings (a snapshot ignored, snapshots unavailable)
    snapshot_warnings: list[str] = field(default_factory=list)

    def to_wire(self) -> dict[str, Any]:
        """Plain builtins, for xdist's ``workeroutput``."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), list) else v for f in _FIELDS}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> WorkerReport:
        """The report :meth:`to_wire` sent; unknown keys (another version's) are ignored."""
        return cls(**{f.name: data[f.name] for f in _FIELDS if f.name in data})

    @property
    def teardown_seconds(self) -> float:
        return self.check_seconds + self.spare_wait_seconds + self.hand_on_seconds + self.drop_seconds


_FIELDS = dataclasses.fields(WorkerReport)
