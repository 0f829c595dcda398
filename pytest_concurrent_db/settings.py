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
from .options import ISOLATION_MODES, OPTIONS, Option, option
from .url import DatabaseURL, parse_url

__all__ = ["ISOLATION_MODES", "OPTIONS", "Option", "Settings", "option", "resolve", "resolve_one"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Settings:
    """The resolved configuration; ``sources`` maps each option to where its value came from."""

    enabled: bool = False
    url: DatabaseURL | None = None
    #: ``--concurrent-db-timings``: False, True (print the table) or a JSON file to write too
    timings: bool | Path = False
    schema: tuple[Path, ...] = ()
    keep: bool = False
    rebuild: bool = False
    lock_timeout: float = 300.0
    keep_templates: int = 2
    clone_strategy: str = "auto"
    spares: int | str = "auto"
    #: ``--concurrent-db-pool``: pristine clones per worker kept ready for fresh databases
    pool: int = 2
    #: ``--concurrent-db-keep-failed``: keep the fresh database of a failed test
    keep_failed: bool = False
    #: ``--concurrent-db-fresh-transactional``: Django's transactional tests on fresh clones
    fresh_transactional: bool = False
    isolation: str = "default"
    #: ``--concurrent-db-progress``: auto, on or off
    progress: str = "auto"
    alembic_ini: Path | None = None
    alembic_env: str = ""
    metadata: str = ""
    seed: tuple[Path, ...] = ()
    pool_min: int = 1
    pool_max: int = 5
    sqlalchemy_bind: str = ""
    #: ``--concurrent-db-snapshot-dir``: where template snapshots are written and restored from (None: off)
    snapshot_dir: Path | None = None
    #: ``--concurrent-db-snapshot-keep``: snapshots kept in :attr:`snapshot_dir`, newest first
    snapshot_keep: int = 3
    #: ``--concurrent-db-pg-bin``: the directory of pg_dump/pg_restore (None: PATH)
    pg_bin: Path | None = None
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
        if self.alembic_ini is not None:
            parts.append(f"alembic-ini={self.alembic_ini} [{self.sources.get('alembic_ini')}]")
        for name in ("metadata", "sqlalchemy_bind", "alembic_env"):
            if getattr(self, name):
                parts.append(f"{name.replace('_', '-')}={getattr(self, name)} [{self.sources.get(name)}]")
        if self.seed:
            parts.append(f"seed={' '.join(p.name for p in self.seed)} [{self.sources.get('seed')}]")
        if self.snapshot_dir is not None:
            parts.append(
                f"snapshot-dir={self.snapshot_dir} [{self.sources.get('snapshot_dir')}], "
                f"snapshot-keep={self.snapshot_keep} [{self.sources.get('snapshot_keep', 'default')}]"
            )
        for name in ("keep", "rebuild", "keep_failed", "fresh_transactional"):
            if getattr(self, name):
                parts.append(f"{name.replace('_', '-')} [{self.sources.get(name)}]")
        if self.progress != "auto":
            parts.append(f"progress={self.progress} [{self.sources.get('progress')}]")
        shown: dict[str, object] = {
            "lock_timeout": f"{self.lock_timeout:g}s",
            "spares": self.spares,
            "clone_strategy": self.clone_strategy,
            "keep_templates": self.keep_templates,
        }
        parts += [
            f"{name.replace('_', '-')}={value} [{self.sources.get(name, 'default')}]" for name, value in shown.items()
        ]
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
        raise ConfigError(f"{source} must be true or false, not {value!r}; fix {option.names()}")
    if option.kind == "flag_or_path":
        return _flag_or_path(option, value, source, base)
    if option.kind == "float":
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not number > 0:
            raise ConfigError(
                f"{source} must be a positive number of seconds, not {value!r}; fix {option.names()}"
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
                f"{source} must be a whole number >= 0{' or auto' if option.kind == 'spares' else ''}, "
                f"not {value!r}; fix {option.names()}"
            )
        return count
    if option.kind == "choice":
        text = str(value).strip().lower()
        if text not in option.choices:
            raise ConfigError(
                f"{source} must be one of {', '.join(option.choices)}, not {value!r}; "
                f"fix {option.names()}"
            )
        return text
    if option.kind == "path":
        path = Path(str(value).strip())
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise ConfigError(
                f"{option.name.replace('_', '.')} file {str(path)!r} (from {source}) does not exist; "
                f"fix the path in {option.names()}"
            )
        return path
    if option.kind in ("dir", "existing_dir"):
        from .snapshot import check_directory  # the snapshot module owns what its directories must be

        return check_directory(option, str(value), source, base)
    if option.kind == "paths":
        try:
            items = _split_paths(value)
        except ValueError as exc:
            raise ConfigError(
                f"{source} is not a valid list of files ({exc}); fix {option.names()}"
            ) from None
        paths = _expand(tuple(p if p.is_absolute() else base / p for p in items))
        for path in paths:
            if not path.is_file():
                raise ConfigError(
                    f"{option.name} file {str(path)!r} (from {source}) does not exist; "
                    f"fix the path in {option.names()}"
                )
        return paths
    if option.name == "url":
        return parse_url(str(value))
    return value


def _flag_or_path(option: Option, value: Any, source: str, base: Path) -> bool | Path:
    """True/False, or a ``.json`` file (a bare flag before a test path would take it as its
    value: anything else is refused rather than overwritten)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip()
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    if not text.lower().endswith(".json"):
        raise ConfigError(
            f"{source} takes no value or a file ending in .json, not {value!r} "
            f"(write {option.flag}=timings.json, or put the bare flag after the test paths); fix {option.names()}"
        )
    path = Path(text)
    return path if path.is_absolute() else base / path


def _expand(paths: tuple[Path, ...]) -> tuple[Path, ...]:
    """Glob patterns (``data/*.csv``) as the files they match, in name order; a pattern that
    matches nothing stays as it is (and is reported missing)."""
    out: list[Path] = []
    for path in paths:
        if any(char in str(path) for char in "*?["):
            found = sorted(p for p in path.parent.glob(path.name) if p.is_file())
            out.extend(found or [path])
        else:
            out.append(path)
    return tuple(out)


def _split_paths(value: Any) -> list[Path]:
    """Paths from a list (CLI, ini: each item is one path) or a string (env: separated by
    spaces or commas, shell quoting allowed).  Raises ValueError on unbalanced quotes."""
    if isinstance(value, (list, tuple)):
        return [Path(str(item)) for item in value if str(item)]
    return [Path(p) for part in shlex.split(str(value)) for p in part.split(",") if p]


def check_url_for_xdist(url: DatabaseURL, parallel: bool) -> None:
    """An in-memory SQLite URL cannot be shared between processes."""
    if parallel and url.is_memory:
        raise ConfigError(
            "an in-memory SQLite URL cannot be shared by xdist workers; use a file URL such as "
            f"sqlite:///tests.db, or none for the SQLite default; fix {option('url').names()}"
        )
