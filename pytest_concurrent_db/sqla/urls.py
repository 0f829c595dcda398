"""SQLAlchemy URLs and engines for our databases, and import paths (``module:attribute``).

A bare ``postgresql://`` means psycopg2 to SQLAlchemy; we hand it the driver the plugin
itself uses (psycopg 3, PyMySQL, sqlite3), or the async one for the async fixtures.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import ConfigError
from ..url import DatabaseURL, parse_url

__all__ = [
    "DRIVERS",
    "async_url",
    "engine_over",
    "import_object",
    "make_engine",
    "require_sqlalchemy",
    "sqlalchemy_url",
]

DRIVERS = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql", "sqlite": "sqlite"}
ASYNC_DRIVERS = {
    "postgresql": ("postgresql+asyncpg", "asyncpg"),
    "mysql": ("mysql+aiomysql", "aiomysql"),
    "sqlite": ("sqlite+aiosqlite", "aiosqlite"),
}


def require_sqlalchemy() -> Any:
    """The ``sqlalchemy`` module, or a ConfigError naming the extra to install."""
    try:
        import sqlalchemy
    except ImportError:
        raise ConfigError(
            "this needs SQLAlchemy 2, which is not installed: pip install 'pytest-concurrent-db[sqlalchemy]'"
        ) from None
    return sqlalchemy


def _render(url: DatabaseURL, driver: str) -> str:
    sqlalchemy = require_sqlalchemy()
    if url.backend == "sqlite":
        return str(sqlalchemy.engine.URL.create(driver, database=url.database or None).render_as_string())
    made = sqlalchemy.engine.URL.create(
        driver,
        username=url.username,
        password=url.password,
        host=url.host,
        port=url.port,
        database=url.database,
        query=dict(url.query),
    )
    return str(made.render_as_string(hide_password=False))


def sqlalchemy_url(url: str | DatabaseURL) -> str:
    """``url`` (ours: ``postgresql://``, ``mysql://``, ``sqlite:///``) for SQLAlchemy, with the
    installed driver; the password is kept."""
    parsed = parse_url(url) if isinstance(url, str) else url
    return _render(parsed, DRIVERS[parsed.backend])


def async_url(url: str | DatabaseURL) -> str:
    """``url`` for SQLAlchemy's asyncio extension (asyncpg, aiomysql, aiosqlite); a
    ConfigError naming the package when the async driver is not installed."""
    parsed = parse_url(url) if isinstance(url, str) else url
    driver, module = ASYNC_DRIVERS[parsed.backend]
    try:
        importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"the async fixtures on {parsed.backend} need {module}, which is not installed: pip install {module}"
        ) from None
    return _render(parsed, driver)


def make_engine(url: str, backend: str, *, pool_min: int = 1, pool_max: int = 5, **kwargs: Any) -> Any:
    """A SQLAlchemy ``Engine`` on ``url`` keeping at most ``pool_max`` connections, of which
    ``pool_min`` are opened now.  SQLite gets the pysqlite savepoint fix (SQLAlchemy emits
    ``BEGIN`` itself), so that nested transactions and read-only mode work."""
    sqlalchemy = require_sqlalchemy()
    _check_pool(pool_min, pool_max)
    if backend == "sqlite":
        kwargs.setdefault("connect_args", {}).setdefault("check_same_thread", False)
        kwargs["connect_args"].setdefault("timeout", 30)
    engine = sqlalchemy.create_engine(
        url, poolclass=sqlalchemy.pool.QueuePool, pool_size=pool_max, max_overflow=0, **kwargs
    )
    if backend == "sqlite":
        sqlite_savepoints(engine)
    warm = [engine.connect() for _ in range(pool_min)]
    for connection in warm:
        connection.close()
    return engine


def _check_pool(pool_min: int, pool_max: int) -> None:
    from ..options import names

    if pool_max < 1 or pool_min > pool_max:
        raise ConfigError(
            f"the connection pool needs 1 <= max and min <= max, not min {pool_min} and max {pool_max}; "
            f"fix {names('pool_min')} or {names('pool_max')}"
        )


def sqlite_savepoints(engine: Any) -> None:
    """SQLAlchemy's recipe for pysqlite: let SQLAlchemy, not the driver, begin transactions
    (deferred, as the driver would: a session that only reads never blocks writers)."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN")


def engine_over(backend: str, dbapi_connection: Any) -> Any:
    """A SQLAlchemy ``Engine`` whose one connection is ``dbapi_connection`` (the template's
    build connection): never reset or closed by SQLAlchemy, so its caller keeps it.

    SQLAlchemy rolls back the first connection after reading the server's settings:
    commit ``dbapi_connection`` before use."""
    sqlalchemy = require_sqlalchemy()
    url = {"postgresql": "postgresql+psycopg://", "mysql": "mysql+pymysql://", "sqlite": "sqlite://"}[backend]
    return sqlalchemy.create_engine(
        url, creator=lambda: dbapi_connection, poolclass=sqlalchemy.pool.StaticPool, pool_reset_on_return=None
    )


def import_object(path: str, option: str) -> Any:
    """The object named by ``module:attribute.attribute`` (``module.attribute`` too); a
    one-line ConfigError naming ``option`` when it does not resolve."""
    from ..options import names

    module_name, sep, attribute = path.partition(":")
    if not sep:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise ConfigError(f"{path!r} is not an import path such as myapp.db:engine; fix {names(option)}")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # the app's own import errors too: say which path failed and why
        raise ConfigError(
            f"cannot import {module_name!r} for {path!r} ({type(exc).__name__}: {exc}); "
            f"check the module is importable from the rootdir (or on pythonpath) and fix {names(option)}"
        ) from None
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(
                f"{path!r} does not resolve: {type(obj).__name__} {getattr(obj, '__name__', '')!s} has no "
                f"attribute {part!r}; fix {names(option)}"
            ) from None
    return obj
