"""SQLAlchemy toolkit on every backend, in real ``pytest -n 2`` runs: the engine and session
fixtures, transactions with isolation levels and read-only mode, per-thread connections."""

from __future__ import annotations

import pytest

from tests.conftest import require_module

from .conftest import Project

require_module("sqlalchemy")

#: SQL reading the current transaction's isolation level back from the server
LEVEL = {
    "postgresql": "SELECT current_setting('transaction_isolation')",
    "mysql": "SELECT LOWER(REPLACE(@@session.tx_isolation, '-', ' '))",
    "sqlite": "SELECT 'serializable'",
}
#: SQL naming the server session of the connection
SESSION_ID = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()", "sqlite": None}
#: other sessions on the clone
OTHERS = {
    "postgresql": "SELECT COUNT(*) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid()",
    "mysql": "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = DATABASE() AND ID <> CONNECTION_ID()",
    "sqlite": None,
}

SESSION_TESTS = """
    import pytest
    from sqlalchemy import text

    def test_engine_is_on_the_clone_with_the_installed_driver(concurrent_db, concurrent_db_engine):
        driver = concurrent_db.sqlalchemy_url.split("://")[0]
        assert driver == {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql", "sqlite": "sqlite"}[
            concurrent_db.backend]
        assert concurrent_db_engine.url.render_as_string(hide_password=False) == concurrent_db.sqlalchemy_url
        assert concurrent_db_engine.pool.size() == 3            # concurrent_db_pool_max
        assert concurrent_db_engine.pool.checkedin() == 2       # concurrent_db_pool_min, opened up front

    @pytest.mark.parametrize("i", range(6))
    def test_code_that_commits_is_rolled_back(concurrent_db_session, worker_id, i):
        s = concurrent_db_session
        assert s.execute(text("SELECT COUNT(*) FROM book")).scalar() == 0
        s.execute(text("INSERT INTO book (author_id, title, worker) VALUES (1, 'kept?', :w)"), {"w": worker_id})
        s.commit()                                              # the code under test commits
        s.execute(text("INSERT INTO book (author_id, title, worker) VALUES (1, 'undone', :w)"), {"w": worker_id})
        s.rollback()                                            # and rolls back its own work
        assert s.execute(text("SELECT title FROM book")).scalars().all() == ["kept?"]

    def test_nothing_committed_by_the_sessions_is_left(concurrent_db):
        conn = concurrent_db.connect()
        try:
            cur = conn.cursor()
            cur.execute("SELECT COUNT(*) FROM book")
            assert cur.fetchone()[0] == 0
        finally:
            conn.close()
"""


