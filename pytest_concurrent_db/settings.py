"""Every option, declared once, and its resolution into a frozen :class:`Settings`.

Each option exists as a CLI flag ``--concurrent-db-<name>``, an ini key
``concurrent_db_<name>`` and an environment variable ``CONCURRENT_DB_<NAME>``
(the switch itself is ``--concurrent-db`` / ``concurrent_db`` / ``CONCURRENT_DB``).
Precedence: CLI > environment > ini > default.  The source of every value is kept
and shown in the report header.

This module does not import pytest: :func:`resolve` takes plain lookups so that the
engine can be configured without it.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .url import DatabaseURL, parse_url

__all__ = ["ISOLATION_MODES", "OPTIONS", "Option", "Settings", "resolve"]

ISOLATION_MODES = ("strict", "default", "warn", "off")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Option:
    """One setting: its names in every source, its type, default and help."""

    name: str
    kind: str  # "bool" | "str" | "int" | "float" | "paths" | "choice" | "spares" (int or "auto")
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
        "PostgreSQL/MySQL: pristine clones per worker made in the background while the tests run, "
        "so that the next run starts without copying: auto (1 once a copy took 0.25 s on MySQL, 1 s on PostgreSQL), "
        "a number, or 0 for none",
        metavar="N|auto",
    ),
    Option(
        "isolation",
        "choice",
        "default",
        "Isolation check after each test: strict (errors, plus leaked-row counts), "
        "default (sharing is an error, leftovers a warning), warn, off",
        choices=ISOLATION_MODES,
    ),
)
_BY_NAME = {option.name: option for option in OPTIONS}


@dataclass(frozen=True)
class Settings:
    """The resolved configuration; ``sources`` maps each option to where its value came from."""

    enabled: bool = False
    url: DatabaseURL | None = None
    schema: tuple[Path, ...] = ()
    keep: bool = False
    rebuild: bool = False
    lock_timeout: float = 300.0
    keep_templates: int = 2
    clone_strategy: str = "auto"
    spares: int | str = "auto"
    isolation: str = "default"
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def backend(self) -> str:
        return self.url.backend if self.url is not None else "sqlite"

    def describe(self) -> list[str]:
        """Report-header lines: each value and its source (passwords hidden)."""
        url = str(self.url) if self.url is not None else "sqlite (default: pytest cache + temp dirs)"
        parts = [
            f"url={url} [{self.sources.get('url', 'default')}]",
            f"isolation={self.isolation} [{self.sources.get('isolation', 'default')}]",
        ]
        if self.schema:
            parts.append(f"schema={' '.join(p.name for p in self.schema)} [{self.sources.get('schema')}]")
        for name in ("keep", "rebuild"):
            if getattr(self, name):
                parts.append(f"{name} [{self.sources.get(name)}]")
        if self.sources.get("lock_timeout", "default") != "default":
            parts.append(f"lock-timeout={self.lock_timeout:g}s [{self.sources['lock_timeout']}]")
        return parts


def resolve(
    cli: Callable[[str], Any],
    ini: Callable[[str], Any],
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    ini_dir: Path | None = None,
) -> Settings:
    """Resolve every option: CLI > environment > ini > default.

    ``cli(dest)`` returns the parsed command-line value or None when not given;
    ``ini(key)`` returns the raw ini value or None/"" when not set.  Relative schema
    paths are resolved against ``cwd`` (CLI, environment) or ``ini_dir`` (ini).
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for opt in OPTIONS:
        values[opt.name], sources[opt.name] = resolve_one(opt, cli, ini, environ=environ, cwd=cwd, ini_dir=ini_dir)
    return Settings(**values, sources=sources)


def resolve_one(
    opt: Option,
    cli: Callable[[str], Any],
    ini: Callable[[str], Any],
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    ini_dir: Path | None = None,
) -> tuple[Any, str]:
    """One option's value and its source, with the same rules as :func:`resolve`."""
    environ = os.environ if environ is None else environ
    cwd = cwd or Path.cwd()
    raw_cli = cli(opt.dest)
    raw_env = environ.get(opt.env)
    raw_ini = ini(opt.ini)
    if raw_cli not in (None, [], ()):
        value, source, base = raw_cli, opt.flag, cwd
    elif raw_env not in (None, ""):
        value, source, base = raw_env, f"env {opt.env}", cwd
    elif raw_ini not in (None, "", [], ()):
        value, source, base = raw_ini, f"ini {opt.ini}", ini_dir or cwd
    else:
        return opt.default, "default"
    return _convert(opt, value, source, base), source


def _convert(option: Option, value: Any, source: str, base: Path) -> Any:
    if option.kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ConfigError(f"concurrent-db: {source} must be true or false, not {value!r}; fix {option.names()}")
    if option.kind == "float":
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not number > 0:
            raise ConfigError(
                f"concurrent-db: {source} must be a positive number of seconds, not {value!r}; fix {option.names()}"
            )
        return number
    if option.kind == "spares" and str(value).strip().lower() == "auto":
        return "auto"
    if option.kind in ("int", "spares"):
        try:
            count = int(value)
        except ValueError:
            count = -1
        if count < 0:
            raise ConfigError(
                f"concurrent-db: {source} must be a whole number >= 0{' or auto' if option.kind == 'spares' else ''}, "
                f"not {value!r}; fix {option.names()}"
            )
        return count
    if option.kind == "choice":
        text = str(value).strip().lower()
        if text not in option.choices:
            raise ConfigError(
                f"concurrent-db: {source} must be one of {', '.join(option.choices)}, not {value!r}; "
                f"fix {option.names()}"
            )
        return text
    if option.kind == "paths":
        try:
            items = _split_paths(value)
        except ValueError as exc:
            raise ConfigError(
                f"concurrent-db: {source} is not a valid list of files ({exc}); fix {option.names()}"
            ) from None
        paths = tuple(p if p.is_absolute() else base / p for p in items)
        for path in paths:
            if not path.is_file():
                raise ConfigError(
                    f"concurrent-db: schema file {str(path)!r} (from {source}) does not exist; "
                    f"fix the path in {option.names()}"
                )
        return paths
    if option.name == "url":
        return parse_url(str(value))
    return value


def _split_paths(value: Any) -> list[Path]:
    """Paths from a list (CLI, ini: each item is one path) or a string (env: separated by
    spaces or commas, shell quoting allowed).  Raises ValueError on unbalanced quotes."""
    if isinstance(value, (list, tuple)):
        return [Path(str(item)) for item in value if str(item)]
    return [Path(p) for part in shlex.split(str(value)) for p in part.split(",") if p]


def option(name: str) -> Option:
    """The option called ``name``."""
    return _BY_NAME[name]
