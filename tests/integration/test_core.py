"""End-to-end runs of the plugin: real `pytest -n 2` subprocesses on every backend."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from pytest_concurrent_db.paths import server_lock_dir

from .conftest import Project, summary

RECORDING_TESTS = """
    import os, time, pytest

    @pytest.mark.parametrize("i", range(12))
    def test_worker_sees_only_its_rows(concurrent_db, concurrent_db_connection, worker_id, i):
        conn = concurrent_db_connection
        cur = conn.cursor()
        cur.execute("INSERT INTO book (author_id, title, worker) VALUES (1, 'b', PARAM)", (worker_id,))
        conn.commit()
        time.sleep(0.02)
        cur.execute("SELECT DISTINCT worker FROM book")
        workers = {row[0] for row in cur.fetchall()}
        cur.execute("SELECT COUNT(*) FROM audit")
        audited = cur.fetchone()[0]
        cur.execute("SELECT COUNT(*) FROM book_view WHERE name = 'seed'")
        in_view = cur.fetchone()[0]
        conn.rollback()
        assert workers == {worker_id}
        with open(os.path.join(os.environ["RESULTS_DIR"], f"{worker_id}-{i}"), "w") as fh:
            fh.write(f"{concurrent_db.name} {concurrent_db.template_name} {audited} {in_view}")
"""


def _records(results_dir):  # type: ignore[no-untyped-def]
    out = {}
    for path in results_dir.iterdir():
        worker = path.name.split("-")[0]
        out.setdefault(worker, []).append(path.read_text().split())
    return out


@pytest.mark.parametrize("workers", [2, 4])
def test_each_worker_gets_its_own_clone_of_one_template(project: Project, results_dir, workers: int) -> None:  # type: ignore[no-untyped-def]
    project.write(tests=RECORDING_TESTS)
    result = project.run("-n", str(workers))
    result.assert_outcomes(passed=12)
    records = _records(results_dir)
    assert sorted(records) == [f"gw{i}" for i in range(workers)]
    names = {worker: {r[0] for r in rows} for worker, rows in records.items()}
    assert all(len(n) == 1 for n in names.values())  # one database per worker
    assert len(set().union(*names.values())) == workers  # all distinct
    templates = {r[1] for rows in records.values() for r in rows}
    assert len(templates) == 1
    # triggers fire and views work in every clone; rows committed by one worker stay there
    for rows in records.values():
        assert all(int(r[2]) >= 1 and int(r[3]) >= 1 for r in rows)
        assert max(int(r[2]) for r in rows) == len(rows)
    text = summary(result)
    assert "built by gw" in text
    assert f"dropped: {workers} databases" in text
    assert project.clones() == []  # nothing but the template is left


def test_template_built_once_and_reused_by_the_next_run(project: Project, results_dir) -> None:  # type: ignore[no-untyped-def]
    conftest = """
        import os
        def pytest_concurrent_db_populate_template(connection, backend):
            with open(os.path.join(os.environ["RESULTS_DIR"], "..", "populated.log"), "a") as fh:
                fh.write(backend + "\\n")
            connection.cursor().execute("INSERT INTO author (name) VALUES ('from hook')")
    """
    tests = """
        import pytest
        @pytest.mark.parametrize("i", range(4))
        def test_hook_rows_present(concurrent_db_connection, i):
            cur = concurrent_db_connection.cursor()
            cur.execute("SELECT COUNT(*) FROM author")
            assert cur.fetchone()[0] == 2
    """
    project.write(tests=tests, conftest=conftest)
    log = project.pytester.path / "populated.log"
    first = project.run("-n", "2")
    first.assert_outcomes(passed=4)
    assert log.read_text().splitlines() == [project.backend]
    assert "built by" in summary(first)
    second = project.run("-n", "2")
    second.assert_outcomes(passed=4)
    assert log.read_text().splitlines() == [project.backend]  # not populated again
    assert "reused" in summary(second)
    # changing an input (the schema) builds a new template
    schema = project.pytester.path / "schema.sql"
    schema.write_text(schema.read_text() + "\nCREATE TABLE extra (id INTEGER);\n")
    third = project.run("-n", "2")
    third.assert_outcomes(passed=4)
    assert len(log.read_text().splitlines()) == 2
    assert "built by" in summary(third)
    # --concurrent-db-rebuild forces one rebuild per run, not one per worker
    fourth = project.run("-n", "2", "--concurrent-db-rebuild")
    fourth.assert_outcomes(passed=4)
    assert len(log.read_text().splitlines()) == 3


def test_serial_run_and_transaction_fixture(project: Project) -> None:
    tests = """
        def test_insert_in_transaction(concurrent_db_transaction):
            cur = concurrent_db_transaction.cursor()
            cur.execute("INSERT INTO author (name) VALUES ('temp')")

        def test_rolled_back(concurrent_db_connection):
            cur = concurrent_db_connection.cursor()
            cur.execute("SELECT COUNT(*) FROM author")
            assert cur.fetchone()[0] == 1

        def test_url_fixture(concurrent_db_url, concurrent_db):
            assert concurrent_db_url == concurrent_db.url
            assert concurrent_db.worker_id == "main"
            conn = concurrent_db.connect()
            conn.close()
    """
    project.write(tests=tests)
    result = project.run("-p", "no:xdist", "--concurrent-db-isolation", "strict")
    result.assert_outcomes(passed=3)
    assert "): main " in summary(result)  # clones (method): main <seconds>
    assert project.clones() == []


def test_keep_leaves_clones_for_debugging(project: Project) -> None:
    project.write(tests="def test_one(concurrent_db): pass\n")
    result = project.run("-n", "2", "--concurrent-db-keep")
    result.assert_outcomes(passed=1)
    assert len(project.clones()) == 1
    assert "kept" in summary(result)


def test_leftover_transaction_is_a_warning_and_rolled_back(project: Project) -> None:
    tests = """
        def test_leaves_transaction(concurrent_db_connection):
            concurrent_db_connection.cursor().execute("INSERT INTO author (name) VALUES ('left')")

        def test_next_test_is_clean(concurrent_db_connection):
            cur = concurrent_db_connection.cursor()
            cur.execute("SELECT COUNT(*) FROM author")
            assert cur.fetchone()[0] == 1
    """
    project.write(tests=tests)
    result = project.run("-p", "no:xdist", "-W", "default")
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(["*ConcurrentDBIsolationWarning*test_leaves_transaction*left a transaction open*"])
    strict = project.run("-p", "no:xdist", "--concurrent-db-isolation", "strict")
    strict.assert_outcomes(passed=2, errors=1)
    strict.stdout.fnmatch_lines(["*isolation check failed for*test_leaves_transaction on worker main*"])


def test_isolation_check_catches_a_tampered_clone(project: Project) -> None:
    """A test that re-marks its clone as another worker's is reported as an error."""
    tests = """
        import json, pathlib
        from pytest_concurrent_db.backends.base import Marker

        def test_tamper(request, concurrent_db, concurrent_db_connection):
            fake = Marker(kind="clone", run_id="other", worker_id="gw9").encode()
            backend = concurrent_db.backend
            if backend == "sqlite":  # the marker file in the clone registry
                from pytest_concurrent_db.state import get_state
                registry = get_state(request.config).get_databases().site.directories.templates / "clones"
                entry = registry / f"{concurrent_db.name}.json"
                entry.write_text(json.dumps({**json.loads(entry.read_text()), "marker": fake}))
            elif backend == "postgresql":
                from psycopg import sql
                with concurrent_db.connect(autocommit=True) as conn:
                    conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                        sql.Identifier(concurrent_db.name), sql.Literal(fake)))
            else:
                conn = concurrent_db.connect(autocommit=True)
                conn.cursor().execute(
                    "UPDATE pytest_concurrent_db_registry.`databases` SET marker = %s WHERE name = %s",
                    (fake, concurrent_db.name),
                )
                conn.close()
    """
    project.write(tests=tests)
    result = project.run("-n", "2")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*isolation check failed for*test_tamper on worker gw*run other worker gw9*"])


