"""Parsing and rendering database URLs.

Accepted forms::

    sqlite:///relative/file.db   sqlite:////absolute/file.db   sqlite:///:memory:
    sqlite:///file:/absolute/file.db?mode=ro      (an SQLite URI, kept as it is)
    postgresql://user:password@host:port/dbname   (also postgres://, postgresql+psycopg://)
    postgresql://user@/dbname?host=/var/run/postgresql   (a Unix socket directory)
    mysql://user:password@host:port/dbname        (also mariadb://, mysql+pymysql://)
    mysql://user@/dbname?unix_socket=/run/mysqld/mysqld.sock

A host missing from a server URL is ``127.0.0.1``, unless the query has one (``host=``).

Passwords are never rendered unless explicitly asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from .errors import ConfigError
from .options import names

__all__ = ["DatabaseURL", "parse_url"]

_SCHEMES = {
    "sqlite": "sqlite",
    "sqlite3": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "postgresql+psycopg": "postgresql",
    "postgresql+psycopg3": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
    "mysql+pymysql": "mysql",
    "mariadb+pymysql": "mysql",
}
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}
_FIX = f"fix {names('url')}"


@dataclass(frozen=True)
class DatabaseURL:
    """A parsed database URL; ``backend`` is one of ``sqlite``, ``postgresql``, ``mysql``.

    ``host`` is None when the URL names no host and its query does (``?host=/socket/dir``):
    the driver then takes the query's.
    """

    backend: str
    database: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    host: str | None = None
    port: int | None = None
    query: tuple[tuple[str, str], ...] = ()

    @property
    def is_memory(self) -> bool:
        """True for an in-memory SQLite database."""
        return self.backend == "sqlite" and (self.database in ("", ":memory:") or "mode=memory" in self.database)

    def with_database(self, database: str) -> DatabaseURL:
        return replace(self, database=database)

    def option(self, key: str, default: str | None = None) -> str | None:
        for k, v in self.query:
            if k == key:
                return v
        return default

    def render(self, *, hide_password: bool = True) -> str:
        """The URL as text; the password is shown as ``***`` unless ``hide_password`` is false."""
        if self.backend == "sqlite":
            return f"sqlite:///{_sqlite_path(self.database) or ':memory:'}"
        auth = ""
        if self.username is not None:
            auth = quote(self.username, safe="")
            if self.password is not None:
                auth += ":" + ("***" if hide_password else quote(self.password, safe=""))
            auth += "@"
        host = self.host or ""
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        port = f":{self.port}" if self.port else ""
        query = f"?{urlencode(self.query)}" if self.query else ""
        return f"{self.backend}://{auth}{host}{port}/{quote(self.database, safe='')}{query}"

    def __str__(self) -> str:
        return self.render()


def parse_url(text: str) -> DatabaseURL:
    """Parse ``text``; raise :class:`ConfigError` with a one-line fix on bad input."""
    text = text.strip()
    if "://" not in text:
        raise ConfigError(
            f"malformed database URL {_redact(text)!r}: expected "
            f"scheme://... such as sqlite:///tests.db or postgresql://user@host/db; {_FIX}"
        )
    scheme = text.split("://", 1)[0].lower()
    backend = _SCHEMES.get(scheme)
    if backend is None:
        raise ConfigError(
            f"unknown database URL scheme {scheme!r} in {_redact(text)!r}: "
            f"use sqlite://, postgresql:// or mysql:// (mariadb://); {_FIX}"
        )
    if backend == "sqlite":
        path = text.split("://", 1)[1]
        if path.startswith("/"):
            path = path[1:]  # sqlite:///rel.db -> rel.db, sqlite:////abs.db -> /abs.db
        if path.startswith("file:"):  # an SQLite URI keeps its query and its %-escapes (SQLite decodes them)
            return DatabaseURL(backend="sqlite", database=path)
        path, _, _ = path.partition("?")
        return DatabaseURL(backend="sqlite", database=unquote(path))
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ConfigError(
            f"malformed database URL {_redact(text)!r}: the port must be a number from 0 to "
            f"65535 (percent-encode '/', ':' and '@' in the password); {_FIX}"
        ) from None
    database = unquote(parts.path.lstrip("/"))
    if "/" in database:
        raise ConfigError(
            f"malformed database URL {_redact(text)!r}: the path must be a single database name; {_FIX}"
        )
    query = tuple(parse_qsl(parts.query))
    host = parts.hostname or (None if any(key == "host" for key, _ in query) else "127.0.0.1")
    return DatabaseURL(
        backend=backend,
        database=database,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
        host=host,
        port=port or _DEFAULT_PORTS[backend],
        query=query,
    )


def _sqlite_path(database: str) -> str:
    """``database`` as the path of an sqlite URL: the characters :func:`parse_url` would take
    for a query or an escape are %-encoded; an SQLite URI (``file:...``) stays as it is."""
    if database.startswith("file:"):
        return database
    return database.replace("%", "%25").replace("?", "%3F").replace("#", "%23")


def _redact(text: str) -> str:
    """Hide a password in a URL that may not even parse."""
    if "@" not in text:
        return text
    if "://" not in text:
        return "***@" + text.rpartition("@")[2]
    scheme, rest = text.split("://", 1)
    auth, _, hostpart = rest.rpartition("@")
    if ":" in auth:
        auth = auth.split(":", 1)[0] + ":***"
    return f"{scheme}://{auth}@{hostpart}"
