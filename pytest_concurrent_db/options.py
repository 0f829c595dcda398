"""The option table: every setting declared once, with its CLI flag, ini key and env var.

This module imports nothing of the package, so that every other module (errors, URL
parsing, backends) can name an option the way the user writes it, from this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ISOLATION_MODES", "OPTIONS", "PROGRESS_MODES", "Option", "option"]

ISOLATION_MODES = ("strict", "default", "warn", "off")
PROGRESS_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class Option:
    """One setting: its names in every source, its type, default and help."""

    name: str
    kind: str  # "bool" | "str" | "int" | "float" | "path" | "paths" | "choice" | "spares" (int or "auto")
    # | "dir" (a directory, made if missing) | "existing_dir"
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--concurrent-db" if self.name == "enabled" else "--concurrent-db-" + self.name.replace("_", "-")

    @property
    def ini(self) -> str:
        return "concurrent_db" if self.name == "enabled" else "concurrent_db_" + self.name

    @property
    def env(self) -> str:
        return "CONCURRENT_DB" if self.name == "enabled" else "CONCURRENT_DB_" + self.name.upper()

    @property
    def dest(self) -> str:
        return "concurrent_db_" + self.name

    def names(self) -> str:
        """``--flag (ini key, env VAR)``, for error messages."""
        return f"{self.flag} (ini {self.ini}, env {self.env})"


OPTIONS: tuple[Option, ...] = (
    Option("enabled", "bool", False, "Give every xdist worker its own database, cloned from a shared template"),
    Option(
        "url",
        "str",
        None,
        "Database URL: sqlite:///file.db, postgresql://user@host/db or mysql://user@host/db "
        "(default: SQLite files under pytest's cache and temp directories)",
        metavar="URL",
    ),
    Option("schema", "paths", (), "SQL files applied in order to build the template", metavar="FILE"),
    Option("keep", "bool", False, "Keep the worker databases after the run, for debugging"),
    Option("rebuild", "bool", False, "Rebuild the template even if an up-to-date one exists"),
    # kind "flag_or_path": the bare flag turns it on; a value (a .json file) also names a file
    Option(
        "timings",
        "flag_or_path",
        False,
        "Print how long each phase took (fingerprint, lock wait, template build or reuse, clone per worker, "
        "isolation check, drop); =FILE.json also writes it as JSON",
        metavar="FILE.json",
    ),
    Option("lock_timeout", "float", 300.0, "Seconds to wait for the template lock (default: 300)", metavar="SECONDS"),
    Option(
        "keep_templates",
        "int",
        2,
        "How many out-of-date templates to keep per database name (older unused ones are dropped; default: 2)",
        metavar="N",
    ),
    Option(
        "clone_strategy",
        "choice",
        "auto",
        "PostgreSQL 15+ clone strategy: auto (WAL_LOG up to 256 MB templates, FILE_COPY above), wal_log or file_copy",
        choices=("auto", "wal_log", "file_copy"),
    ),
    Option(
        "spares",
        "spares",
        "auto",
        "PostgreSQL/MySQL: pristine clones per worker for the next run, which then starts without copying "
        "(copied in the background while the tests run, or a database the tests left untouched, handed on): "
        "auto (1; after a run whose tests changed their database, for three runs only once copies take "
        "0.25 s on MySQL, 1 s on PostgreSQL: the median of the latest three), a number, or 0 for none",
        metavar="N|auto",
    ),
    Option(
        "pool",
        "int",
        2,
        "Pristine clones each worker keeps ready for concurrent_db_fresh and concurrent_db(fresh=True), "
        "made by one background thread once a test first asks for one (default: 2; 0: copy on demand)",
        metavar="N",
    ),
    Option(
        "keep_failed",
        "bool",
        False,
        "Keep the fresh database of a failed test (marked kept; its URL is shown in the failure report) "
        "until python -m pytest_concurrent_db prune",
    ),
    Option(
        "fresh_transactional",
        "bool",
        False,
        "pytest-django: every transactional test (django_db(transaction=True)) gets fresh clones of its "
        "databases instead of a flush after it, as with @pytest.mark.concurrent_db(fresh=True)",
    ),
    Option(
        "isolation",
        "choice",
        "default",
        "Isolation check after each test: strict (errors, plus leaked-row counts), "
        "default (sharing is an error, leftovers a warning), warn, off",
        choices=ISOLATION_MODES,
    ),
    Option(
        "progress",
        "choice",
        "auto",
        "Show template builds in the terminal while they run: auto (a live line on a terminal, a line every "
        "10 s otherwise, only start and end with -q), on (also in full with -q) or off",
        choices=PROGRESS_MODES,
    ),
    # -- snapshots (issue 15): templates kept as files, for CI jobs with a fresh server ----------
    Option(
        "snapshot_dir",
        "dir",
        None,
        "Directory of template snapshots (<fingerprint>.<backend>.snap): a template built is written there, "
        "and restored from there (no migrations) when the server has none, e.g. a CI cache directory",
        metavar="DIR",
    ),
    Option(
        "snapshot_keep",
        "int",
        3,
        "How many snapshots to keep in the snapshot directory, newest first (default: 3)",
        metavar="N",
    ),
    Option(
        "pg_bin",
        "existing_dir",
        None,
        "Directory of pg_dump and pg_restore for PostgreSQL snapshots (default: found on PATH)",
        metavar="DIR",
    ),
    # -- SQLAlchemy and Alembic ---------------------------------------------------------
    Option(
        "alembic_ini",
        "path",
        None,
        "alembic.ini whose 'upgrade head' builds the template (relative to the ini file)",
        metavar="FILE",
    ),
    Option(
        "alembic_env",
        "str",
        "",
        "Environment variables pointed at the template while env.py runs: VAR (the SQLAlchemy URL) "
        "or VAR={database} ({url}, {database}, {host}, {port}, {user}, {password}), space separated",
        metavar="VARS",
    ),
    Option(
        "metadata",
        "str",
        "",
        "SQLAlchemy MetaData (or DeclarativeBase subclass) whose create_all builds the template: module:attribute",
        metavar="PATH",
    ),
    Option(
        "seed",
        "paths",
        (),
        "CSV/JSON files (glob patterns allowed) loaded into the template after the schema; table = file name",
        metavar="FILE",
    ),
    Option("pool_min", "int", 1, "Connections concurrent_db_engine opens up front (default: 1)", metavar="N"),
    Option("pool_max", "int", 5, "Most connections concurrent_db_engine keeps open (default: 5)", metavar="N"),
    Option(
        "sqlalchemy_bind",
        "str",
        "",
        "The application's engines and sessionmakers (module:attribute, space separated) rebound to the "
        "worker's database for the session",
        metavar="PATHS",
    ),
)
_BY_NAME = {option.name: option for option in OPTIONS}


def option(name: str) -> Option:
    """The option called ``name``."""
    return _BY_NAME[name]


def names(name: str) -> str:
    """``--flag (ini key, env VAR)`` of the option called ``name``, for error messages."""
    return _BY_NAME[name].names()
