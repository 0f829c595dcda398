"""Templates from SQLAlchemy metadata and from Alembic, in real ``pytest -n 2`` runs."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.conftest import require_module

from .conftest import Project, summary

require_module("alembic")

MODELS = """
    from sqlalchemy import ForeignKey, String
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    class Base(DeclarativeBase):
        pass

    class Author(Base):
        __tablename__ = "author"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(100))

    class Book(Base):
        __tablename__ = "book"
        id: Mapped[int] = mapped_column(primary_key=True)
        author_id: Mapped[int] = mapped_column(ForeignKey("author.id"))
        title: Mapped[str] = mapped_column(String(100), index=True)
"""

METADATA_TESTS = """
    import pytest
    from sqlalchemy import inspect
    from models import Author, Book

    @pytest.mark.parametrize("i", range(4))
    def test_tables_from_the_models(concurrent_db_session, i):
        names = set(inspect(concurrent_db_session.connection()).get_table_names())
        assert {"author", "book"} <= names
        concurrent_db_session.add(Author(id=1, name="a"))
        concurrent_db_session.flush()
        concurrent_db_session.add(Book(author_id=1, title="t"))
        concurrent_db_session.commit()
"""


def test_template_from_metadata_is_rebuilt_when_the_models_change(project: Project) -> None:
    project.pytester.makepyfile(models=textwrap.dedent(MODELS))
    project.write(schema="", tests=METADATA_TESTS, ini="concurrent_db_metadata = models:Base\npythonpath = .\n")
    first = project.run("-n", "2")
    first.assert_outcomes(passed=4)
    assert "built by gw" in summary(first)
    again = project.run("-n", "2")
    again.assert_outcomes(passed=4)
    assert "built by" not in summary(again)
    project.pytester.makepyfile(models=textwrap.dedent(MODELS).replace("String(100), index=True", "String(200)"))
    changed = project.run("-n", "2")
    changed.assert_outcomes(passed=4)
    assert "built by gw" in summary(changed)


@pytest.mark.parametrize("backend_url", ["sqlite"], indirect=True)
def test_metadata_path_that_does_not_resolve_is_one_line(project: Project) -> None:
    project.pytester.makepyfile(models=textwrap.dedent(MODELS))
    project.write(schema="", tests=METADATA_TESTS, ini="concurrent_db_metadata = models:Bsae\npythonpath = .\n")
    result = project.run("-n", "2", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*concurrent-db: 'models:Bsae' does not resolve: module models has no attribute*"])
    assert "Traceback" not in result.stdout.str()


ALEMBIC_INI = """
    [alembic]
    script_location = migrations
    sqlalchemy.url = {url}

    [loggers]
    keys = root,sqlalchemy,alembic

    [handlers]
    keys = console

    [formatters]
    keys = generic

    [logger_root]
    level = WARN
    handlers = console
    qualname =

    [logger_sqlalchemy]
    level = WARN
    handlers =
    qualname = sqlalchemy.engine

    [logger_alembic]
    level = INFO
    handlers =
    qualname = alembic

    [handler_console]
    class = StreamHandler
    args = (sys.stderr,)
    level = NOTSET
    formatter = generic

    [formatter_generic]
    format = %(levelname)-5.5s [%(name)s] %(message)s
"""

#: the cookbook's env.py: the connection in config.attributes, else sqlalchemy.url
ENV_PY = """
    import os
    from logging.config import fileConfig

    from alembic import context
    from sqlalchemy import engine_from_config, pool

    with open(os.path.join(os.environ["RESULTS_DIR"], "..", "env-imported.log"), "a") as fh:
        fh.write("imported\\n")
    config = context.config
    if config.config_file_name is not None:
        fileConfig(config.config_file_name)

    def run_migrations_online():
        connectable = config.attributes.get("connection", None)
        if connectable is None:
            connectable = engine_from_config(config.get_section(config.config_ini_section), prefix="sqlalchemy.",
                                             poolclass=pool.NullPool)
            with connectable.connect() as connection:
                context.configure(connection=connection, target_metadata=None)
                with context.begin_transaction():
                    context.run_migrations()
        else:
            context.configure(connection=connectable, target_metadata=None)
            with context.begin_transaction():
                context.run_migrations()

    run_migrations_online()
