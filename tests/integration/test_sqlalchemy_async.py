"""Async fixtures (asyncpg, aiomysql, aiosqlite) under anyio, in real ``pytest -n 2`` runs."""

from __future__ import annotations

from tests.conftest import require_module

from .conftest import Project

require_module("anyio")
require_module("greenlet")

CONFTEST = """
    import pytest

    @pytest.fixture
    def anyio_backend():
        return "asyncio"
"""

TESTS = """
    import pytest
    from sqlalchemy import text

    pytestmark = pytest.mark.anyio

    @pytest.mark.parametrize("i", range(4))
    async def test_commit_is_rolled_back(concurrent_db_async_session, worker_id, i):
        s = concurrent_db_async_session
        assert (await s.execute(text("SELECT COUNT(*) FROM book"))).scalar() == 0
        await s.execute(text("INSERT INTO book (author_id, title, worker) VALUES (1, 't', :w)"), {"w": worker_id})
        await s.commit()
        assert (await s.execute(text("SELECT COUNT(*) FROM book"))).scalar() == 1

    async def test_engine_is_on_the_clone(concurrent_db, concurrent_db_async_engine):
        driver = {"postgresql": "asyncpg", "mysql": "aiomysql", "sqlite": "aiosqlite"}[concurrent_db.backend]
        assert concurrent_db_async_engine.url.drivername.endswith(driver)
        async with concurrent_db_async_engine.connect() as conn:
            assert (await conn.execute(text("SELECT COUNT(*) FROM author"))).scalar() == 1
"""


def test_async_session_rolls_back_commits(project: Project) -> None:
    project.write(tests=TESTS, conftest=CONFTEST)
    result = project.run("-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)
    assert project.clones() == []
