"""Template snapshots: a ready template kept as a file, restored on a server that has none.

A CI job with a fresh database server (a service container) finds no template on it; its
cache directory survives between jobs, though.  With ``--concurrent-db-snapshot-dir`` a
template, once built and marked ready, is written to ``<dir>/<fingerprint>.<backend>.snap``
(a temporary file, then a rename), and a later run that finds no ready template on its
server restores it from there under the same locks as a build: no migration runs.

A snapshot file is::

    pytest-concurrent-db snapshot\\n
    {header as JSON}\\n
    payload (the backend's own format)

The header holds the plugin version, the snapshot format, the backend, the server's major
version, the fingerprint, when it was made, the payload's size, a SHA-256 checksum (of the
header without it, and of the payload) and the counts the restored template must have
(tables, indexes, foreign keys, views, triggers, rows per table).  A snapshot that is
corrupt, truncated or made for something else is ignored with one warning, and the template
is built the normal way; a restored template is marked ready only once its counts match.

The backends' parts (:class:`Codec`): SQLite copies the template file with the backup API;
MySQL/MariaDB writes the clone recipe's DDL and the rows as ``INSERT`` statements, in
process; PostgreSQL runs ``pg_dump --format=custom`` / ``pg_restore``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from . import __version__
from .errors import ConcurrentDBError, ConfigError
from .markers import build_id, create_marked, new_marker, ready

if TYPE_CHECKING:
    from .backends import Backend
    from .options import Option
    from .site import Site

__all__ = [
    "FORMAT",
    "Census",
    "Codec",
    "SnapshotError",
    "SnapshotOutcome",
    "check_directory",
    "prune_snapshots",
    "read_header",
    "restore_snapshot",
    "snapshot_path",
    "write_snapshot",
]

#: The snapshot format: a file of another format is ignored.
FORMAT = 1
MAGIC = b"pytest-concurrent-db snapshot\n"
#: The longest header we read (a header counts the rows of every table: generous).
MAX_HEADER = 16 << 20
_CHUNK = 1 << 20


class SnapshotError(ConcurrentDBError):
    """A snapshot cannot be used (corrupt, truncated, another fingerprint, format or server),
    or a restore did not give the template it describes."""


@dataclass(frozen=True)
class Census:
    """What a template holds, counted: what a restored one must hold too."""

    tables: int = 0
    indexes: int = 0
    foreign_keys: int = 0
    views: int = 0
    triggers: int = 0
    rows: dict[str, int] = field(default_factory=dict)

    def differences(self, other: Census) -> list[str]:
        """What differs from ``other`` (the expected census), in words; [] when nothing does."""
        out = [
            f"{name} {getattr(self, name)} (expected {getattr(other, name)})"
            for name in ("tables", "indexes", "foreign_keys", "views", "triggers")
            if getattr(self, name) != getattr(other, name)
        ]
        rows = [
            f"{table} {self.rows.get(table)} (expected {other.rows.get(table)})"
            for table in sorted(set(self.rows) | set(other.rows))
            if self.rows.get(table) != other.rows.get(table)
        ]
        if rows:
            out.append("rows of " + ", ".join(rows[:5]) + (f" and {len(rows) - 5} more" if len(rows) > 5 else ""))
        return out

    @classmethod
    def from_json(cls, data: Any) -> Census:
        if not isinstance(data, dict):
            raise SnapshotError("its header has no counts")
        try:
            counts = {name: int(data[name]) for name in ("tables", "indexes", "foreign_keys", "views", "triggers")}
            rows = {str(k): int(v) for k, v in dict(data["rows"]).items()}
        except (KeyError, TypeError, ValueError):
            raise SnapshotError("its header's counts are malformed") from None
        return cls(**counts, rows=rows)


class Codec(Protocol):
    """A backend's part of snapshots (``backends/*_snapshot.py``)."""

    def problem(self) -> str | None:
        """Why this backend cannot write or restore snapshots here (e.g. pg_dump missing, with
        the package to install), or None."""
        ...

    def server_major(self) -> str:
        """The server's major version (SQLite: the library's), e.g. ``"PostgreSQL 15"``."""
        ...

    def dump(self, template: str, out: IO[bytes]) -> Census:
        """Write ready template ``template`` to ``out``; its census, counted on what was written."""
        ...

    def load(self, payload: Path, name: str) -> None:
        """Fill the empty database ``name`` (being built) from the payload file ``payload``."""
        ...

    def census(self, name: str) -> Census:
        """The census of database ``name``."""
        ...


