"""pytest-concurrent-db: every pytest-xdist worker gets its own database, cloned from a template.

The public names are re-exported here; everything else is private.  The engine
(:class:`Engine`) runs without pytest.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .engine import ConcurrentDatabase, Engine  # after __version__, which engine reads
from .errors import (
    BackendUnavailableError,
    ConcurrentDBError,
    ConfigError,
    IsolationError,
    LockTimeoutError,
    NotOursError,
    PrivilegeError,
    ScriptError,
)

__all__ = [
    "BackendUnavailableError",
    "ConcurrentDBError",
    "ConcurrentDatabase",
    "ConfigError",
    "Engine",
    "IsolationError",
    "LockTimeoutError",
    "NotOursError",
    "PrivilegeError",
    "ScriptError",
    "__version__",
]
