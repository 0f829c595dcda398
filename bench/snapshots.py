"""Cold run vs "fresh server + snapshot" (issue 15), per backend, interleaved.

Both variants start from a server without our template (what a CI job with a new database
server sees; SQLite: no template file): *cold* builds it (every migration runs), *snapshot*
restores it from ``--concurrent-db-snapshot-dir`` written by an earlier (unmeasured) run.
The project is the generated Django project (``default``: 20 apps, ~250 tables), run with
``pytest -n 2 --concurrent-db``.  Target: snapshot <= 0.15x cold (median of the rounds).

    python bench/snapshots.py [--backends sqlite,postgresql,mysql] [--rounds 3] [--size default]

Results: ``bench/results/snapshots.json`` and ``bench/results/snapshots.md``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import benchlib
import runs
from benchlib import log

TARGET = 0.15
# Names of our own: runs.clean() must not drop what another benchmark on the same servers runs on.
runs.TEST_NAME, runs.REUSE_NAME, runs.OUR_PREFIX = "bench_djsnap", "bench_djsnap_reuse", "cdb_bench_djsnap_"
runs.THEIR_NAMES = re.compile(r"bench_djsnap(_reuse)?(_gw[0-9]+|_[0-9]+)?")


def _variant(key: str, snapshots: Path | None) -> runs.Variant:
    args: tuple[str, ...] = ("-n", "2", "--concurrent-db", "--concurrent-db-spares", "0")
    if snapshots is not None:
        args += (f"--concurrent-db-snapshot-dir={snapshots}",)  # "=": a separate value would pass for a test path
    return runs.Variant(key, key, args, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgresql,mysql")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", default="default")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    project, info = runs.ensure_project(args.size)
    expected = int(info.get("tests", "0"))
    snapshots = benchlib.WORK_DIR / "snapshots"
    shutil.rmtree(snapshots, ignore_errors=True)
    cold, snap = _variant("cold", None), _variant("snapshot", snapshots)
    records: list[dict[str, Any]] = []
    try:
        for backend in backends:
            runs.clean([backend], project)
            first = runs.run_once(backend, snap, project, args.timeout, expected)  # writes the snapshot
            log(f"{backend}: snapshot written by an unmeasured run ({first['seconds']:.1f}s, ok={first['ok']})")
        for rnd in range(args.rounds):
            for backend in backends:
                order = (cold, snap) if rnd % 2 == 0 else (snap, cold)
                for variant in order:
                    runs.clean([backend], project)  # a fresh server: no template
                    record = runs.run_once(backend, variant, project, args.timeout, expected)
                    record["round"] = rnd
                    records.append(record)
                    log(f"round {rnd + 1} {backend:10} {variant.key:8} {record['seconds']:7.2f}s "
                        f"ok={record['ok']} {record['summary']}")  # fmt: skip
                    if not record["ok"]:
                        log(record.get("error", ""))
    finally:
        runs.clean(backends, project)
    table = ["| backend | cold (median s) | fresh server + snapshot (median s) | ratio | target <= 0.15x |",
             "|---|---|---|---|---|"]  # fmt: skip
    results: dict[str, Any] = {"size": args.size, "rounds": args.rounds, "tests": expected, "backends": {}}
    for backend in backends:
        times = {
            key: [r["seconds"] for r in records if r["backend"] == backend and r["variant"] == key and r["ok"]]
            for key in ("cold", "snapshot")
        }
        if not times["cold"] or not times["snapshot"]:
            table.append(f"| {backend} | failed | failed | - | - |")
            continue
        c, s = statistics.median(times["cold"]), statistics.median(times["snapshot"])
        ratio = s / c
        results["backends"][backend] = {"cold": times["cold"], "snapshot": times["snapshot"], "ratio": ratio}
        table.append(f"| {backend} | {c:.2f} | {s:.2f} | {ratio:.2f}x | {'PASS' if ratio <= TARGET else 'FAIL'} |")
    out = benchlib.RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    results["records"] = records
    results["when"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    (out / "snapshots.json").write_text(json.dumps(results, indent=1, default=str))
    command = "python bench/snapshots.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = "\n".join([f"# Snapshots: cold vs fresh server + snapshot ({args.size} Django project, -n 2)", "",
                      f"`{command.strip()}`, {results['when']}, {args.rounds} interleaved rounds", "", *table, ""])
    (out / "snapshots.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
