"""Async SQLAlchemy fixtures on the worker's clone (asyncpg, aiomysql, aiosqlite); registered by
the plugin when SQLAlchemy's asyncio extension can run (greenlet installed).

* ``concurrent_db_async_engine`` (session): an ``AsyncEngine`` without a pool (``NullPool``),
  so that it works under whatever event loop each test runs in;
* ``concurrent_db_async_session`` (function): an ``AsyncSession`` in an outer transaction
  rolled back after the test (``join_transaction_mode="create_savepoint"``), also when the
  code under test commits.

The session fixture is an async fixture: it runs under pytest-asyncio (declared with
``pytest_asyncio.fixture`` when that is installed) or anyio (tests marked ``anyio``).
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from ..clones import ConcurrentDatabase
from ..errors import ConcurrentDBError
from .urls import async_url, sqlite_savepoints

__all__ = ["concurrent_db_async_engine", "concurrent_db_async_session"]


@pytest.fixture(scope="session")
def concurrent_db_async_engine(concurrent_db: ConcurrentDatabase) -> Iterator[Any]:
    """An ``AsyncEngine`` on this worker's database (session scope; no pool, so no connection
    outlives the event loop of the test that opened it)."""
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    try:
        url = async_url(concurrent_db.url)
    except ConcurrentDBError as exc:
        pytest.fail(str(exc), pytrace=False)
    engine = create_async_engine(url, poolclass=NullPool)
    if concurrent_db.backend == "sqlite":
        sqlite_savepoints(engine.sync_engine)
    yield engine
    engine.sync_engine.dispose()


async def _async_session(concurrent_db_async_engine: Any) -> AsyncIterator[Any]:
    """An ``AsyncSession`` on this worker's database whose work, commits included, is rolled
    back after the test."""
    from sqlalchemy.ext.asyncio import AsyncSession

    async with concurrent_db_async_engine.connect() as connection:
        outer = await connection.begin()
        session = AsyncSession(bind=connection, join_transaction_mode="create_savepoint")
        try:
            yield session
        finally:
            await session.close()
            await outer.rollback()


def _async_fixture() -> Any:
    """``pytest_asyncio.fixture`` (works in its strict and auto modes), else ``pytest.fixture``
    (anyio runs async fixtures of its tests)."""
    try:
        return importlib.import_module("pytest_asyncio").fixture
    except ImportError:
        return pytest.fixture


concurrent_db_async_session = _async_fixture()(_async_session)
concurrent_db_async_session.__name__ = "concurrent_db_async_session"
