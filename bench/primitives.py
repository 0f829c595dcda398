"""Clone and drop primitives: the server's own way versus ours, on plain-SQL schemas.

For each backend and schema size (``make_schema.py``: 50, 300, 1000 tables) one
template is built through the package (:class:`~pytest_concurrent_db.worker.WorkerDatabases`,
exactly as a test run builds it), then every *case* clones it and drops the clone,
``--repeat`` times, the cases in a different (shuffled, seeded) order each round so
that drift on a busy machine hits them all alike and no case always follows the same one:

=============  =====================================================================
postgresql     raw ``CREATE DATABASE … TEMPLATE … STRATEGY WAL_LOG`` and ``FILE_COPY``
               (``DROP DATABASE``); ours: ``backend.clone()`` (server default strategy,
               and ``file_copy`` when the backend takes a strategy) and ``backend.drop()``
mysql          raw ``CREATE DATABASE`` + ``mysqldump tpl | mysql clone`` (``DROP DATABASE``);
               ours: ``backend.clone()`` (DDL replay keeping foreign keys, views,
               triggers) and ``backend.drop()``
sqlite         raw ``sqlite3`` backup API into a new file (``os.unlink``); ours:
               ``backend.clone()`` and ``backend.drop()``
every backend  ours (engine): ``WorkerDatabases.create_clone()`` / ``drop_clone()``, what a worker
               really does (lock, leftover check, marker, clone)
=============  =====================================================================

On PostgreSQL the FILE_COPY cases force checkpoints that slow down whatever runs next, so
they are measured as a group of their own, after the WAL_LOG group.  Ratios are paired: the median over the rounds of
(ours / raw) within one round.  The first round also checks every clone against the template (tables, foreign keys,
indexes, views, triggers, rows): a fast clone that loses something is flagged.

Every database created here is named ``cdb_bench_<tag>_…`` (``tag`` is new for each
process) and all of them are dropped at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib
import make_schema
from benchlib import PREFIX, log, summarize

FULL_SIZES = (50, 300, 1000)
QUICK_SIZES = (300,)  # the size the MySQL target names; 50 is dominated by fixed costs


@dataclass
class Case:
    """One way of making a clone (and removing it)."""

    key: str
    label: str
    kind: str  # "raw" | "ours"
    clone: Callable[[str], None]
    drop: Callable[[str], None]
    #: For ours: the key of the raw case it is compared with.
    baseline: str | None = None
    #: Cases of one group are measured together (rounds of the group), groups one after the other.
    group: str = ""
    #: round -> seconds
    clone_times: dict[int, float] = field(default_factory=dict)
    drop_times: dict[int, float] = field(default_factory=dict)
    check: dict[str, Any] | None = None
    error: str | None = None
    #: Untimed, before each clone (a spare for the next takeover).
    prepare: Callable[[], None] | None = None


def _names(backend: str, tag: str, tables: int) -> str:
    short = {"sqlite": "sq", "postgresql": "pg", "mysql": "my"}[backend]
    return f"{PREFIX}{tag}_{short}{tables}"


# -- subjects: one backend, one schema size ----------------------------------------------------
class Subject:
    """Builds the template of one schema on one backend and offers the cases."""

    backend_name = ""

    def __init__(self, tag: str, tables: int, schema: Path, workdir: Path) -> None:
        self.tag = tag
        self.tables = tables
        self.schema = schema
        self.workdir = workdir
        self.stem = _names(self.backend_name, tag, tables)
        self.created: list[str] = []
        self.url = self._url()
        self.engine = self._databases("w0")
        self.backend = self.engine.backend
        self.template = ""
        self.build_seconds = 0.0
        self.anchor: Any = None
        self.spare_engine: Any = None

    def _databases(self, worker_id: str, spares: int = 0) -> Any:
        """A worker's databases (template, clone, spares) as the plugin drives them."""
        from pytest_concurrent_db.paths import Directories
        from pytest_concurrent_db.site import Site
        from pytest_concurrent_db.worker import WorkerDatabases

        directories = Directories(self.workdir / "templates", self.workdir / "clones", self.workdir / "locks")
        site = Site(self.url, directories, base=self.stem[len("cdb_") :])
        return WorkerDatabases(site, run_id=self.tag, worker_id=worker_id, spares=spares)

    def _url(self) -> Any:
        from pytest_concurrent_db.url import parse_url

        return parse_url(benchlib.server_url(self.backend_name))

    def build(self) -> None:
        from pytest_concurrent_db.template import schema_populator

        populators = [schema_populator(self.schema)]
        started = time.perf_counter()
        self.template = self.engine.ensure_template(populators).name
        self.build_seconds = time.perf_counter() - started
        if self.backend_name != "sqlite":
            # A live clone (its lock held until the end) marks the template as in use, so that a
            # ``prune`` by another test run on a shared server never drops it under our feet.
            self.anchor = self._databases("anchor")
            self.anchor.ensure_template(populators)
            self.anchor.create_clone()
            # A worker of a warm run: its clone is a spare made (untimed) beforehand.
            self.spare_engine = self._databases("w1", spares=1)
            self.spare_engine.ensure_template(populators)

    def clone_name(self, case: str, rep: int) -> str:
        name = f"{self.stem}_{case}_{rep}"
        self.created.append(name)
        return name

    def ours_case(self, key: str, label: str, backend: Any, baseline: str) -> Case:
        from pytest_concurrent_db.backends import Marker

        def clone(name: str) -> None:
            backend.clone(self.template, name, Marker(kind="clone", run_id=self.tag, worker_id="bench",
                                                      template=self.template))

        return Case(key, label, "ours", clone, backend.drop, baseline=baseline)

    def engine_case(self, baseline: str) -> Case:
        def clone(name: str) -> None:
            self.engine.create_clone()

        def drop(name: str) -> None:
            self.engine.drop_clone()

        return Case("ours_engine", "ours: WorkerDatabases.create_clone() / drop_clone()", "ours", clone, drop,
                    baseline=baseline)

    def spare_case(self, baseline: str) -> Case:
        engine = self.spare_engine

        def prepare() -> None:
            engine.make_spares()

        def clone(name: str) -> None:
            engine.create_clone(refill=False)
            assert engine.stats.spare_claimed, "no spare was taken over"

        def drop(name: str) -> None:
            engine.drop_clone()

        label = "ours, warm run: WorkerDatabases.create_clone() takes over a spare made by an earlier run"
        return Case("ours_spare", label,
                    "ours", clone, drop, baseline=baseline, prepare=prepare)

    def guard(self, case: Case, name: str) -> Callable[[], None]:
        """Untimed: hold the clone's liveness lock (as the engine does) so that another
        test run's reaper on the same server never takes our clone for a dead one."""
        if case.kind != "ours" or case.key in ("ours_engine", "ours_spare"):
            return lambda: None
        key = f"clone:{name}"
        self.backend.try_lock(key)
        return lambda: self.backend.release_lock(key)

    def cases(self) -> list[Case]:
        raise NotImplementedError

    def inventory(self, name: str) -> dict[str, int]:
        raise NotImplementedError

    def actual_name(self, case: Case, name: str) -> str:
        if case.key in ("ours_engine", "ours_spare"):
            engine = self.engine if case.key == "ours_engine" else self.spare_engine
            assert engine.database is not None
            return engine.database.name
        return name

    def raw_drop_any(self, name: str) -> None:
        raise NotImplementedError

    def server_names(self) -> list[str]:
        """Names on the server (or in our directory) starting with this subject's stem."""
        return [info.name for info in self.backend.list_databases(self.stem)]

    def cleanup(self) -> list[str]:
        """Drop everything this subject created; returns what could not be dropped."""
        from pytest_concurrent_db.errors import NotOursError

        left: list[str] = []
        for engine in (self.engine, self.anchor, self.spare_engine):
            with contextlib.suppress(Exception):
                if engine is not None:
                    engine.drop_clone()
        names = list(dict.fromkeys([*self.created, *([self.template] if self.template else [])]))
        with contextlib.suppress(Exception):
            names += [n for n in self.server_names() if n not in names]
        for name in names:
            try:
                try:
                    self.backend.drop(name)
                except NotOursError:
                    self.raw_drop_any(name)
            except Exception as exc:
                left.append(f"{name}: {type(exc).__name__}: {exc}")
        for engine in (self.engine, self.anchor, self.spare_engine):
            with contextlib.suppress(Exception):
                if engine is not None:
                    engine.close()
        return left


