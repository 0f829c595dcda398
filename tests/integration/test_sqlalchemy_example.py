"""The example service (examples/sqlalchemy_alembic) under ``pytest -n 2 --concurrent-db`` on every
backend: Alembic migrates once, the app's import-time engine is rebound, nothing is left behind."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import require_module

from .conftest import Project, summary

require_module("alembic")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sqlalchemy_alembic"


def test_example_runs_on_every_backend(project: Project) -> None:
    root = project.pytester.path
    shutil.copytree(EXAMPLE, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.db"))
    first = project.run("-n", "2")
    first.assert_outcomes(passed=12)
    assert "built by gw" in summary(first)
    again = project.run("-n", "2")
    again.assert_outcomes(passed=12)
    assert "built by" not in summary(again)                # unchanged migrations: nothing migrated
    assert not (root / "shop.db").exists()                 # the app's own database was never touched
    assert project.clones() == []
