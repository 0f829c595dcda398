"""Where the seconds went: a per-phase table (``--concurrent-db-timings``) and its JSON form.

Built from the typed per-process reports (:class:`~.report.WorkerReport`) that the pytest
plugin collects from its xdist workers and the ``manage.py test`` runner keeps for its
clones, one section per template:

========================  ==================================================================
fingerprint               hashing the template's inputs (Django: every migration file)
lock wait                 waiting for the template lock (another process building it)
template build / reuse    building it (with the migrations ``migrate`` applied) or finding
                          it ready
clone per worker          copying the template (or taking over a spare)
isolation check           the isolation checks of each worker, summed
hand on                   comparing a worker's database with its template, to keep it as
                          the next run's spare if the tests left it untouched
drop                      dropping each worker's clone
========================  ==================================================================

Each row gives how many processes took part and the min / median / max seconds;
the JSON form (``--concurrent-db-timings=timings.json``) adds every process's value.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .report import WorkerReport

if TYPE_CHECKING:
    from .summary import Terminal

__all__ = ["Phase", "TemplateTimings", "Timings", "json_path", "timings_from_reports", "write_timings"]

#: The version of the JSON document, bumped when a key changes meaning.
JSON_VERSION = 1


@dataclass(frozen=True)
class Phase:
    """One row: a phase and the seconds each process spent in it."""

    name: str
    samples: tuple[tuple[str, float], ...]  # (worker id, seconds)
    note: str = ""

    @property
    def seconds(self) -> list[float]:
        return [s for _, s in self.samples]

    @property
    def label(self) -> str:
        return f"{self.name} ({self.note})" if self.note else self.name

    def to_json(self) -> dict[str, Any]:
        values = self.seconds
        return {
            "phase": self.name,
            "note": self.note,
            "n": len(values),
            "min": min(values),
            "median": statistics.median(values),
            "max": max(values),
            "total": sum(values),
            "workers": dict(self.samples),
        }


@dataclass(frozen=True)
class TemplateTimings:
    """The phases of one template's databases in this run."""

    template: str
    backend: str
    built: bool
    built_by: str
    migrations: int
    phases: tuple[Phase, ...]
    #: the template an incremental build started from ("" for a full build or a reuse)
    built_from: str = ""

    def rows(self, width: int = 0, *, workers: bool = False) -> list[str]:
        """The phase table (a head, then a row per phase: n, min, median, max seconds);
        ``workers``: each process's seconds under its phase.  The terminal summary and
        ``--concurrent-db-timings`` both print these rows."""
        width = width or max([len(p.label) for p in self.phases] + [24]) + 2
        out = [f"{'  phase':<{width + 2}}{'n':>4}{'min':>9}{'median':>9}{'max':>9}"]
        for phase in self.phases:
            values = phase.seconds
            out.append(
                f"  {phase.label:<{width}}{len(values):>4}{min(values):>9.3f}"
                f"{statistics.median(values):>9.3f}{max(values):>9.3f}"
            )
            if workers:
                out.extend(f"    {worker:<{width - 2}}{'':>4}{seconds:>9.3f}" for worker, seconds in phase.samples)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "template": self.template,
            "backend": self.backend,
            "built": self.built,
            "built_by": self.built_by,
            "migrations": self.migrations,
            "built_from": self.built_from,
            "phases": [p.to_json() for p in self.phases],
        }


@dataclass(frozen=True)
class Timings:
    """Every template's phases in one run."""

    run_id: str
    templates: tuple[TemplateTimings, ...]

    def to_json(self) -> dict[str, Any]:
        return {"version": JSON_VERSION, "run_id": self.run_id, "templates": [t.to_json() for t in self.templates]}

    def lines(self) -> list[str]:
        """The table, one line per phase under a line per template."""
        width = max([len(p.label) for t in self.templates for p in t.phases] + [24]) + 2
        out = [f"run {self.run_id} (seconds)"]
        for template in self.templates:
            out.append(f"{template.template} ({template.backend})")
            out.extend(template.rows(width))
        if not self.templates:
            out.append("no template was used")
        return out


def timings_from_reports(reports: Sequence[WorkerReport], run_id: str) -> Timings:
    """The timings of ``reports`` (one per process and template), grouped by template in
    the order each first appears.  Reports without a template (setup failed) are left out."""
    groups: dict[str, list[WorkerReport]] = {}
    for report in reports:
        if report.template:
            groups.setdefault(report.template, []).append(report)
    return Timings(run_id, tuple(_template_timings(name, group) for name, group in groups.items()))


def _template_timings(name: str, group: list[WorkerReport]) -> TemplateTimings:
    # the processes that looked the template up (the runner's clone makers receive it instead)
    looked = [r for r in group if r.fingerprint_seconds > 0 or r.template_built]
    builders = [r for r in group if r.template_built]
    migrations = sum(r.migrations for r in builders)
    cloned = [r for r in group if r.clone]
    phases = [
        _phase("fingerprint", looked, "fingerprint_seconds"),
        _phase("lock wait", looked, "lock_wait_seconds"),
        _phase(
            "template build",
            builders,
            "template_seconds",
            note=f"{migrations} migration{'' if migrations == 1 else 's'} applied" if migrations else "",
        ),
        _phase("template reuse", [r for r in looked if not r.template_built], "reuse_seconds", note="no migrations"),
        _phase("clone per worker", cloned, "clone_seconds", note="spare taken over" if _spares(cloned) else ""),
        _phase("isolation check", [r for r in cloned if r.checks], "check_seconds"),
        _phase("hand on", [r for r in group if r.hand_on_seconds], "hand_on_seconds"),
        _phase("drop", [r for r in group if r.dropped], "drop_seconds"),
    ]
    return TemplateTimings(
        template=name,
        backend=group[0].backend,
        built=bool(builders),
        built_by=builders[0].worker_id if builders else "",
        migrations=migrations,
        built_from=builders[0].built_from if builders else "",
        phases=tuple(p for p in phases if p is not None),
    )


def _phase(name: str, reports: Sequence[WorkerReport], attribute: str, note: str = "") -> Phase | None:
    if not reports:
        return None
    return Phase(name, tuple((r.worker_id, float(getattr(r, attribute))) for r in reports), note)


def _spares(cloned: Sequence[WorkerReport]) -> bool:
    return any(r.spare_claimed for r in cloned)


def json_path(value: object) -> Path | None:
    """The JSON file of the timings option's value (``True``: print only; a path: also write)."""
    return value if isinstance(value, Path) else None


def write_timings(terminal: Terminal, reports: Sequence[WorkerReport], run_id: str, option: object) -> Path | None:
    """Write the ``concurrent-db timings`` section; with a path as the option's value, also
    the JSON document there (returned).  A file that cannot be written is said, not raised."""
    timings = timings_from_reports(reports, run_id)
    terminal.section("concurrent-db timings")
    for line in timings.lines():
        terminal.write_line(line)
    path = json_path(option)
    if path is None:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(timings.to_json(), indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        terminal.write_line(f"concurrent-db: cannot write the timings to {path}: {exc.strerror or exc}", yellow=True)
        return None
    terminal.write_line(f"timings written to {path}")
    return path
