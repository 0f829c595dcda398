"""What one process did, as a typed report: collected while it works, frozen when it ends.

A worker fills a :class:`Stats` while it builds, clones, checks and drops; at the end of
its session it sends :meth:`WorkerReport.to_wire` (plain builtins, which is all xdist's
``workeroutput`` carries) to the controller, which reads it back with
:meth:`WorkerReport.from_wire` and renders the terminal summary (:mod:`.summary`) from
typed fields, never from string keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Stats", "WorkerReport"]


@dataclass(frozen=True)
class WorkerReport:
    """One template's databases in one process (an xdist worker, or a plain run)."""

    worker_id: str
    template: str
    backend: str = ""
    #: the server URL without password, or a description of the SQLite default
    url: str = ""
    template_built: bool = False
    template_seconds: float = 0.0
    lock_wait_seconds: float = 0.0
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
    checks: int = 0
    warnings: int = 0
    failures: int = 0
    check_seconds: float = 0.0
    drop_seconds: float = 0.0
    dropped: tuple[str, ...] = ()
    #: databases of dead runs this process dropped
    reaped: tuple[str, ...] = ()
    #: out-of-date templates this process dropped after building a new one
    pruned: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        """Plain builtins, for xdist's ``workeroutput``."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in _FIELDS}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> WorkerReport:
        """The report :meth:`to_wire` sent; unknown keys (another version's) are ignored."""
        values: dict[str, Any] = {}
        for f in _FIELDS:
            if f.name in data:
                value = data[f.name]
                values[f.name] = tuple(value) if isinstance(value, list) else value
        return cls(**values)

    @property
    def teardown_seconds(self) -> float:
        return self.check_seconds + self.spare_wait_seconds + self.drop_seconds


_FIELDS = dataclasses.fields(WorkerReport)


@dataclass
class Stats:
    """The mutable counters behind a :class:`WorkerReport`, filled while the process works."""

    backend: str = ""
    url: str = ""
    template: str = ""
    template_built: bool = False
    template_seconds: float = 0.0
    lock_wait_seconds: float = 0.0
    clone: str = ""
    clone_seconds: float = 0.0
    method: str = ""
    spare_claimed: bool = False
    spares_made: int = 0
    spare_seconds: float = 0.0
    spare_wait_seconds: float = 0.0
    spare_error: str = ""
    checks: int = 0
    warnings: int = 0
    failures: int = 0
    check_seconds: float = 0.0
    drop_seconds: float = 0.0
    dropped: list[str] = field(default_factory=list)
    reaped: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)

    def freeze(self, worker_id: str) -> WorkerReport:
        values: dict[str, Any] = {
            f.name: tuple(v) if isinstance(v := getattr(self, f.name), list) else v for f in dataclasses.fields(self)
        }
        return WorkerReport(worker_id=worker_id, **values)
