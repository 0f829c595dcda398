"""Spares: pristine clones made in the background during one run and taken over by the
same worker id of the next run, on the server backends (SQLite copies in milliseconds)."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pytest_concurrent_db import spares as spares_module
from pytest_concurrent_db.backends import Marker, load_backend
from pytest_concurrent_db.recycle import Pristine
from pytest_concurrent_db.template import schema_populator
from pytest_concurrent_db.url import DatabaseURL
from pytest_concurrent_db.worker import WorkerDatabases
from tests.conftest import drop_ours, worker_databases

from .conftest import SPARE, Project, summary

#: Each test writes which database it is on and what it sees; one test writes a row, so a
#: spare that had been used would show it (the tests run in one worker's database in order).
TESTS = """
    import os, pytest

    @pytest.mark.parametrize("i", range(4))
    def test_record(concurrent_db, concurrent_db_connection, worker_id, i):
        cur = concurrent_db_connection.cursor()
        cur.execute("SELECT COUNT(*) FROM book")
        books = cur.fetchone()[0]
        cur.execute("SELECT COUNT(*) FROM author")
        authors = cur.fetchone()[0]
        cur.execute("INSERT INTO book (author_id, title, worker) VALUES (1, 'b', PARAM)", (worker_id,))
        concurrent_db_connection.commit()
        with open(os.path.join(os.environ["RESULTS_DIR"], f"{worker_id}-{i}"), "w") as fh:
            fh.write(f"{concurrent_db.name} {books} {authors}")
