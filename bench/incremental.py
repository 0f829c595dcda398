"""Incremental templates: the run after one new migration, interleaved with the alternatives.

On the generated 20-app Django project (``make_django_project.py``, see ``runs.py``), each
round adds one new migration (a ``CreateModel`` at the leaf of the first app's migrations)
and then runs, at ``-n 2``:

* ``ours-incremental``: ``--concurrent-db``: the template of the previous round is copied and
  only the new migration runs (checked: the summary must say ``built incrementally``);
* ``ours-cold``: ``--concurrent-db --concurrent-db-rebuild``: a full build of the same files;
* ``pd-reuse-n2``: pytest-django ``--reuse-db``: its kept databases, ``migrate`` applies the
  new migration in each worker;
* ``pd-n2``: pytest-django, every worker creates and migrates its database.

``ours-incremental`` always runs first in a round (it needs the previous round's template and
must not find this round's, which ``ours-cold`` builds); the other three rotate.  A warm-up
round (not measured) builds our template and pytest-django's kept databases.  The migrations
added are removed at the end.

Targets (issue 14): ours-incremental <= 0.2x ours-cold and <= 1.2x pd-reuse-n2, every backend.

    python bench/incremental.py [--backends sqlite,postgresql,mysql] [--repeat 3] [--out bench/results/incremental]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import benchlib
from benchlib import log, summarize
from runs import BASELINE, VARIANTS, Variant, clean, ensure_project, run_once

INCREMENTAL = Variant("ours-incremental-n2", "ours -n 2 after one new migration (incremental build)",
                      ("-n", "2", "--concurrent-db"), 2)
COLD = VARIANTS["ours-cold-n2"]
REUSE = VARIANTS["pd-reuse-n2"]
PD = VARIANTS[BASELINE]
ROTATING = (COLD, REUSE, PD)

MIGRATION = '''from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [({app!r}, {leaf!r})]
    operations = [
        migrations.CreateModel(
            "BenchExtra{n}",
            [("id", models.AutoField(primary_key=True)), ("name", models.CharField(max_length=40))],
        ),
    ]
'''


def _leaf(migrations: Path) -> str:
    numbered = sorted(p.stem for p in migrations.glob("[0-9][0-9][0-9][0-9]_*.py"))
    return numbered[-1]


def add_migration(project: Path, n: int) -> Path:
    """A new migration at the leaf of the first app that has migrations."""
    directory = min(p.parent for p in project.glob("*/migrations/0001_*.py"))
    leaf = _leaf(directory)
    number = int(leaf[:4]) + 1
    path = directory / f"{number:04d}_bench_extra_{n}.py"
    path.write_text(MIGRATION.format(app=directory.parent.name, leaf=leaf, n=n))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default=",".join(benchlib.BACKENDS))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size", default="default", help="make_django_project.py size (default: 20 apps)")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--out", default=str(benchlib.BENCH_DIR / "results" / "incremental"))
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    project, info = ensure_project(args.size)
    expected = int(info.get("tests", "0"))
    added: list[Path] = []
    records: list[dict[str, Any]] = []
    left = clean(backends, project)
    started = time.monotonic()
    try:
        log("warm-up (not measured): our template and pytest-django's kept databases")
        for backend in backends:
            for variant in (INCREMENTAL, REUSE):
                warm = run_once(backend, variant, project, args.timeout, expected)
                if not warm["ok"] and variant is REUSE:
                    log(f"{backend} {variant.key} warm-up failed: {warm.get('error')}")
        for rnd in range(args.repeat):
            added.append(add_migration(project, rnd))
            for b_index, backend in enumerate(backends):
                shift = (rnd + b_index) % len(ROTATING)
                for variant in (INCREMENTAL, *ROTATING[shift:], *ROTATING[:shift]):
                    record = run_once(backend, variant, project, args.timeout, expected)
                    record["round"] = rnd
                    if variant is INCREMENTAL and record["ok"] and not record.get("incremental"):
                        record["ok"] = False
                        record["error"] = "not built incrementally"
                    records.append(record)
                    status = "ok" if record["ok"] else f"FAILED {record.get('error', '')[:300]}"
                    log(f"round {rnd + 1}/{args.repeat} {backend:10} {variant.key:20} "
                        f"{record['seconds']:7.2f}s {status}")
    finally:
        for path in added:
            path.unlink(missing_ok=True)
        left += clean(backends, project)
    result = {
        "machine": benchlib.machine(backends),
        "project": {"size": args.size, **info},
        "seconds": time.monotonic() - started,
        "runs": records,
        "leftovers": left,
        "summary": _summary(records, backends),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str))
    out.with_suffix(".md").write_text(_markdown(result))
    print(_markdown(result))
    return 0 if not left and all(r["ok"] for r in records) else 1


def _summary(records: list[dict[str, Any]], backends: list[str]) -> list[dict[str, Any]]:
    rows = []
    for backend in backends:
        mine = benchlib.by_round(records, backend, INCREMENTAL.key)
        for variant in (INCREMENTAL, *ROTATING):
            good = [r["seconds"] for r in records
                    if r["backend"] == backend and r["variant"] == variant.key and r["ok"]]
            theirs = benchlib.by_round(records, backend, variant.key)
            rows.append({
                "backend": backend,
                "variant": variant.key,
                "label": variant.label,
                "wall": summarize(good),
                "incremental_vs_this": benchlib.paired_ratio(mine, theirs),
            })
    return rows


def _markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Incremental templates: the run after one new migration (`-n 2`, interleaved)",
        "",
        f"Project: {result['project'].get('size')} ({result['project'].get('app_tables')} app tables, "
        f"{result['project'].get('tests')} tests). Machine: {result['machine'].get('cpu_model')}, "
        f"{result['machine'].get('cpu_usable')} CPUs, load average at the end {result['machine'].get('load_average')}.",
        "",
        "| backend | variant | wall (median, min-max) | ours-incremental ÷ this (paired median) |",
        "| --- | --- | --- | --- |",
    ]
    for row in result["summary"]:
        lines.append(f"| {row['backend']} | {row['label']} | {benchlib.fmt_spread(row['wall'])} | "
                     f"{benchlib.fmt_ratio(row['incremental_vs_this'])} |")
    failed = [r for r in result["runs"] if not r["ok"]]
    if failed:
        lines += ["", f"{len(failed)} failed runs:"] + [
            f"- {r['backend']} {r['variant']} round {r['round']}: {str(r.get('error', ''))[:200]}" for r in failed
        ]
    if result["leftovers"]:
        lines += ["", "Left on the servers: " + ", ".join(result["leftovers"])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