class PostgreSQLSubject(Subject):
    backend_name = "postgresql"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._raw: Any = None

    def raw(self) -> Any:
        import psycopg

        if self._raw is None or self._raw.closed:
            u = self.url
            self._raw = psycopg.connect(host=u.host, port=u.port, user=u.username, password=u.password,
                                        dbname="postgres", autocommit=True)
        return self._raw

    def _raw_clone(self, strategy: str) -> Callable[[str], None]:
        from psycopg import sql

        def clone(name: str) -> None:
            self.raw().execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY {}").format(
                sql.Identifier(name), sql.Identifier(self.template), sql.SQL(strategy)))

        return clone

    def _raw_drop(self, name: str) -> None:
        from psycopg import sql

        self.raw().execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))

    def raw_drop_any(self, name: str) -> None:
        from psycopg import sql

        self.raw().execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def cases(self) -> list[Case]:
        from pytest_concurrent_db.backends.postgresql import PostgreSQLBackend

        out = [
            Case("raw_wal_log", "raw: CREATE DATABASE … TEMPLATE … STRATEGY WAL_LOG", "raw",
                 self._raw_clone("WAL_LOG"), self._raw_drop),
            Case("raw_file_copy", "raw: CREATE DATABASE … TEMPLATE … STRATEGY FILE_COPY", "raw",
                 self._raw_clone("FILE_COPY"), self._raw_drop, group="file_copy"),
            self.ours_case("ours", "ours: backend.clone() / drop() (server default strategy)", self.backend,
                           "raw_wal_log"),
        ]
        try:
            file_copy = PostgreSQLBackend(self.url, application_name="cdb-bench", strategy="file_copy")
        except TypeError:
            file_copy = None  # a backend without a strategy parameter
        if file_copy is not None:
            self._file_copy = file_copy
            case = self.ours_case("ours_file_copy", "ours: backend.clone() / drop(), strategy file_copy",
                                  file_copy, "raw_file_copy")
            case.group = "file_copy"
            out.append(case)
        out.append(self.engine_case("raw_wal_log"))
        out.append(self.spare_case("raw_wal_log"))
        return out

    def inventory(self, name: str) -> dict[str, int]:
        import psycopg

        u = self.url
        with psycopg.connect(host=u.host, port=u.port, user=u.username, password=u.password, dbname=name,
                             autocommit=True) as conn:
            one = lambda q: int(conn.execute(q).fetchone()[0])  # noqa: E731
            tables = [r[0] for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
                "AND table_type = 'BASE TABLE' ORDER BY 1")]
            return {
                "tables": len(tables),
                "foreign_keys": one("SELECT count(*) FROM pg_constraint c JOIN pg_namespace n "
                                    "ON n.oid = c.connamespace WHERE n.nspname = 'public' AND c.contype = 'f'"),
                "indexes": one("SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'"),
                "views": one("SELECT count(*) FROM pg_views WHERE schemaname = 'public'"),
                "triggers": one("SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                                "WHERE n.nspname = 'public' AND NOT t.tgisinternal"),
                "rows": _total_rows(conn, tables, '"'),
            }

    def cleanup(self) -> list[str]:
        left = super().cleanup()
        for conn in (self._raw, getattr(self, "_file_copy", None)):
            with contextlib.suppress(Exception):
                if conn is not None:
                    conn.close()
        return left


class MySQLSubject(Subject):
    backend_name = "mysql"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._raw: Any = None

    def raw(self) -> Any:
        import pymysql

        if self._raw is None or not self._raw.open:
            u = self.url
            self._raw = pymysql.connect(host=u.host or "127.0.0.1", port=u.port or 3306, user=u.username or "root",
                                        password=u.password or "", autocommit=True, charset="utf8mb4")
        return self._raw

    def _client_args(self) -> list[str]:
        u = self.url
        return ["-h", u.host or "127.0.0.1", "-P", str(u.port or 3306), "-u", u.username or "root"]

    def _client_env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.url.password:
            env["MYSQL_PWD"] = self.url.password
        return env

    def _dump_clone(self, name: str) -> None:
        from pytest_concurrent_db.backends.mysql import quote_ident

        with self.raw().cursor() as cur:
            cur.execute("CREATE DATABASE " + quote_ident(name))
        env = self._client_env()
        dump = subprocess.Popen(
            ["mysqldump", *self._client_args(), "--single-transaction", "--routines", "--triggers",
             "--no-tablespaces", self.template],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
        load = subprocess.Popen(["mysql", *self._client_args(), name], stdin=dump.stdout,
                                stderr=subprocess.PIPE, env=env)
        assert dump.stdout is not None
        dump.stdout.close()  # load sees EOF when dump ends
        _, load_err = load.communicate()
        _, dump_err = dump.communicate()
        if dump.returncode or load.returncode:
            raise RuntimeError(f"mysqldump | mysql failed ({dump.returncode}/{load.returncode}): "
                               f"{dump_err.decode(errors='replace')[-500:]} {load_err.decode(errors='replace')[-500:]}")

    def _raw_drop(self, name: str) -> None:
        from pytest_concurrent_db.backends.mysql import quote_ident

        with self.raw().cursor() as cur:
            cur.execute("DROP DATABASE " + quote_ident(name))

    def raw_drop_any(self, name: str) -> None:
        from pytest_concurrent_db.backends.mysql import quote_ident

        with self.raw().cursor() as cur:
            cur.execute("DROP DATABASE IF EXISTS " + quote_ident(name))

    def server_names(self) -> list[str]:
        with self.raw().cursor() as cur:
            cur.execute("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")
            return [str(r[0]) for r in cur.fetchall() if str(r[0]).startswith(self.stem)]

    def cases(self) -> list[Case]:
        return [
            Case("raw_dump", "raw: CREATE DATABASE + mysqldump tpl | mysql clone", "raw", self._dump_clone,
                 self._raw_drop),
            self.ours_case("ours", "ours: backend.clone() / drop() (DDL replay, keeps FKs)", self.backend,
                           "raw_dump"),
            self.engine_case("raw_dump"),
            self.spare_case("raw_dump"),
        ]

    def inventory(self, name: str) -> dict[str, int]:
        with self.raw().cursor() as cur:
            def one(q: str) -> int:
                cur.execute(q, (name,))
                return int(cur.fetchone()[0])

            cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
                        "AND TABLE_TYPE = 'BASE TABLE' ORDER BY 1", (name,))
            tables = [str(r[0]) for r in cur.fetchall()]
            counts = {
                "tables": len(tables),
                "foreign_keys": one("SELECT COUNT(*) FROM information_schema.REFERENTIAL_CONSTRAINTS "
                                    "WHERE CONSTRAINT_SCHEMA = %s"),
                "indexes": one("SELECT COUNT(DISTINCT TABLE_NAME, INDEX_NAME) FROM information_schema.STATISTICS "
                               "WHERE TABLE_SCHEMA = %s"),
                "views": one("SELECT COUNT(*) FROM information_schema.VIEWS WHERE TABLE_SCHEMA = %s"),
                "triggers": one("SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s"),
            }
            from pytest_concurrent_db.backends.mysql import quote_ident

            counts["rows"] = 0
            for start in range(0, len(tables), 200):
                parts = [f"SELECT COUNT(*) AS c FROM {quote_ident(name)}.{quote_ident(t)}"
                         for t in tables[start : start + 200]]
                cur.execute("SELECT SUM(c) FROM (" + " UNION ALL ".join(parts) + ") x")
                counts["rows"] += int(cur.fetchone()[0] or 0)
            return counts

    def cleanup(self) -> list[str]:
        left = super().cleanup()
        with contextlib.suppress(Exception):
            if self._raw is not None:
                self._raw.close()
        return left


class SQLiteSubject(Subject):
    backend_name = "sqlite"

    def _databases(self, worker_id: str, spares: int = 0) -> Any:
        """A worker's databases (template, clone, spares) as the plugin drives them."""
        from pytest_concurrent_db.paths import Directories
        from pytest_concurrent_db.site import Site
        from pytest_concurrent_db.worker import WorkerDatabases

        directories = Directories(self.workdir / "templates", self.workdir / "clones", self.workdir / "locks")
        site = Site(self.url, directories, base=self.stem[len("cdb_") :])
        return WorkerDatabases(site, run_id=self.tag, worker_id=worker_id, spares=spares)

    def _url(self) -> Any:
        from pytest_concurrent_db.url import DatabaseURL

        return DatabaseURL(backend="sqlite", database=str(self.workdir / f"{self.stem}.db"))

    def _path(self, name: str) -> Path:
        return self.workdir / "clones" / f"{name}.db"

    def _raw_backup(self, name: str) -> None:
        source = sqlite3.connect(self.backend.path(self.template))
        try:
            target = sqlite3.connect(self._path(name))
            try:
                source.backup(target)
            finally:
                target.close()
        finally:
            source.close()

    def _raw_drop(self, name: str) -> None:
        os.unlink(self._path(name))

    def raw_drop_any(self, name: str) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(str(self._path(name)) + suffix).unlink(missing_ok=True)

    def cases(self) -> list[Case]:
        (self.workdir / "clones").mkdir(parents=True, exist_ok=True)
        return [
            Case("raw_backup", "raw: sqlite3 backup API into a new file", "raw", self._raw_backup, self._raw_drop),
            self.ours_case("ours", "ours: backend.clone() / drop() (backup API, marker, os.replace)",
                           self.backend, "raw_backup"),
            self.engine_case("raw_backup"),
        ]

    def inventory(self, name: str) -> dict[str, int]:
        path = self._path(name) if self._path(name).exists() else self.backend.path(name)
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            def count(kind: str) -> int:
                return int(conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = ? AND name NOT LIKE "
                                        "'sqlite_%'", (kind,)).fetchone()[0])

            tables = [r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY 1")]
            fks = sum(len(conn.execute(f'PRAGMA foreign_key_list("{t}")').fetchall()) for t in tables)
            return {"tables": len(tables), "foreign_keys": fks, "indexes": count("index"), "views": count("view"),
                    "triggers": count("trigger"), "rows": _total_rows(conn, tables, '"')}
        finally:
            conn.close()

    def cleanup(self) -> list[str]:
        left = super().cleanup()
        shutil.rmtree(self.workdir / "clones", ignore_errors=True)
        return left


def _total_rows(conn: Any, tables: Sequence[str], quote: str) -> int:
    """Rows in all ``tables`` (in chunks: SQLite allows 500 terms in a compound SELECT)."""
    total = 0
    for start in range(0, len(tables), 200):
        parts = [f"SELECT COUNT(*) AS c FROM {quote}{t}{quote}" for t in tables[start : start + 200]]
        cur = conn.execute("SELECT SUM(c) FROM (" + " UNION ALL ".join(parts) + ") x")
        total += int(cur.fetchone()[0] or 0)
    return total


SUBJECTS: dict[str, type[Subject]] = {
    "sqlite": SQLiteSubject,
    "postgresql": PostgreSQLSubject,
    "mysql": MySQLSubject,
}


# -- measuring ---------------------------------------------------------------------------------------
def measure(subject: Subject, repeat: int) -> dict[str, Any]:
    """Build the template, then clone+drop with every case ``repeat`` times, group by group."""
    log(f"{subject.backend_name} {subject.tables} tables: building the template")
    subject.build()
    log(f"  template {subject.template} built in {subject.build_seconds:.2f}s")
    reference = subject.inventory(subject.template) if subject.backend_name != "postgresql" else None
    cases = subject.cases()
    groups = list(dict.fromkeys(c.group for c in cases))
    for group in groups:
        members = [c for c in cases if c.group == group]
        for rep in range(repeat):
            order = list(members)
            random.Random(f"{subject.tables}:{group}:{rep}").shuffle(order)
            for case in order:
                if case.error is None:
                    _measure_case(subject, case, rep)
            done = ", ".join(f"{c.key} {c.clone_times[rep] * 1000:.0f}ms" for c in order if rep in c.clone_times)
            log(f"  {group + ' ' if group else ''}round {rep + 1}/{repeat}: {done}")
    if reference is None:  # PostgreSQL: the sealed template takes no connections; a raw clone shows it
        reference = next((c.check for c in cases if c.kind == "raw" and c.check), None)
    records = []
    for case in cases:
        clone = summarize(list(case.clone_times.values()))
        drop = summarize(list(case.drop_times.values()))
        record: dict[str, Any] = {
            "backend": subject.backend_name,
            "tables": subject.tables,
            "case": case.key,
            "label": case.label,
            "kind": case.kind,
            "baseline": case.baseline,
            "clone": {**clone, "times": list(case.clone_times.values()), "rounds": list(case.clone_times)},
            "drop": {**drop, "times": list(case.drop_times.values()), "rounds": list(case.drop_times)},
            "check": case.check,
            "complete": None if case.check is None or reference is None else case.check == reference,
            "error": case.error,
        }
        records.append(record)
    by_key = {c.key: c for c in cases}
    for record, case in zip(records, cases):
        base = by_key.get(case.baseline or "")
        for op in ("clone", "drop"):
            mine = getattr(case, f"{op}_times")
            theirs = getattr(base, f"{op}_times") if base is not None else {}
            record[op]["ratio_vs_raw"] = benchlib.paired_ratio(mine, theirs)
    return {
        "backend": subject.backend_name,
        "tables": subject.tables,
        "template": subject.template,
        "template_build_s": subject.build_seconds,
        "reference": reference,
        "schema": make_schema.summary(subject.tables),
        "cases": records,
    }


def _measure_case(subject: Subject, case: Case, rep: int) -> None:
    """Clone and drop once with ``case``; the first round also checks the clone's contents."""
    name = subject.clone_name(case.key, rep)
    release = subject.guard(case, name)
    try:
        if case.prepare is not None:
            case.prepare()
        started = time.perf_counter()
        case.clone(name)
        case.clone_times[rep] = time.perf_counter() - started
        actual = subject.actual_name(case, name)
        if rep == 0:
            case.check = subject.inventory(actual)
        started = time.perf_counter()
        case.drop(actual)
        case.drop_times[rep] = time.perf_counter() - started
    except Exception as exc:
        case.error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:600]}"
        log(f"  {case.key} failed: {case.error}")
        for engine in (subject.engine, subject.spare_engine):
            with contextlib.suppress(Exception):
                if engine is not None:
                    engine.drop_clone()
    finally:
        release()