def codec_for(backend: Backend, site: Site, run_id: str = "") -> Codec:
    """The snapshot codec of ``backend`` (``run_id``: of the databases it makes meanwhile)."""
    if backend.name == "sqlite":
        from .backends.sqlite_snapshot import SQLiteCodec

        return SQLiteCodec(backend)
    if backend.name == "postgresql":
        from .backends.postgresql_snapshot import PostgreSQLCodec

        return PostgreSQLCodec(backend, site, run_id)
    from .backends.mysql_snapshot import MySQLCodec

    return MySQLCodec(backend)


@dataclass
class SnapshotOutcome:
    """What the snapshot step of one template did, for the report."""

    #: the snapshot restored (empty: none)
    restored: str = ""
    #: the build id of the restored template
    build_id: str = ""
    #: the snapshot written
    written: str = ""
    seconds: float = 0.0
    #: one-line warnings (a snapshot ignored, snapshots unavailable)
    warnings: list[str] = field(default_factory=list)


def snapshot_path(directory: Path, fingerprint: str, backend: str) -> Path:
    """``<directory>/<fingerprint>.<backend>.snap``."""
    return Path(directory) / f"{fingerprint}.{backend}.snap"


def check_directory(option: Option, value: str, source: str, base: Path) -> Path:
    """The directory an option of kind ``dir`` (made if missing) or ``existing_dir`` names;
    ConfigError (one line) when it is not a usable directory."""
    text = value.strip()
    if not text:
        raise ConfigError(f"{source} is empty; give a directory or unset {option.names()}")
    path = Path(text).expanduser()
    path = path if path.is_absolute() else base / path
    if option.kind == "existing_dir":
        if not path.is_dir():
            raise ConfigError(f"{source} {str(path)!r} is not a directory; fix {option.names()}")
        return path
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{source} {str(path)!r} exists and is not a directory; fix {option.names()}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"{source}: cannot create the directory {str(path)!r} ({exc.strerror}); fix {option.names()}"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{source} {str(path)!r} is not writable; fix its permissions or {option.names()}")
    return path


# -- writing ----------------------------------------------------------------------------------


def _digest(header: dict[str, Any], payload: IO[bytes], length: int) -> str:
    """The checksum: SHA-256 of the header (without the checksum, canonical JSON) and the
    ``length`` payload bytes read from ``payload``; SnapshotError if fewer are there."""
    digest = hashlib.sha256(_canonical({k: v for k, v in header.items() if k != "checksum"}) + b"\n")
    left = length
    while left > 0:
        chunk = payload.read(min(_CHUNK, left))
        if not chunk:
            raise SnapshotError(f"it is truncated ({length - left} of {length} payload bytes)")
        digest.update(chunk)
        left -= len(chunk)
    return digest.hexdigest()


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def write_snapshot(backend: Backend, site: Site, template: str, fingerprint: str, *, run_id: str) -> SnapshotOutcome:
    """Write ready template ``template`` to its snapshot file (atomically), then keep only the
    newest :attr:`~.site.Site.snapshot_keep` snapshots.  Failures become a warning."""
    outcome = SnapshotOutcome()
    if site.snapshot_dir is None:
        return outcome
    started = time.perf_counter()
    final = snapshot_path(site.snapshot_dir, fingerprint, backend.name)
    codec = codec_for(backend, site, run_id)
    problem = codec.problem()
    if problem is not None:
        outcome.warnings.append(f"snapshots are off for this run: {problem}")
        return outcome
    stem = f".{final.name}.{os.getpid()}.{run_id}"
    payload_file = final.with_name(stem + ".payload")
    out_file = final.with_name(stem + ".tmp")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        with payload_file.open("wb") as out:
            census = codec.dump(template, out)
        header: dict[str, Any] = {
            "plugin": __version__,
            "format": FORMAT,
            "backend": backend.name,
            "server_major": codec.server_major(),
            "fingerprint": fingerprint,
            "template": template,
            "created": time.time(),
            "payload_bytes": payload_file.stat().st_size,
            "counts": asdict(census),
        }
        with payload_file.open("rb") as payload:
            header["checksum"] = _digest(header, payload, header["payload_bytes"])
        with out_file.open("wb") as out, payload_file.open("rb") as payload:
            out.write(MAGIC + _canonical(header) + b"\n")
            shutil.copyfileobj(payload, out, _CHUNK)
            out.flush()
            os.fsync(out.fileno())
        os.replace(out_file, final)
        outcome.written = str(final)
    except Exception as exc:
        outcome.warnings.append(f"cannot write the snapshot {final}: {_reason(exc)}; the run goes on without it")
    finally:
        payload_file.unlink(missing_ok=True)
        out_file.unlink(missing_ok=True)
    if outcome.written:
        prune_snapshots(site.snapshot_dir, site.snapshot_keep, current=final)
    outcome.seconds = time.perf_counter() - started
    return outcome


