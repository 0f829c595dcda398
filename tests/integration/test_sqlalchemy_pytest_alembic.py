"""pytest-alembic's migration tests on the run's real backend: its ``alembic_engine`` fixture is
served from a clone of an empty template, made for each test and dropped after it."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import require_module

from .conftest import Project

require_module("alembic")
require_module("pytest_alembic")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sqlalchemy_alembic"

MIGRATION_TESTS = """
from pytest_alembic.tests import (  # noqa: F401
    test_model_definitions_match_ddl,
    test_single_head_revision,
    test_up_down_consistency,
    test_upgrade,
)
"""

ENGINE_TESTS = """
import os
import pytest
from sqlalchemy import inspect

BACKEND = {backend!r}


@pytest.mark.parametrize("i", range(4))
def test_a_new_empty_database_on_the_backend(alembic_engine, alembic_runner, i):
    name = alembic_engine.url.database or ""
    assert alembic_engine.dialect.name == {{"postgresql": "postgresql", "mysql": "mysql", "sqlite": "sqlite"}}[BACKEND]
    assert os.path.basename(name).startswith("cdb_"), name
    assert inspect(alembic_engine).get_table_names() == []    # empty: no template schema, no other test's
    alembic_runner.migrate_up_to("heads")                      # then left migrated: the next test must not see it
    assert "alembic_version" in inspect(alembic_engine).get_table_names()
"""


def test_pytest_alembic_runs_on_the_backend(project: Project) -> None:
    root = project.pytester.path
    shutil.copytree(EXAMPLE, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.db"))
    # pytest-alembic 0.13.1 cannot bind its built-in tests to tests/conftest.py under pytest 9.2
    # ('TestCollector' object has no attribute '_nodeid'): its tests are imported instead
    with (root / "pytest.ini").open("a") as ini:
        ini.write("pytest_alembic_tests_path = tests/no_builtin_tests.py\n")
    (root / "tests" / "test_migrations.py").write_text(MIGRATION_TESTS)
    (root / "tests" / "test_engine.py").write_text(ENGINE_TESTS.format(backend=project.url.backend))
    run = project.run("-n", "2", "tests/test_migrations.py", "tests/test_engine.py")
    run.assert_outcomes(passed=8)
    assert project.clones() == []
    assert not (root / "shop.db").exists()  # the app's own database was never touched
