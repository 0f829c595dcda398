"""``manage.py test --parallel 2``: Django's own runner against ``ConcurrentTestRunner``, cold
and warm, in interleaved rounds, on the generated Django project of :mod:`runs`.

    python bench/runner.py                                   # 3 rounds, every backend, default project
    python bench/runner.py --backends postgresql --repeat 5
    python bench/runner.py --project-size small --repeat 1   # a smoke test

Variants (all ``manage.py test --parallel 2 --pattern djtests.py --noinput -v 1``):

* ``dj-par2``: Django's runner (the yardstick): migrates the test database, clones it per
  worker one after the other, drops everything at the end.
* ``dj-ours-cold``: ``--testrunner pytest_concurrent_db.django.ConcurrentTestRunner`` with
  no template (ours are dropped before the run, untimed): ``migrate`` builds it, then the
  clones are made in parallel.  What the first run after a migration change costs.
* ``dj-ours-warm``: the same with the template of an earlier run: no migration, clones only.

Each round runs every (backend, variant) pair once, starting one pair further down the list
than the round before; the ratios are medians over the rounds of (ours / Django's) in the same
round.  Our runs write their per-phase timings (``--concurrent-db-timings``), which the report
summarizes.  Results: ``bench/results/runner.json`` and ``runner.md``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import benchlib
import runs
from benchlib import log

RUNNER = "pytest_concurrent_db.django.ConcurrentTestRunner"
TIMINGS = ".bench_runner_timings.json"
OURS = ("--testrunner", RUNNER, f"--concurrent-db-timings={TIMINGS}")
VARIANTS = (
    runs.VARIANTS["dj-par2"],
    runs.Variant("dj-ours-cold", "ConcurrentTestRunner --parallel 2, cold: migrate builds the template", OURS, 2,
                 runner="manage"),
    runs.Variant("dj-ours-warm", "ConcurrentTestRunner --parallel 2, warm: template reused", OURS, 2, runner="manage",
                 needs_warm="template"),
)  # fmt: skip
BASELINE = "dj-par2"
TARGETS = {"dj-ours-cold": 1.0, "dj-ours-warm": 0.15}


def drop_templates(backend: str, project: Path) -> None:
    """Our templates of the project, gone (untimed, before a cold run)."""
    if backend == "sqlite":
        shutil.rmtree(project / ".pytest_cache" / "d" / "concurrent_db", ignore_errors=True)
        return
    raw, ours = runs._server(backend)
    try:
        for name in runs._names(raw, backend):
            if name.startswith(runs.OUR_PREFIX):
                ours.drop(name)
    finally:
        raw.close()
        ours.close()


def measure(backend: str, variant: runs.Variant, project: Path, timeout: float, expected: int) -> dict[str, Any]:
    timings = project / TIMINGS
    timings.unlink(missing_ok=True)
    record = runs.run_once(backend, variant, project, timeout, expected)
    if variant.key != BASELINE and record["ok"]:
        document = json.loads(timings.read_text()) if timings.exists() else {"templates": []}
        record["phases"] = {p["phase"]: p for t in document["templates"] for p in t["phases"]}
        built = {t["built"] for t in document["templates"]}
        record["template"] = "built" if built == {True} else "reused" if built == {False} else "?"
        if record["template"] != ("reused" if variant.needs_warm else "built"):
            record["ok"] = False
            record["error"] = f"the template was {record['template']} in a {variant.key} run"
    return record


def run_rounds(backends: list[str], repeat: int, size: str, timeout: float, budget: float) -> dict[str, Any]:
    started = time.monotonic()
    project, info = runs.ensure_project(size)
    expected = int(info.get("tests", "0"))
    pairs = [(b, v) for b in backends for v in VARIANTS]
    records: list[dict[str, Any]] = []
    notes: list[str] = []
    runs.clean(backends, project)
    round_seconds: list[float] = []
    try:
        for rnd in range(repeat):
            if rnd and time.monotonic() - started + max(round_seconds) > budget:
                notes.append(f"stopped after {rnd} of {repeat} rounds (time budget {budget:.0f}s)")
                log(notes[-1])
                break
            begun = time.monotonic()
            shift = rnd % len(pairs)
            for backend, variant in pairs[shift:] + pairs[:shift]:
                if variant.key == "dj-ours-cold":
                    drop_templates(backend, project)
                elif variant.needs_warm and not runs.is_warm(backend, variant, project):
                    log(f"{backend} {variant.key}: warm-up run (not measured)")
                    measure(backend, variant, project, timeout, expected)
                record = {**measure(backend, variant, project, timeout, expected), "round": rnd}
                records.append(record)
                status = "ok" if record["ok"] else f"FAILED {record.get('error', '')[:300]}"
                log(f"round {rnd + 1}/{repeat} {backend:10} {variant.key:13} {record['seconds']:7.2f}s {status}")
            round_seconds.append(time.monotonic() - begun)
    finally:
        left = runs.clean(backends, project)
    return {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "machine": benchlib.machine(backends),
        "project": {"size": size, **info},
        "variants": {v.key: {"label": v.label, "command": " ".join(runs.command(v)[1:])} for v in VARIANTS},
        "rounds": len(round_seconds),
        "seconds": time.monotonic() - started,
        "runs": records,
        "notes": notes,
        "leftovers": left,
        "summary": summary(records, backends),
    }


def summary(records: list[dict[str, Any]], backends: list[str]) -> list[dict[str, Any]]:
    out = []
    for backend in backends:
        base = benchlib.by_round(records, backend, BASELINE)
        for variant in VARIANTS:
            mine = [r for r in records if r["backend"] == backend and r["variant"] == variant.key]
            good = [r for r in mine if r["ok"]]
            ratio = benchlib.paired_ratio(benchlib.by_round(records, backend, variant.key), base)
            row = {
                "backend": backend,
                "variant": variant.key,
                "wall": benchlib.summarize([r["seconds"] for r in good]),
                "ratio": ratio if variant.key != BASELINE else 1.0,
                "failed": len(mine) - len(good),
                "phases": {
                    name: benchlib.summarize([r["phases"][name]["max"] for r in good if name in r.get("phases", {})])
                    for name in ("template build", "template reuse", "clone per worker", "drop")
                },
            }
            target = TARGETS.get(variant.key)
            if target is not None:
                row["target"] = target
                row["pass"] = ratio is not None and ratio <= target
            out.append(row)
    return out


def markdown(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [
        "# `manage.py test --parallel 2`: Django's runner vs ConcurrentTestRunner",
        "",
        f"Command: `{result['command']}`, {result['rounds']} interleaved rounds, "
        f"{result['seconds'] / 60:.1f} min; project: {result['project'].get('app_tables')} app tables, "
        f"{result['project'].get('tests')} tests.  Machine: {machine.get('cpu_model')}, "
        f"{machine.get('cpu_usable')} CPUs, load average at the end {machine.get('load_average')}; "
        f"servers: {machine.get('servers')}.",
        "",
        "| backend | variant | median wall | spread | ratio to Django's runner (paired) | target |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["summary"]:
        wall = row["wall"]
        target = f"<= {row['target']}x {'PASS' if row['pass'] else 'FAIL'}" if "target" in row else ""
        failed = f" ({row['failed']} failed)" if row["failed"] else ""
        lines.append(
            f"| {row['backend']} | {row['variant']}{failed} | {benchlib.fmt_seconds(wall.get('median'))} | "
            f"{benchlib.fmt_spread(wall)} | {benchlib.fmt_ratio(row['ratio'])} | {target} |"
        )
    lines += ["", "Our phases (slowest worker, median over the rounds, seconds):", ""]
    lines += ["| backend | variant | template build | template reuse | clone | drop |", "|---|---|---|---|---|---|"]
    for row in result["summary"]:
        if row["variant"] == BASELINE:
            continue
        cells = [benchlib.fmt_seconds(row["phases"][p].get("median")) for p in row["phases"]]
        lines.append(f"| {row['backend']} | {row['variant']} | {' | '.join(cells)} |")
    for note in result["notes"] + [f"left on a server: {x}" for x in result["leftovers"]]:
        lines.append(f"\n{note}")
    for record in result["runs"]:
        if not record["ok"]:
            lines += ["", f"Failed: {record['backend']} {record['variant']} round {record['round'] + 1}:", "```",
                      str(record.get("error", ""))[-2000:], "```"]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=list(benchlib.BACKENDS), choices=benchlib.BACKENDS)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds (default: %(default)s)")
    parser.add_argument("--project-size", default="default", choices=("small", "default", "large"))
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before one run is killed")
    parser.add_argument("--budget", type=float, default=30.0, help="minutes; later rounds are skipped past it")
    parser.add_argument("--output", type=Path, default=benchlib.RESULTS_DIR)
    args = parser.parse_args(argv)
    result = run_rounds(args.backends, max(args.repeat, 1), args.project_size, args.timeout, args.budget * 60)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "runner.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output / "runner.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
