"""The janitor's decisions as pure functions: what is dead, what is doomed, what a prune drops."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_concurrent_db.backends.base import DatabaseInfo, Marker
from pytest_concurrent_db.janitor import (
    CLOCK_SKEW,
    ENDED_CREATOR_WAIT,
    RESTART_GRACE,
    Entry,
    ServerStart,
    entries,
    intent_wait,
    presumed_alive,
    prune_plan,
    ready_builds,
    reapable,
    sweepable,
    unchanged,
)
from pytest_concurrent_db.markers import build_id

RUN = "run00001"
OTHER = "run00002"
NOW = 1_000_000.0


def _marker(
    kind: str,
    *,
    run: str = OTHER,
    state: str = "ready",
    template: str = "",
    build: str = "",
    age: float = 0,
    host: str = "",
    pid: int = 0,
):
    return Marker(
        kind=kind,  # type: ignore[arg-type]
        run_id=run,
        worker_id="gw0",
        template=template,
        fingerprint=build,
        state=state,  # type: ignore[arg-type]
        created=NOW - age,
        host=host,
        pid=pid,
    )


def _entry(name: str, kind: str, *, state: str = "ready", live: bool = False, age: float = 0, template: str = ""):
    return Entry(name, kind, state, OTHER, "gw0", template, "", live, age, None)


# -- sweep: this run's crashed workers ---------------------------------------------------------
@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        (_marker("clone", run=RUN), True),
        (_marker("clone", run=RUN, state="kept"), False),  # --concurrent-db-keep
        (_marker("clone", run=OTHER), False),  # another run's: the reaper's business, not the sweep's
        (_marker("spare", run=RUN, state="building"), True),  # half-made by a killed worker
        (_marker("spare", run=RUN, state="ready"), False),  # made for the next run
        (_marker("template", run=RUN, state="building"), False),
        (_marker("template", run=RUN), False),
    ],
)
def test_sweep_takes_this_runs_clones_and_unfinished_spares_only(marker: Marker, expected: bool) -> None:
    assert sweepable(marker, RUN) is expected


# -- reap: what dead runs left --------------------------------------------------------------------
def test_ready_builds_are_the_ready_templates_with_their_build() -> None:
    ready = _marker("template", run="a")
    infos = [
        DatabaseInfo("cdb_app_tpl_1", ready),
        DatabaseInfo("cdb_app_tpl_2", _marker("template", state="building")),
        DatabaseInfo("cdb_app_x_gw0", _marker("clone")),
        DatabaseInfo("cdb_app_tpl_3", None),  # not ours
    ]
    assert ready_builds(infos) == {("cdb_app_tpl_1", build_id(ready))}


@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        (_marker("clone", run=OTHER), True),
        (_marker("clone", run=OTHER, state="kept"), False),  # kept for debugging: only prune drops it
        (_marker("clone", run=RUN), False),  # our own run's: never reaped
        (_marker("template", state="building"), True),  # an abandoned build
        (_marker("template"), False),
        (_marker("spare", state="building"), True),
        (_marker("spare", template="cdb_app_tpl_1", build="b1"), False),  # of the current build
        (_marker("spare", template="cdb_app_tpl_1", build="b0"), True),  # of an older build under that name
        (_marker("spare", template="cdb_app_tpl_9", build="b1"), True),  # its template is gone
    ],
)
def test_reap_decisions(marker: Marker, expected: bool) -> None:
    assert reapable(marker, RUN, {("cdb_app_tpl_1", "b1")}) is expected


# -- a free lock after a server restart -------------------------------------------------------------
HERE, ELSEWHERE, LIVE_PID, DEAD_PID = "this-host", "other-host", 101, 202


def _start(up_for: float) -> ServerStart:
    """The server started ``up_for`` seconds before NOW, seen from HERE, where only LIVE_PID runs."""
    return ServerStart(NOW - up_for, now=NOW, host=HERE, pid_alive=lambda pid: pid == LIVE_PID)


@pytest.mark.parametrize(
    ("age", "up_for", "host", "pid", "expected"),
    [
        # made before the restart, by a process of this machine: its process decides, at any time
        (30, 10, HERE, LIVE_PID, True),
        (30, 10, HERE, DEAD_PID, False),
        (3600, 3000, HERE, LIVE_PID, True),
        # made before the restart elsewhere: presumed alive for the grace period only
        (30, 10, ELSEWHERE, LIVE_PID, True),
        (RESTART_GRACE + 30, RESTART_GRACE + 1, ELSEWHERE, LIVE_PID, False),
        (30, 10, "", 0, True),  # an old marker without host and pid
        # made after the server started: its lock was taken on this server, a free one means dead
        (10, 30, HERE, LIVE_PID, False),
        (10, 30, ELSEWHERE, 0, False),
        # within the clocks' disagreement of the start: presumed made before it
        (10, 10 + CLOCK_SKEW / 2, ELSEWHERE, 0, True),
    ],
)
def test_a_free_lock_after_a_restart(age: float, up_for: float, host: str, pid: int, expected: bool) -> None:
    marker = _marker("clone", age=age, host=host, pid=pid)
    assert presumed_alive(marker, _start(up_for)) is expected


def test_no_server_or_no_facts_means_no_restart() -> None:
    marker = _marker("clone", age=30, host=ELSEWHERE)
    assert presumed_alive(marker, None) is False
    assert presumed_alive(marker, ServerStart(None, now=NOW, host=HERE)) is False  # SQLite


def test_a_live_run_is_neither_reaped_nor_swept_right_after_a_restart() -> None:
    """Run B starting right after the server restarted must not drop run A's clones while A
    lives (every lock died with the restart), nor a spare or a build A was making; once A's
    process is gone, they are B's to reap."""
    start = _start(2)
    for kind, state in (("clone", "ready"), ("spare", "building"), ("template", "building")):
        alive = _marker(kind, state=state, age=60, host=HERE, pid=LIVE_PID)
        dead = _marker(kind, state=state, age=60, host=HERE, pid=DEAD_PID)
        assert not reapable(alive, RUN, set(), start)
        assert reapable(dead, RUN, set(), start)
    mine = _marker("clone", run=RUN, age=60, host=HERE, pid=LIVE_PID)
    assert not sweepable(mine, RUN, start)
    assert sweepable(_marker("clone", run=RUN, age=60, host=HERE, pid=DEAD_PID), RUN, start)


