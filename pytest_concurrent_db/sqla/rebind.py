"""Point the application's own engines and sessionmakers at the worker's clone, and back.

Most applications build ``engine = create_engine(settings.DATABASE_URL)`` and
``SessionLocal = sessionmaker(engine)`` at import time.  ``concurrent_db_sqlalchemy_bind =
myapp.db:engine myapp.db:SessionLocal`` names them: an ``Engine`` attribute is replaced by
the worker's engine, a ``sessionmaker`` (or ``scoped_session``) is reconfigured to bind to
it; async ones get an async engine.  Everything is restored at the end of the session.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..clones import ConcurrentDatabase
from ..errors import ConfigError
from ..options import names
from .urls import async_url, import_object

__all__ = ["Rebinding"]

_UNSET = object()


@dataclass
class Target:
    """One named object: its owner (module or object), attribute and current value."""

    path: str
    owner: Any
    attribute: str
    value: Any


@dataclass
class Rebinding:
    targets: list[Target]
    _undo: list[Callable[[], None]] = field(default_factory=list)

    @classmethod
    def resolve(cls, paths: Sequence[str]) -> Rebinding:
        """Import every path (ConfigError for one that does not resolve or names something else)."""
        targets = []
        for path in paths:
            value = import_object(path, "sqlalchemy_bind")
            attribute = path.replace(":", ".").rpartition(".")[2]
            owner = import_object(_as_path(path), "sqlalchemy_bind")
            targets.append(Target(path, owner, attribute, value))
            _kind(value, path)  # fail before changing anything
        return cls(targets)

    def apply(self, engine: Any, database: ConcurrentDatabase) -> None:
        """Bind every target to ``engine`` (async ones to a new async engine on ``database``)."""
        async_engine: Any = None
        for target in self.targets:
            kind = _kind(target.value, target.path)
            if kind.startswith("async") and async_engine is None:
                from sqlalchemy.ext.asyncio import create_async_engine
                from sqlalchemy.pool import NullPool

                async_engine = create_async_engine(async_url(database.url), poolclass=NullPool)
                self._undo.append(async_engine.sync_engine.dispose)
            bound = async_engine if kind.startswith("async") else engine
            if kind in ("engine", "async engine"):
                setattr(target.owner, target.attribute, bound)
                self._undo.append(_setter(target.owner, target.attribute, target.value))
            else:
                factory = target.value.session_factory if kind == "scoped_session" else target.value
                previous = factory.kw.get("bind", _UNSET)
                target.value.configure(bind=bound)
                self._undo.append(_reconfigure(factory, previous))

    def restore(self) -> None:
        """Put every object back as it was (latest change first)."""
        while self._undo:
            self._undo.pop()()


def _as_path(path: str) -> str:
    """The import path of the object owning the last attribute of ``path``."""
    module, sep, attribute = path.partition(":")
    if not sep:
        return path.rpartition(".")[0]
    owner = attribute.rpartition(".")[0]
    return f"{module}:{owner}" if owner else module


def _kind(value: Any, path: str) -> str:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import scoped_session, sessionmaker

    try:  # SQLAlchemy's asyncio extension needs greenlet: without it there are no async objects
        from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
    except ImportError:
        AsyncEngine = async_sessionmaker = None  # type: ignore[assignment,misc]
    if isinstance(value, Engine):
        return "engine"
    if AsyncEngine is not None and isinstance(value, AsyncEngine):
        return "async engine"
    if isinstance(value, sessionmaker):
        return "sessionmaker"
    if async_sessionmaker is not None and isinstance(value, async_sessionmaker):
        return "async sessionmaker"
    if isinstance(value, scoped_session):
        return "scoped_session"
    raise ConfigError(
        f"{path!r} is a {type(value).__name__}, not an Engine, AsyncEngine, sessionmaker, async_sessionmaker "
        f"or scoped_session; fix {names('sqlalchemy_bind')}"
    )


def _setter(owner: Any, attribute: str, value: Any) -> Callable[[], None]:
    return lambda: setattr(owner, attribute, value)


def _reconfigure(factory: Any, previous: Any) -> Callable[[], None]:
    def undo() -> None:
        if previous is _UNSET:
            factory.kw.pop("bind", None)
        else:
            factory.kw["bind"] = previous

    return undo
