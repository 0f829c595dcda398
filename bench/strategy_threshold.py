"""Which PostgreSQL clone strategy is faster, by template size and relation count?

Checks the ``auto`` rule of the PostgreSQL backend (WAL_LOG up to ``FILE_COPY_ABOVE``, FILE_COPY above) on
this server.  Builds template databases of two shapes, plus ``empty`` (a fresh database) as the baseline:

* ``dataNmb``: one table holding about N MB of rows (8, 64, 256, 512, 1024; ``--quick``: 8, 64, 256), vacuumed;
* ``tablesN``: N small tables (250, 1000; ``--quick``: 250), each with a primary key, one index, a TOAST-able
  column and 20 rows -- the shape Django projects produce.

After each build a ``CHECKPOINT`` is timed (what the first FILE_COPY clone after a template build pays extra).
Each template is then cloned with ``CREATE DATABASE … TEMPLATE … STRATEGY WAL_LOG`` and ``FILE_COPY``, the two
interleaved in ABBA order, ``--repeat`` times each (at least 5 below 100 MB), in two phases:

* ``fresh``: clones are kept until the phase ends (a ``CHECKPOINT`` before each ``CREATE``, timed apart), so no
  file was deleted shortly before -- the cost of the strategy itself;
* ``cycle`` (after a pause of ``--settle`` seconds): each clone is dropped right after it is created, the
  drop/re-create cycle of repeated test runs.  On ext4 without a journal, creating files within 30-60 s of
  deleting many costs CPU time per recently deleted inode (``recently_deleted()`` in fs/ext4/ialloc.c).

``CREATE DATABASE`` and ``DROP DATABASE`` are timed separately, with the WAL each ``CREATE`` generates.
Results: Markdown tables on stdout, ``bench/results/strategy-threshold.md`` and ``.json`` (every measurement).
Every database created is named ``cdb_bench_strat_*``; all of them (and only them) are dropped at the end,
also on failure, Ctrl-C or SIGTERM.  ``--cleanup`` does only that (after ``kill -9``).

    python bench/strategy_threshold.py [--quick] [--max-mb 512] [--repeat 3] [--dsn "host=... user=..."]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

PREFIX = "cdb_bench_strat_"
RESULTS = Path(__file__).resolve().parent / "results"
ROWS_PER_MB = 1920  # 15 rows of ~520 bytes per 8 kB page
STRATEGIES = ("WAL_LOG", "FILE_COPY")


def log(message: str) -> None:
    print(f"[strat {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def uptime() -> str:
    return subprocess.run(["uptime"], check=False, capture_output=True, text=True).stdout.strip()


def execute(conn: psycopg.Connection, query: Any, params: Any = None) -> list[tuple[Any, ...]]:
    cur = conn.execute(query, params)
    return cur.fetchall() if cur.description else []


def drop(admin: psycopg.Connection, name: str) -> float:
    """Drop one of our databases (never anything else); return the seconds it took."""
    if not name.startswith(PREFIX):
        raise ValueError(f"refusing to drop {name!r}: not a {PREFIX}* database")
    start = time.perf_counter()
    execute(admin, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    return time.perf_counter() - start


def cleanup(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        rows = execute(admin, r"SELECT datname FROM pg_database WHERE datname LIKE 'cdb\_bench\_strat\_%'")
        for (name,) in rows:
            drop(admin, name)
            log(f"dropped {name}")


def build(admin: psycopg.Connection, dsn: str, label: str, mb: int, tables: int) -> dict[str, Any]:
    """Create template ``PREFIX + label`` with ``mb`` MB in one table or ``tables`` small tables."""
    name = PREFIX + label
    start = time.perf_counter()
    execute(admin, sql.SQL("CREATE DATABASE {} TEMPLATE template1").format(sql.Identifier(name)))
    with psycopg.connect(dsn, dbname=name, autocommit=True) as conn:
        if mb:
            execute(conn, "CREATE TABLE data (id bigint NOT NULL, payload text NOT NULL)")
            execute(
                conn,
                "INSERT INTO data SELECT g, repeat(md5(g::text), 15) FROM generate_series(1, %s) g",
                (mb * ROWS_PER_MB,),
            )
            execute(conn, "VACUUM (FREEZE, ANALYZE) data")  # hint bits set now, autovacuum stays away
        for first in range(0, tables, 100):  # one transaction per 100 tables keeps the lock table small
            with conn.transaction():
                for i in range(first, min(first + 100, tables)):
                    table = sql.Identifier(f"t{i:04d}")
                    execute(
                        conn,
                        sql.SQL(
                            "CREATE TABLE {} (id integer PRIMARY KEY, name varchar(100) NOT NULL, notes text, "
                            "created timestamptz NOT NULL DEFAULT now())"
                        ).format(table),
                    )
                    execute(conn, sql.SQL("CREATE INDEX ON {} (name)").format(table))
                    execute(
                        conn,
                        sql.SQL("INSERT INTO {} (id, name) SELECT g, 'row ' || g FROM generate_series(1, 20) g").format(
                            table
                        ),
                    )
        relations = execute(conn, "SELECT count(*) FROM pg_class WHERE relfilenode <> 0")[0][0]
    built = time.perf_counter() - start
    start = time.perf_counter()
    execute(admin, "CHECKPOINT")
    checkpoint = time.perf_counter() - start
    size = execute(admin, "SELECT pg_database_size(%s)", (name,))[0][0]
    log(f"built {name}: {size / 2**20:.0f} MB, {relations} relations in {built:.1f} s, checkpoint {checkpoint:.2f} s")
    return {"template": name, "label": label, "size_bytes": size, "relations": relations,
            "build_s": built, "checkpoint_after_build_s": checkpoint, "fresh": [], "cycle": []}  # fmt: skip


def create(admin: psycopg.Connection, template: str, clone: str, strategy: str) -> dict[str, Any]:
    """Time ``CREATE DATABASE clone`` and measure the WAL it generates."""
    lsn = execute(admin, "SELECT pg_current_wal_insert_lsn()")[0][0]
    start = time.perf_counter()
    query = sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY {}")
    execute(admin, query.format(sql.Identifier(clone), sql.Identifier(template), sql.SQL(strategy)))
    seconds = time.perf_counter() - start
    wal = execute(admin, "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s)", (lsn,))[0][0]
    return {"strategy": strategy, "clone": clone, "create_s": seconds, "wal_bytes": int(wal)}


def abba(rounds: int) -> list[tuple[int, str]]:
    return [(i, s) for i in range(rounds) for s in (STRATEGIES if i % 2 == 0 else STRATEGIES[::-1])]


def fmt(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def table(results: list[dict[str, Any]], phase: str) -> str:
    lines = [
        "| template | size MB | relations | WAL_LOG median (min-max) | FILE_COPY median (min-max) | faster | ratio "
        "| DROP median W / F | WAL MB W / F | CHECKPOINT after build |",
        "| --- | ---: | ---: | --- | --- | --- | ---: | --- | --- | ---: |",
    ]
    for res in results:
        runs = {k: [r for r in res[phase] if r["strategy"] == k] for k in STRATEGIES}
        med = {k: statistics.median(r["create_s"] for r in runs[k]) for k in STRATEGIES}
        cells = [
            f"{fmt(med[k])} ({fmt(min(r['create_s'] for r in runs[k]))}-{fmt(max(r['create_s'] for r in runs[k]))})"
            for k in STRATEGIES
        ]
        drops = " / ".join(fmt(statistics.median(r["drop_s"] for r in runs[k])) for k in STRATEGIES)
        wal = " / ".join(f"{statistics.median(r['wal_bytes'] for r in runs[k]) / 2**20:.1f}" for k in STRATEGIES)
        faster = min(STRATEGIES, key=med.__getitem__)
        ratio = max(med.values()) / min(med.values())
        lines.append(
            f"| {res['label']} | {res['size_bytes'] / 2**20:.0f} | {res['relations']} | {cells[0]} | {cells[1]} "
            f"| {faster} | {ratio:.2f}x | {drops} | {wal} | {fmt(res['checkpoint_after_build_s'])} |"
        )
    return "\n".join(lines)


def measure(admin: psycopg.Connection, results: list[dict[str, Any]], repeat: int, settle: float) -> None:
    rounds = {r["label"]: repeat if r["size_bytes"] > 100 * 2**20 else max(repeat, 5) for r in results}
    kept: list[dict[str, Any]] = []
    for i in range(max(rounds.values())):  # fresh: rounds across templates, clones kept, CHECKPOINT before each
        for res in results:
            for j, strategy in abba(rounds[res["label"]]):
                if j == i:
                    start = time.perf_counter()
                    execute(admin, "CHECKPOINT")
                    pre = time.perf_counter() - start
                    run = create(admin, res["template"], f"{res['template']}_k{i}{strategy[0].lower()}", strategy)
                    run["checkpoint_before_s"] = pre
                    res["fresh"].append(run)
                    kept.append(run)
                    log(f"fresh {res['label']} {strategy:9} {fmt(run['create_s'])} (checkpoint before {fmt(pre)})")
    for run in kept:
        run["drop_s"] = drop(admin, run["clone"])
    log(f"fresh clones dropped; settling {settle:.0f} s before the drop/re-create cycle")
    time.sleep(settle)
    for res in results:  # cycle: one template at a time, each clone dropped right after
        for _, strategy in abba(rounds[res["label"]]):
            run = create(admin, res["template"], res["template"] + "_c", strategy)
            run["drop_s"] = drop(admin, run["clone"])
            res["cycle"].append(run)
            log(f"cycle {res['label']} {strategy:9} create {fmt(run['create_s'])}, drop {fmt(run['drop_s'])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default="host=127.0.0.1 port=5432 user=postgres dbname=postgres")
    parser.add_argument("--quick", action="store_true", help="sizes 8/64/256 MB and 250 tables only")
    parser.add_argument("--max-mb", type=int, default=1024, help="skip data templates above this (default 1024)")
    parser.add_argument("--repeat", type=int, default=3, help="clones per strategy and template (>= 5 below 100 MB)")
    parser.add_argument("--settle", type=float, default=65, help="pause between the two phases, seconds")
    parser.add_argument("--cleanup", action="store_true", help="only drop leftover cdb_bench_strat_* databases")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.cleanup:
        cleanup(args.dsn)
        return 0

    free_mb = shutil.disk_usage("/work").free // 2**20
    fits, need = [], 4096  # the fresh phase keeps all clones: (1 + 2 * repeat) copies of each, plus WAL
    for n in [8, 64, 256] if args.quick else [8, 64, 256, 512, 1024]:
        if n <= args.max_mb and need + (1 + 2 * max(args.repeat, 5)) * n < free_mb // 2:
            fits.append(n)
            need += (1 + 2 * max(args.repeat, 5)) * n
    skipped = [n for n in [8, 64, 256, 512, 1024] if n not in fits and not (args.quick and n > 256)]
    shapes = [("empty", 0, 0)] + [(f"data{n}mb", n, 0) for n in fits]
    shapes += [(f"tables{n}", 0, n) for n in ([250] if args.quick else [250, 1000])]
    started = time.time()
    header: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": " ".join(["python", *sys.argv]),
        "uptime_start": uptime(),
        "disk_free_mb": free_mb,
        "skipped_mb": skipped,
    }
    results: list[dict[str, Any]] = []
    try:
        with psycopg.connect(args.dsn, autocommit=True) as admin:
            header["server"] = execute(admin, "SELECT version()")[0][0]
            header["settings"] = dict(
                execute(
                    admin,
                    "SELECT name, current_setting(name) FROM pg_settings WHERE name IN ('shared_buffers', "
                    "'max_wal_size', 'checkpoint_timeout', 'fsync', 'wal_level', 'full_page_writes')",
                )
            )
            cleanup(args.dsn)
            results = [build(admin, args.dsn, *shape) for shape in shapes]
            measure(admin, results, args.repeat, args.settle)
    finally:
        cleanup(args.dsn)
    header["uptime_end"] = uptime()
    header["minutes"] = round((time.time() - started) / 60, 1)

    tables = {phase: table(results, phase) for phase in ("fresh", "cycle")}
    notes = [
        "# PostgreSQL clone strategy: WAL_LOG vs FILE_COPY",
        "",
        f"{header['date']}, `{header['command']}`, {header['minutes']} min. {header['server']}.",
        f"Settings: {', '.join(f'{k}={v}' for k, v in header['settings'].items())}.",
        f"Load: start `{header['uptime_start']}`; end `{header['uptime_end']}`.",
        f"Free disk {header['disk_free_mb']} MB; data sizes skipped: {skipped or 'none'} (--max-mb / disk).",
        "Times are `CREATE DATABASE` only; ratio = slower median / faster median; DROP and WAL are medians per clone",
        "(WAL: cluster-wide during the CREATE, other sessions included); CHECKPOINT after build = what the first",
        "FILE_COPY after building a template pays extra.  The JSON also has the CHECKPOINT before each fresh clone.",
        "",
        "## fresh: clones kept, CHECKPOINT before each CREATE (no files deleted just before)",
        "",
        tables["fresh"],
        "",
        "## cycle: each clone dropped right after it is created (repeated test runs)",
        "",
        tables["cycle"],
        "",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "strategy-threshold.md").write_text("\n".join(notes))
    (RESULTS / "strategy-threshold.json").write_text(json.dumps({**header, "templates": results}, indent=2) + "\n")
    print("\n".join(notes[10:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
