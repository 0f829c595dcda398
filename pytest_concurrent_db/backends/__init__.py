"""Backends: one module per server type behind :class:`~.base.Backend`.

Drivers are imported lazily; a missing driver is a :class:`ConfigError` naming the
extra to install.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..url import DatabaseURL, parse_url
from .base import Backend, DatabaseInfo, DatabaseState, Marker

__all__ = ["Backend", "DatabaseInfo", "DatabaseState", "Marker", "connect_url", "load_backend", "require_driver"]

_DRIVERS = {"postgresql": ("psycopg", "psycopg 3"), "mysql": ("pymysql", "PyMySQL")}


def require_driver(backend: str) -> Any:
    """Import and return the driver module of ``backend``, or raise a ConfigError."""
    if backend not in _DRIVERS:
        return None
    module, label = _DRIVERS[backend]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"the {backend} backend needs {label}, which is not installed: "
            f"pip install 'pytest-concurrent-db[{backend}]'"
        ) from None


def load_backend(
    url: DatabaseURL,
    *,
    template_dir: Path | None = None,
    clone_dir: Path | None = None,
    application_name: str = "pytest-concurrent-db",
    strategy: str | None = None,
    connect_wait: float = 0.0,
) -> Backend:
    """The backend for ``url``.  Nothing is connected until first use.

    ``template_dir``/``clone_dir`` are where SQLite keeps templates and clones;
    ``connect_wait``: how long a server backend waits for a server that is not up
    (refuses connections, starts up or shuts down) when it opens its control connection.
    """
    require_driver(url.backend)
    if url.backend == "sqlite":
        from .sqlite import SQLiteBackend

        if template_dir is None or clone_dir is None:
            raise ValueError("the sqlite backend needs template_dir and clone_dir")
        return SQLiteBackend(url, template_dir=template_dir, clone_dir=clone_dir)
    if url.backend == "postgresql":
        from .postgresql import PostgreSQLBackend

        postgresql = PostgreSQLBackend(url, application_name=application_name, strategy=strategy)
        postgresql.connect_wait = connect_wait
        return postgresql
    from .mysql import MySQLBackend

    mysql = MySQLBackend(url, application_name=application_name)
    mysql.connect_wait = connect_wait
    return mysql


def connect_url(url: str | DatabaseURL, **kwargs: Any) -> Any:
    """A new DB-API connection for ``url`` (any backend), made from the same arguments as the
    backend's own connections (the URL's query included: ``sslmode``, ``application_name``, a
    socket directory as ``host``, MySQL's ``unix_socket``...); ``kwargs`` go to the driver last.

    A server that cannot be reached raises BackendUnavailableError (one line, no password)."""
    parsed = parse_url(url) if isinstance(url, str) else url
    require_driver(parsed.backend)
    if parsed.backend == "sqlite":
        import sqlite3

        kwargs.setdefault("timeout", 30)
        if parsed.database.startswith("file:"):
            kwargs.setdefault("uri", True)
        return sqlite3.connect(parsed.database or ":memory:", **kwargs)
    if parsed.backend == "postgresql":
        from .postgresql import connect_to as connect_postgresql

        return connect_postgresql(parsed, **kwargs)
    from .mysql import connect_to as connect_mysql

    return connect_mysql(parsed, **kwargs)
