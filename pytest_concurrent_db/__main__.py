"""python -m pytest_concurrent_db list|prune|fingerprint: our databases on a server.

``list`` shows the templates, clones and spares we made for the URL's database name
(with ``--all``: for every project on the server): name, kind, run, live or dead, age,
size.  The URL's name ``app`` also finds the databases of a Django project whose
settings name ``app``: Django's test database is ``test_app``, so both ``cdb_app_…``
and ``cdb_test_app_…`` are this project's.  ``prune`` drops the dead ones — clones
whose run is gone, kept clones, abandoned template builds, out-of-date templates beyond
``--keep-templates`` that no live run uses (with ``--templates``: every template no live
run uses) — as a dry run unless ``--yes`` is given.  The same safety rules as the
plugin: only databases with our prefix and our marker, never one whose owner is alive.
``fingerprint [pytest options]`` prints the template fingerprint(s) of the project in the
current directory, one line each (fingerprint, backend, template name, what it serves),
resolved as a run would (:mod:`.fingerprints`), e.g. as a CI cache key for snapshots.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .backends import Backend
from .errors import ConcurrentDBError
from .janitor import Entry, Janitor
from .naming import PREFIX, new_run_id, sanitize
from .paths import CACHE_SUBDIR, Directories
from .site import Site
from .url import DatabaseURL, parse_url


def _site(args: argparse.Namespace) -> Site:
    text = args.url or os.environ.get("CONCURRENT_DB_URL")
    url: DatabaseURL = parse_url(text) if text else DatabaseURL(backend="sqlite", database="")
    if args.dir:
        directories = Directories.create(url, Path(args.dir), Path(args.dir))
    else:
        root = Path.cwd()
        directories = Directories.for_project(url, root, root / CACHE_SUBDIR)
    return Site(url, directories, keep_templates=args.keep_templates)


#: The first line of ``--help``: plain text (argparse prints it as it is).
DESCRIPTION = (
    "List or prune the databases pytest-concurrent-db made on a server (or in an SQLite template directory); "
    "print the project's template fingerprints."
)
EPILOG = """\
commands:
  list    our templates, clones and spares for the URL's database name, live or dead
  prune   drop the dead ones (a dry run unless --yes is given): clones of runs that are gone,
          kept clones, abandoned template builds, dead spares, and out-of-date templates beyond
          --keep-templates that no live run uses (--templates: every template no live run uses)
  fingerprint [pytest options]
          the template fingerprint(s) of the project in the current directory, resolved as a
          run would (ini, conftest, Django); reads only the server's version: a CI cache key

The URL's database name also stands for Django's test database name: --url .../app finds
the databases of runs on 'app' and those of Django runs on 'test_app'.
Only databases with our name prefix (cdb_) and our marker are ever dropped, never a live run's.
"""


def scope_prefixes(site: Site) -> tuple[str, ...]:
    """The name prefixes of the project the URL names: ``cdb_<name>_`` and, for Django's test
    database name of that database, ``cdb_test_<name>_`` (Django calls the test database of
    ``NAME = "app"`` ``test_app``, and the plugin names its templates and clones after it)."""
    bases = [site.base] if site.base.startswith("test_") else [site.base, "test_" + site.base]
    return tuple(dict.fromkeys(f"{PREFIX}{sanitize(base)}_" for base in bases))


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _size(size: int | None) -> str:
    if size is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024:
            return f"{size:.0f}{unit}"
        size //= 1024
    return f"{size}TB"


def _table(entries: Sequence[Entry]) -> str:
    rows = [("NAME", "KIND", "RUN", "WORKER", "STATUS", "AGE", "SIZE")]
    for e in sorted(entries, key=lambda e: (e.kind != "template", e.name)):
        status = e.state if e.state == "building" else ("live" if e.live else "dead")
        if e.state == "kept" and not e.live:
            status = "kept"
        if e.kind == "template" and e.state == "ready":
            status = "in use" if e.live else "unused"
        if e.kind == "spare" and e.state == "ready":
            status = "being taken" if e.live else "waiting"  # for the next run's worker of that id
        rows.append((e.name, e.kind, e.run_id, e.worker_id or "-", status, _age(e.age_seconds), _size(e.size_bytes)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def build_parser() -> argparse.ArgumentParser:
    """The command line (the docs render its help from here)."""
    parser = argparse.ArgumentParser(
        prog="python -m pytest_concurrent_db",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["list", "prune", "fingerprint"], help="list, prune or fingerprint")
    parser.add_argument("--url", help="database server URL (default: env CONCURRENT_DB_URL, else SQLite)")
    parser.add_argument("--dir", help="SQLite template directory (default: ./.pytest_cache/d/concurrent_db)")
    parser.add_argument(
        "--keep-templates",
        type=int,
        default=None,
        metavar="N",
        help="prune: out-of-date templates to keep per database name (default: 2)",
    )
    parser.add_argument(
        "--templates",
        action="store_true",
        help="prune: also drop the newest templates when no live run uses them (as --keep-templates 0)",
    )
    parser.add_argument("--yes", action="store_true", help="prune: really drop (default: dry run)")
    parser.add_argument(
        "--all",
        action="store_true",
        help="every project's databases on the server (default: only those of the URL's database name)",
    )
    return parser


def _fingerprint(args: Sequence[str]) -> int:
    from .fingerprints import project_fingerprints

    if any(arg in ("-h", "--help") for arg in args):
        print("usage: python -m pytest_concurrent_db fingerprint [pytest options, e.g. --concurrent-db-url URL]")
        return 0
    try:
        found = project_fingerprints(args)
    except ConcurrentDBError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for entry in found:
        print(entry.line())
    return 0 if found else 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "fingerprint":  # its options are pytest's: not parsed here
        return _fingerprint(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.keep_templates is not None and args.keep_templates < 0:
        parser.error(f"--keep-templates must be 0 or more, not {args.keep_templates}")
    if args.templates and args.keep_templates:
        parser.error("--templates drops every template no live run uses: leave out --keep-templates")
    args.keep_templates = 0 if args.templates else (2 if args.keep_templates is None else args.keep_templates)
    try:
        site = _site(args)
        run_id = "cli" + new_run_id()
        backend: Backend = site.open_backend(run_id, "cli")
        janitor = Janitor(backend, site, run_id)
        try:
            backend.preflight()
            scoped = not args.all and bool(site.url.database) and not site.url.is_memory
            prefix = scope_prefixes(site) if scoped else PREFIX
            if args.command == "list":
                entries = janitor.inventory(prefix, exact=scoped)
                print(_table(entries) if entries else "no databases of pytest-concurrent-db found")
                return 0
            doomed = janitor.prune(dry_run=not args.yes, everything=True, prefix=prefix, exact=scoped)
            verb = "dropped" if args.yes else "would drop (dry run; pass --yes to drop)"
            print(f"{verb}: {len(doomed)} database(s)")
            for entry in doomed:
                print(f"  {entry.name} ({entry.kind}, run {entry.run_id})")
            for each in janitor.not_dropped:
                print(f"error: not dropped: {each}", file=sys.stderr)
            return 1 if janitor.not_dropped else 0
        finally:
            backend.close()
    except ConcurrentDBError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
