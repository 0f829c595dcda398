"""pytest-alembic's ``alembic_engine``, served from a clone of an empty template.

pytest-alembic's migration tests (``test_upgrade``, ``test_single_head_revision``,
``test_model_definitions_match_ddl``, ``test_up_down_consistency``...) take their engine
from the ``alembic_engine`` fixture, an in-memory SQLite database unless the user overrides
it.  With ``--concurrent-db`` and pytest-alembic installed, this module (registered after
pytest-alembic, so its fixture wins; a project's own ``alembic_engine`` in a conftest.py
still wins over both) hands each such test a brand-new, empty database on the run's real
backend: a clone of a template with no schema, built once per server like any template,
made for the test and dropped after it.  Each worker has its own, so the migration tests
run in parallel.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ..api import worker_database
from ..errors import ConcurrentDBError
from ..state import get_state
from ..template import Template
from ..url import DatabaseURL
from .fixtures import _fail
from .urls import make_engine

__all__ = ["alembic_engine"]

#: what tells the empty template apart from the project's own (part of its fingerprint)
EMPTY_KEY = "pytest-alembic: empty schema"


@pytest.fixture(scope="session")
def _concurrent_db_empty_template(request: pytest.FixtureRequest) -> Iterator[Template]:
    state = get_state(request.config)
    databases = state.new_databases(state.settings.url or DatabaseURL(backend="sqlite", database=""))
    try:
        yield databases.ensure_template([], extra=[EMPTY_KEY], rebuild=state.settings.rebuild)
    except ConcurrentDBError as exc:
        _fail(exc)
    finally:
        databases.close()


@pytest.fixture
def alembic_engine(request: pytest.FixtureRequest, _concurrent_db_empty_template: Template) -> Iterator[Any]:
    """pytest-alembic's engine, from pytest-concurrent-db: a SQLAlchemy ``Engine`` on a new,
    empty database of the run's backend (a clone of an empty template), made for this test
    and dropped after it, so that pytest-alembic's migration tests run on the real server,
    one worker beside the other.  Override ``alembic_engine`` in a conftest.py to use
    another database."""
    worker_id = get_state(request.config).worker_id + "_alembic"
    try:
        with worker_database(_concurrent_db_empty_template, worker_id) as database:
            engine = make_engine(database.sqlalchemy_url, database.backend, pool_min=0, pool_max=2)
            try:
                yield engine
            finally:
                engine.dispose()
    except ConcurrentDBError as exc:
        _fail(exc)
