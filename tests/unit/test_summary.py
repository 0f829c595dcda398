"""The ``concurrent-db`` terminal summary, rendered from typed worker reports."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from pytest_concurrent_db.report import WorkerReport
from pytest_concurrent_db.summary import write_summary
from pytest_concurrent_db.timings import timings_from_reports

TEMPLATE = "cdb_tpl_0123abcd"
URL = "postgresql://postgres@127.0.0.1:5432/app"
METHOD = "CREATE DATABASE TEMPLATE, STRATEGY WAL_LOG"


@dataclass
class FakeTerminal:
    """Records what the summary writes, as (text, markup) pairs."""

    sections: list[str] = field(default_factory=list)
    lines: list[tuple[str, dict[str, bool]]] = field(default_factory=list)

    def section(self, title: str) -> None:
        self.sections.append(title)

    def write_line(self, line: str, **markup: bool) -> None:
        self.lines.append((line, markup))

    @property
    def texts(self) -> list[str]:
        return [text for text, _ in self.lines]

    def starting(self, prefix: str) -> list[str]:
        return [text for text in self.texts if text.startswith(prefix)]


def worker(worker_id: str, **fields: Any) -> WorkerReport:
    """A worker that cloned the template in 10 ms and dropped its clone."""
    defaults: dict[str, Any] = {
        "template": TEMPLATE,
        "backend": "postgresql",
        "url": URL,
        "clone": f"cdb_{worker_id}",
        "clone_seconds": 0.010,
        "method": METHOD,
        "dropped": [f"cdb_{worker_id}"],
    }
    return WorkerReport(worker_id=worker_id, **{**defaults, **fields})


def summarize(reports: list[WorkerReport], **options: Any) -> FakeTerminal:
    terminal = FakeTerminal()
    defaults: dict[str, Any] = {
        "run_id": "1f2e3d4c",
        "isolation": "default",
        "swept": (),
        "keep": False,
        "default_backend": "postgresql",
    }
    write_summary(terminal, reports, **{**defaults, **options})
    return terminal


def test_template_built_by_one_worker_and_cloned_by_both() -> None:
    reports = [
        worker(
            "gw0",
            template_built=True,
            template_seconds=1.234,
            lock_wait_seconds=0.01,
            fingerprint_seconds=0.002,
            clone_seconds=0.012,
            checks=3,
            check_seconds=0.02,
            drop_seconds=0.03,
        ),
        worker(
            "gw1",
            lock_wait_seconds=1.3,
            fingerprint_seconds=0.002,
            clone_seconds=0.015,
            checks=2,
            failures=1,
            warnings=1,
        ),
    ]
    terminal = summarize(reports)
    assert terminal.sections == ["concurrent-db"]
    assert [" ".join(text.split()) for text, _ in terminal.lines] == [
        "run: 1f2e3d4c",
        f"backend: postgresql url: {URL}",
        f"template: {TEMPLATE} built by gw0 in 1.23s; longest lock wait 1.30s",
        f"clones ({METHOD}): gw0 0.012s, gw1 0.015s",
        "phase n min median max",
        "fingerprint 2 0.002 0.002 0.002",
        "lock wait 2 0.010 0.655 1.300",
        "template build 1 1.234 1.234 1.234",
        "template reuse (no migrations) 1 0.000 0.000 0.000",
        "clone per worker 2 0.012 0.013 0.015",
        "isolation check 2 0.000 0.010 0.020",
        "drop 2 0.000 0.015 0.030",
        "teardown (slowest, gw0): isolation checks 0.02s, drop 0.03s",
        "gw0: ok — built the template, 3 checks, dropped",
        "gw1: isolation failed in 1 test — 2 checks, dropped",
        "isolation (default): 5 checks, 1 failed, 1 warned",
        "dropped: 2 databases (0 left by crashed workers)",
    ]
    assert dict(terminal.lines)["gw1: isolation failed in 1 test — 2 checks, dropped"] == {"red": True}


def test_phase_rows_are_the_timings_rows() -> None:
    """One source: the summary prints the rows ``--concurrent-db-timings`` prints."""
    reports = [
        worker("gw0", template_built=True, template_seconds=2.5, fingerprint_seconds=0.004, lock_wait_seconds=0.01),
        worker("gw1", fingerprint_seconds=0.003, lock_wait_seconds=2.4, reuse_seconds=0.002, clone_seconds=0.03),
    ]
    terminal = summarize(reports)
    table = timings_from_reports(reports, "1f2e3d4c").lines()
    rows = table[2:]  # after the run and template lines
    start = terminal.texts.index(rows[0])
    assert terminal.texts[start : start + len(rows)] == rows


def test_verbose_shows_each_workers_seconds_under_its_phase() -> None:
    reports = [worker("gw0", clone_seconds=0.011), worker("gw1", clone_seconds=0.019)]
    terminal = summarize(reports, verbose=True)
    texts = [" ".join(text.split()) for text in terminal.texts]
    at = texts.index("clone per worker 2 0.011 0.015 0.019")
    assert texts[at + 1 : at + 3] == ["gw0 0.011", "gw1 0.019"]
    assert "gw0 0.011" not in [" ".join(t.split()) for t in summarize(reports).texts]


def test_verdicts_warned_kept_and_failed_setup() -> None:
    reports = [worker("gw0", warnings=2, checks=4), worker("gw1", clone="", dropped=[]), worker("gw2", dropped=[])]
    terminal = summarize(reports, keep=True)
    assert terminal.starting("gw") == [
        "gw0: ok, 2 warned — 4 checks, kept",
        "gw1: setup failed (no clone)",
        "gw2: ok — 0 checks, kept",
    ]


def test_template_reused_from_an_earlier_run() -> None:
    terminal = summarize([worker("gw0"), worker("gw1")])
    assert terminal.starting("template:") == [
        f"template: {TEMPLATE} reused (inputs unchanged); longest lock wait 0.00s"
    ]


def test_template_built_incrementally() -> None:
    base = "cdb_app_tpl_0123456789ab"
    built = worker("gw1", template_built=True, template_seconds=2.1, built_from=base, migrations=1)
    assert summarize([worker("gw0"), built]).starting("template:") == [
        f"template: {TEMPLATE} built incrementally from {base} (+1 migration) in 2.10s by gw1; longest lock wait 0.00s"
    ]
    alembic = worker("gw0", template_built=True, template_seconds=0.5, built_from=base, steps_added=2)
    assert "(+2 migrations)" in summarize([alembic]).starting("template:")[0]


def test_an_incremental_build_given_up_says_why() -> None:
    why = "the incremental build from cdb_app_tpl_0123456789ab failed (OperationalError: boom)"
    built = worker("gw0", template_built=True, template_seconds=9.0, incremental_error=why)
    assert summarize([built]).starting("template:") == [
        f"template: {TEMPLATE} built by gw0 in 9.00s (in full: {why}); longest lock wait 0.00s"
    ]


def test_setup_failed_before_any_clone() -> None:
    report = worker("gw0", clone="", method="", clone_seconds=0.0, dropped=[])
    terminal = summarize([report], isolation="strict")
    assert terminal.texts == [
        "run: 1f2e3d4c",
        f"backend: postgresql  url: {URL}",
        f"template: {TEMPLATE} not ready (setup failed); longest lock wait 0.00s",
        "clones: ",
        *timings_from_reports([report], "r").templates[0].rows(),
        "gw0: setup failed (no clone)",
        "isolation (strict): 0 checks, 0 failed, 0 warned",
        "dropped: 0 databases (0 left by crashed workers)",
    ]


def test_no_reports_still_says_what_was_dropped() -> None:
    terminal = summarize([], swept=("cdb_dead_gw1",))
    assert terminal.texts == ["run: 1f2e3d4c", "dropped: 1 databases (1 left by crashed workers)"]


def test_backend_and_url_defaults_for_a_plain_sqlite_run() -> None:
    report = WorkerReport(worker_id="main", template=TEMPLATE, clone="x.sqlite3", method="file copy")
    terminal = summarize([report], default_backend="sqlite")
    assert terminal.starting("backend:") == ["backend: sqlite  url: sqlite (default)"]
    assert terminal.starting("clones") == ["clones (file copy): main 0.000s"]
    assert terminal.starting("main:") == ["main: ok — 0 checks, not dropped"]


def test_spares_made_claimed_and_failed() -> None:
    spare_method = "RENAME spare"
    reports = [
        worker("gw0", spare_claimed=True, method=spare_method, spares_made=1, spare_seconds=0.5),
        worker("gw1", spares_made=2, spare_seconds=0.75, spare_wait_seconds=0.2),
        worker("gw2", spare_error="disk full"),
    ]
    terminal = summarize(reports)
    # the method is how this run copied; the claimed spare is marked
    assert terminal.starting("clones") == [f"clones ({METHOD}): gw0 0.010s (spare), gw1 0.010s, gw2 0.010s"]
    assert terminal.starting("spares for the next run:") == [
        "spares for the next run: 3 made in the background while the tests ran (gw0 0.50s, gw1 0.75s)"
    ]
    assert " ".join(next(t for t in terminal.texts if "clone per worker" in t).split()) == (
        "clone per worker (spare taken over) 3 0.010 0.010 0.010"
    )
    assert [line for line in terminal.lines if line[1]] == [
        ("spares: gw2 could not make one: disk full", {"yellow": True})
    ]
    assert terminal.starting("teardown") == [
        "teardown (slowest, gw1): isolation checks 0.00s, waiting for its spare 0.20s, drop 0.00s"
    ]
    # the error follows the template's other lines
    assert (
        terminal.texts.index("spares: gw2 could not make one: disk full")
        == terminal.texts.index(terminal.starting("teardown")[0]) + 1
    )


def test_only_claimed_spares_show_their_method() -> None:
    terminal = summarize([worker("gw0", spare_claimed=True, method="RENAME spare")])
    assert terminal.starting("clones") == ["clones (RENAME spare): gw0 0.010s (spare)"]


def test_no_spare_lines_without_spares() -> None:
    terminal = summarize([worker("gw0"), worker("gw1")])
    assert not terminal.starting("spares")
    assert all(not markup for _, markup in terminal.lines)


def test_fresh_databases_waits_and_a_dry_pool() -> None:
    terminal = summarize(
        [
            worker("gw0", fresh_used=3, fresh_made=5, fresh_pool=2, fresh_waits=[0.2, 0.001, 0.002]),
            worker("gw1", fresh_used=2, fresh_made=3, fresh_pool=2, fresh_waits=[0.3, 0.004], fresh_dry=1),
        ]
    )
    assert terminal.starting("fresh clones") == [
        "fresh clones: 5 used, 8 made (pool 2 per worker); waited for the pool "
        "min 1.0 ms, median 4.0 ms, max 300.0 ms; pool ran dry 1 time"
    ]


def test_fresh_databases_kept_and_a_pool_that_never_ran_dry() -> None:
    terminal = summarize(
        [worker("gw0", fresh_used=1, fresh_made=3, fresh_pool=2, fresh_waits=[0.5], fresh_kept=["cdb_x_f1"])]
    )
    (line,) = terminal.starting("fresh clones")
    assert line.endswith("pool never ran dry; kept for failed tests: 1 (cdb_x_f1)")


def test_no_fresh_line_without_fresh_databases_and_an_error_in_yellow() -> None:
    assert not summarize([worker("gw0")]).starting("fresh")
    terminal = summarize([worker("gw0", fresh_used=1, fresh_waits=[0.1], fresh_error="disk full")])
    assert ("fresh clones: gw0: disk full", {"yellow": True}) in terminal.lines


def test_teardown_phases_are_rows_of_the_table() -> None:
    reports = [
        worker("gw0", checks=1, check_seconds=0.30, drop_seconds=0.10),
        worker("gw1", checks=1, check_seconds=0.05, drop_seconds=0.50),
        worker("gw2", checks=1, check_seconds=0.10, drop_seconds=0.10, spares_made=1, spare_wait_seconds=0.05),
        worker("gw3", dropped=[]),  # nothing checked, nothing dropped: in neither row
    ]
    assert reports[1].teardown_seconds == pytest.approx(0.55)
    terminal = summarize(reports)
    rows = [" ".join(t.split()) for t in terminal.texts if t.startswith("  ")]
    assert "isolation check 3 0.050 0.100 0.300" in rows
    assert "drop 3 0.100 0.100 0.500" in rows


def test_teardown_line_names_the_slowest_worker() -> None:
    reports = [
        worker("gw0", check_seconds=0.30, drop_seconds=0.10),
        worker("gw1", check_seconds=0.05, drop_seconds=0.50),
        worker("gw2", check_seconds=0.10, drop_seconds=0.10, spares_made=1, spare_wait_seconds=0.05),
        # no clone: its (long) numbers are not a teardown of a database
        worker("gw3", clone="", drop_seconds=9.0),
    ]
    assert reports[1].teardown_seconds == pytest.approx(0.55)
    terminal = summarize(reports)
    assert terminal.starting("teardown") == ["teardown (slowest, gw1): isolation checks 0.05s, drop 0.50s"]


def test_kept_databases() -> None:
    terminal = summarize([worker("gw0", dropped=[]), worker("gw1", dropped=[])], keep=True)
    assert terminal.texts[-1] == "dropped: 0 databases (0 left by crashed workers) (kept: --concurrent-db-keep)"


def test_swept_databases_are_counted_with_the_dropped_ones() -> None:
    terminal = summarize([worker("gw0"), worker("gw1")], swept=("cdb_run_gw2", "cdb_run_gw3"))
    assert terminal.texts[-1] == "dropped: 4 databases (2 left by crashed workers)"


def test_reaped_and_pruned_follow_the_dropped_line() -> None:
    reports = [
        worker("gw0", reaped=["cdb_dead1_gw0", "cdb_dead1_gw1"], pruned=["cdb_tpl_old1"]),
        worker("gw1", reaped=["cdb_dead2_gw0"]),
    ]
    terminal = summarize(reports)
    assert terminal.texts[-3:] == [
        "dropped: 2 databases (0 left by crashed workers)",
        "reaped: 3 databases left by dead runs (cdb_dead1_gw0, cdb_dead1_gw1, cdb_dead2_gw0)",
        "pruned: 1 out-of-date templates (cdb_tpl_old1)",
    ]


def test_reaped_and_pruned_show_five_names_then_an_ellipsis() -> None:
    reaped = tuple(f"cdb_dead_gw{i}" for i in range(7))
    pruned = tuple(f"cdb_tpl_old{i}" for i in range(6))
    terminal = summarize([worker("gw0", reaped=reaped, pruned=pruned)])
    assert terminal.starting("reaped:") == [
        "reaped: 7 databases left by dead runs "
        "(cdb_dead_gw0, cdb_dead_gw1, cdb_dead_gw2, cdb_dead_gw3, cdb_dead_gw4, …)"
    ]
    assert terminal.starting("pruned:") == [
        "pruned: 6 out-of-date templates (cdb_tpl_old0, cdb_tpl_old1, cdb_tpl_old2, cdb_tpl_old3, cdb_tpl_old4, …)"
    ]


def test_a_name_reported_twice_is_counted_once() -> None:
    terminal = summarize([worker("gw0", pruned=["cdb_tpl_old"]), worker("gw1", pruned=["cdb_tpl_old"])])
    assert terminal.starting("pruned:") == ["pruned: 1 out-of-date templates (cdb_tpl_old)"]


def test_no_reaped_or_pruned_lines_when_nothing_was() -> None:
    terminal = summarize([worker("gw0"), worker("gw1")])
    assert not terminal.starting("reaped")
    assert not terminal.starting("pruned")
    assert not terminal.starting("not dropped")


def test_each_database_not_dropped_gets_a_yellow_line_once() -> None:
    """Workers and the controller may all fail on the same dead run's database."""
    stuck = "cdb_dead_gw0: cannot drop MySQL database 'cdb_dead_gw0': its tables are gone but …"
    reports = [worker("gw0", not_dropped=[stuck]), worker("gw1", not_dropped=[stuck])]
    terminal = summarize(reports, not_dropped=[stuck, "cdb_tpl_old: OperationalError: (2013, 'Lost connection')"])
    assert [(text, markup) for text, markup in terminal.lines if text.startswith("not dropped")] == [
        (f"not dropped: {stuck}", {"yellow": True}),
        ("not dropped: cdb_tpl_old: OperationalError: (2013, 'Lost connection')", {"yellow": True}),
    ]