# -- inventory: who is alive ------------------------------------------------------------------------
def test_inventory_liveness_comes_from_locks_and_use() -> None:
    infos = [
        DatabaseInfo("cdb_app_tpl_used", _marker("template", age=50)),
        DatabaseInfo("cdb_app_tpl_idle", _marker("template", age=10)),
        DatabaseInfo("cdb_app_tpl_mine", _marker("template", age=5)),
        DatabaseInfo("cdb_app_tpl_build", _marker("template", state="building")),
        DatabaseInfo("cdb_app_tpl_gone", _marker("template", state="building")),
        DatabaseInfo("cdb_app_r1_gw0", _marker("clone", template="cdb_app_tpl_used")),
        DatabaseInfo("cdb_app_r2_gw0", _marker("clone", template="cdb_app_tpl_idle")),
        DatabaseInfo("cdb_app_other", None),
    ]
    found = {
        e.name: e
        for e in entries(
            infos,
            live_clones={"cdb_app_r1_gw0"},
            live_builds={"cdb_app_tpl_build"},
            current_template="cdb_app_tpl_mine",
            now=NOW,
        )
    }
    assert "cdb_app_other" not in found  # no marker: not ours, not listed
    live = {name for name, e in found.items() if e.live}
    assert live == {"cdb_app_tpl_used", "cdb_app_tpl_mine", "cdb_app_tpl_build", "cdb_app_r1_gw0"}
    assert found["cdb_app_tpl_used"].age_seconds == 50


# -- prune: what may go ------------------------------------------------------------------------------
def _templates(*ages: float, base: str = "cdb_app", live: frozenset[float] = frozenset()) -> list[Entry]:
    return [_entry(f"{base}_tpl_{int(a)}", "template", age=a, live=a in live) for a in ages]


def test_prune_keeps_the_newest_n_per_project() -> None:
    inventory = _templates(1, 2, 3, 4)
    doomed = prune_plan(inventory, keep=2, base_prefix="cdb_app")
    assert sorted(e.name for e in doomed) == ["cdb_app_tpl_3", "cdb_app_tpl_4"]
    assert prune_plan(inventory, keep=4, base_prefix="cdb_app") == []
    assert len(prune_plan(inventory, keep=0, base_prefix="cdb_app")) == 4


def test_prune_never_drops_a_live_or_the_current_template() -> None:
    inventory = _templates(1, 2, 3, 4, live=frozenset({4.0}))
    doomed = prune_plan(inventory, keep=0, base_prefix="cdb_app", current_template="cdb_app_tpl_1")
    assert sorted(e.name for e in doomed) == ["cdb_app_tpl_2", "cdb_app_tpl_3"]


def test_prune_after_a_build_touches_only_this_projects_templates() -> None:
    inventory = _templates(1, 2, 3) + _templates(1, 2, 3, base="cdb_other")
    doomed = prune_plan(inventory, keep=1, base_prefix="cdb_app")
    assert sorted(e.name for e in doomed) == ["cdb_app_tpl_2", "cdb_app_tpl_3"]
    everything = prune_plan(inventory, keep=1, base_prefix="cdb_app", everything=True)
    assert sorted(e.name for e in everything) == [
        "cdb_app_tpl_2",
        "cdb_app_tpl_3",
        "cdb_other_tpl_2",
        "cdb_other_tpl_3",
    ]


