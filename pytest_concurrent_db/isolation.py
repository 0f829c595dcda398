"""The isolation check run after each test on the worker's connection.

Sharing problems (the connection is on another database, the clone's marker is not
this worker's, the template changed) are errors in every mode but ``warn``.
Leftovers (an open transaction) are warnings except in ``strict``.  ``strict`` also
compares per-table row counts with the clone's pristine state (committed rows
leaking from one test into the next) and reports other sessions on the clone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .backends import Backend

__all__ = ["Finding", "IsolationChecker"]

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Finding:
    severity: Severity
    message: str


@dataclass
class IsolationChecker:
    """Checks one worker's connection against its own clone and the template."""

    backend: Backend
    clone: str
    template: str
    run_id: str
    worker_id: str
    fingerprint: str
    mode: str = "default"
    _baseline: dict[str, int] | None = field(default=None, repr=False)

    def baseline(self, connection: Any) -> None:
        """Record the pristine row counts (strict mode) right after the clone is made."""
        if self.mode == "strict":
            self._baseline = self.backend.row_counts(connection)
            connection.rollback()

    def check(self, connection: Any) -> list[Finding]:
        """Everything wrong with ``connection`` now; the open transaction is rolled back."""
        if self.mode == "off":
            return []
        found: list[tuple[bool, str]] = []  # (is_sharing, message)
        current = self.backend.current_database(connection)
        if current != self.clone:
            kind = "the template" if current == self.template else f"database {current!r}"
            found.append((True, f"the connection is on {kind}, not on this worker's clone {self.clone!r}"))
        marker = self.backend.get_marker(self.clone)
        if (
            marker is None
            or marker.kind != "clone"
            or (marker.run_id, marker.worker_id) != (self.run_id, self.worker_id)
        ):
            owner = f"run {marker.run_id} worker {marker.worker_id}" if marker else "nobody (marker missing)"
            found.append((True, f"clone {self.clone!r} is marked as belonging to {owner}"))
        template = self.backend.get_marker(self.template)
        if template is None or template.state != "ready" or template.fingerprint != self.fingerprint:
            found.append((True, f"template {self.template!r} was changed or removed during the run"))
        if self.backend.in_transaction(connection):
            found.append((False, "the test left a transaction open on the connection (rolled back)"))
        connection.rollback()
        if self.mode == "strict":
            others = self.backend.other_sessions(self.clone, connection)
            if others:
                found.append((False, f"other sessions hold the clone: {', '.join(others)}"))
            if self._baseline is not None and not any(sharing for sharing, _ in found):
                counts = self.backend.row_counts(connection)
                connection.rollback()
                changed = sorted(
                    f"{t} ({self._baseline.get(t, 0)} -> {counts.get(t, 0)})"
                    for t in set(counts) | set(self._baseline)
                    if counts.get(t, 0) != self._baseline.get(t, 0)
                )
                if changed:
                    found.append((False, f"committed rows leaked into later tests: {', '.join(changed)}"))
        return [Finding(self._severity(sharing), message) for sharing, message in found]

    def _severity(self, sharing: bool) -> Severity:
        if self.mode == "strict":
            return "error"
        if self.mode == "warn":
            return "warning"
        return "error" if sharing else "warning"