def prune_snapshots(directory: Path, keep: int, *, current: Path | None = None) -> list[Path]:
    """Delete all but the newest ``keep`` snapshots (``*.snap``, by modification time) in
    ``directory``; ``current`` (the one just written) always stays.  The deleted paths."""
    snaps = []
    for path in directory.glob("*.snap"):
        with contextlib.suppress(OSError):
            snaps.append((path.stat().st_mtime, path))
    snaps.sort(key=lambda item: item[0], reverse=True)
    kept = {current} if current is not None else set()
    removed = []
    for _, path in snaps:
        if path in kept:
            continue
        if len(kept) < max(keep, 1):
            kept.add(path)
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    return removed


# -- reading and restoring --------------------------------------------------------------------


def read_header(stream: IO[bytes]) -> dict[str, Any]:
    """The header of the snapshot ``stream`` (left at the payload's start); SnapshotError if it
    is not a snapshot header."""
    if stream.read(len(MAGIC)) != MAGIC:
        raise SnapshotError("it is not a pytest-concurrent-db snapshot (wrong magic line)")
    line = stream.readline(MAX_HEADER)
    if not line.endswith(b"\n"):
        raise SnapshotError("its header is truncated")
    try:
        header = json.loads(line)
    except ValueError:
        raise SnapshotError("its header is not valid JSON (corrupt)") from None
    if not isinstance(header, dict):
        raise SnapshotError("its header is malformed")
    return header


def _check(header: dict[str, Any], *, fingerprint: str, backend: str, server_major: str) -> None:
    if header.get("format") != FORMAT:
        raise SnapshotError(f"it has snapshot format {header.get('format')!r}, this plugin reads {FORMAT}")
    if header.get("backend") != backend:
        raise SnapshotError(f"it was made on {header.get('backend')!r}, not {backend}")
    if header.get("fingerprint") != fingerprint:
        raise SnapshotError(f"it holds another fingerprint ({str(header.get('fingerprint'))[:12]})")
    if header.get("server_major") != server_major:
        raise SnapshotError(f"it was made on {header.get('server_major')!r}, the server is {server_major}")
    if not isinstance(header.get("payload_bytes"), int) or not isinstance(header.get("checksum"), str):
        raise SnapshotError("its header is malformed")


@contextlib.contextmanager
def _verified_payload(path: Path, **expected: str) -> Iterator[tuple[dict[str, Any], Path]]:
    """The header of snapshot ``path`` and its payload as a temporary file, once the header
    matches ``expected`` and the checksum holds."""
    with path.open("rb") as stream:
        header = read_header(stream)
        _check(header, **expected)
        length = int(header["payload_bytes"])
        start = stream.tell()
        if _digest(header, stream, length) != header["checksum"]:
            raise SnapshotError("its checksum does not match (corrupt)")
        if stream.read(1):
            raise SnapshotError("it has bytes after its payload (corrupt)")
        descriptor, name = tempfile.mkstemp(prefix="pytest-concurrent-db-snapshot-")
        payload = Path(name)
        try:
            with os.fdopen(descriptor, "wb") as out:
                stream.seek(start)
                left = length
                while left > 0:
                    chunk = stream.read(min(_CHUNK, left))
                    out.write(chunk)
                    left -= len(chunk)
            yield header, payload
        finally:
            payload.unlink(missing_ok=True)


