"""Exceptions raised by pytest-concurrent-db.

Every error says, on one line, what failed, what was checked and how to fix it.  The
``concurrent-db:`` prefix is added once, here, by :meth:`ConcurrentDBError.__str__`.
Errors that know more than a sentence keep it as fields (a lock timeout knows the
lock, the time waited and the holder; an isolation failure the two databases) and
build their message from them in :meth:`~ConcurrentDBError.describe`.  Every field
lives in ``args``, so errors pickle and cross process boundaries (pytest-xdist
workers) intact.
"""

from __future__ import annotations

from .options import names

__all__ = [
    "PREFIX",
    "BackendUnavailableError",
    "ConcurrentDBError",
    "ConfigError",
    "IsolationError",
    "LockTimeoutError",
    "NotOursError",
    "PrivilegeError",
    "ScriptError",
]

#: What every message starts with.
PREFIX = "concurrent-db: "


class ConcurrentDBError(Exception):
    """Base class of every error pytest-concurrent-db raises.

    ``args[0]`` is the message; the ``concurrent-db:`` prefix is added when it is shown.
    """

    def describe(self) -> str:
        """The message without the prefix (subclasses with fields build it here)."""
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        text = self.describe()
        if not text:
            return self.__class__.__name__
        return text if text.startswith(PREFIX) else PREFIX + text


class ConfigError(ConcurrentDBError):
    """A setting is invalid: bad URL, unknown scheme, missing driver, missing file."""


class BackendUnavailableError(ConcurrentDBError):
    """The database server could not be reached or refused the connection."""


class PrivilegeError(ConcurrentDBError):
    """The configured user may not create or drop databases."""


class LockTimeoutError(ConcurrentDBError):
    """A lock (file or server-side) could not be acquired in time.

    ``args``: (lock, waited seconds, holder, fix).  ``lock`` says which lock in words
    (e.g. ``"the PostgreSQL advisory lock 'template:cdb_app_tpl_…'"``).
    """

    def __init__(self, lock: str, waited: float = 0.0, holder: str = "", fix: str = "") -> None:
        super().__init__(lock, waited, holder, fix)

    @property
    def lock(self) -> str:
        return str(self.args[0])

    @property
    def waited(self) -> float:
        return float(self.args[1])

    @property
    def holder(self) -> str:
        return str(self.args[2])

    @property
    def fix(self) -> str:
        return str(self.args[3]) or f"raise {names('lock_timeout')} or stop that process"

    def describe(self) -> str:
        held = f" held by {self.holder}" if self.holder else ""
        return f"timed out after {self.waited:g}s waiting for {self.lock}{held}; {self.fix}"


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
    """Two databases that should be isolated are not: one sees the other's data, or they
    are the same database.

    ``args``: (first, second, detail): the two database names and what was seen.
    """

    def __init__(self, first: str, second: str = "", detail: str = "") -> None:
        super().__init__(first, second, detail)

    @property
    def first(self) -> str:
        return str(self.args[0])

    @property
    def second(self) -> str:
        return str(self.args[1])

    @property
    def detail(self) -> str:
        return str(self.args[2])

    def describe(self) -> str:
        if not self.second:
            return self.first
        detail = f": {self.detail}" if self.detail else ""
        return f"databases {self.first!r} and {self.second!r} are not isolated{detail}"


def describe_error(exc: BaseException) -> str:
    """``exc`` on one line, without our prefix: ours as :meth:`ConcurrentDBError.describe`
    says it, any other (a driver's) with its class name."""
    text = exc.describe() if isinstance(exc, ConcurrentDBError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())
