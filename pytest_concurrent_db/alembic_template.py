"""The template from Alembic: ``alembic upgrade head`` run once against the template.

* The fingerprint covers ``env.py``, every revision file and the ini's ``[alembic]``
  options (not ``sqlalchemy.url``): files are read, never imported, so a run whose
  migrations are unchanged does not even import ``env.py``.
* Alembic runs in the building process, from the ini file's directory (``script_location``
  is relative to it), with ``sqlalchemy.url`` set to the template, the template's
  connection in ``config.attributes["connection"]`` (Alembic's cookbook) and the
  environment variables of ``concurrent_db_alembic_env`` pointed at the template.
* ``env.py`` that reads a variable naming the user's own database that nothing redirects
  is refused before anything runs; afterwards the template must hold ``alembic_version``
  at the heads, or it is dropped (env.py migrated some other database).
* ``logging.config.fileConfig()`` in env.py is undone: the building worker logs like the others.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .backends import Backend
from .errors import ConfigError, ScriptError
from .incremental import step_digest
from .options import names
from .template import Populator
from .url import DatabaseURL, parse_url

__all__ = ["AlembicProject", "alembic_populator", "preserved_logging", "redirects"]

_FIELDS = ("url", "database", "host", "port", "user", "password")
_ENV_READ = re.compile(r"""(?:environ(?:\.get)?\s*[\[(]|getenv\s*\()\s*['"]([A-Za-z_][A-Za-z0-9_]*)['"]""")


class AlembicProject:
    """An ``alembic.ini`` and the scripts it names, read as files: neither Alembic nor env.py
    is imported until a template is built."""

    def __init__(self, ini: Path) -> None:
        self.ini = ini.resolve()
        self.directory = self.ini.parent
        try:
            self.options = self._main_options()
        except ConfigError:
            raise
        except Exception as exc:  # configparser's errors
            raise ConfigError(
                f"alembic.ini {str(ini)!r} is not usable ({type(exc).__name__}: {_one_line(str(exc))}); "
                f"fix the file or {names('alembic_ini')}"
            ) from None
        script_dir, locations = self._locations()
        self.env_py = (script_dir / "env.py").resolve()
        if not self.env_py.is_file():
            raise ConfigError(
                f"alembic.ini {str(ini)!r}: its script_location {str(script_dir)!r} has no env.py; "
                f"fix script_location or {names('alembic_ini')}"
            )
        self.revisions = sorted(
            path.resolve()
            for location in locations
            for path in location.rglob("*.py")
            if "__pycache__" not in path.parts
        )

    def _locations(self) -> tuple[Path, list[Path]]:
        """The script directory and the revision directories, as Alembic finds them (paths are
        relative to the ini file's directory, where Alembic runs); a package resource
        (``myapp:migrations``) is resolved by Alembic itself, which is imported only then."""
        location = self.resolved["script_location"]
        if ":" in location and not Path(location).is_absolute():
            return self._alembic_locations()
        script_dir = self.directory / location
        versions = self.resolved.get("version_locations", "")
        separators = {"space": " ", "newline": "\n", "os": os.pathsep, ":": ":", ";": ";"}
        separator = separators.get(self.resolved.get("version_path_separator", ""))
        parts = [p for p in (versions.split(separator) if separator else versions.split()) if p.strip()]
        locations = [self.directory / p.strip() for p in parts] or [script_dir / "versions"]
        return script_dir, locations

    def _alembic_locations(self) -> tuple[Path, list[Path]]:
        script = self.script
        return Path(script.dir), [Path(p) for p in script._version_locations]

    @property
    def script(self) -> Any:
        """Alembic's ``ScriptDirectory`` (imports Alembic; the revision files only when asked for
        their heads)."""
        try:
            from alembic.config import Config
            from alembic.script import ScriptDirectory
        except ImportError:
            raise ConfigError(
                f"{names('alembic_ini')} needs Alembic, which is not installed: "
                "pip install 'pytest-concurrent-db[sqlalchemy]'"
            ) from None
        try:
            with working_directory(self.directory):
                return ScriptDirectory.from_config(Config(str(self.ini)))
        except Exception as exc:  # Alembic's CommandError: a missing directory
            raise ConfigError(
                f"alembic.ini {str(self.ini)!r} is not usable ({type(exc).__name__}: {_one_line(str(exc))}); "
                f"fix the file or {names('alembic_ini')}"
            ) from None

    def _main_options(self) -> dict[str, str]:
        import configparser

        parser = configparser.ConfigParser(defaults={"here": str(self.directory)})
        if not parser.read(self.ini, encoding="utf-8"):
            raise ConfigError(f"alembic.ini {str(self.ini)!r} cannot be read; fix {names('alembic_ini')}")
        if not parser.has_option("alembic", "script_location"):
            raise ConfigError(
                f"alembic.ini {str(self.ini)!r} has no script_location in an [alembic] section; "
                f"add it, or fix {names('alembic_ini')}"
            )
        #: with %(here)s and other interpolations done, for the paths
        paths = ("script_location", "version_locations", "version_path_separator")
        self.resolved = {key: parser.get("alembic", key) for key in paths if parser.has_option("alembic", key)}
        return {key: value for key, value in parser.items("alembic", raw=True) if key != "sqlalchemy.url"}

    def key(self) -> str:
        """Hash of env.py, the revision files and the ini's options."""
        digest = hashlib.sha256()
        digest.update(repr(sorted(self.options.items())).encode())
        for path in (self.env_py, *self.revisions):
            digest.update(str(self.shown(path)).encode())
            digest.update(path.read_bytes())
        return f"alembic:{digest.hexdigest()}"

    def resume_key(self) -> str:
        """Hash of what the template depends on apart from the revisions: the ini's options
        and env.py (a change of either means a full build)."""
        digest = hashlib.sha256()
        digest.update(repr(sorted(self.options.items())).encode())
        digest.update(self.env_py.read_bytes())
        return f"alembic-resume:{digest.hexdigest()}"

    def steps(self) -> tuple[str, ...]:
        """One digest per revision file (its path and content): ``upgrade head`` on a copy of
        a template that holds some of them applies the others."""
        return tuple(step_digest(str(self.shown(path)), path.read_bytes()) for path in self.revisions)

    def shown(self, path: Path) -> Path:
        """``path`` relative to the ini file's directory when it is inside it."""
        return path.relative_to(self.directory) if path.is_relative_to(self.directory) else path

    def env_variables(self) -> list[str]:
        """The environment variables env.py reads by name (``os.environ[...]``, ``getenv(...)``)."""
        return sorted(set(_ENV_READ.findall(self.env_py.read_text(encoding="utf-8", errors="replace"))))

    def config(self, url: str) -> Any:
        from alembic.config import Config

        config = Config(str(self.ini))
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
        return config

    def failure(self, exc: BaseException) -> ScriptError:
        """One line for an upgrade that raised: the revision file (or env.py) and line where it
        failed, the driver's message and the statement."""
        from .sqla.metadata import statement_error

        where = _deepest_frame(exc, {*self.revisions, self.env_py})
        fix = "fix it and run again (the template was dropped; nothing else was changed)"
        if where is None:
            return statement_error(exc, "alembic upgrade head", fix)
        path, line = where
        shown = self.shown(path)
        kind = "env.py" if path == self.env_py else "revision"
        label = f"alembic {kind} {shown}" if kind == "revision" else f"alembic {shown}"
        return statement_error(exc, f"{label} (line {line})", fix, source=str(shown), line=line)


def _deepest_frame(exc: BaseException, files: set[Path]) -> tuple[Path, int] | None:
    found = None
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        tb = error.__traceback__
        while tb is not None:
            path = Path(tb.tb_frame.f_code.co_filename)
            if path in files:
                found = (path, tb.tb_lineno)
            tb = tb.tb_next
        if found is not None:
            return found
        error = error.__cause__ or error.__context__
    return None


def redirects(spec: str) -> list[tuple[str, str]]:
    """``DATABASE_URL POSTGRES_DB={database}`` as [(variable, template)]; a bare name means
    ``{url}``, the template's SQLAlchemy URL."""
    out = []
    for item in spec.split():
        name, sep, value = item.partition("=")
        value = value if sep else "{url}"
        try:
            fields = {field for _, field, _, _ in string.Formatter().parse(value) if field is not None}
        except ValueError:
            fields = {"?"}
        if not name.isidentifier() or not fields <= set(_FIELDS):
            raise ConfigError(
                f"{item!r} is not VAR or VAR=text with {', '.join('{' + f + '}' for f in _FIELDS)}; "
                f"fix {names('alembic_env')}"
            )
        out.append((name, value))
    return out


def _values(url: DatabaseURL, sa_url: str) -> dict[str, str]:
    return {
        "url": sa_url,
        "database": url.database,
        "host": url.host or "",
        "port": str(url.port or ""),
        "user": url.username or "",
        "password": url.password or "",
    }


def _names_database(value: str, own: DatabaseURL) -> bool:
    """Whether the variable's ``value`` names the database ``own`` (a URL to it, or its name)."""
    if value.strip() == own.database:
        return True
    scheme, sep, rest = value.partition("://")
    if not sep:
        return False
    try:
        parsed = parse_url(scheme.split("+")[0] + "://" + rest)
    except ConfigError:
        return False
    same_file = own.backend == "sqlite" and Path(parsed.database).resolve() == Path(own.database).resolve()
    return parsed.backend == own.backend and (parsed.database == own.database or same_file)


def alembic_populator(ini: Path, env_spec: str, own: DatabaseURL | None) -> Populator:
    """``alembic upgrade head`` of ``ini`` on the template (see the module docstring).
    ``own`` is the user's URL: env.py must not migrate that database."""
    project = AlembicProject(ini)
    redirected = redirects(env_spec)

    def apply(backend: Backend, connection: Any, template: str) -> None:
        from alembic import command

        from .sqla.urls import engine_over, sqlalchemy_url

        _refuse_own_database(project, redirected, own)
        url = parse_url(backend.url_for(template))
        sa_url = sqlalchemy_url(url)
        values = _values(url, sa_url)
        env = {name: value.format(**values) for name, value in redirected}
        connection.commit()  # SQLAlchemy rolls its first connection back after reading settings
        engine = engine_over(backend.name, connection)
        with working_directory(project.directory), environment(env), preserved_logging():
            with engine.connect() as sa_connection:
                config = project.config(sa_url)
                config.attributes["connection"] = sa_connection
                try:
                    command.upgrade(config, "head")
                    sa_connection.commit()
                except Exception as exc:
                    raise project.failure(exc) from None
            _verify(project, connection, template)

    return Populator(
        label=f"alembic upgrade head ({ini})",
        key=project.key(),
        apply=apply,
        resume_key=project.resume_key(),
        steps=project.steps(),
    )


def _refuse_own_database(project: AlembicProject, redirected: list[tuple[str, str]], own: DatabaseURL | None) -> None:
    if own is None:
        return
    done = {name for name, _ in redirected}
    for name in project.env_variables():
        value = os.environ.get(name)
        if name not in done and value and _names_database(value, own):
            raise ConfigError(
                f"alembic env.py reads {name}, which names your own database {own.database!r}, and nothing "
                f"points it at the template: add {name} to {names('alembic_env')} (nothing was migrated)"
            )


def _verify(project: AlembicProject, connection: Any, template: str) -> None:
    heads = set(project.script.get_heads())
    cursor = connection.cursor()
    try:
        cursor.execute("SELECT version_num FROM alembic_version")
        found = {row[0] for row in cursor.fetchall()}
    except Exception:  # no such table: nothing was migrated here
        found = set()
        connection.rollback()
    finally:
        cursor.close()
    if found != heads:
        have = f"revision {', '.join(sorted(found))}" if found else "no alembic_version"
        raise ConfigError(
            f"after alembic upgrade head the template {template} has {have}, not the heads "
            f"{', '.join(sorted(heads)) or '(none)'}: env.py migrated another database; make it use "
            f"config.attributes['connection'] or the sqlalchemy.url Alembic passes, or name the variables "
            f"it reads in {names('alembic_env')} (the template was dropped)"
        )


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def preserved_logging() -> Iterator[None]:
    """Undo what ``logging.config.fileConfig()`` does: loggers disabled, levels, handlers,
    propagation; loggers it created go back to their defaults."""
    manager = logging.Logger.manager
    root = logging.getLogger()
    saved_root = (root.level, list(root.handlers), root.disabled)
    saved = {
        name: (logger.level, list(logger.handlers), logger.disabled, logger.propagate)
        for name, logger in list(manager.loggerDict.items())
        if isinstance(logger, logging.Logger)
    }
    try:
        yield
    finally:
        root.level, root.handlers[:], root.disabled = saved_root[0], saved_root[1], saved_root[2]
        for name, logger in list(manager.loggerDict.items()):
            if not isinstance(logger, logging.Logger):
                continue
            level, handlers, disabled, propagate = saved.get(name, (logging.NOTSET, [], False, True))
            logger.setLevel(level)
            logger.handlers[:] = handlers
            logger.disabled, logger.propagate = disabled, propagate


def _one_line(text: str) -> str:
    return " ".join(text.split())