"""


@pytest.fixture(params=["postgresql", "mysql"])
def server_project(request: pytest.FixtureRequest, pytester: pytest.Pytester) -> Iterator[Project]:
    url: DatabaseURL = request.getfixturevalue(f"{request.param}_url")
    base = "sp" + secrets.token_hex(3)
    project = Project(pytester, url.backend, url.with_database(base), base)
    yield project
    project.drop_all()


def _records(results: Path) -> dict[str, set[str]]:
    """worker -> names of the databases its tests ran on; every test saw no earlier book."""
    out: dict[str, set[str]] = {}
    books: dict[str, list[int]] = {}
    for path in results.iterdir():
        name, seen_books, authors = path.read_text().split()
        worker = path.name.split("-")[0]
        out.setdefault(worker, set()).add(name)
        books.setdefault(worker, []).append(int(seen_books))
        assert authors == "1"  # the seed row, nothing else
    for worker, counts in books.items():
        assert sorted(counts) == list(range(len(counts))), f"{worker} did not start from a pristine copy"
    return out


def _clear(results: Path) -> None:
    for path in results.iterdir():
        path.unlink()


def test_next_run_takes_over_the_spares_made_while_the_tests_ran(server_project: Project, results_dir: Path) -> None:
    project = server_project
    project.write(tests=TESTS)
    first = project.run("-n", "2", "--concurrent-db-spares", "1")  # auto: only for slow copies
    first.assert_outcomes(passed=4)
    text = summary(first)
    assert "spares for the next run: 2 made in the background" in text
    teardown = r"teardown \(slowest, gw[01]\): isolation checks [0-9.]+s, waiting for its spare [0-9.]+s, drop"
    assert re.search(teardown, text), text
    assert "(spare)" not in text
    spares = project.spares()
    assert sorted(m.worker_id for m in spares.values()) == ["gw0", "gw1"]
    assert all(m.kind == "spare" and m.state == "ready" and "_tpl_" in m.template for m in spares.values())
    assert project.clones() == []
    used_first = _records(results_dir)

    _clear(results_dir)
    second = project.run("-n", "2", "--concurrent-db-spares", "1")
    second.assert_outcomes(passed=4)
    text = summary(second)
    assert text.count("(spare)") == 2, text
    used = _records(results_dir)  # pristine: the first test of each worker saw no book
    for worker, names in used.items():
        assert len(names) == 1
        (name,) = names
        assert name in spares
        assert spares[name].worker_id == worker  # its own worker id's spare
        assert SPARE.search(name)
    assert not set().union(*used.values()) & set().union(*used_first.values())
    # the tests committed rows: the taken-over spares were dropped like clones, not handed on,
    # and this run made no spare (the next one copies, and makes its spares in the background)
    # (a spare whose state took long to read when it was copied, on a busy machine, is dropped
    # unchecked: its worker line says so)
    checked = text.count("dropped its database instead of handing it on: its rows or schema changed")
    unchecked = len(re.findall(r"^gw[01]: ok — \d+ checks, dropped \(not checked to hand on: ", text, re.M))
    assert (checked, checked + unchecked) in {(2, 2), (1, 2)}, text
    assert "dropped: 2 databases" in text
    assert project.spares() == {}
    assert project.clones() == []
    _clear(results_dir)
    third = project.run("-n", "2", "--concurrent-db-spares", "1")
    third.assert_outcomes(passed=4)
    assert "(spare)" not in summary(third)
    assert "spares for the next run: 2 made in the background" in summary(third)
    _records(results_dir)  # pristine copies
    assert len(project.spares()) == 2


#: Each test inserts a book and rolls it back: the database is untouched but for the counters
#: (a rolled-back insert does not give its id back).  It writes the database's name, the books
#: it saw, the id its book got and what the author's name is.
UNTOUCHED = """
    import os, pytest

    LAST_ID = {"postgresql": "SELECT lastval()", "mysql": "SELECT LAST_INSERT_ID()"}

    @pytest.mark.parametrize("i", range(4))
    def test_roll_back(concurrent_db, concurrent_db_connection, worker_id, i):
        cur = concurrent_db_connection.cursor()
        cur.execute("SELECT COUNT(*) FROM book")
        books = cur.fetchone()[0]
        cur.execute("SELECT name FROM author")
        (name,) = cur.fetchall()[0]
        cur.execute("INSERT INTO book (author_id, title, worker) VALUES (1, 'b', PARAM)", (worker_id,))
        cur.execute(LAST_ID[concurrent_db.backend])
        book_id = cur.fetchone()[0]
        concurrent_db_connection.rollback()
        CHANGE
        with open(os.path.join(os.environ["RESULTS_DIR"], f"{worker_id}-{i}"), "w") as fh:
            fh.write(f"{concurrent_db.name} {books} {book_id} {name}")
"""

#: what one test changes for good (committed): a value in place (the row counts stay the same),
#: or the schema (a new table)
CHANGES = {
    "update": """if i == 0:
            cur.execute("UPDATE author SET name = 'changed'")
            concurrent_db_connection.commit()""",
    "table": """if i == 0:
            cur.execute("CREATE TABLE extra (x INTEGER)")
            concurrent_db_connection.commit()""",
}


def _untouched(results: Path) -> dict[str, set[str]]:
    """worker -> databases its tests ran on; each began from the template: no book, the seed
    author, and the books' ids counting from 1 again in every database."""
    names: dict[str, set[str]] = {}
    ids: dict[str, list[int]] = {}
    for path in results.iterdir():
        name, books, book_id, author = path.read_text().split()
        worker = path.name.split("-")[0]
        names.setdefault(worker, set()).add(name)
        ids.setdefault(worker, []).append(int(book_id))
        assert books == "0"
        if author != "seed":
            assert author == "changed"  # only after the one test that changed it
    for worker, seen in ids.items():
        assert sorted(seen) == list(range(1, len(seen) + 1)), f"{worker}: the ids did not start again at 1: {seen}"
    return names


