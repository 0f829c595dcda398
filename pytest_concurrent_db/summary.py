"""The ``concurrent-db`` section of the terminal summary, rendered from typed worker reports.

The controller collects one :class:`~.report.WorkerReport` per process and template and
hands them to :func:`write_summary`; each kind of line has a small function of its own
that returns its text (or nothing, when the line does not apply).  The phase table is
:meth:`.timings.TemplateTimings.rows`, the very rows ``--concurrent-db-timings`` prints:
one source for both.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Protocol

from .report import WorkerReport
from .snapshot import summary_lines as snapshot_lines
from .timings import timings_from_reports

__all__ = ["Terminal", "write_summary"]

#: names shown in the ``reaped:`` and ``pruned:`` lines before the rest is elided
MAX_NAMES = 5


class Terminal(Protocol):
    """What the summary needs of pytest's ``TerminalReporter``."""

    def section(self, title: str) -> None: ...

    def write_line(self, line: str, **markup: bool) -> None: ...


def write_summary(
    tr: Terminal,
    reports: Sequence[WorkerReport],
    *,
    run_id: str,
    isolation: str,
    swept: Sequence[str],
    keep: bool,
    default_backend: str,
    reaped: Sequence[str] = (),
    not_dropped: Sequence[str] = (),
    verbose: bool = False,
) -> None:
    """Write the ``concurrent-db`` section: one block per template (its phase table, the
    same rows as ``--concurrent-db-timings``, with each worker's seconds when ``verbose``),
    a verdict line per worker, then the run's totals.

    ``swept`` are the databases of crashed workers the controller dropped at the end of
    the run; ``reaped`` those of dead runs it dropped at the start (workers report their
    own), ``not_dropped`` what it failed to drop then (``"name: why"``); ``default_backend``
    names the backend of reports that do not carry one.
    """
    tr.section("concurrent-db")
    tr.write_line(f"run: {run_id}")
    ordered_all = sorted(reports, key=_worker_order)
    timings = {t.template: t for t in timings_from_reports(ordered_all, run_id).templates}
    for template, group in _by_template(reports).items():
        ordered = sorted(group, key=_worker_order)
        tr.write_line(_backend_line(ordered[0], default_backend))
        tr.write_line(_template_line(template, ordered))
        tr.write_line(_clones_line(ordered))
        if template in timings:
            for row in timings[template].rows(workers=verbose):
                tr.write_line(row)
        for line in (_spares_line(ordered), _fresh_line(ordered), _teardown_line(ordered)):
            if line is not None:
                tr.write_line(line)
        for line in [*_spare_error_lines(ordered), *_fresh_error_lines(ordered)]:
            tr.write_line(line, yellow=True)
        for text, warning in snapshot_lines(ordered):
            tr.write_line(text, yellow=warning)
    for report in sorted(_by_worker(reports).values(), key=_worker_order):
        text, markup = _verdict_line(report, keep=keep)
        tr.write_line(text, **markup)
    if reports:
        tr.write_line(_isolation_line(reports, isolation))
    tr.write_line(_dropped_line(reports, swept, keep=keep))
    for line in (_reaped_line(reports, reaped), _pruned_line(reports)):
        if line is not None:
            tr.write_line(line)
    for line in _not_dropped_lines(reports, not_dropped):
        tr.write_line(line, yellow=True)


def _by_template(reports: Iterable[WorkerReport]) -> dict[str, list[WorkerReport]]:
    """Reports grouped by template, in the order each template first appears."""
    groups: dict[str, list[WorkerReport]] = {}
    for report in reports:
        groups.setdefault(report.template, []).append(report)
    return groups


def _worker_order(report: WorkerReport) -> tuple[int, str]:
    """Sort key putting ``gw2`` before ``gw10`` (and ``main``, without a number, first)."""
    digits = "".join(ch for ch in report.worker_id if ch.isdigit())
    return (int(digits) if digits else -1, report.worker_id)


def _backend_line(first: WorkerReport, default_backend: str) -> str:
    return f"backend: {first.backend or default_backend}  url: {first.url or 'sqlite (default)'}"


