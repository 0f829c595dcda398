"""MySQL/MariaDB snapshots, in process (no ``mysqldump``): the clone recipe the template was
sealed with (tables, foreign keys, indexes, sequences, routines, views, triggers, events)
and its rows as ``INSERT`` statements rendered by the driver's escaping, in batches.

The payload is gzip-compressed JSON lines: first ``{"recipe": ...}``, then one
``{"table": ..., "insert": ...}`` per batch of rows.  A restore replays the recipe with
those inserts where a clone copies rows with ``INSERT … SELECT`` (after the tables, before
the triggers, so that they do not fire).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ..snapshot import Census, SnapshotError
from .mysql import MySQLBackend
from .mysql_recipe import RECIPE_FORMAT, _run_steps, charset_clause, clone_statements, quote_ident

__all__ = ["MySQLCodec"]

#: Bytes of one rendered ``INSERT`` (well below max_allowed_packet, 16 MiB by default).
_INSERT_BYTES = 512 << 10


class MySQLCodec:
    """The recipe plus the rows; see the module docstring."""

    def __init__(self, backend: Any) -> None:
        assert isinstance(backend, MySQLBackend)
        self.backend = backend

    def problem(self) -> str | None:
        return None

    def server_major(self) -> str:
        flavour, _, number = self.backend.server_version().partition(" ")
        parts = number.split(".")
        # MariaDB's major release is X.Y (10.6, 10.11); MySQL's X.Y too (8.0, 8.4)
        return f"{flavour} {'.'.join(parts[:2])}"

    def dump(self, template: str, out: IO[bytes]) -> Census:
        recipe = self.backend._recipe(template)
        census = self.census(template)
        connection = self.backend.connect(template)
        try:
            with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1) as stream:
                stream.write(json.dumps({"recipe": recipe}).encode() + b"\n")
                for table in recipe["tables"]:
                    if not (table["has_rows"] and table["columns"]):
                        continue
                    for insert in _inserts(connection, table["name"], table["columns"]):
                        stream.write(json.dumps({"table": table["name"], "insert": insert}).encode() + b"\n")
        finally:
            connection.close()
        return census

    def load(self, payload: Path, name: str) -> None:
        from pymysql.constants import CLIENT

        recipe, inserts = _read(payload)
        connection = self.backend._open(client_flag=CLIENT.MULTI_STATEMENTS)
        try:
            cursor = connection.cursor()
            cursor.execute("ALTER DATABASE " + quote_ident(name) + charset_clause(recipe))
            steps: list[tuple[str, str]] = []
            for kind, statement in clone_statements(recipe, name, connection.escape):
                if kind != "rows":
                    steps.append((kind, statement))
                elif inserts:  # the rows go where the clone copies them: after the tables, before triggers
                    steps += [("rows", insert) for insert in inserts]
                    inserts = []
            _run_steps(cursor, steps, recipe, name)
        finally:
            connection.close()

    def census(self, name: str) -> Census:
        query = self.backend._query
        tables = [
            str(row[0])
            for row in query(
                "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s"
                " AND TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED')",
                (name,),
            )
        ]
        (counts,) = query(
            "SELECT (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_TYPE = 'VIEW'),"
            " (SELECT COUNT(DISTINCT TABLE_NAME, INDEX_NAME) FROM information_schema.STATISTICS"
            " WHERE TABLE_SCHEMA = %s),"
            " (SELECT COUNT(*) FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = %s),"
            " (SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s)",
            (name,) * 4,
        )
        rows: dict[str, int] = {}
        if tables:
            selects = " UNION ALL ".join(
                "SELECT " + str(i) + ", COUNT(*) FROM " + quote_ident(name) + "." + quote_ident(t)
                for i, t in enumerate(tables)
            )
            rows = {tables[int(i)]: int(n) for i, n in query(selects)}
        return Census(
            tables=len(tables),
            views=int(counts[0]),
            indexes=int(counts[1]),
            foreign_keys=int(counts[2]),
            triggers=int(counts[3]),
            rows=rows,
        )


def _inserts(connection: Any, table: str, columns: list[str]) -> Iterator[str]:
    """``INSERT`` statements of every row of ``table``, each up to :data:`_INSERT_BYTES`."""
    from pymysql.cursors import SSCursor

    cols = ", ".join(quote_ident(c) for c in columns)
    head = "INSERT INTO " + quote_ident(table) + " (" + cols + ") VALUES "
    with connection.cursor(SSCursor) as cursor:
        cursor.execute("SELECT " + cols + " FROM " + quote_ident(table))
        values: list[str] = []
        size = 0
        while True:
            batch = cursor.fetchmany(1000)
            if not batch:
                break
            for row in batch:
                text = connection.escape(tuple(row))
                if values and size + len(text) > _INSERT_BYTES:
                    yield head + ",".join(values)
                    values, size = [], 0
                values.append(text)
                size += len(text) + 1
        if values:
            yield head + ",".join(values)


def _read(payload: Path) -> tuple[dict[str, Any], list[str]]:
    try:
        with gzip.open(payload, "rb") as stream:
            lines = iter(stream)
            first = json.loads(next(lines))
            recipe = first["recipe"]
            inserts = [str(json.loads(line)["insert"]) for line in lines]
    except (OSError, EOFError, ValueError, KeyError, TypeError, StopIteration) as exc:
        raise SnapshotError(f"its MySQL payload cannot be read ({type(exc).__name__})") from None
    if not isinstance(recipe, dict) or recipe.get("format") != RECIPE_FORMAT:
        raise SnapshotError("its MySQL recipe has another format")
    return recipe, inserts