def test_an_untouched_database_is_handed_on_as_the_next_runs_spare(server_project: Project, results_dir: Path) -> None:
    """Tests that only roll back leave the database equal to the template but for the counters:
    it is checked, its counters set back, and kept as the next run's spare (no copy, no drop)."""
    project = server_project
    project.write(tests=UNTOUCHED.replace("CHANGE", "pass"))
    project.run("-n", "2", "--concurrent-db-spares", "1").assert_outcomes(passed=4)  # copies, makes spares
    _untouched(results_dir)
    spares = project.spares()
    assert len(spares) == 2
    assert all(m.pristine for m in spares.values())  # the state they had when just copied
    for _ in range(2):
        _clear(results_dir)
        result = project.run("-n", "2", "--concurrent-db-spares", "1", "--concurrent-db-timings")
        result.assert_outcomes(passed=4)
        text = summary(result)
        assert text.count("(spare)") == 2, text
        assert re.search(r"spares for the next run: 2 handed on untouched \(checked equal to the template: gw", text), (
            text
        )
        assert "made in the background" not in text
        assert "dropped: 0 databases" in text
        assert re.search(r"teardown \(slowest, gw[01]\): isolation checks [0-9.]+s, handing on [0-9.]+s$", text, re.M)
        assert re.search(r"^  hand on +2 ", result.stdout.str(), re.M)
        used = _untouched(results_dir)  # the ids start at 1 again: the counters were set back
        assert set().union(*used.values()) == set(spares)  # the same two databases, run after run
        after = project.spares()
        assert set(after) == set(spares)
        assert {m.worker_id for m in after.values()} == {"gw0", "gw1"}
        for name, marker in after.items():  # the state it had when copied (the time to read it is this run's)
            assert marker.state == "ready"
            kept, copied = Pristine.decode(marker.pristine), Pristine.decode(spares[name].pristine)
            assert kept is not None
            assert copied is not None
            assert (kept.digest, kept.counters) == (copied.digest, copied.counters)
        assert project.clones() == []


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_changed_database_is_dropped_not_handed_on(server_project: Project, results_dir: Path, change: str) -> None:
    """A committed change the row counts do not show (an update) or a new table: the database
    is dropped, and the next run starts from a copy of the template again."""
    project = server_project
    project.write(tests=UNTOUCHED.replace("CHANGE", CHANGES[change]))
    project.run("-n", "1", "--concurrent-db-spares", "1").assert_outcomes(passed=4)
    (made,) = project.spares()
    _clear(results_dir)
    result = project.run("-n", "1", "--concurrent-db-spares", "1")
    result.assert_outcomes(passed=4)
    text = summary(result)
    assert "(spare)" in text
    assert "spares: gw0 dropped its database instead of handing it on: its rows or schema changed" in text, text
    assert "dropped: 1 database" in text
    assert project.spares() == {}
    assert project.clones() == []
    _clear(results_dir)
    third = project.run("-n", "1", "--concurrent-db-spares", "1")
    third.assert_outcomes(passed=4)
    assert "(spare)" not in summary(third)
    (name,) = _untouched(results_dir)["gw0"]
    assert name != made


def test_a_spare_copied_by_another_version_is_dropped_without_counting_a_change(
    server_project: Project, results_dir: Path
) -> None:
    """A spare whose state was read another way (an older version: a digest without today's tag)
    is dropped with the reason, and handing on is not held back as it is after a change."""
    project = server_project
    project.write(tests=UNTOUCHED.replace("CHANGE", "pass"))
    project.run("-n", "1", "--concurrent-db-spares", "1").assert_outcomes(passed=4)
    ((name, marker),) = project.spares().items()
    copied = Pristine.decode(marker.pristine)
    assert copied is not None
    backend = load_backend(project.url)
    try:
        older = replace(copied, digest=copied.digest.partition(":")[2])
        backend.set_marker(name, replace(marker, pristine=older.encode()))
    finally:
        backend.close()
    _clear(results_dir)
    text = summary(project.run("-n", "1", "--concurrent-db-spares", "1"))
    assert "(spare)" in text
    assert (
        "spares: gw0 dropped its database instead of handing it on: its state was read by another version "
        "of pytest-concurrent-db when it was copied" in text
    ), text
    assert project.spares() == {}
    _clear(results_dir)
    assert "spares for the next run: 1 made in the background" in summary(
        project.run("-n", "1", "--concurrent-db-spares", "1")
    )
    _clear(results_dir)
    text = summary(project.run("-n", "1", "--concurrent-db-spares", "1"))
    assert "spares for the next run: 1 handed on untouched" in text, text  # no change was counted


