"""Adopting the plugin in an existing SQLAlchemy suite: the three usual ways a suite gets its
database, each taken over with the few lines the README shows, in real ``pytest -n 2`` runs."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from tests.conftest import require_module

from .conftest import Project

require_module("sqlalchemy")

APP = {
    "app/__init__.py": "",
    "app/models.py": """
        from sqlalchemy import String
        from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

        class Base(DeclarativeBase):
            pass

        class Note(Base):
            __tablename__ = "note"
            id: Mapped[int] = mapped_column(primary_key=True)
            text: Mapped[str] = mapped_column(String(100))
    """,
    # the app builds its engine at import time from its settings
    "app/db.py": """
        import os
        from sqlalchemy import create_engine
        from sqlalchemy.orm import sessionmaker

        DATABASE_URL = os.environ.get("APP_DATABASE_URL", "sqlite:///the-real-app.db")
        engine = create_engine(DATABASE_URL)
        SessionLocal = sessionmaker(engine)

        def add_note(text):
            with SessionLocal() as session:
                from app.models import Note
                session.add(Note(text=text))
                session.commit()
    """,
}

CONFTEST = """
    import os
    import pytest
    from app import db

    ORIGINAL = (db.engine, db.SessionLocal.kw["bind"])

    # pattern 1: the suite's own engine fixture, now the worker's engine
    @pytest.fixture(scope="session")
    def app_engine(concurrent_db_engine):
        return concurrent_db_engine

    # pattern 3: code that reads an environment variable in setup_method
    @pytest.fixture(scope="session", autouse=True)
    def app_database_url(concurrent_db):
        os.environ["APP_DATABASE_URL"] = concurrent_db.sqlalchemy_url

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(session):
        config = session.config
        if hasattr(config, "workerinput"):
            restored = db.engine is ORIGINAL[0] and db.SessionLocal.kw["bind"] is ORIGINAL[1]
            with open(os.path.join(os.environ["RESULTS_DIR"], "restored-" + config.workerinput["workerid"]), "w") as fh:
                fh.write(str(restored))
"""

TESTS = """
    import os, pytest
    from sqlalchemy import create_engine, select, func, text
    from app import db
    from app.models import Note

    @pytest.mark.parametrize("i", range(3))
    def test_fixture_override(app_engine, concurrent_db, i):
        assert app_engine.url.database.endswith(concurrent_db.name) or concurrent_db.name in app_engine.url.database
        with app_engine.connect() as conn:
            assert conn.execute(text("SELECT COUNT(*) FROM note")).scalar() == 0

    @pytest.mark.parametrize("i", range(3))
    def test_import_time_engine_is_rebound(concurrent_db, worker_id, i):
        assert concurrent_db.name in str(db.engine.url.database)
        db.add_note(f"{worker_id}-{i}")                   # the app's own code, unchanged
        with db.SessionLocal() as session:
            notes = session.scalars(select(Note.text)).all()
        assert all(n.startswith(worker_id) for n in notes)
        with db.SessionLocal() as session:
            session.execute(text("DELETE FROM note"))
            session.commit()

    class TestEnvironmentVariable:
        def setup_method(self):
            self.engine = create_engine(os.environ["APP_DATABASE_URL"])

        def teardown_method(self):
            self.engine.dispose()

        @pytest.mark.parametrize("i", range(3))
        def test_reads_the_variable(self, concurrent_db, i):
            assert concurrent_db.name in str(self.engine.url.database)
            with self.engine.connect() as conn:
                assert conn.execute(text("SELECT COUNT(*) FROM note")).scalar() == 0
"""


@pytest.mark.parametrize("backend_url", ["sqlite", "postgresql"], indirect=True)
def test_three_adoption_patterns_under_xdist(project: Project, results_dir: Path) -> None:
    for name, text in APP.items():
        path = project.pytester.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    project.write(
        schema="",
        conftest=CONFTEST,
        tests=TESTS,
        ini="pythonpath = .\nconcurrent_db_metadata = app.models:Base\n"
        "concurrent_db_sqlalchemy_bind = app.db:engine app.db:SessionLocal\n",
    )
    result = project.run("-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=9)
    restored = {p.name: p.read_text() for p in results_dir.iterdir() if p.name.startswith("restored-")}
    assert sorted(restored) == ["restored-gw0", "restored-gw1"]
    assert set(restored.values()) == {"True"}
    assert not (project.pytester.path / "the-real-app.db").exists()   # the app's own database never touched
    assert project.clones() == []


@pytest.mark.parametrize("backend_url", ["sqlite"], indirect=True)
def test_bind_path_that_does_not_resolve_is_one_line(project: Project) -> None:
    for name, text in APP.items():
        path = project.pytester.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    project.write(schema="", tests="def test_x(): pass\n",
                  ini="pythonpath = .\nconcurrent_db_sqlalchemy_bind = app.db:engine app.nope:SessionLocal\n")
    result = project.run("-n", "2", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*concurrent-db: cannot import 'app.nope' for 'app.nope:SessionLocal'*"
                                 "fix --concurrent-db-sqlalchemy-bind*"])
    assert "Traceback" not in result.stdout.str()
    assert os.path.exists(project.pytester.path / "app")