"""

#: an env.py that ignores Alembic's URL and connection: it reads DATABASE_URL, like many apps
ENV_PY_DATABASE_URL = """
    import os
    from alembic import context
    from sqlalchemy import create_engine, pool

    with open(os.path.join(os.environ["RESULTS_DIR"], "..", "env-imported.log"), "a") as fh:
        fh.write("imported\\n")
    engine = create_engine(os.environ["DATABASE_URL"], poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()
"""

REVISIONS = {
    "0001_author.py": """
        import sqlalchemy as sa
        from alembic import op

        revision = "0001"
        down_revision = None

        def upgrade():
            op.create_table("author", sa.Column("id", sa.Integer, primary_key=True),
                            sa.Column("name", sa.String(100), nullable=False))

        def downgrade():
            op.drop_table("author")
    """,
    "0002_book.py": """
        import sqlalchemy as sa
        from alembic import op

        revision = "0002"
        down_revision = "0001"

        def upgrade():
            op.create_table("book", sa.Column("id", sa.Integer, primary_key=True),
                            sa.Column("author_id", sa.Integer, sa.ForeignKey("author.id"), nullable=False),
                            sa.Column("title", sa.String(100), nullable=False))

        def downgrade():
            op.drop_table("book")
    """,
    "0003_seed_authors.py": """
        import sqlalchemy as sa
        from alembic import op

        revision = "0003"
        down_revision = "0002"

        def upgrade():
            author = sa.table("author", sa.column("id", sa.Integer), sa.column("name", sa.String))
            op.bulk_insert(author, [{"id": 1, "name": "ada"}, {"id": 2, "name": "grace"}])

        def downgrade():
            op.execute("DELETE FROM author")
    """,
}

ALEMBIC_TESTS = """
    import logging, pytest
    from sqlalchemy import text

    @pytest.mark.parametrize("i", range(4))
    def test_migrated_clone(concurrent_db_session, i):
        s = concurrent_db_session
        assert s.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0003"
        assert s.execute(text("SELECT COUNT(*) FROM author")).scalar() == 2
        s.execute(text("INSERT INTO book (author_id, title) VALUES (1, 'x')"))
        s.commit()

    def test_logging_is_as_in_every_worker():
        # env.py's fileConfig() ran in one worker only: its effects are undone there
        assert logging.getLogger().level == logging.WARNING
        assert logging.getLogger("alembic").level == logging.NOTSET
        assert not logging.getLogger("sqlalchemy.engine").disabled
        assert not any(type(h) is logging.StreamHandler for h in logging.getLogger().handlers)
"""


def write_alembic(project: Project, env_py: str = ENV_PY, ini_extra: str = "", revisions: dict[str, str] | None = None,
                  tests: str = ALEMBIC_TESTS) -> Path:
    root = project.pytester.path
    (root / "migrations" / "versions").mkdir(parents=True, exist_ok=True)
    (root / "migrations" / "env.py").write_text(textwrap.dedent(env_py))
    for name, text in (revisions or REVISIONS).items():
        (root / "migrations" / "versions" / name).write_text(textwrap.dedent(text))
    (root / "alembic.ini").write_text(textwrap.dedent(ALEMBIC_INI).format(url=project.url.render(hide_password=False)))
    project.write(schema="", tests=tests, ini="concurrent_db_alembic_ini = alembic.ini\n" + ini_extra)
    return root


def env_imports(project: Project) -> int:
    log = project.pytester.path / "env-imported.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_alembic_runs_once_per_run_and_not_at_all_on_the_next(project: Project, results_dir: Path) -> None:
    root = write_alembic(project)
    first = project.run("-n", "2")
    first.assert_outcomes(passed=5)
    assert env_imports(project) == 1                      # one upgrade for both workers
    again = project.run("-n", "2")
    again.assert_outcomes(passed=5)
    assert env_imports(project) == 1                      # unchanged revisions: env.py not even imported
    (root / "migrations" / "versions" / "0002_book.py").write_text(
        textwrap.dedent(REVISIONS["0002_book.py"]).replace("String(100)", "String(150)")
    )
    changed = project.run("-n", "2")
    changed.assert_outcomes(passed=5)
    assert env_imports(project) == 2                      # a changed revision builds a new template
    assert project.clones() == []


@pytest.mark.parametrize("backend_url", ["sqlite", "postgresql"], indirect=True)
def test_env_py_reading_database_url_is_pointed_at_the_template(
    project: Project, results_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = project.url.render(hide_password=False).replace("postgresql://", "postgresql+psycopg://")
    monkeypatch.setenv("DATABASE_URL", own)                # the app's settings name the user's database
    write_alembic(project, env_py=ENV_PY_DATABASE_URL)
    refused = project.run("-n", "2", "-p", "no:cacheprovider")
    refused.stdout.fnmatch_lines(
        ["*concurrent-db: alembic env.py reads DATABASE_URL, which names your own database*"
         "add DATABASE_URL to --concurrent-db-alembic-env*(nothing was migrated)*"]
    )
    assert env_imports(project) == 0
    redirected = project.run("-n", "2", "--concurrent-db-alembic-env", "DATABASE_URL")
    redirected.assert_outcomes(passed=5)
    assert env_imports(project) == 1
    assert project.clones() == []


@pytest.mark.parametrize("backend_url", ["sqlite", "mysql"], indirect=True)
def test_env_py_that_migrates_another_database_fails_and_leaves_nothing(
    project: Project, results_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    write_alembic(project, env_py=ENV_PY_DATABASE_URL)
    result = project.run("-n", "2", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(
        ["*concurrent-db: after alembic upgrade head the template cdb_* has no alembic_version, not the heads 0003:"
         " env.py migrated another database*(the template was dropped)*"]
    )
    assert project.server_names() == []


@pytest.mark.parametrize("backend_url", ["sqlite", "postgresql"], indirect=True)
def test_failing_revision_names_the_file_and_statement(project: Project, results_dir: Path) -> None:
    broken = dict(REVISIONS)
    broken["0002_book.py"] = REVISIONS["0002_book.py"].replace(
        "def upgrade():\n", "def upgrade():\n            op.execute('ALTER TABLE no_such_table ADD COLUMN x INTEGER')\n"
    )
    write_alembic(project, revisions=broken)
    result = project.run("-n", "2", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(
        ["*concurrent-db: alembic revision migrations/versions/0002_book.py (line 9) failed: *"
         "in statement: ALTER TABLE no_such_table ADD COLUMN x INTEGER; fix it and run again*"]
    )
    assert "Traceback" not in result.stdout.str()
    assert project.server_names() == []


@pytest.mark.parametrize("backend_url", ["sqlite"], indirect=True)
def test_missing_or_broken_alembic_ini_is_one_line(project: Project, results_dir: Path) -> None:
    root = write_alembic(project)
    missing = project.run("-n", "2", "--concurrent-db-alembic-ini", "nope.ini", "-p", "no:cacheprovider")
    missing.stderr.fnmatch_lines(["*concurrent-db: alembic.ini file '*nope.ini' (from --concurrent-db-alembic-ini)"
                                  " does not exist; fix the path in --concurrent-db-alembic-ini*"])
    (root / "alembic.ini").write_text("[alembic]\nsqlalchemy.url = sqlite://\n")
    broken = project.run("-n", "2", "-p", "no:cacheprovider")
    broken.stdout.fnmatch_lines(["*concurrent-db: alembic.ini '*alembic.ini' has no script_location in an [[]alembic]"
                                 " section; add it, or fix --concurrent-db-alembic-ini*"])
    assert "Traceback" not in broken.stdout.str()
    assert env_imports(project) == 0
