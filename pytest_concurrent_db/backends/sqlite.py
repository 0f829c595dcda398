"""SQLite: templates are files in a template directory (pytest's cache), clones are
files in a clone directory (pytest's base temp dir), copied with the backup API.

A template is built at ``<name>.building.db`` and moved into place with
``os.replace`` only when complete, so a half-built template is never seen.  Each
database we create has a marker file: ``<template_dir>/<name>.json`` for templates,
``<template_dir>/clones/<name>.json`` for clones (holding the clone's path too), so
that every run on this machine sees every clone — a live run's (its template is in
use) and a killed run's (to be reaped).  A ``.db`` without a marker is not ours and
is never deleted.  Clones may also live in memory
(``memory=True``): a shared-cache in-memory database kept alive by an anchor
connection, for code that wants SQLite's in-memory speed.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import threading
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

from filelock import FileLock, Timeout

from ..errors import BackendUnavailableError, ConfigError, LockTimeoutError, NotOursError, ScriptError
from ..naming import lock_key
from ..options import names
from ..sqlscript import split_sql
from ..url import DatabaseURL
from .base import DatabaseInfo, Marker

__all__ = ["SQLiteBackend"]

_SUFFIXES = ("", "-wal", "-shm", "-journal")
#: Names we generate (``naming``): safe as file names as they are.
_PLAIN_NAME = re.compile(r"[a-z0-9_]{1,200}")


class SQLiteBackend:
    """Databases as files: see the module docstring."""

    name: ClassVar[str] = "sqlite"
    max_name_length: ClassVar[int] = 200
    records_intents: ClassVar[bool] = False  # the marker file is written before the database file

    def __init__(self, url: DatabaseURL, *, template_dir: Path, clone_dir: Path, memory: bool = False) -> None:
        self.url = url
        self.template_dir = Path(template_dir)
        self.clone_dir = Path(clone_dir)
        self.memory = memory
        self._locks: dict[str, FileLock] = {}
        self._anchors: dict[str, sqlite3.Connection] = {}

    # -- paths -------------------------------------------------------------------
    @staticmethod
    def _check_name(name: str) -> None:
        if not name or name in (".", "..") or any(ch in name for ch in "/\\\0"):
            raise ConfigError(f"{name!r} is not a valid SQLite database name (no path separators)")

    def _dir_for(self, marker: Marker) -> Path:
        return self.template_dir if marker.kind == "template" else self.clone_dir

    @property
    def _registry(self) -> Path:
        return self.template_dir / "clones"

    def _find(self, name: str) -> Path | None:
        """The ``.db`` path of ``name`` (ready template, building template or clone)."""
        entry = self._read_entry(self._registry / f"{name}.json")
        candidates = [Path(entry["path"])] if entry and entry.get("path") else []
        candidates += [self.clone_dir / f"{name}.db", self.template_dir / f"{name}.db"]
        candidates.append(self.template_dir / f"{name}.building.db")
        return next((c for c in candidates if c.exists()), None)

    def _sidecar(self, name: str) -> Path | None:
        for path in (self._registry / f"{name}.json", self.template_dir / f"{name}.json"):
            if path.exists():
                return path
        return None

    @staticmethod
    def _read_entry(path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _memory_uri(self, name: str) -> str:
        return _uri(name, "mode=memory&cache=shared")

    def path(self, name: str) -> Path:
        """The file of database ``name`` (raises if it does not exist)."""
        found = self._find(name)
        if found is None:
            raise FileNotFoundError(name)
        return found

    # -- Backend protocol ----------------------------------------------------------
    def server_version(self) -> str:
        return f"SQLite {sqlite3.sqlite_version}"

    def server_started(self) -> float | None:
        """None: there is no server, and file locks die only with their process."""
        return None

    def preflight(self) -> None:
        for directory in (self.template_dir, self.clone_dir):
            try:
                directory.mkdir(parents=True, exist_ok=True)
                probe = directory / f".probe-{os.getpid()}-{threading.get_ident()}"  # threads of one process too
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as exc:
                raise BackendUnavailableError(
                    f"cannot write SQLite databases in {directory}: {exc.strerror}; "
                    f"fix its permissions or point {names('url')} at a writable location"
                ) from None

    def get_marker(self, name: str) -> Marker | None:
        sidecar = self._sidecar(name)
        if sidecar is None or (self._find(name) is None and name not in self._anchors):
            return None
        if sidecar.parent == self._registry:
            entry = self._read_entry(sidecar)
            return Marker.decode(entry.get("marker")) if entry else None
        return Marker.decode(sidecar.read_text(encoding="utf-8"))

    def exists(self, name: str) -> bool:
        return self._find(name) is not None or name in self._anchors

    def list_databases(self, prefix: str, *, sizes: bool = True) -> list[DatabaseInfo]:  # sizes: a stat
        found: dict[str, DatabaseInfo] = {}
        for directory in (self.template_dir, self.clone_dir):
            if not directory.is_dir():
                continue
            for path in directory.glob(f"{prefix}*.db"):
                name = path.name[: -len(".building.db")] if path.name.endswith(".building.db") else path.stem
                found[name] = DatabaseInfo(name, self.get_marker(name), _size(path))
        if self._registry.is_dir():
            for sidecar in self._registry.glob(f"{prefix}*.json"):
                name = sidecar.stem
                entry = self._read_entry(sidecar) or {}
                clone_path = Path(entry["path"]) if entry.get("path") else None
                found[name] = DatabaseInfo(name, Marker.decode(entry.get("marker")), _size(clone_path))
        return sorted(found.values(), key=lambda info: info.name)

    def _write_marker(self, name: str, marker: Marker, path: Path | None = None) -> None:
        if marker.kind == "clone":
            directory = self._registry
            text = json.dumps({"marker": marker.encode(), "path": str(path.resolve()) if path else None})
        else:
            directory = self.template_dir
            text = marker.encode()
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f"{name}.json.{os.getpid()}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, directory / f"{name}.json")

    def create(self, name: str, marker: Marker) -> None:
        self._check_name(name)
        directory = self._dir_for(marker)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / (f"{name}.building.db" if marker.state == "building" else f"{name}.db")
        self._write_marker(name, marker, path)
        sqlite3.connect(path).close()

    def set_marker(self, name: str, marker: Marker) -> None:
        path = self.path(name)
        if marker.kind == "template" and marker.state == "ready" and path.name.endswith(".building.db"):
            conn = sqlite3.connect(path)
            try:  # one self-contained file: no WAL left beside it
                conn.execute("PRAGMA journal_mode=DELETE")
                conn.execute("VACUUM")
            finally:
                conn.close()
            self._write_marker(name, marker)
            os.replace(path, path.with_name(f"{name}.db"))
        else:
            self._write_marker(name, marker, path)

    def adopt(self, name: str, marker: Marker) -> bool:
        """Never needed: the marker file is written before the database file."""
        return False

    def clone(self, template: str, name: str, marker: Marker) -> None:
        self._check_name(name)
        source = sqlite3.connect(_uri(self.path(template), "mode=ro"), uri=True)
        try:
            if self.memory:
                anchor = sqlite3.connect(self._memory_uri(name), uri=True, check_same_thread=False)
                source.backup(anchor)
                self._anchors[name] = anchor
                self._write_marker(name, marker)
                return
            directory = self._dir_for(marker)  # a template made from another: an incremental build
            directory.mkdir(parents=True, exist_ok=True)
            final = directory / (f"{name}.building.db" if marker.state == "building" else f"{name}.db")
            tmp = directory / f"{name}.{os.getpid()}.tmp"
            target = sqlite3.connect(tmp)
            try:
                source.backup(target)
            finally:
                target.close()
            self._write_marker(name, marker, final)
            os.replace(tmp, final)
        finally:
            source.close()

    def drop(self, name: str) -> None:
        anchor = self._anchors.pop(name, None)
        if anchor is not None:
            anchor.close()
        path = self._find(name)
        sidecar = self._sidecar(name)
        if path is not None and sidecar is None:
            raise NotOursError(
                f"refusing to delete {path}: it has no pytest-concurrent-db marker "
                f"({path.with_suffix('.json').name}), so it was not created by us"
            )
        if path is not None:
            base = str(path)
            for suffix in _SUFFIXES:
                Path(base + suffix).unlink(missing_ok=True)
        if sidecar is not None:
            sidecar.unlink(missing_ok=True)

    def connect(self, name: str, *, autocommit: bool = False) -> Any:
        if name in self._anchors:
            conn = sqlite3.connect(self._memory_uri(name), uri=True, timeout=30, check_same_thread=False)
        else:
            conn = sqlite3.connect(self.path(name), timeout=30, check_same_thread=False)
        if autocommit:
            conn.isolation_level = None
        return conn

    def url_for(self, name: str) -> str:
        if name in self._anchors:
            return f"sqlite:///{self._memory_uri(name)}"
        return self.url.with_database(str(self.path(name).resolve())).render()

    def location(self, name: str) -> str:
        """The file of ``name`` (:meth:`path`); an in-memory clone's shared-cache URI."""
        if name in self._anchors:
            return self._memory_uri(name)
        return str(self.path(name))

    def clone_method(self) -> str:
        return "sqlite3 backup API"

    def build_statements(self) -> tuple[str, ...]:
        """Session settings for the connection that builds a template: no fsync per commit.
        Safe, because a template is sealed (VACUUMed, journal_mode=DELETE) only when complete,
        and an unsealed one is always rebuilt."""
        return ("PRAGMA synchronous=OFF", "PRAGMA journal_mode=MEMORY")

    def run_script(self, connection: Any, text: str, source: str) -> None:
        for statement in split_sql(text, "sqlite"):
            try:
                connection.execute(statement.text)
            except sqlite3.Error as exc:
                connection.rollback()
                message = f"{source}:{statement.line}: {statement.snippet()}: {exc}"
                raise ScriptError(message, source, statement.line, statement.snippet()) from None
        connection.commit()

    # -- isolation probes ------------------------------------------------------------
    def current_database(self, connection: Any) -> str:
        rows = connection.execute("PRAGMA database_list").fetchall()
        filename = next((row[2] for row in rows if row[1] == "main"), "")
        if not filename:  # in memory: the anchor's name
            return next((name for name, anchor in self._anchors.items() if anchor is connection), ":memory:")
        path = Path(filename)
        if path.parent.resolve() in (self.clone_dir.resolve(), self.template_dir.resolve()):
            return path.name[: -len(".building.db")] if path.name.endswith(".building.db") else path.stem
        return str(path)

    def in_transaction(self, connection: Any) -> bool:
        return bool(connection.in_transaction)

    def other_sessions(self, name: str, connection: Any) -> list[str]:
        return []  # SQLite cannot tell

    def database_state(self, name: str) -> None:
        """Never needed: SQLite databases are not handed on (a copy is a file copy)."""

    def reset_counters(self, name: str, now: dict[str, int], wanted: dict[str, int]) -> int:
        return 0

    def row_counts(self, connection: Any) -> dict[str, int]:
        tables = [
            row[0]
            for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        if not tables:
            return {}
        query = " UNION ALL ".join(f"SELECT {_quote_literal(t)}, COUNT(*) FROM {_quote_ident(t)}" for t in tables)
        return {row[0]: row[1] for row in connection.execute(query)}

    # -- locks ---------------------------------------------------------------------------
    def _lock_path(self, key: str) -> Path:
        """The lock file of ``key``: a template's is ``locks/<name>.lock`` (the machine-wide
        template lock that server backends take besides their server lock: for SQLite it is
        the one lock), any other key's is named by its hash."""
        directory = self.template_dir / "locks"
        directory.mkdir(parents=True, exist_ok=True)
        kind, _, name = key.partition(":")
        if kind == "template" and _PLAIN_NAME.fullmatch(name):
            return directory / f"{name}.lock"
        return directory / f"{lock_key(key) & 0xFFFFFFFFFFFFFFFF:016x}.lock"

    def acquire_lock(self, key: str, timeout: float) -> None:
        path = self._lock_path(key)
        lock = FileLock(path, timeout=timeout)
        try:
            lock.acquire()
        except Timeout:
            holder = _read_holder(path)
            raise LockTimeoutError(f"the lock {key!r} ({path})", timeout, holder) from None
        path.with_suffix(".holder").write_text(f"pid {os.getpid()} on {socket.gethostname()}", encoding="utf-8")
        self._locks[key] = lock

    def try_lock(self, key: str) -> bool:
        if key in self._locks:
            return True
        lock = FileLock(self._lock_path(key), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            return False
        self._locks[key] = lock
        return True

    def release_lock(self, key: str) -> None:
        lock = self._locks.pop(key, None)
        if lock is not None:
            lock.release()

    def close(self) -> None:
        for key in list(self._locks):
            self.release_lock(key)


def _uri(path: Path | str, query: str) -> str:
    """An SQLite URI for file ``path``: ``?``, ``#`` and ``%`` in it would start the query,
    the fragment or an escape, so every such character is %-encoded (SQLite decodes it)."""
    return f"file:{quote(str(path))}?{query}"


def _size(path: Path | None) -> int | None:
    try:
        return path.stat().st_size if path is not None else None
    except OSError:
        return None


def _read_holder(path: Path) -> str:
    try:
        return path.with_suffix(".holder").read_text(encoding="utf-8").strip() or "an unknown process"
    except OSError:
        return "an unknown process"


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