def test_engine_and_session_fixtures_roll_back_commits(project: Project) -> None:
    project.write(tests=SESSION_TESTS, ini="concurrent_db_pool_min = 2\nconcurrent_db_pool_max = 3\n")
    result = project.run("-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=8)
    assert project.clones() == []


TRANSACTION_TESTS = """
    import pytest
    from sqlalchemy import text

    LEVEL = {level!r}
    LEVELS = {levels!r}

    def read_level(execute):
        execute("SELECT COUNT(*) FROM book")
        return execute(LEVEL)

    @pytest.mark.parametrize("level", LEVELS)
    def test_transaction_takes_the_level(concurrent_db, level):
        with concurrent_db.transaction(isolation_level=level) as conn:
            cur = conn.cursor()
            def execute(sql):
                cur.execute(sql)
                return cur.fetchone()
            assert read_level(execute)[0] == level.lower()
            cur.execute("INSERT INTO author (name) VALUES ('committed')")
        with concurrent_db.transaction() as conn:
            cur = conn.cursor()
            cur.execute("SELECT COUNT(*) FROM author WHERE name = 'committed'")
            assert cur.fetchone()[0] >= 1
            cur.execute("DELETE FROM author WHERE name = 'committed'")

    def test_transaction_rolls_back_on_error(concurrent_db):
        with pytest.raises(ZeroDivisionError):
            with concurrent_db.transaction() as conn:
                conn.cursor().execute("INSERT INTO author (name) VALUES ('rolled back')")
                1 / 0
        with concurrent_db.transaction(read_only=True) as conn:
            cur = conn.cursor()
            cur.execute("SELECT COUNT(*) FROM author WHERE name = 'rolled back'")
            assert cur.fetchone()[0] == 0

    def test_read_only_refuses_writes(concurrent_db):
        with pytest.raises(Exception) as info:
            with concurrent_db.transaction(read_only=True) as conn:
                conn.cursor().execute("INSERT INTO author (name) VALUES ('no')")
        assert "read" in str(info.value).lower()

    @pytest.mark.concurrent_db(isolation_level=LEVELS[-1], read_only=True)
    def test_marker_applies_to_the_session(concurrent_db_session):
        s = concurrent_db_session
        assert read_level(lambda sql: s.execute(text(sql)).one())[0] == LEVELS[-1].lower()
        with pytest.raises(Exception, match="(?i)read"):
            s.execute(text("INSERT INTO author (name) VALUES ('no')"))

    @pytest.mark.concurrent_db(isolation_level=LEVELS[0])
    def test_marker_applies_to_the_transaction_fixture(concurrent_db_transaction):
        cur = concurrent_db_transaction.cursor()
        def execute(sql):
            cur.execute(sql)
            return cur.fetchone()
        assert read_level(execute)[0] == LEVELS[0].lower()

    def test_the_session_after_the_marker_is_default_again(concurrent_db_session):
        concurrent_db_session.execute(text("INSERT INTO author (name) VALUES ('writable')"))

    def test_unsupported_level_is_one_line(concurrent_db):
        from pytest_concurrent_db import ConfigError
        with pytest.raises(ConfigError, match="use one of"):
            concurrent_db.transaction(isolation_level="SNAPSHOT").__enter__()
"""

LEVELS = {
    "postgresql": ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"],
    "mysql": ["READ UNCOMMITTED", "READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"],
    "sqlite": ["SERIALIZABLE"],
}


def test_isolation_levels_take_effect_and_read_only_refuses_writes(project: Project) -> None:
    tests = TRANSACTION_TESTS.format(level=LEVEL[project.backend], levels=LEVELS[project.backend])
    project.write(tests=tests)
    result = project.run("-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=len(LEVELS[project.backend]) + 6)


@pytest.mark.parametrize("backend_url", ["postgresql", "sqlite"], indirect=True)
def test_a_level_the_backend_lacks_fails_the_test_with_one_line(project: Project) -> None:
    tests = """
        import pytest

        @pytest.mark.concurrent_db(isolation_level="READ UNCOMMITTED")
        def test_marker(concurrent_db_transaction):
            pass
    """
    project.write(tests=tests)
    result = project.run("-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    why = "READ UNCOMMITTED as READ COMMITTED" if project.backend == "postgresql" else "every transaction SERIALIZABLE"
    result.stdout.fnmatch_lines([f"*concurrent-db: isolation level READ UNCOMMITTED is not available on*{why}*"])
    assert "Traceback" not in result.stdout.str()


THREAD_TESTS = """
    import threading
    from sqlalchemy import text

    SESSION_ID = {session_id!r}
    OTHERS = {others!r}
    seen = {{}}

    def session_id(conn):
        if SESSION_ID is None:
            return id(conn)
        cur = conn.cursor()
        cur.execute(SESSION_ID)
        return cur.fetchone()[0]

    def test_threads_get_their_own_connections(concurrent_db, worker_id):
        start, release = threading.Barrier(4), threading.Event()
        done = [threading.Event() for _ in range(4)]
        found, errors = {{}}, []

        def work(n):
            try:
                conn = concurrent_db.thread_connection()
                assert concurrent_db.thread_connection() is conn    # the same one on every call
                start.wait(10)                                       # all four write at once
                cur = conn.cursor()
                for _ in range(5):
                    cur.execute("INSERT INTO book (author_id, title, worker) VALUES (1, 'thread', PARAM)", (worker_id,))
                conn.commit()
                found[n] = (conn, session_id(conn))
                done[n].set()
                if n == 0:
                    raise RuntimeError("this thread dies")
                if n == 1:
                    release.wait(30)                                 # still alive when the test ends
            except RuntimeError:
                pass
            except Exception as exc:
                errors.append(exc)
                done[n].set()

        threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads[:1] + threads[2:]:
            t.join(30)
        assert all(d.wait(30) for d in done)
        assert not errors
        assert len({{id(c) for c, _ in found.values()}}) == 4
        assert len({{s for _, s in found.values()}}) == 4
        seen["connections"] = [c for c, _ in found.values()]
        seen["release"] = release
        with concurrent_db.transaction() as conn:
            cur = conn.cursor()
            cur.execute("SELECT COUNT(*) FROM book WHERE title = 'thread'")
            assert cur.fetchone()[0] == 20

    def test_they_were_all_closed_when_the_test_ended(concurrent_db_connection):
        seen["release"].set()
        for conn in seen["connections"]:
            if hasattr(conn, "closed"):           # psycopg
                assert conn.closed
            elif hasattr(conn, "open"):           # PyMySQL
                assert not conn.open
            else:                                 # sqlite3
                import sqlite3, pytest
                with pytest.raises(sqlite3.ProgrammingError):
                    conn.execute("SELECT 1")
        if OTHERS is not None:                    # a closed session leaves the server's list a moment later
            import time
            cur = concurrent_db_connection.cursor()
            for _ in range(50):
                cur.execute(OTHERS)
                others = cur.fetchone()[0]
                concurrent_db_connection.rollback()
                if others == 0:
                    break
                time.sleep(0.1)
            assert others == 0

    def test_scoped_session_gives_each_thread_its_own(concurrent_db_scoped_session, concurrent_db_engine):
        start = threading.Barrier(3)
        sessions, errors = {{}}, []

        def work(n):
            try:
                s = concurrent_db_scoped_session()
                assert concurrent_db_scoped_session() is s
                start.wait(10)
                s.execute(text("INSERT INTO author (name) VALUES ('scoped')"))
                s.commit()
                sessions[n] = (s, s.connection().connection.dbapi_connection)
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors
        assert len({{id(s) for s, _ in sessions.values()}}) == 3
        assert len({{id(c) for _, c in sessions.values()}}) == 3
        seen["engine"] = concurrent_db_engine

    def test_scoped_sessions_were_closed(concurrent_db_engine):
        assert concurrent_db_engine.pool.checkedout() == 0
"""


def test_threads_get_distinct_connections_and_all_are_closed(project: Project) -> None:
    tests = THREAD_TESTS.format(session_id=SESSION_ID[project.backend], others=OTHERS[project.backend])
    project.write(tests=tests)
    result = project.run("-n", "2", "--dist", "loadfile", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
