"""Seed data loaded into the template in batches, so that every clone starts with it.

``concurrent_db_seed = data/*.csv data/users.json``: one table per file, named after the
file (``users.csv`` fills ``users``), in the order given (a glob in name order).  CSV
files have a header row of column names (an empty field is NULL); JSON files hold a list
of objects.  Rows go in with ``COPY`` on PostgreSQL, multi-row ``INSERT`` on MySQL and
``executemany`` on SQLite.  The files' contents are part of the template fingerprint.

:func:`load_batches` is the same loader for populate hooks.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .backends import Backend
from .errors import ConfigError, ScriptError
from .options import names
from .template import Populator

__all__ = ["load_batches", "read_rows", "seed_populator"]

_SAVEPOINT = "SAVEPOINT cdb_seed"
_ROLLBACK = "ROLLBACK TO SAVEPOINT cdb_seed"
_RELEASE = "RELEASE SAVEPOINT cdb_seed"


def seed_populator(paths: Sequence[Path]) -> Populator:
    """Load every file of ``paths`` into the table named after it."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")

    def apply(backend: Backend, connection: Any, template: str) -> None:
        for path in paths:
            columns, rows = read_rows(path)
            load_batches(connection, path.stem, rows, columns=columns, source=path)
        connection.commit()

    return Populator(label="seed " + " ".join(p.name for p in paths), key=f"seed:{digest.hexdigest()}", apply=apply)