def test_each_template_gets_its_own_block() -> None:
    """Django with two databases: every worker reports one clone per template."""
    other_url = "mysql://root@127.0.0.1:3306/other"
    other = {"template": "cdb_tpl_other", "backend": "mysql", "url": other_url, "method": "mysqldump"}
    reports = [
        worker("gw0", template_built=True, template_seconds=2.0),
        worker("gw0", **other, clone="cdb_other_gw0", clone_seconds=0.2),
        worker("gw1", clone_seconds=0.02),
        worker("gw1", **other, template_built=True, template_seconds=3.0, clone="cdb_other_gw1", clone_seconds=0.3),
    ]
    terminal = summarize(reports)
    assert terminal.texts == [
        "run: 1f2e3d4c",
        f"backend: postgresql  url: {URL}",
        f"template: {TEMPLATE} built by gw0 in 2.00s; longest lock wait 0.00s",
        f"clones ({METHOD}): gw0 0.010s, gw1 0.020s",
        *timings_from_reports(reports, "r").templates[0].rows(),
        "teardown (slowest, gw0): isolation checks 0.00s, drop 0.00s",
        f"backend: mysql  url: {other_url}",
        "template: cdb_tpl_other built by gw1 in 3.00s; longest lock wait 0.00s",
        "clones (mysqldump): gw0 0.200s, gw1 0.300s",
        *timings_from_reports(reports, "r").templates[1].rows(),
        "teardown (slowest, gw0): isolation checks 0.00s, drop 0.00s",
        "gw0: ok — built the template, 0 checks, dropped",
        "gw1: ok — built the template, 0 checks, dropped",
        "isolation (default): 0 checks, 0 failed, 0 warned",
        "dropped: 4 databases (0 left by crashed workers)",
    ]


