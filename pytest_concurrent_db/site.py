"""Where databases are made: one server (or SQLite directory pair), a project's base name,
the directories and the tunables every lifecycle step needs.  A frozen value, passed
along instead of fields on a long-lived engine object.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from .backends import Backend, load_backend
from .backends.base import SERVER_WAIT
from .naming import PREFIX, sanitize
from .paths import Directories
from .url import DatabaseURL

__all__ = ["Site", "base_name"]


def base_name(url: DatabaseURL) -> str:
    """The name our databases for ``url`` are called after: its database name (SQLite: the
    file's stem; ``test`` for the default)."""
    if url.backend == "sqlite":
        return Path(url.database).stem if url.database and not url.is_memory else "test"
    return url.database or "test"


@dataclass(frozen=True)
class Site:
    """One server and project: everything needed to open a backend and name databases."""

    url: DatabaseURL
    directories: Directories
    base: str = ""
    lock_timeout: float = 300.0
    keep_templates: int = 2
    clone_strategy: str = "auto"
    #: template snapshots (:mod:`.snapshot`): their directory (None: off), how many to keep,
    #: and where pg_dump/pg_restore are (None: PATH)
    snapshot_dir: Path | None = None
    snapshot_keep: int = 3
    pg_bin: Path | None = None

    def __post_init__(self) -> None:
        if not self.base:
            object.__setattr__(self, "base", base_name(self.url))

    @property
    def backend_name(self) -> str:
        return self.url.backend

    @property
    def own_prefix(self) -> str:
        """The name prefix of this project's databases (``cdb_<base>_``)."""
        return f"{PREFIX}{sanitize(self.base)}_"

    @property
    def label(self) -> str:
        """The URL for people: no password; a description of the SQLite default."""
        if self.url.backend == "sqlite" and not self.url.database:
            return "sqlite (default: pytest cache + temp dirs)"
        return str(self.url)

    @property
    def intent_prefix(self) -> str:
        """The file-name prefix of this server's intent files (one directory serves every server)."""
        server = f"{self.url.backend}://{self.url.host or ''}:{self.url.port or ''}"
        return hashlib.sha256(server.encode()).hexdigest()[:12] + "-"

    def open_backend(self, run_id: str, worker_id: str, purpose: str = "", *, wait: bool = False) -> Backend:
        """A backend (its own control connection, opened on first use) for this site; ``wait``:
        it waits for a server that is not up, up to the lock timeout (at most
        :data:`~.backends.base.SERVER_WAIT`): a run's processes do."""
        suffix = f" {purpose}" if purpose else ""
        return load_backend(
            self.url,
            application_name=f"pytest-concurrent-db {run_id} {worker_id}{suffix}",
            template_dir=self.directories.templates,
            clone_dir=self.directories.clones,
            strategy=None if self.clone_strategy == "auto" else self.clone_strategy,
            connect_wait=min(self.lock_timeout, SERVER_WAIT) if wait else 0.0,
        )
