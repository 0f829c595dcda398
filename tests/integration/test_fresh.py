"""Fresh databases per test (``concurrent_db_fresh``, ``@pytest.mark.concurrent_db(fresh=True)``)
from each worker's warm pool, in real ``pytest -n 2`` runs on every backend."""

from __future__ import annotations

import re
import secrets
import textwrap
import time
from pathlib import Path

import pytest

from pytest_concurrent_db.backends import load_backend
from pytest_concurrent_db.template import schema_populator
from pytest_concurrent_db.url import DatabaseURL
from tests.conftest import drop_ours, require_module, worker_databases

from .conftest import SCHEMAS, Project, summary

#: Every test records the fresh database it got and what it saw there, then changes it:
#: a row, a table (DDL) and a row committed by a thread of its own.
TESTS = """
    import os, threading, pytest

    def _exists(conn, table):
        cur = conn.cursor()
        try:
            cur.execute(f"SELECT COUNT(*) FROM {table}")
            cur.fetchone()
            return True
        except Exception:
            return False
        finally:
            conn.rollback()

    def _record(name, conn, worker_id, i, kind):
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*) FROM book")
        books = cur.fetchone()[0]
        cur.execute("SELECT COUNT(*) FROM author")
        authors = cur.fetchone()[0]
        conn.rollback()
        scratch = _exists(conn, "scratch")
        with open(os.path.join(os.environ["RESULTS_DIR"], f"{kind}-{worker_id}-{i}"), "w") as fh:
            fh.write(f"{name} {books} {authors} {scratch}")

    def _dirty(database, conn, worker_id):
        cur = conn.cursor()
        cur.execute("INSERT INTO book (author_id, title, worker) VALUES (1, 'b', PARAM)", (worker_id,))
        cur.execute("CREATE TABLE scratch (x INTEGER)")
        conn.commit()

        def commit_in_thread():
            other = database.connect()
            other.cursor().execute("INSERT INTO author (name) VALUES ('from a thread')")
            other.commit()
            other.close()

        thread = threading.Thread(target=commit_in_thread)
        thread.start()
        thread.join()
        # and a thread connection left open: dropped with the database
        database.thread_connection().cursor().execute("SELECT 1")

    @pytest.mark.parametrize("i", range(3))
    def test_fixture(concurrent_db, concurrent_db_fresh, worker_id, i):
        assert concurrent_db_fresh.name != concurrent_db.name
        assert concurrent_db_fresh.template_name == concurrent_db.template_name
        conn = concurrent_db_fresh.connect()
        try:
            _record(concurrent_db_fresh.name, conn, worker_id, i, "fixture")
            _dirty(concurrent_db_fresh, conn, worker_id)
        finally:
            conn.close()

    @pytest.mark.concurrent_db(fresh=True)
    @pytest.mark.parametrize("i", range(3))
    def test_marker(concurrent_db, concurrent_db_fresh, concurrent_db_connection, worker_id, i):
        _record(concurrent_db_fresh.name, concurrent_db_connection, worker_id, i, "marker")
        _dirty(concurrent_db_fresh, concurrent_db_connection, worker_id)

    @pytest.mark.parametrize("i", range(2))
    def test_zz_worker_database_untouched(concurrent_db, concurrent_db_connection, worker_id, i):
        _record(concurrent_db.name, concurrent_db_connection, worker_id, i, "worker")
"""


def _records(results: Path, kind: str) -> list[tuple[str, int, int, bool]]:
    out = []
    for path in sorted(results.glob(f"{kind}-*")):
        name, books, authors, scratch = path.read_text().split()
        out.append((name, int(books), int(authors), scratch == "True"))
    return out


def test_every_fresh_test_gets_a_pristine_database_of_its_own(project: Project, results_dir: Path) -> None:
    project.write(tests=TESTS)
    result = project.run("-n", "2", "--concurrent-db-pool", "2")
    result.assert_outcomes(passed=8)
    fresh = _records(results_dir, "fixture") + _records(results_dir, "marker")
    assert len(fresh) == 6
    # the template's rows (one author), none of another test's, and no table another test made
    assert {(books, authors, scratch) for _, books, authors, scratch in fresh} == {(0, 1, False)}
    names = [name for name, *_ in fresh]
    assert len(set(names)) == 6
    worker = _records(results_dir, "worker")
    assert {(books, authors, scratch) for _, books, authors, scratch in worker} == {(0, 1, False)}
    assert not {name for name, *_ in worker} & set(names)
    text = summary(result)
    match = re.search(r"fresh clones: 6 used, (\d+) made \(pool 2 per worker\); waited for the pool min", text)
    assert match, text
    assert int(match.group(1)) >= 6  # refilled while the tests ran (each worker started with 2)
    assert project.clones() == []  # used and unused pool clones dropped