@pytest.mark.parametrize("backend_url", ["mysql"], indirect=True)
def test_isolation_check_catches_a_switch_to_the_template(project: Project) -> None:
    tests = """
        def test_switch(concurrent_db, concurrent_db_connection):
            concurrent_db_connection.cursor().execute(f"USE `{concurrent_db.template_name}`")

        def test_after(concurrent_db, concurrent_db_connection):
            cur = concurrent_db_connection.cursor()
            cur.execute("SELECT DATABASE()")
            assert cur.fetchone()[0] == concurrent_db.name
    """
    project.write(tests=tests)
    result = project.run("-p", "no:xdist", "-p", "no:randomly")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*isolation check failed for*test_switch*is on the template*"])


@pytest.mark.parametrize("backend_url", ["sqlite"], indirect=True)
def test_sqlite_template_reused_without_the_cache_plugin(project: Project) -> None:
    project.write(tests="def test_one(concurrent_db): pass\n")
    first = project.run("-n", "2", "-p", "no:cacheprovider")
    first.assert_outcomes(passed=1)
    assert "built by" in summary(first)
    second = project.run("-n", "2", "-p", "no:cacheprovider")
    second.assert_outcomes(passed=1)
    assert "reused" in summary(second)
    digest = hashlib.sha256(str(project.pytester.path).encode()).hexdigest()[:12]
    shutil.rmtree(server_lock_dir() / "sqlite-templates" / digest)


def test_template_dropped_before_the_clone_is_rebuilt(backend_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Another run may prune the template between our check and our clone: build it again."""
    import secrets

    from pytest_concurrent_db.template import schema_populator
    from tests.conftest import worker_databases

    schema = tmp_path / "schema.sql"
    schema.write_text("CREATE TABLE t (id INTEGER);\n")
    base = "race" + secrets.token_hex(3)
    url = backend_url.with_database(str(tmp_path / f"{base}.db") if backend_url.backend == "sqlite" else base)
    engine = worker_databases(url, run_id="r" + secrets.token_hex(3), worker_id="gw0", lock_dir=tmp_path / "locks",
                              template_dir=tmp_path / "tpl", clone_dir=tmp_path / "clones")
    try:
        template = engine.ensure_template([schema_populator(schema)]).name
        engine.backend.drop(template)  # what a concurrent prune does
        database = engine.create_clone()
        assert engine.backend.exists(database.name)
        assert engine.template is not None
        assert engine.backend.exists(engine.template.name)
    finally:
        engine.drop_clone()
        if engine.template and engine.backend.exists(engine.template.name):
            engine.backend.drop(engine.template.name)
        engine.close()


def test_report_header_without_django_settings_names_the_sqlite_default(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pytest-django is installed but the project has no Django settings: the run uses the
    SQLite default, and the header says so, with every tunable and its source."""
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    pytester.makepyfile("def test_a(concurrent_db):\n    assert concurrent_db.backend == 'sqlite'\n")
    result = pytester.runpytest_subprocess("--concurrent-db", "--concurrent-db-spares", "0", "-p", "no:randomly")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "concurrent-db: backend=sqlite run=* url=sqlite (default*) [[]default[]], "
            "isolation=default [[]default[]], lock-timeout=300s [[]default[]], "
            "spares=0 [[]--concurrent-db-spares[]], clone-strategy=auto [[]default[]], keep-templates=2 [[]default[]]"
        ]
    )
    assert "from Django" not in result.stdout.str()