def test_workers_are_listed_in_numeric_order() -> None:
    reports = [worker(worker_id) for worker_id in ("gw10", "gw2", "gw1")]
    terminal = summarize(reports)
    assert terminal.starting("gw") == [
        "gw1: ok — 0 checks, dropped",
        "gw2: ok — 0 checks, dropped",
        "gw10: ok — 0 checks, dropped",
    ]


# -- the wire format -----------------------------------------------------------------------------------------


def test_report_survives_the_wire() -> None:
    report = worker(
        "gw3",
        template_built=True,
        spare_error="boom",
        reaped=["cdb_dead_gw0"],
        pruned=["cdb_tpl_old"],
        check_seconds=0.25,
    )
    wire = report.to_wire()
    assert wire["dropped"] == ["cdb_gw3"]  # plain builtins for xdist
    assert WorkerReport.from_wire(wire) == report


def test_from_wire_ignores_keys_of_another_version() -> None:
    report = worker("gw0")
    assert WorkerReport.from_wire({**report.to_wire(), "from_the_future": 1}) == report


def test_a_report_filled_while_working_renders() -> None:
    report = WorkerReport(worker_id="gw0", template=TEMPLATE, backend="postgresql", url=URL, clone="cdb_gw0")
    report.method = METHOD
    report.dropped.append("cdb_gw0")
    assert report == replace(worker("gw0", clone_seconds=0.0), dropped=["cdb_gw0"])
    assert summarize([report]).starting("clones") == [f"clones ({METHOD}): gw0 0.000s"]
    assert summarize([report]).starting("gw0") == ["gw0: ok — 0 checks, dropped"]