def test_the_pool_is_lazy_and_refilled(project: Project, results_dir: Path) -> None:
    project.write(
        tests="""
        import os, time, pytest
        from pytest_concurrent_db.state import get_state

        def test_plain(concurrent_db_connection):
            pass

        @pytest.mark.parametrize("i", range(3))
        def test_fresh(request, concurrent_db_fresh, i):
            pool = get_state(request.config).databases.fresh_pool()
            deadline = time.monotonic() + 60
            while pool.ready < 2 and time.monotonic() < deadline:  # refilled while this test runs
                time.sleep(0.05)
            with open(os.path.join(os.environ["RESULTS_DIR"], f"ready-{i}"), "w") as fh:
                fh.write(f"{pool.ready} {concurrent_db_fresh.name}")
        """
    )
    plain = project.run("-n", "2", "-k", "plain")
    plain.assert_outcomes(passed=1)
    assert "fresh clones" not in summary(plain)  # no pool without a fresh test
    assert project.clones() == []
    result = project.run("-p", "no:xdist", "--concurrent-db-pool", "2")
    result.assert_outcomes(passed=4)
    seen = [(results_dir / f"ready-{i}").read_text().split() for i in range(3)]
    assert [ready for ready, _ in seen] == ["2", "2", "2"]  # full again after every take
    assert len({name for _, name in seen}) == 3
    text = summary(result)
    # three used, two ready at the end; only the first take waited for a copy
    assert "fresh clones: 3 used, 5 made (pool 2 per worker)" in text, text
    assert "pool never ran dry" in text
    assert project.clones() == []


def test_keep_failed_keeps_exactly_the_failed_tests_database(project: Project, results_dir: Path) -> None:
    project.write(
        tests="""
        import os

        def test_ok(concurrent_db_fresh):
            pass

        def test_bad(concurrent_db_fresh):
            conn = concurrent_db_fresh.connect()
            conn.cursor().execute("INSERT INTO author (name) VALUES ('evidence')")
            conn.commit()
            conn.close()
            with open(os.path.join(os.environ["RESULTS_DIR"], "bad"), "w") as fh:
                fh.write(concurrent_db_fresh.name)
            assert False, "look at the database"

        def test_ok_too(concurrent_db_fresh):
            pass
        """
    )
    result = project.run("-n", "2", "--concurrent-db-keep-failed")
    result.assert_outcomes(passed=2, failed=1)
    bad = (results_dir / "bad").read_text()
    result.stdout.fnmatch_lines(
        [
            "*- concurrent-db -*",
            f"fresh database kept (--concurrent-db-keep-failed): {bad}",
            "  url: *" + bad + "*",
        ]
    )
    assert project.clones() == [bad]
    assert "kept for failed tests: 1" in summary(result)
    backend = project._backend()
    try:
        marker = backend.get_marker(bad)
        assert marker is not None
        assert marker.state == "kept"
        conn = backend.connect(bad)
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*) FROM author")
        assert cur.fetchone()[0] == 2  # the state the test left
        conn.close()
    finally:
        backend.close()
    # the next run leaves it alone; prune removes it
    project.run("-n", "2", "-k", "ok").assert_outcomes(passed=2)
    assert project.clones() == [bad]
    from pytest_concurrent_db.__main__ import main

    url = project.url.render(hide_password=False)
    args = ["prune", "--yes", "--url", url, "--dir", str(project.pytester.path / ".pytest_cache/d/concurrent_db")]
    assert main(args) == 0
    assert project.clones() == []


def test_without_keep_failed_a_failed_tests_database_is_dropped(project: Project) -> None:
    project.write(tests="def test_bad(concurrent_db_fresh):\n    assert False\n")
    result = project.run("-n", "2")
    result.assert_outcomes(failed=1)
    assert "fresh database kept" not in result.stdout.str()
    assert project.clones() == []


def test_a_worker_killed_mid_test_leaves_nothing(project: Project, results_dir: Path) -> None:
    project.write(
        tests="""
        import os, signal

        def test_killed(concurrent_db_fresh):
            with open(os.path.join(os.environ["RESULTS_DIR"], "killed"), "w") as fh:
                fh.write(concurrent_db_fresh.name)
            os.kill(os.getpid(), signal.SIGKILL)

        def test_other(concurrent_db_fresh):
            pass
        """
    )
    result = project.run("-n", "2")
    assert result.parseoutcomes().get("failed") == 1
    killed = (results_dir / "killed").read_text()
    assert killed not in project.clones()
    project.run("-n", "2", "-k", "other").assert_outcomes(passed=1)
    assert project.clones() == []