def _template_line(template: str, group: Sequence[WorkerReport]) -> str:
    builder = next((r for r in group if r.template_built), None)
    if builder is not None and builder.snapshot_restored:
        how = f"restored from a snapshot by {builder.worker_id} in {builder.template_seconds:.2f}s"
    elif builder is not None and builder.built_from:
        added = builder.migrations or builder.steps_added
        how = (
            f"built incrementally from {builder.built_from} (+{added} migration{'' if added == 1 else 's'}) "
            f"in {builder.template_seconds:.2f}s by {builder.worker_id}"
        )
    elif builder is not None:
        how = f"built by {builder.worker_id} in {builder.template_seconds:.2f}s"
        if builder.incremental_error:
            how += f" (in full: {builder.incremental_error})"
    elif any(r.clone for r in group):
        how = "reused (inputs unchanged)"
    else:
        how = "not ready (setup failed)"
    waited = max(r.lock_wait_seconds for r in group)
    return f"template: {template} {how}; longest lock wait {waited:.2f}s"


def _clones_line(ordered: Sequence[WorkerReport]) -> str:
    clones = ", ".join(
        f"{r.worker_id} {r.clone_seconds:.3f}s{' (spare)' if r.spare_claimed else ''}" for r in ordered if r.clone
    )
    method = _clone_method(ordered)
    return f"clones ({method}): {clones}" if method else f"clones: {clones}"


def _clone_method(ordered: Sequence[WorkerReport]) -> str:
    """How this run copied the template; a claimed spare's method only when nothing was copied."""
    copied = [r.method for r in ordered if r.method and not r.spare_claimed]
    claimed = [r.method for r in ordered if r.method]
    return (copied or claimed or [""])[0]


def _spares_line(ordered: Sequence[WorkerReport]) -> str | None:
    made = [r for r in ordered if r.spares_made]
    handed = [r for r in ordered if r.handed_on]
    parts = []
    if handed:
        each = ", ".join(f"{r.worker_id} {r.hand_on_seconds:.2f}s" for r in handed)
        parts.append(f"{len(handed)} handed on untouched (checked equal to the template: {each})")
    if made:
        each = ", ".join(f"{r.worker_id} {r.spare_seconds:.2f}s" for r in made)
        total = sum(r.spares_made for r in made)
        parts.append(f"{total} made in the background while the tests ran ({each})")
    return f"spares for the next run: {'; '.join(parts)}" if parts else None


def _fresh_line(ordered: Sequence[WorkerReport]) -> str | None:
    """Fresh databases: how many, how long tests waited for the pool, whether it ran dry."""
    used = sum(r.fresh_used for r in ordered)
    if not used:
        return None
    waits = sorted(w for r in ordered for w in r.fresh_waits)
    median = statistics.median(waits) if waits else 0.0
    low, high = (waits[0], waits[-1]) if waits else (0.0, 0.0)
    pool = max(r.fresh_pool for r in ordered)
    dry = sum(r.fresh_dry for r in ordered)
    made = sum(r.fresh_made for r in ordered)
    ran = f"pool ran dry {dry} time{'s' if dry != 1 else ''}" if dry else "pool never ran dry"
    kept = [name for r in ordered for name in r.fresh_kept]
    line = (
        f"fresh clones: {used} used, {made} made (pool {pool} per worker); waited for the pool "
        f"min {low * 1000:.1f} ms, median {median * 1000:.1f} ms, max {high * 1000:.1f} ms; {ran}"
    )
    if kept:
        line += f"; kept for failed tests: {len(kept)} ({_some(kept)})"
    return line


def _fresh_error_lines(ordered: Sequence[WorkerReport]) -> list[str]:
    return [f"fresh clones: {r.worker_id}: {r.fresh_error}" for r in ordered if r.fresh_error]


def _teardown_line(ordered: Sequence[WorkerReport]) -> str | None:
    """The teardown phases of the worker whose teardown took longest."""
    timed = [r for r in ordered if r.clone]
    if not timed:
        return None
    slowest = max(timed, key=lambda r: r.teardown_seconds)
    parts = [f"isolation checks {slowest.check_seconds:.2f}s"]
    if slowest.spares_made:
        parts.append(f"waiting for its spare {slowest.spare_wait_seconds:.2f}s")
    if slowest.hand_on_seconds:
        parts.append(f"{'handing on' if slowest.handed_on else 'checking to hand on'} {slowest.hand_on_seconds:.2f}s")
    if not slowest.handed_on:
        parts.append(f"drop {slowest.drop_seconds:.2f}s")
    return f"teardown (slowest, {slowest.worker_id}): {', '.join(parts)}"


