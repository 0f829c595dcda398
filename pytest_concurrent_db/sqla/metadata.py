"""The template from SQLAlchemy metadata: ``concurrent_db_metadata = myapp.models:Base.metadata``
(or the ``DeclarativeBase`` subclass itself) builds it with ``create_all``.

The fingerprint is the DDL as compiled for the backend's dialect (tables, indexes,
sequences): a changed model means a new template; a change that emits the same DDL
does not.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..backends import Backend
from ..errors import ConfigError, ScriptError
from ..options import names
from ..template import Populator
from .urls import engine_over, import_object, require_sqlalchemy

__all__ = ["compiled_ddl", "dialect_for", "metadata_populator", "statement_error"]


def as_metadata(obj: Any, path: str) -> Any:
    """``obj`` as a ``MetaData``: itself, or the ``metadata`` of a declarative base class."""
    from sqlalchemy import MetaData

    if isinstance(obj, MetaData):
        return obj
    if isinstance(getattr(obj, "metadata", None), MetaData):
        return obj.metadata
    raise ConfigError(
        f"{path!r} is a {type(obj).__name__}, not a SQLAlchemy MetaData or DeclarativeBase subclass; "
        f"fix {names('metadata')}"
    )


def dialect_for(backend: str) -> Any:
    """The SQLAlchemy dialect of our driver on ``backend``, without a connection."""
    require_sqlalchemy()
    from sqlalchemy.dialects import mysql, postgresql, sqlite

    if backend == "postgresql":
        return postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]
    if backend == "mysql":
        return mysql.pymysql.dialect()
    return sqlite.pysqlite.dialect()


def compiled_ddl(metadata: Any, backend: str) -> str:
    """The DDL ``create_all`` would emit for ``metadata`` on ``backend``, as text."""
    from sqlalchemy.schema import CreateIndex, CreateSequence, CreateTable

    dialect = dialect_for(backend)
    parts = [str(CreateSequence(seq).compile(dialect=dialect)) for seq in metadata._sequences.values()]
    for table in metadata.sorted_tables:
        parts.append(str(CreateTable(table).compile(dialect=dialect)))
        parts.extend(str(CreateIndex(index).compile(dialect=dialect)) for index in sorted(table.indexes, key=str))
    return ";\n".join(parts)


def metadata_populator(path: str, backend: str) -> Populator:
    """``create_all`` of the metadata at import path ``path`` on the template."""
    metadata = as_metadata(import_object(path, "metadata"), path)
    digest = hashlib.sha256(compiled_ddl(metadata, backend).encode()).hexdigest()

    def apply(backend: Backend, connection: Any, template: str) -> None:
        connection.commit()  # SQLAlchemy rolls its first connection back after reading settings
        engine = engine_over(backend.name, connection)
        try:
            with engine.begin() as sa_connection:
                metadata.create_all(sa_connection)
        except Exception as exc:
            raise statement_error(exc, f"create_all of {path}", f"fix the models or {names('metadata')}") from None

    return Populator(label=f"metadata {path}", key=f"metadata:{path}:{digest}", apply=apply)


def statement_error(exc: BaseException, what: str, fix: str, source: str = "", line: int = 0) -> ScriptError:
    """A one-line ScriptError for ``exc`` raised while doing ``what``: the driver's message and
    the statement that failed (SQLAlchemy's ``StatementError`` knows it)."""
    from sqlalchemy.exc import StatementError

    found: BaseException | None = exc
    while found is not None and not isinstance(found, StatementError):
        found = found.__cause__ or found.__context__
    if isinstance(found, StatementError):
        orig = found.orig if found.orig is not None else found
        reason = f"{type(orig).__name__}: {_one_line(str(orig))}"
        statement = _one_line(found.statement or "")
    else:
        reason, statement = f"{type(exc).__name__}: {_one_line(str(exc))}", ""
    shown = f" in statement: {statement[:200]}" if statement else ""
    return ScriptError(f"{what} failed: {reason}{shown}; {fix}", source, line, statement)


def _one_line(text: str) -> str:
    return " ".join(text.split())
