"""SQLite snapshots: the template file itself, copied with the backup API (see :mod:`..snapshot`)."""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path
from typing import IO, Any

from ..snapshot import Census, SnapshotError
from .sqlite import SQLiteBackend, _quote_ident, _uri

__all__ = ["SQLiteCodec", "sqlite_census"]


def sqlite_census(connection: Any) -> Census:
    """The census of the SQLite database of ``connection``."""
    rows = connection.execute(
        "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
    ).fetchall()
    kinds: dict[str, list[str]] = {}
    for kind, name in rows:
        kinds.setdefault(kind, []).append(name)
    tables = sorted(kinds.get("table", []))
    foreign_keys = sum(
        len({row[0] for row in connection.execute("SELECT * FROM pragma_foreign_key_list(?)", (table,))})
        for table in tables
    )
    counts = {t: int(connection.execute("SELECT count(*) FROM " + _quote_ident(t)).fetchone()[0]) for t in tables}
    return Census(
        tables=len(tables),
        indexes=len(kinds.get("index", [])),
        foreign_keys=foreign_keys,
        views=len(kinds.get("view", [])),
        triggers=len(kinds.get("trigger", [])),
        rows=counts,
    )


class SQLiteCodec:
    """The template file, as the backup API copies it."""

    def __init__(self, backend: Any) -> None:
        assert isinstance(backend, SQLiteBackend)
        self.backend = backend

    def problem(self) -> str | None:
        return None

    def server_major(self) -> str:
        return "SQLite " + sqlite3.sqlite_version.split(".")[0]

    def dump(self, template: str, out: IO[bytes]) -> Census:
        descriptor, name = tempfile.mkstemp(prefix="pytest-concurrent-db-sqlite-", suffix=".db")
        os.close(descriptor)
        copy = Path(name)
        try:
            source = sqlite3.connect(_uri(self.backend.path(template), "mode=ro"), uri=True)
            target = sqlite3.connect(copy)
            try:
                source.backup(target)
                target.execute("PRAGMA journal_mode=DELETE")
                census = sqlite_census(target)
            finally:
                target.close()
                source.close()
            with copy.open("rb") as data:
                while chunk := data.read(1 << 20):
                    out.write(chunk)
        finally:
            copy.unlink(missing_ok=True)
        return census

    def load(self, payload: Path, name: str) -> None:
        source = sqlite3.connect(_uri(payload, "mode=ro"), uri=True)
        try:
            if source.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise SnapshotError("its SQLite file fails the quick check")
            target = self.backend.connect(name)
            try:
                source.backup(target)
            finally:
                target.close()
        except sqlite3.DatabaseError as exc:
            raise SnapshotError(f"its SQLite file cannot be read ({exc})") from None
        finally:
            source.close()

    def census(self, name: str) -> Census:
        connection = self.backend.connect(name)
        try:
            return sqlite_census(connection)
        finally:
            connection.close()
