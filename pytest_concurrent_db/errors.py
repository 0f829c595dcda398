"""Exceptions raised by the engine.

Every error carries a complete, one-line message: what failed, what was checked
and how to fix it.  They keep their arguments in ``args`` only, so they pickle
and can cross process boundaries (pytest-xdist workers).
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "ConcurrentDBError",
    "ConfigError",
    "IsolationError",
    "LockTimeoutError",
    "NotOursError",
    "PrivilegeError",
    "ScriptError",
]


class ConcurrentDBError(Exception):
    """Base class of every error pytest-concurrent-db raises."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class ConfigError(ConcurrentDBError):
    """A setting is invalid: bad URL, unknown scheme, missing driver, missing file."""


class BackendUnavailableError(ConcurrentDBError):
    """The database server could not be reached or refused the connection."""


class PrivilegeError(ConcurrentDBError):
    """The configured user may not create or drop databases."""


class LockTimeoutError(ConcurrentDBError):
    """A lock (file or server-side) could not be acquired in time."""


class ScriptError(ConcurrentDBError):
    """A schema file (or another SQL script) failed to apply.

    ``args``: (message, source, line, statement).
    """

    def __init__(self, message: str, source: str = "", line: int = 0, statement: str = "") -> None:
        super().__init__(message, source, line, statement)

    @property
    def source(self) -> str:
        return str(self.args[1])

    @property
    def line(self) -> int:
        return int(self.args[2])

    @property
    def statement(self) -> str:
        return str(self.args[3])


class NotOursError(ConcurrentDBError):
    """Refused to drop or change a database that pytest-concurrent-db did not create."""


class IsolationError(ConcurrentDBError):
    """A worker stopped being isolated in its own database."""