def test_spares_handed_on_and_one_that_was_not() -> None:
    reports = [
        worker("gw0", spare_claimed=True, dropped=[], handed_on="cdb_gw0", hand_on_seconds=0.12, check_seconds=0.01),
        worker(
            "gw1",
            spare_claimed=True,
            hand_on_seconds=0.10,
            hand_on_skipped="its rows or schema changed",
            drop_seconds=0.40,
        ),
    ]
    terminal = summarize(reports)
    assert terminal.starting("spares for the next run:") == [
        "spares for the next run: 1 handed on untouched (checked equal to the template: gw0 0.12s)"
    ]
    assert [line for line in terminal.lines if line[1] == {"yellow": True}] == [
        ("spares: gw1 dropped its database instead of handing it on: its rows or schema changed", {"yellow": True})
    ]
    assert terminal.starting("teardown") == [
        "teardown (slowest, gw1): isolation checks 0.00s, checking to hand on 0.10s, drop 0.40s"
    ]
    assert "gw0: ok — 0 checks, handed on" in terminal.texts
    rows = [" ".join(t.split()) for t in terminal.texts if t.startswith("  ")]
    assert "hand on 2 0.100 0.110 0.120" in rows
    assert "drop 1 0.400 0.400 0.400" in rows
    alone = summarize([reports[0]])
    assert alone.starting("teardown") == ["teardown (slowest, gw0): isolation checks 0.01s, handing on 0.12s"]


def test_a_spare_dropped_unchecked_says_why_on_its_worker_line() -> None:
    why = "reading its state took 1.30s when it was copied (more than 1s and than the copy, 0.28s)"
    report = worker("gw0", spare_claimed=True, hand_on_unchecked=why)
    terminal = summarize([report])
    assert terminal.starting("gw0") == [f"gw0: ok — 0 checks, dropped (not checked to hand on: {why})"]
    assert not [line for line in terminal.lines if line[1] == {"yellow": True}]  # a rule, not a fault
    assert summarize([report], keep=True).starting("gw0") == ["gw0: ok — 0 checks, kept"]


def test_spares_handed_on_and_made_share_one_line() -> None:
    reports = [
        worker("gw0", dropped=[], handed_on="cdb_gw0", hand_on_seconds=0.12),
        worker("gw1", spares_made=1, spare_seconds=0.75),
    ]
    assert summarize(reports).starting("spares for the next run:") == [
        "spares for the next run: 1 handed on untouched (checked equal to the template: gw0 0.12s); "
        "1 made in the background while the tests ran (gw1 0.75s)"
    ]
