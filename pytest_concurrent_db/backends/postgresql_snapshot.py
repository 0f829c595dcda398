"""PostgreSQL snapshots: ``pg_dump --format=custom`` and ``pg_restore`` (see :mod:`..snapshot`).

A ready template refuses connections (``ALLOW_CONNECTIONS false``), and a session on it would
make every clone wait: ``pg_dump`` reads a clone of it instead (``CREATE DATABASE … TEMPLATE``,
milliseconds), marked and locked as ours, and dropped right after.  The client programs are
found in ``--concurrent-db-pg-bin`` or on ``PATH``; when they are missing or older than the
server, :meth:`PostgreSQLCodec.problem` says which package to install and the run goes on
without snapshots.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import IO, Any

from psycopg.conninfo import make_conninfo

from ..markers import create_marked, new_marker
from ..naming import PREFIX, fit, sanitize
from ..options import names
from ..snapshot import Census, SnapshotError
from .postgresql import PostgreSQLBackend
from .postgresql_control import connect_params
from .postgresql_probes import row_counts

__all__ = ["PostgreSQLCodec", "postgresql_census"]

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)")
#: seconds pg_dump or pg_restore may take
_TIMEOUT = 3600

_COUNTS = """
SELECT
  (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
    AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%%'),
  (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('i', 'I') AND c.relpersistence <> 't'
    AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%%'),
  (SELECT count(*) FROM pg_constraint WHERE contype = 'f'),
  (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')),
  (SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal)
"""


def postgresql_census(connection: Any) -> Census:
    """The census of the PostgreSQL database of ``connection`` (psycopg 3)."""
    with connection.cursor() as cursor:
        cursor.execute(_COUNTS)
        tables, indexes, foreign_keys, views, triggers = cursor.fetchone()
    return Census(
        tables=int(tables),
        indexes=int(indexes),
        foreign_keys=int(foreign_keys),
        views=int(views),
        triggers=int(triggers),
        rows=row_counts(connection),
    )


class PostgreSQLCodec:
    """``pg_dump``/``pg_restore``; see the module docstring."""

    def __init__(self, backend: Any, site: Any, run_id: str = "") -> None:
        assert isinstance(backend, PostgreSQLBackend)
        self.backend = backend
        self.site = site
        self.run_id = run_id or "snapshot"
        self._env: dict[str, str] = {}

    # -- the client programs ---------------------------------------------------------------
    def _program(self, name: str) -> str | None:
        if self.site.pg_bin is not None:
            path = Path(self.site.pg_bin) / name
            return str(path) if path.is_file() and os.access(path, os.X_OK) else None
        return shutil.which(name)

    def problem(self) -> str | None:
        major = self.backend._major()
        package = f"postgresql-client-{major} (Debian/Ubuntu; postgresql{major} on Alpine, RHEL and Homebrew)"
        where = f"in {self.site.pg_bin}" if self.site.pg_bin is not None else "on PATH"
        for program in ("pg_dump", "pg_restore"):
            path = self._program(program)
            if path is None:
                return f"{program} not found {where}; install {package} or point {names('pg_bin')} at its bin directory"
            try:
                text = subprocess.run(
                    [path, "--version"], capture_output=True, text=True, timeout=30, check=False
                ).stdout  # fmt: skip
            except OSError as exc:
                return f"{path} cannot run ({exc.strerror}); install {package}"
            found = _VERSION.search(text)
            if found is None or int(found.group(1)) < major:
                version = found.group(1) if found else "of an unknown version"
                return (
                    f"{path} is {version}, older than the PostgreSQL {major} server; "
                    f"install {package} or point {names('pg_bin')} at its bin directory"
                )
        return None

    def server_major(self) -> str:
        return f"PostgreSQL {self.backend._major()}"

    def _conninfo(self, name: str) -> tuple[str, dict[str, str]]:
        """libpq connection string for database ``name`` (no password: that goes in the environment)."""
        params = connect_params(self.backend.url.with_database(name), application_name="pytest-concurrent-db snapshot")
        password = params.pop("password", None)
        env = dict(os.environ)
        if password is not None:
            env["PGPASSWORD"] = str(password)
        return make_conninfo(**{k: str(v) for k, v in params.items()}), env

    def _run(self, program: str, args: list[str], what: str, stdout: Any = subprocess.DEVNULL) -> None:
        path = self._program(program)
        if path is None:
            raise SnapshotError(f"{program} is not there any more")
        try:
            done = subprocess.run(
                [path, *args], stdout=stdout, stderr=subprocess.PIPE, env=self._env, timeout=_TIMEOUT, check=False
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SnapshotError(f"{what} failed: {exc}") from None
        if done.returncode != 0:
            lines = [line for line in done.stderr.decode(errors="replace").splitlines() if line.strip()]
            raise SnapshotError(f"{what} failed: {lines[-1] if lines else f'exit status {done.returncode}'}")

    # -- the codec ---------------------------------------------------------------------------
    def dump(self, template: str, out: IO[bytes]) -> Census:
        name = fit(f"{PREFIX}{sanitize(self.site.base)}_snap{secrets.token_hex(3)}")
        key = f"clone:{name}"
        if not self.backend.try_lock(key):
            raise SnapshotError(f"the lock of {name} is held")
        try:
            marker = new_marker("clone", self.run_id, "snapshot", template)
            create_marked(self.site, self.backend, name, marker, lambda: self.backend.clone(template, name, marker))
            try:
                conninfo, self._env = self._conninfo(name)
                self._run(
                    "pg_dump",
                    ["--format=custom", "--compress=1", "--no-owner", "--no-acl", "--dbname", conninfo],
                    f"pg_dump of {template}",
                    stdout=out,
                )
                return self.census(name)
            finally:
                self.backend.drop(name)
        finally:
            with contextlib.suppress(Exception):
                self.backend.release_lock(key)

    def load(self, payload: Path, name: str) -> None:
        conninfo, self._env = self._conninfo(name)
        args = ["--exit-on-error", "--single-transaction", "--no-owner", "--no-acl", "--dbname", conninfo]
        self._run("pg_restore", [*args, str(payload)], f"pg_restore into {name}")

    def census(self, name: str) -> Census:
        connection = self.backend.connect(name, autocommit=True)
        try:
            return postgresql_census(connection)
        finally:
            connection.close()
