"""pytest-concurrent-db: every pytest-xdist worker gets its own database, cloned from a template.

The public names are re-exported here; everything else is private.  Outside pytest,
:func:`build_template` makes (or reuses) a template and :func:`worker_database` /
:func:`clone_many` give isolated clones of it; :func:`verify_isolation` proves them
isolated.  See :mod:`pytest_concurrent_db.api`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .api import (  # after __version__, which the template fingerprint reads
    ClonePool,
    IsolationFailure,
    IsolationReport,
    build_template,
    clone_many,
    get_database_url,
    verify_isolation,
    worker_database,
)
from .clones import ConcurrentDatabase
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
from .progress import report as report_progress
from .template import Template

__all__ = [
    "BackendUnavailableError",
    "ClonePool",
    "ConcurrentDBError",
    "ConcurrentDatabase",
    "ConfigError",
    "IsolationError",
    "IsolationFailure",
    "IsolationReport",
    "LockTimeoutError",
    "NotOursError",
    "PrivilegeError",
    "ScriptError",
    "Template",
    "__version__",
    "build_template",
    "clone_many",
    "get_database_url",
    "report_progress",
    "verify_isolation",
    "worker_database",
]
