"""The MySQL/MariaDB registry: which databases on the server are ours.

Markers live in the registry database ``pytest_concurrent_db_registry`` (one row per database we
created); nothing is added to the user's schemas.  A row is written before its database is created
and deleted after it is dropped, so a crash leaves at worst a row without a database, never a
database nobody claims.  A ready template's row also holds its clone recipe (:mod:`.mysql_recipe`).
"""

from __future__ import annotations

from typing import ClassVar

from ..errors import ConcurrentDBError, PrivilegeError
from .base import DatabaseInfo, Marker
from .mysql_control import (
    ER_BAD_DB,
    ER_DUP_ENTRY,
    ER_NO_SUCH_TABLE,
    PRIVILEGE_ERRORS,
    MySQLControl,
    error_number,
    server_message,
)
from .mysql_recipe import quote_ident

__all__ = ["REGISTRY", "REGISTRY_TABLE", "MySQLRegistry"]

#: The database holding one row per database we created.
REGISTRY = "pytest_concurrent_db_registry"
REGISTRY_TABLE = quote_ident(REGISTRY) + "." + quote_ident("databases")
#: What a user needs to create and drop our databases (named in the error when it may not).
_PRIVILEGES = (
    "CREATE, DROP, ALTER, INDEX, REFERENCES, SELECT, INSERT, UPDATE, DELETE, CREATE VIEW, SHOW VIEW, "
    "TRIGGER, CREATE ROUTINE, ALTER ROUTINE, EXECUTE, EVENT"
)


class MySQLRegistry(MySQLControl):
    """The registry rows of one server, and the databases they claim."""

    max_name_length: ClassVar[int]
    _registry_ready: bool = False

    def preflight(self) -> None:
        self._control()
        self._ensure_registry()

    def _ensure_registry(self) -> None:
        if self._registry_ready:
            return
        try:
            self._execute(
                "CREATE DATABASE IF NOT EXISTS " + quote_ident(REGISTRY) + " CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            )
            self._execute(
                "CREATE TABLE IF NOT EXISTS " + REGISTRY_TABLE + " ("
                " name VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,"
                " marker TEXT NOT NULL,"
                " recipe LONGTEXT NULL"
                ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
            )
        except Exception as exc:
            if error_number(exc) not in PRIVILEGE_ERRORS:
                raise
            account = self._account()
            raise PrivilegeError(
                f"MySQL user {account} at {self.url.render()} may not create databases "
                f"({server_message(exc)}); grant it with GRANT {_PRIVILEGES} ON *.* TO {account} "
                f"(or only ON `cdb\\_%`.* and ON {quote_ident(REGISTRY)}.*)"
            ) from None
        self._registry_ready = True

    def _account(self) -> str:
        user, _, host = str(self._query("SELECT CURRENT_USER()")[0][0]).rpartition("@")
        return f"'{user}'@'{host}'"

    def _registry_rows(self, name: str | None = None) -> dict[str, str]:
        """name -> marker text of registry rows (all, or ``name``'s); {} if no registry yet."""
        sql = "SELECT name, marker FROM " + REGISTRY_TABLE
        try:
            rows = self._query(sql + " WHERE name = %s", (name,)) if name is not None else self._query(sql)
        except Exception as exc:
            if error_number(exc) in (ER_BAD_DB, ER_NO_SUCH_TABLE):
                return {}
            raise
        return {str(n): str(m) for n, m in rows}

    def _claim(self, name: str, marker: Marker) -> bool:
        """Write ``name``'s registry row; False if the database already exists (ours or not)."""
        if len(name) > self.max_name_length:
            raise ConcurrentDBError(
                f"MySQL database name {name!r} is longer than {self.max_name_length} characters"
            )
        self._ensure_registry()
        try:
            self._execute("INSERT INTO " + REGISTRY_TABLE + " (name, marker) VALUES (%s, %s)", (name, marker.encode()))
        except Exception as exc:
            if error_number(exc) != ER_DUP_ENTRY:
                raise
            if self.exists(name):
                return False  # CREATE DATABASE reports it
            # A row left by a crash between writing it and creating the database.
            self._execute(
                "UPDATE " + REGISTRY_TABLE + " SET marker = %s, recipe = NULL WHERE name = %s", (marker.encode(), name)
            )
        return True

    def _unclaim(self, name: str, marker: Marker) -> None:
        self._execute("DELETE FROM " + REGISTRY_TABLE + " WHERE name = %s AND marker = %s", (name, marker.encode()))

    def _forget(self, name: str) -> None:
        try:
            self._execute("DELETE FROM " + REGISTRY_TABLE + " WHERE name = %s", (name,))
        except Exception as exc:
            if error_number(exc) not in (ER_BAD_DB, ER_NO_SUCH_TABLE):
                raise

    # -- what is on the server, and whose it is ------------------------------------
    def get_marker(self, name: str) -> Marker | None:
        if not self.exists(name):
            return None
        return Marker.decode(self._registry_rows(name).get(name))

    def exists(self, name: str) -> bool:
        if any(ord(ch) > 0xFFFF for ch in name):
            return False  # identifiers are utf8mb3: no such database, and comparing would be an error
        rows = self._query("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (name,))
        return any(row[0] == name for row in rows)  # the column compares case-insensitively

    def list_databases(self, prefix: str, *, sizes: bool = True) -> list[DatabaseInfo]:
        names = [
            str(row[0])
            for row in self._query("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")
            if str(row[0]).startswith(prefix) and row[0] != REGISTRY
        ]
        if not names:
            return []
        markers = self._registry_rows()
        if not sizes:  # information_schema.TABLES opens every table of every database listed
            return [DatabaseInfo(n, Marker.decode(markers.get(n))) for n in sorted(names)]
        found: dict[str, int] = {}
        placeholders = ", ".join(["%s"] * len(names))
        for schema, size in self._query(
            "SELECT TABLE_SCHEMA, SUM(DATA_LENGTH + INDEX_LENGTH) FROM information_schema.TABLES"
            " WHERE TABLE_SCHEMA IN (" + placeholders + ") GROUP BY TABLE_SCHEMA",
            names,
        ):
            if schema in names:
                found[str(schema)] = int(size or 0)
        return [DatabaseInfo(n, Marker.decode(markers.get(n)), found.get(n, 0)) for n in sorted(names)]

    def close(self) -> None:
        super().close()
        self._registry_ready = False