def _by_worker(reports: Iterable[WorkerReport]) -> dict[str, WorkerReport]:
    """One report per worker, its templates' numbers added up (a Django worker has one per
    test database)."""
    out: dict[str, WorkerReport] = {}
    for report in reports:
        seen = out.get(report.worker_id)
        if seen is None:
            out[report.worker_id] = replace(report, dropped=list(report.dropped))
            continue
        seen.checks += report.checks
        seen.failures += report.failures
        seen.warnings += report.warnings
        seen.dropped.extend(report.dropped)
        seen.template_built = seen.template_built or report.template_built
        seen.clone = seen.clone if seen.clone and report.clone else ""
    return out


def _verdict_line(report: WorkerReport, *, keep: bool) -> tuple[str, dict[str, bool]]:
    """``gw1: ok — 12 checks, dropped`` (or what went wrong), with its colour."""
    parts = []
    if report.template_built:
        parts.append("built the template")
    if not report.clone:
        verdict, markup = "setup failed (no clone)", {"red": True}
    elif report.failures:
        verdict, markup = (
            f"isolation failed in {report.failures} test{'s' if report.failures != 1 else ''}",
            {"red": True},
        )
    elif report.warnings:
        verdict, markup = f"ok, {report.warnings} warned", {"yellow": True}
    else:
        verdict, markup = "ok", {}
    if report.clone:
        parts.append(f"{report.checks} check{'' if report.checks == 1 else 's'}")
        parts.append(
            "kept" if keep else "dropped" if report.dropped else "handed on" if report.handed_on else "not dropped"
        )
        if report.hand_on_unchecked and not keep:
            parts[-1] += f" (not checked to hand on: {report.hand_on_unchecked})"
    return f"{report.worker_id}: {verdict} — {', '.join(parts)}" if parts else f"{report.worker_id}: {verdict}", markup


def _spare_error_lines(ordered: Sequence[WorkerReport]) -> list[str]:
    made = [f"spares: {r.worker_id} could not make one: {r.spare_error}" for r in ordered if r.spare_error]
    handed = [
        f"spares: {r.worker_id} dropped its database instead of handing it on: {r.hand_on_skipped}"
        for r in ordered
        if r.hand_on_skipped
    ]
    return made + handed


def _isolation_line(reports: Sequence[WorkerReport], isolation: str) -> str:
    checks = sum(r.checks for r in reports)
    failures = sum(r.failures for r in reports)
    warned = sum(r.warnings for r in reports)
    return f"isolation ({isolation}): {checks} checks, {failures} failed, {warned} warned"


def _dropped_line(reports: Sequence[WorkerReport], swept: Sequence[str], *, keep: bool) -> str:
    dropped = sum(len(r.dropped) for r in reports) + len(swept)
    kept = " (kept: --concurrent-db-keep)" if keep else ""
    return f"dropped: {dropped} databases ({len(swept)} left by crashed workers){kept}"


def _reaped_line(reports: Sequence[WorkerReport], more: Sequence[str] = ()) -> str | None:
    reaped = _unique([*(name for r in reports for name in r.reaped), *more])
    if not reaped:
        return None
    return f"reaped: {len(reaped)} databases left by dead runs ({_some(reaped)})"


def _not_dropped_lines(reports: Sequence[WorkerReport], more: Sequence[str] = ()) -> list[str]:
    """One line per database the run meant to drop (a dead run's, an old template) and could not."""
    return [f"not dropped: {each}" for each in _unique([*(e for r in reports for e in r.not_dropped), *more])]


def _pruned_line(reports: Sequence[WorkerReport]) -> str | None:
    pruned = _unique(name for r in reports for name in r.pruned)
    if not pruned:
        return None
    return f"pruned: {len(pruned)} out-of-date templates ({_some(pruned)})"


def _unique(names: Iterable[str]) -> list[str]:
    """Names in first-seen order, each once."""
    return list(dict.fromkeys(names))


def _some(names: Sequence[str]) -> str:
    """Up to :data:`MAX_NAMES` names, then an ellipsis for the rest."""
    shown = ", ".join(names[:MAX_NAMES])
    return f"{shown}, …" if len(names) > MAX_NAMES else shown