def test_spares_zero_makes_and_takes_none(server_project: Project, results_dir: Path) -> None:
    project = server_project
    project.write(tests=TESTS)
    result = project.run("-n", "2", "--concurrent-db-spares", "0")
    result.assert_outcomes(passed=4)
    assert "spares for the next run" not in summary(result)
    assert project.spares() == {}
    _clear(results_dir)
    project.run("-n", "2", "--concurrent-db-spares", "1").assert_outcomes(passed=4)
    made = set(project.spares())
    assert len(made) == 2
    _clear(results_dir)
    result = project.run("-n", "2", "--concurrent-db-spares=0")
    assert "(spare)" not in summary(result)  # with 0 they are not taken over either
    assert set(project.spares()) == made


def test_sqlite_makes_no_spares(pytester: pytest.Pytester, results_dir: Path) -> None:
    project = Project(pytester, "sqlite", DatabaseURL(backend="sqlite", database=str(pytester.path / "t.db")), "t")
    project.write(tests=TESTS)
    for _ in range(2):
        result = project.run("-n", "2", "--concurrent-db-spares", "3")
        result.assert_outcomes(passed=4)
        assert "(spare)" not in summary(result)
        assert "spares for the next run" not in summary(result)
        _clear(results_dir)
    assert project.clones() == []


def test_spares_of_a_rebuilt_template_are_not_used_and_are_reaped(server_project: Project, results_dir: Path) -> None:
    project = server_project
    project.write(tests=TESTS, ini="concurrent_db_spares = 1\n")
    project.run("-n", "2").assert_outcomes(passed=4)
    old = set(project.spares())
    assert len(old) == 2
    _clear(results_dir)
    rebuilt = project.run("-n", "2", "--concurrent-db-rebuild")  # same template name, new build
    rebuilt.assert_outcomes(passed=4)
    assert "(spare)" not in summary(rebuilt)
    assert not set().union(*_records(results_dir).values()) & old
    _clear(results_dir)
    third = project.run("-n", "2")
    third.assert_outcomes(passed=4)
    assert summary(third).count("(spare)") == 2
    assert not set(project.spares()) & old  # the stale ones were reaped by the third run


def test_half_made_spare_of_a_dead_process_is_reaped(server_project: Project, results_dir: Path) -> None:
    project = server_project
    project.write(tests=TESTS)
    project.run("-n", "2", "--concurrent-db-spares", "0").assert_outcomes(passed=4)
    backend = load_backend(project.url)
    try:
        (template,) = [i for i in backend.list_databases(f"cdb_{project.base}_") if i.marker.kind == "template"]
        name = f"cdb_{project.base}_sp0a0b0c_gw0"
        backend.clone(
            template.name,
            name,
            Marker(kind="spare", run_id="deadbeef", worker_id="gw0", template=template.name, state="building"),
        )
    finally:
        backend.close()
    assert name in project.spares()
    _clear(results_dir)
    result = project.run("-n", "2", "--concurrent-db-spares", "1")
    result.assert_outcomes(passed=4)
    assert "(spare)" not in summary(result)
    assert name not in project.spares()