@pytest.mark.parametrize("backend_url", ["sqlite"], indirect=True)  # checked once
@pytest.mark.parametrize(
    ("args", "marker", "message"),
    [
        (["--concurrent-db-pool", "-1"], "", "--concurrent-db-pool must be a whole number >= 0, not '-1'"),
        (["--concurrent-db-keep-failed"], "", None),
        ([], "@pytest.mark.concurrent_db(fresh='maybe')", "fresh=...) must be True or False, not 'maybe'"),
    ],
)
def test_bad_input_is_one_line(
    project: Project, args: list[str], marker: str, message: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.write(tests=f"import pytest\n\n{marker}\ndef test_one(concurrent_db_connection):\n    pass\n")
    result = project.run("-n", "2", *args)
    text = result.stdout.str() + result.stderr.str()
    if message is None:
        result.assert_outcomes(passed=1)
        return
    assert message in text
    assert "Traceback" not in text


@pytest.mark.parametrize("backend_url", ["sqlite"], indirect=True)  # checked once
def test_environment_sets_the_pool(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONCURRENT_DB_POOL", "3")
    project.write(tests="def test_one(concurrent_db_fresh):\n    pass\n")
    result = project.run("-p", "no:xdist")
    result.assert_outcomes(passed=1)
    assert "(pool 3 per worker)" in summary(result)


def test_marker_points_the_sqlalchemy_session_at_the_fresh_database(project: Project) -> None:
    require_module("sqlalchemy")
    project.write(
        tests="""
        import pytest
        from sqlalchemy import text

        def _seen(session):
            return session.execute(text("SELECT COUNT(*) FROM author")).scalar_one()

        @pytest.mark.concurrent_db(fresh=True)
        @pytest.mark.parametrize("i", range(3))
        def test_fresh_session(concurrent_db, concurrent_db_fresh, concurrent_db_session, i):
            url = concurrent_db_session.get_bind().engine.url
            assert concurrent_db_fresh.name in url.database and concurrent_db_fresh.name != concurrent_db.name
            assert _seen(concurrent_db_session) == 1
            concurrent_db_session.execute(text("INSERT INTO author (name) VALUES ('x')"))
            concurrent_db_session.commit()

        def test_zz_back_on_the_worker_database(concurrent_db, concurrent_db_session):
            url = concurrent_db_session.get_bind().engine.url
            assert concurrent_db.name in url.database
            assert _seen(concurrent_db_session) == 1
        """
    )
    result = project.run("-p", "no:xdist")
    result.assert_outcomes(passed=4)
    assert "fresh clones: 3 used" in summary(result)
    assert project.clones() == []


@pytest.mark.parametrize("backend_url", ["postgresql", "mysql"], indirect=True)  # list reads a server
def test_list_shows_the_pool_clones_of_a_live_run(project: Project, results_dir: Path) -> None:
    url = project.url.render(hide_password=False)
    project.write(
        tests=f"""
        import os, time
        from pytest_concurrent_db.__main__ import main
        from pytest_concurrent_db.state import get_state

        def test_listed(request, concurrent_db_fresh, capsys):
            pool = get_state(request.config).databases.fresh_pool()
            deadline = time.monotonic() + 60
            while pool.ready < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert main(["list", "--url", {url!r}]) == 0
            with open(os.path.join(os.environ["RESULTS_DIR"], "list"), "w") as fh:
                fh.write(concurrent_db_fresh.name + "\\n" + capsys.readouterr().out)
        """
    )
    project.run("-p", "no:xdist", "--concurrent-db-spares", "0").assert_outcomes(passed=1)
    name, *table = (results_dir / "list").read_text().splitlines()
    rows = [line.split() for line in table if line.startswith(f"cdb_{project.base}_") and "_tpl_" not in line]
    assert name in {row[0] for row in rows}
    assert len(rows) == 4  # the worker's clone, the test's, and two ready in the pool: all live clones
    assert {row[1] for row in rows} == {"clone"}
    assert project.clones() == []


def test_the_pool_engine_makes_hands_out_drops_and_keeps(backend_url: DatabaseURL, tmp_path: Path) -> None:
    """FreshPool without pytest: lazy, refilled to its size, used clones dropped, kept ones kept."""
    base = "pe" + secrets.token_hex(3)
    url = backend_url.with_database(str(tmp_path / f"{base}.db") if backend_url.backend == "sqlite" else base)
    databases = worker_databases(url, run_id=secrets.token_hex(4), worker_id="gw0", lock_dir=tmp_path)
    databases.pool_size = 2
    try:
        databases.ensure_template([schema_populator(_schema(tmp_path, backend_url.backend))])
        pool = databases.fresh_pool()
        assert pool.ready == 0  # nothing made before the first take
        first = pool.take()
        deadline = time.monotonic() + 60
        while pool.ready < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pool.ready == 2
        second = pool.take()
        assert first != second
        pool.release(first)
        pool.keep(second)
        databases.close_pool()
        names = {i.name: i.marker for i in databases.backend.list_databases(f"cdb_{base}_")}
        assert [n for n in names if "_tpl_" not in n] == [second]  # used and unused ones dropped
        marker = names[second]
        assert marker is not None
        assert (marker.kind, marker.state) == ("clone", "kept")
        stats = databases.stats
        assert (stats.fresh_used, stats.fresh_pool, stats.fresh_kept) == (2, 2, [second])
        assert stats.fresh_made in (3, 4)  # the refill after the second take may not have begun
        assert stats.fresh_dry == 0
        assert not stats.fresh_error
    finally:
        databases.close()
        drop_ours(load_backend(url, template_dir=tmp_path, clone_dir=tmp_path), f"cdb_{base}_")


def _schema(directory: Path, backend: str) -> Path:
    path = directory / "schema.sql"
    path.write_text(textwrap.dedent(SCHEMAS[backend]))
    return path