def read_rows(path: Path) -> tuple[list[str], list[tuple[int, tuple[Any, ...]]]]:
    """The columns and (line, values) rows of a seed file (``.csv`` or ``.json``)."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path)
    if suffix == ".json":
        return _read_json(path)
    raise ConfigError(f"seed file {str(path)!r} is neither .csv nor .json; fix {names('seed')}")


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, tuple[Any, ...]]]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise ConfigError(f"seed file {str(path)!r} has no header row of column names; add one")
        columns = [name.strip() for name in header]
        rows = []
        for values in reader:
            if not values:
                continue
            if len(values) != len(columns):
                raise ConfigError(
                    f"seed file {path}, line {reader.line_num}: {len(values)} values for {len(columns)} columns "
                    f"({', '.join(columns)}); fix the row"
                )
            rows.append((reader.line_num, tuple(None if value == "" else value for value in values)))
    return columns, rows


def _read_json(path: Path) -> tuple[list[str], list[tuple[int, tuple[Any, ...]]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"seed file {path} is not valid JSON ({exc}); fix it") from None
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise ConfigError(f"seed file {path} must hold a list of objects (one per row); fix it")
    columns = list(dict.fromkeys(key for item in data for key in item))
    return columns, [(number, _json_row(item, columns)) for number, item in enumerate(data, 1)]


def _json_row(item: Mapping[str, Any], columns: Sequence[str]) -> tuple[Any, ...]:
    return tuple(json.dumps(v) if isinstance(v, (dict, list)) else v for v in (item.get(c) for c in columns))


def load_batches(
    connection: Any,
    table: str,
    rows: Iterable[Any],
    batch_size: int = 1000,
    *,
    columns: Sequence[str] | None = None,
    source: Path | str | None = None,
) -> int:
    """Insert ``rows`` into ``table`` over the DB-API ``connection`` (psycopg 3, PyMySQL or
    sqlite3), ``batch_size`` rows at a time; returns the number of rows.  Nothing is committed.

    ``rows`` are mappings (column -> value; ``columns`` default: the first row's keys), or
    sequences in the order of ``columns``, or (line, sequence) pairs with ``source``
    (what :func:`read_rows` gives).  The columns are checked against the table first; a row
    that fails is named (file and line, or row number) in a one-line ScriptError.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, not {batch_size}")
    backend = _backend_of(connection)
    iterator = iter(rows)
    first = next(iterator, None)
    if first is None:
        return 0
    numbered = source is not None and columns is not None
    if columns is None:
        if not isinstance(first, Mapping):
            raise ConfigError("load_batches needs columns= when the rows are not mappings")
        columns = list(first)
    label = f"seed file {source}" if source is not None else f"load_batches into {table}"
    _check_columns(connection, backend, table, columns, label)
    count = 0
    for batch in _batches(itertools.chain([first], iterator), batch_size, columns, numbered):
        _insert(connection, backend, table, columns, batch, label=label)
        count += len(batch)
    return count


def _batches(
    rows: Iterator[Any], size: int, columns: Sequence[str], numbered: bool
) -> Iterator[list[tuple[str, tuple[Any, ...]]]]:
    position = 0
    while True:
        chunk = list(itertools.islice(rows, size))
        if not chunk:
            return
        out = []
        for row in chunk:
            position += 1
            if numbered:
                out.append((f"line {row[0]}", tuple(row[1])))
            elif isinstance(row, Mapping):
                out.append((f"row {position}", tuple(row.get(c) for c in columns)))
            else:
                out.append((f"row {position}", tuple(row)))
        yield out


def _backend_of(connection: Any) -> str:
    module = type(connection).__module__
    for prefix, backend in (("psycopg", "postgresql"), ("pymysql", "mysql"), ("sqlite3", "sqlite")):
        if module.startswith(prefix):
            return backend
    raise ConfigError(
        f"load_batches takes a psycopg 3, PyMySQL or sqlite3 connection, not {type(connection).__name__}"
    )


def _quote(backend: str, name: str) -> str:
    """``name`` (``schema.table`` allowed) quoted for MySQL or SQLite."""
    if backend == "mysql":
        from .backends.mysql_recipe import quote_ident

        return ".".join(quote_ident(part) for part in name.split("."))
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


def _select_nothing(backend: str, table: str) -> Any:
    if backend == "postgresql":
        from psycopg import sql

        return sql.SQL("SELECT * FROM {} WHERE 1 = 0").format(sql.Identifier(*table.split(".")))
    return "SELECT * FROM " + _quote(backend, table) + " WHERE 1 = 0"


def _check_columns(connection: Any, backend: str, table: str, columns: Sequence[str], label: str) -> None:
    cursor = connection.cursor()
    try:
        cursor.execute(_SAVEPOINT)
        try:
            cursor.execute(_select_nothing(backend, table))
            have = [d[0] for d in cursor.description]
        except Exception:
            cursor.execute(_ROLLBACK)
            raise ConfigError(
                f"{label}: the template has no table {table!r} (the table is named after the file); "
                f"rename the file or create the table in the schema"
            ) from None
        cursor.execute(_RELEASE)
    finally:
        cursor.close()
    missing = [c for c in columns if c not in have]
    if missing:
        raise ConfigError(
            f"{label}: column{'s' if len(missing) > 1 else ''} {', '.join(missing)} not in table {table} "
            f"(it has {', '.join(have)}); fix the column names"
        )


def _insert(
    connection: Any,
    backend: str,
    table: str,
    columns: Sequence[str],
    batch: list[tuple[str, tuple[Any, ...]]],
    *,
    label: str,
) -> None:
    """One batch under a savepoint; if it fails, the rows one by one to name the bad one."""
    cursor = connection.cursor()
    try:
        cursor.execute(_SAVEPOINT)
        try:
            _write(cursor, backend, table, columns, [values for _, values in batch])
        except Exception as exc:
            cursor.execute(_ROLLBACK)
            for where, values in batch:
                try:
                    _write(cursor, backend, table, columns, [values])
                except Exception as row_exc:
                    cursor.execute(_ROLLBACK)
                    raise ScriptError(
                        f"{label}, {where}: {type(row_exc).__name__}: {' '.join(str(row_exc).split())}; fix the row",
                        str(label),
                        int(where.split()[-1]),
                    ) from None
            raise ScriptError(f"{label}: {type(exc).__name__}: {' '.join(str(exc).split())}") from None
        cursor.execute(_RELEASE)
    finally:
        cursor.close()


def _write(cursor: Any, backend: str, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
    if backend == "postgresql":
        from psycopg import sql

        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(*table.split(".")), sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        )
        with cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
        return
    marks = ", ".join(["%s" if backend == "mysql" else "?"] * len(columns))
    quoted = ", ".join(_quote(backend, c) for c in columns)
    cursor.executemany("INSERT INTO " + _quote(backend, table) + " (" + quoted + ") VALUES (" + marks + ")", rows)