def test_cli_lists_and_prunes_spares(server_project: Project, results_dir: Path) -> None:
    project = server_project
    project.write(tests=TESTS)
    project.run("-n", "2", "--concurrent-db-spares", "1").assert_outcomes(passed=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCURRENT_DB")}

    def cli(*args: str) -> str:
        argv = [sys.executable, "-m", "pytest_concurrent_db", *args, "--url", project.url.render(hide_password=False)]
        return subprocess.run(argv, capture_output=True, text=True, env=env, check=True).stdout

    listed = cli("list")
    assert listed.count(" spare ") == 2, listed
    assert listed.count(" waiting ") == 2, listed
    pruned = cli("prune", "--yes")
    assert pruned.count("(spare,") == 2, pruned
    assert project.spares() == {}


@pytest.fixture(params=["postgresql", "mysql"])
def server_url(request: pytest.FixtureRequest) -> Iterator[DatabaseURL]:
    url: DatabaseURL = request.getfixturevalue(f"{request.param}_url")
    url = url.with_database("sa" + secrets.token_hex(3))
    yield url
    drop_ours(load_backend(url), f"cdb_{url.database}_")


def _worker(url: DatabaseURL, tmp_path: Path, run_id: str) -> WorkerDatabases:
    engine = worker_databases(url, run_id=run_id, worker_id="gw0", lock_dir=tmp_path / "locks", spares="auto")
    schema = tmp_path / "schema.sql"
    schema.write_text("CREATE TABLE t (id INTEGER PRIMARY KEY);\n")
    engine.ensure_template([schema_populator(schema)])
    return engine


def _one_run(engine: WorkerDatabases, *, change: bool = False) -> tuple[bool, int]:
    """What a worker does in one run: (took over a spare, spares made for the next run).
    ``change``: the tests commit a row."""
    try:
        database = engine.create_clone()
        if change:
            connection = database.connect()
            try:
                connection.cursor().execute("INSERT INTO t (id) VALUES (1)")
                connection.commit()
            finally:
                connection.close()
        engine.drop_clone()  # waits for the spares
        return engine.stats.spare_claimed, engine.stats.spares_made
    finally:
        engine.close()


def test_auto_hands_on_and_after_a_change_makes_spares_only_when_copies_are_slow(
    server_url: DatabaseURL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``auto`` makes one spare and then hands it on from run to run while the tests leave it
    untouched.  After a run whose tests changed it, the next three runs decide on the
    template's latest copies on this machine (the median of three), not on one: no spare while
    copies are faster than the backend's threshold, one once they are slower (a worker that took
    a spare over goes on making them while copies stay slow); then handing on is tried again."""
    thresholds = spares_module.SPARES_AUTO_MIN_SECONDS
    monkeypatch.setitem(thresholds, server_url.backend, 3600.0)  # every copy is "fast"
    assert _one_run(_worker(server_url, tmp_path, "run00001")) == (False, 1)
    engine = _worker(server_url, tmp_path, "run00002")
    assert _one_run(engine) == (True, 0)
    handed = engine.stats.handed_on
    assert handed
    engine = _worker(server_url, tmp_path, "run00003")
    assert _one_run(engine, change=True) == (True, 0)
    assert engine.stats.clone == handed
    assert engine.stats.handed_on == ""
    assert engine.stats.hand_on_skipped == "its rows or schema changed"
    assert engine.stats.dropped == [handed]
    assert _one_run(_worker(server_url, tmp_path, "run00004")) == (False, 0)  # fast copies: no spare
    backend = load_backend(server_url)
    try:
        assert backend.list_databases(f"cdb_{server_url.database}_sp") == []
    finally:
        backend.close()

    monkeypatch.setitem(thresholds, server_url.backend, 0.0)  # every copy is "slow"
    assert _one_run(_worker(server_url, tmp_path, "run00005")) == (False, 1)
    assert _one_run(_worker(server_url, tmp_path, "run00006")) == (True, 1)  # the chain goes on
    # three runs since the change: handing on is tried again, and works
    engine = _worker(server_url, tmp_path, "run00007")
    assert _one_run(engine) == (True, 0)
    assert engine.stats.handed_on == engine.stats.clone