def test_prune_takes_the_spares_of_dropped_templates_with_them() -> None:
    inventory = [
        *_templates(1, 2),
        _entry("cdb_app_spa_gw0", "spare", template="cdb_app_tpl_2"),
        _entry("cdb_app_spb_gw0", "spare", template="cdb_app_tpl_1"),
        _entry("cdb_app_spc_gw0", "spare", template="cdb_app_tpl_2", live=True),  # being made or taken
    ]
    doomed = {e.name for e in prune_plan(inventory, keep=1, base_prefix="cdb_app")}
    assert doomed == {"cdb_app_tpl_2", "cdb_app_spa_gw0"}


def test_only_the_cli_prune_drops_dead_clones_kept_clones_and_abandoned_builds() -> None:
    inventory = [
        _entry("cdb_app_r1_gw0", "clone"),
        _entry("cdb_app_r2_gw0", "clone", state="kept"),
        _entry("cdb_app_r3_gw0", "clone", live=True),
        _entry("cdb_app_tpl_9", "template", state="building"),
        _entry("cdb_app_tpl_8", "template", state="building", live=True),
        _entry("cdb_app_spd_gw0", "spare", state="building"),
    ]
    assert prune_plan(inventory, keep=2, base_prefix="cdb_app") == []
    doomed = {e.name for e in prune_plan(inventory, keep=2, base_prefix="cdb_app", everything=True)}
    assert doomed == {"cdb_app_r1_gw0", "cdb_app_r2_gw0", "cdb_app_tpl_9", "cdb_app_spd_gw0"}


def test_a_prune_drops_only_what_is_still_as_its_inventory_listed_it() -> None:
    """Read again under its lock, a database a prune doomed may have changed: a spare taken
    over by a worker, an abandoned build finished, a clone kept; or it is gone."""
    still = unchanged(_entry("cdb_app_spd_gw0", "spare", state="building"))
    assert still(_marker("spare", state="building"))
    assert not still(_marker("spare", state="ready"))  # finished: the next run's
    assert not still(_marker("clone", state="ready"))  # taken over by a worker
    assert not still(_marker("spare", run=RUN, state="building"))  # another run's, under the same name
    assert not still(None)  # gone


@pytest.mark.parametrize(
    ("run", "host", "pid", "expected"),
    [
        (RUN, HERE, LIVE_PID, 3.0),  # this run's own: the caller's wait
        (RUN, HERE, DEAD_PID, ENDED_CREATOR_WAIT),  # a worker of this run killed a moment ago
        (OTHER, HERE, DEAD_PID, ENDED_CREATOR_WAIT),  # its process ended here: its session ends soon
        (OTHER, HERE, LIVE_PID, 0.0),  # its creator runs on
        (OTHER, ELSEWHERE, DEAD_PID, 0.0),  # another machine's: nothing known of its process
        (OTHER, "", 0, 0.0),  # an old intent without host and pid
    ],
)
def test_how_long_an_intent_s_lock_is_waited_for(run: str, host: str, pid: int, expected: float) -> None:
    """A killed run's spare maker may still have its CREATE DATABASE running on the server: the
    next run waits for it (in the controller's background reap) instead of leaving it unmarked."""
    assert intent_wait(_marker("spare", run=run, host=host, pid=pid), RUN, 3.0, _start(10)) == expected


def test_one_reap_covers_every_database_name_on_a_server(tmp_path: Path) -> None:
    """The Django controller and runner reap a server once, however many test databases are on it."""
    from pytest_concurrent_db.paths import Directories
    from pytest_concurrent_db.site import Site
    from pytest_concurrent_db.url import parse_url
    from pytest_concurrent_db.worker import server_of

    dirs = Directories(templates=tmp_path / "t", clones=tmp_path / "c", locks=tmp_path / "l")

    def server(url: str) -> tuple[str, str]:
        return server_of(Site(parse_url(url), dirs))

    assert server("postgresql://u@db:5432/app") == server("postgresql://u@db:5432/other")
    assert server("postgresql://u@db:5432/app") != server("postgresql://v@db:5432/app")  # sees other databases
    assert server("postgresql://u@db:5432/app") != server("postgresql://u@db:5433/app")
    assert server("mysql://root@db/app") != server("postgresql://root@db/app")
    assert server(f"sqlite:///{tmp_path}/a.db") == server(f"sqlite:///{tmp_path}/b.db")  # one template directory