def run_primitives(
    backends: Sequence[str],
    sizes: Sequence[int],
    repeat: int,
    budget: float,
) -> dict[str, Any]:
    """Every backend at every size (smallest sizes first), within ``budget`` seconds."""
    tag = os.urandom(3).hex()
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    leftovers: list[str] = []
    cost: dict[str, tuple[int, float]] = {}  # backend -> (tables, seconds) of its last size
    workdir = Path(tempfile.mkdtemp(prefix="cdb-bench-", dir=_ensure(benchlib.WORK_DIR)))
    schema_dir = benchlib.WORK_DIR / "schemas"
    log(f"primitives: tag {tag}, backends {', '.join(backends)}, sizes {sizes}, repeat {repeat}, "
        f"budget {budget:.0f}s")
    try:
        for tables in sorted(sizes):
            for backend in backends:
                elapsed = time.monotonic() - started
                if backend in cost:
                    last_tables, last_seconds = cost[backend]
                    projected = last_seconds * tables / last_tables
                    if elapsed + projected > budget:
                        reason = (f"time budget: projected {projected:.0f}s, {max(budget - elapsed, 0):.0f}s left "
                                  f"of --primitives-budget {budget:.0f}s")
                        log(f"{backend} {tables} tables skipped ({reason})")
                        skipped.append({"backend": backend, "tables": tables, "reason": reason})
                        continue
                schema = make_schema.write_schema(schema_dir, backend, tables)
                subject: Subject | None = None
                begun = time.monotonic()
                try:
                    subject = SUBJECTS[backend](tag, tables, schema, workdir / f"{backend}{tables}")
                    results.append(measure(subject, repeat))
                except Exception as exc:
                    log(f"{backend} {tables} tables failed: {type(exc).__name__}: {exc}")
                    errors.append({"backend": backend, "tables": tables,
                                   "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:800]}",
                                   "traceback": benchlib.tail(traceback.format_exc(), 15)})
                finally:
                    if subject is not None:
                        leftovers += subject.cleanup()
                cost[backend] = (tables, time.monotonic() - begun)
    finally:
        leftovers += sweep(backends, f"{PREFIX}{tag}_")
        shutil.rmtree(workdir, ignore_errors=True)
    if leftovers:
        log(f"could not drop: {leftovers}")
    return {
        "tag": tag,
        "repeat": repeat,
        "sizes": list(sizes),
        "seconds": time.monotonic() - started,
        "results": results,
        "skipped": skipped,
        "errors": errors,
        "leftovers": leftovers,
    }


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