def restore_snapshot(
    backend: Backend, site: Site, name: str, fingerprint: str, *, run_id: str, worker_id: str, manifest: str = ""
) -> SnapshotOutcome:
    """Restore template ``name`` from its snapshot, if there is one; the caller holds the
    template lock and found no ready template.  The restored template is marked ready only
    once its census matches the header's; on any problem it is dropped and the outcome says
    why (one warning), so that the caller builds it the normal way."""
    outcome = SnapshotOutcome()
    if site.snapshot_dir is None:
        return outcome
    path = snapshot_path(site.snapshot_dir, fingerprint, backend.name)
    if not path.is_file():
        return outcome
    started = time.perf_counter()
    codec = codec_for(backend, site, run_id)
    problem = codec.problem()
    if problem is not None:
        outcome.warnings.append(f"snapshots are off for this run: {problem}")
        return outcome
    try:
        expected = {"fingerprint": fingerprint, "backend": backend.name, "server_major": codec.server_major()}
        with _verified_payload(path, **expected) as (header, payload):
            census = Census.from_json(header.get("counts"))
            outcome.build_id = _restore(
                backend, site, codec, name,
                fingerprint=fingerprint, payload=payload, census=census, run_id=run_id, worker_id=worker_id,
                manifest=manifest,
            )  # fmt: skip
    except SnapshotError as exc:
        outcome.warnings.append(f"snapshot {path} ignored: {exc}; the template is built the normal way")
        return outcome
    except Exception as exc:
        outcome.warnings.append(
            f"snapshot {path} ignored: restoring it failed ({_reason(exc)}); the template is built the normal way"
        )
        return outcome
    with contextlib.suppress(OSError):
        os.utime(path)  # used: the newest to keep
    outcome.restored = str(path)
    outcome.seconds = time.perf_counter() - started
    return outcome


def _restore(
    backend: Backend,
    site: Site,
    codec: Codec,
    name: str,
    *,
    fingerprint: str,
    payload: Path,
    census: Census,
    run_id: str,
    worker_id: str,
    manifest: str = "",
) -> str:
    if backend.exists(name):  # stale or unfinished: ours to replace (we hold its lock)
        backend.drop(name)
    marker = new_marker(
        "template", run_id, worker_id, name, fingerprint=fingerprint, state="building", manifest=manifest
    )  # the manifest as a build writes it: later builds may start from this template (.incremental)
    create_marked(site, backend, name, marker, lambda: backend.create(name, marker))
    try:
        codec.load(payload, name)
        _verify(codec.census(name), census)
        done = ready(marker)
        backend.set_marker(name, done)
    except BaseException:
        with contextlib.suppress(Exception):  # never left half-restored
            backend.drop(name)
        raise
    return build_id(done)


def _verify(found: Census, expected: Census) -> None:
    differences = found.differences(expected)
    if differences:
        raise SnapshotError("the restored template does not match its header: " + "; ".join(differences))


def _reason(exc: BaseException) -> str:
    describe = getattr(exc, "describe", None)
    text = describe() if callable(describe) else str(exc)
    return " ".join(str(text).split()) or type(exc).__name__


def record_snapshot(stats: Any, outcome: SnapshotOutcome | None) -> None:
    """Copy ``outcome`` into a :class:`~.report.WorkerReport` (``stats``)."""
    if outcome is None:
        return
    stats.snapshot_restored = outcome.restored
    stats.snapshot_written = outcome.written
    stats.snapshot_seconds = outcome.seconds
    stats.snapshot_warnings.extend(w for w in outcome.warnings if w not in stats.snapshot_warnings)


def summary_lines(reports: Any) -> list[tuple[str, bool]]:
    """The summary's snapshot lines of one template's reports: (text, is a warning)."""
    out: list[tuple[str, bool]] = []
    for report in reports:
        if report.snapshot_restored:
            out.append(
                (
                    f"snapshot: template restored from {report.snapshot_restored} by {report.worker_id} "
                    f"in {report.template_seconds:.2f}s (no migration or schema file ran)",
                    False,
                )
            )
        if report.snapshot_written:
            out.append(
                (f"snapshot: written to {report.snapshot_written} by {report.worker_id} in "
                 f"{report.snapshot_seconds:.2f}s", False)
            )  # fmt: skip
        out += [(f"snapshot warning: {warning}", True) for warning in report.snapshot_warnings]
    return out
