"""The one place that decides where our files live: SQLite templates and clones, the
template file locks, and the intent files of copies in flight.

The pytest plugin, the public API and the CLI all build a :class:`Directories` here
(pytest's ``tmpdir.py`` does the same with ``TempPathFactory.from_config``), so that a
pytest run, a script using the API and ``python -m pytest_concurrent_db list`` agree
on where a project's templates are.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .url import DatabaseURL

__all__ = ["CACHE_SUBDIR", "Directories", "read_json_list", "server_lock_dir", "write_json_list"]

#: Where pytest's cache plugin keeps ``config.cache.mkdir("concurrent_db")``, relative to the root.
CACHE_SUBDIR = Path(".pytest_cache") / "d" / "concurrent_db"


def server_lock_dir() -> Path:
    """The machine-wide directory of template file locks (and intents) for server backends:
    every project and run of this user on this machine waits on the same lock files."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"pytest-concurrent-db-{uid}"


@dataclass(frozen=True)
class Directories:
    """Where one process keeps its files.

    ``templates``: SQLite templates and the markers of SQLite clones (shared by every run
    of the project, so that they survive between runs); ``clones``: SQLite clones of
    this run; ``locks``: template file locks and intent files (beside the SQLite
    templates, machine-wide for servers).  ``scratch``: ``clones`` is a temporary
    directory of ours, removed by :meth:`cleanup` once empty.
    """

    templates: Path
    clones: Path
    locks: Path
    scratch: bool = False

    @classmethod
    def create(cls, url: DatabaseURL, templates: Path, clones: Path | None = None) -> Directories:
        """The directories for ``url`` with SQLite templates in ``templates`` and clones in
        ``clones`` (default: a new temporary directory, removed by :meth:`cleanup`)."""
        scratch = clones is None and url.backend == "sqlite"
        if clones is None:  # only SQLite keeps clones in files
            clones = Path(tempfile.mkdtemp(prefix="pytest-concurrent-db-")) if scratch else Path(templates)
        locks = templates / "locks" if url.backend == "sqlite" else server_lock_dir()
        return cls(templates=Path(templates), clones=Path(clones), locks=locks, scratch=scratch)

    @classmethod
    def for_project(cls, url: DatabaseURL, root: Path, clones: Path | None = None) -> Directories:
        """The directories of the project rooted at ``root``: SQLite templates where pytest's
        cache plugin keeps them (``<root>/.pytest_cache/d/concurrent_db``)."""
        return cls.create(url, root / CACHE_SUBDIR, clones)

    @classmethod
    def without_cache(cls, url: DatabaseURL, root: Path, clones: Path | None = None) -> Directories:
        """For a pytest run without the cache plugin: a stable per-project directory under the
        system temp dir, so that SQLite templates still survive between runs."""
        project = hashlib.sha256(str(root).encode()).hexdigest()[:12]
        return cls.create(url, server_lock_dir() / "sqlite-templates" / project, clones)

    @property
    def intents(self) -> Path:
        """Intent files: a database the server made for a process that died before marking it."""
        return self.locks / "intents"

    def cleanup(self) -> None:
        """Remove the temporary clone directory if it is ours and nothing is left in it."""
        if self.scratch and self.clones.is_dir() and not any(self.clones.iterdir()):
            shutil.rmtree(self.clones, ignore_errors=True)


def read_json_list(path: Path) -> list[object]:
    """The JSON list in file ``path`` (a small history of ours); empty if it cannot be read
    or is not a list."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return data if isinstance(data, list) else []


def write_json_list(path: Path, items: Sequence[object]) -> None:
    """Replace file ``path`` with ``items`` as JSON, atomically; best effort (an error is ignored)."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(list(items)))
        os.replace(temporary, path)