#: The names this script makes: ``cdb_bench_<6 hex tag>_<sq|pg|my><tables>…``.  Other tools on a
#: shared server may use ``cdb_bench_`` too: a sweep never touches names of another shape.
OUR_NAMES = re.compile(r"cdb_bench_[0-9a-f]{6}_(sq|pg|my)[0-9]+(_.*)?")


def sweep(backends: Sequence[str], prefix: str = PREFIX) -> list[str]:
    """Drop every database on the servers whose name starts with ``prefix`` and has the shape
    of :data:`OUR_NAMES`.  Returns what could not be dropped."""
    if not prefix.startswith(PREFIX):
        raise ValueError(f"refusing to sweep {prefix!r}: not a benchmark prefix")
    left: list[str] = []
    for backend in backends:
        if backend == "sqlite":
            continue  # files live in a temporary directory that is removed
        try:
            left += _sweep_server(backend, prefix)
        except Exception as exc:
            left.append(f"{backend}: sweep failed: {type(exc).__name__}: {exc}")
    return left


def _ours(name: str, prefix: str) -> bool:
    return name.startswith(prefix) and OUR_NAMES.fullmatch(name) is not None


def _sweep_server(backend: str, prefix: str) -> list[str]:
    from pytest_concurrent_db.backends import load_backend
    from pytest_concurrent_db.errors import NotOursError
    from pytest_concurrent_db.url import parse_url

    url = parse_url(benchlib.server_url(backend))
    ours = load_backend(url, application_name="cdb-bench-sweep")
    left = []
    try:
        if backend == "postgresql":
            import psycopg
            from psycopg import sql

            raw = psycopg.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                                  dbname="postgres", autocommit=True)
            names = [r[0] for r in raw.execute("SELECT datname FROM pg_database") if _ours(r[0], prefix)]

            def raw_drop(name: str) -> None:
                ident = sql.Identifier(name)
                raw.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false ALLOW_CONNECTIONS true").format(ident))
                raw.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        else:
            import pymysql

            from pytest_concurrent_db.backends.mysql import quote_ident

            raw = pymysql.connect(host=url.host or "127.0.0.1", port=url.port or 3306, user=url.username or "root",
                                  password=url.password or "", autocommit=True)
            with raw.cursor() as cur:
                cur.execute("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")
                names = [str(r[0]) for r in cur.fetchall() if _ours(str(r[0]), prefix)]

            def raw_drop(name: str) -> None:
                with raw.cursor() as cur:
                    cur.execute("DROP DATABASE IF EXISTS " + quote_ident(name))

        try:
            for name in names:
                try:
                    try:
                        ours.drop(name)
                    except NotOursError:
                        raw_drop(name)
                    log(f"swept {backend} database {name}")
                except Exception as exc:
                    left.append(f"{name}: {type(exc).__name__}: {exc}")
        finally:
            raw.close()
    finally:
        ours.close()
    return left


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", choices=benchlib.BACKENDS, default=list(benchlib.BACKENDS))
    parser.add_argument("--sizes", type=int, nargs="+", default=list(FULL_SIZES))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--budget", type=float, default=900.0, help="seconds (default: %(default)s)")
    args = parser.parse_args(argv)
    out = run_primitives(args.backends, args.sizes, max(args.repeat, 1), args.budget)
    json.dump(out, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
