"""Benchmark kit entry point: clone primitives and whole Django runs, then the report.

    python bench/run.py                      # everything (~20 min budget)
    python bench/run.py --quick              # small project, fewer sizes (~5 min budget)
    python bench/run.py --parts runs --backends postgresql --variants pd-n2,ours-cold-n2 --repeat 5
    python bench/run.py --cleanup            # drop what a killed benchmark left on the servers

Writes ``bench/results/results.json`` (every measurement) and ``bench/results/results.md``
(the tables).  A part not run this time keeps its previous results in both files.
See ``bench/README.md`` for what every number means.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

import benchlib
import primitives
import report
import runs
from benchlib import log

PARTS = ("primitives", "runs")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small Django project, primitives at 300 tables, fewer variants, one round, "
                        "5-minute budget")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to run (default: both)")
    parser.add_argument("--backends", nargs="+", default=list(benchlib.BACKENDS),
                        help="sqlite postgresql mysql (comma or space separated; default: all)")
    parser.add_argument("--variants", nargs="+",
                        help=f"run variants: quick, core, floor, all, or keys ({', '.join(runs.VARIANTS)}); "
                        f"quick = {', '.join(runs.QUICK)}; core = {', '.join(runs.CORE)}; "
                        f"floor = {', '.join(runs.FLOOR)} "
                        "(default: core; quick: quick)")
    parser.add_argument("--repeat", type=int, help="interleaved rounds of the runs (default: 3; quick: 1)")
    parser.add_argument("--primitives-repeat", type=int, default=5,
                        help="measurements per primitive (>= 5; default: %(default)s)")
    parser.add_argument("--sizes", type=int, nargs="+",
                        help="schema sizes for the primitives (default: 50 300 1000; quick: 300)")
    parser.add_argument("--project-size", choices=("small", "default", "large"),
                        help="size of the generated Django project (default: default; quick: small)")
    parser.add_argument("--budget", type=float,
                        help="minutes for the whole benchmark (default: 20; quick: 5); rounds and primitive "
                        "sizes that would not fit are skipped, and said so")
    parser.add_argument("--primitives-share", type=float,
                        help="share of the budget the primitives may use (default: 0.2; quick: 0.45)")
    parser.add_argument("--timeout", type=float, help="seconds before one run is killed (default: 900; quick: 300)")
    parser.add_argument("--keep-databases", action="store_true",
                        help="keep the runs' test databases and templates (the primitives always clean up)")
    parser.add_argument("--cleanup", action="store_true", help="only drop what earlier benchmark runs left, and exit")
    parser.add_argument("--output", type=Path, default=benchlib.RESULTS_DIR, help="default: %(default)s")
    parser.add_argument("--fresh", action="store_true", help="do not keep results of parts not run this time")
    args = parser.parse_args(argv)
    args.backends = _split(args.backends, benchlib.BACKENDS, "backend")
    quick = args.quick
    args.repeat = max(1, args.repeat or (1 if quick else 3))
    args.variants = args.variants or (["quick"] if quick else ["core"])
    args.primitives_share = args.primitives_share or (0.45 if quick else 0.2)
    args.sizes = args.sizes or list(primitives.QUICK_SIZES if quick else primitives.FULL_SIZES)
    args.project_size = args.project_size or ("small" if quick else "default")
    args.budget = 60.0 * (args.budget or (5.0 if quick else 20.0))
    args.timeout = args.timeout or (300.0 if quick else 900.0)
    if args.primitives_repeat < 5:
        log("--primitives-repeat below 5: using 5")
        args.primitives_repeat = 5
    args.variant_list = runs.select_variants(args.variants)
    return args


def _split(values: list[str], allowed: tuple[str, ...], what: str) -> list[str]:
    out = []
    for value in values:
        for raw in value.split(","):
            item = raw.strip()
            if not item:
                continue
            if item not in allowed:
                raise SystemExit(f"unknown {what} {item!r}: use {', '.join(allowed)}")
            if item not in out:
                out.append(item)
    return out


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through every ``finally``: databases are dropped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    if args.cleanup:
        left = primitives.sweep(args.backends)
        for size in ("small", "default", "large"):
            project = benchlib.WORK_DIR / f"django_{size}"
            left += runs.clean(args.backends, project if project.is_dir() else None)
        log("nothing left" if not left else f"could not drop: {left}")
        return 1 if left else 0

    started = time.monotonic()
    deadline = started + args.budget
    out_json = args.output / "results.json"
    previous = {} if args.fresh else _load(out_json)
    machine = benchlib.machine(args.backends)
    results: dict[str, Any] = {
        "generated_at": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": "python bench/run.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                               else sys.argv[1:])),
        "quick": args.quick,
        "budget_s": args.budget,
        "machine": machine,
    }
    for part in PARTS:
        if part not in args.parts and part in previous:
            results[part] = {**previous[part], "from_earlier_invocation": previous.get("generated_at", "?")}

    reachable = [b for b in args.backends if not machine["servers"].get(b, "").startswith("unavailable")]
    for backend in sorted(set(args.backends) - set(reachable)):
        log(f"{backend}: server unavailable ({machine['servers'][backend]}); skipped")

    status = 0
    try:
        if "primitives" in args.parts:
            share = args.budget * (args.primitives_share if "runs" in args.parts else 1.0)
            try:
                results["primitives"] = primitives.run_primitives(reachable, args.sizes, args.primitives_repeat,
                                                                  share)
            except Exception as exc:  # the runs still deserve their chance
                log(f"primitives failed: {type(exc).__name__}: {exc}")
                results["primitives"] = {"error": f"{type(exc).__name__}: {exc}"}
                status = 1
            results["primitives"]["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
            results["primitives"]["machine_load"] = benchlib.load_average()
        if "runs" in args.parts:
            remaining = max(deadline - time.monotonic(), 0.0)
            try:
                results["runs"] = runs.run_runs(reachable, args.variant_list, repeat=args.repeat,
                                                size=args.project_size, budget=remaining, timeout=args.timeout,
                                                keep=args.keep_databases)
            except Exception as exc:
                log(f"runs failed: {type(exc).__name__}: {exc}")
                results["runs"] = {"error": f"{type(exc).__name__}: {exc}"}
                status = 1
            results["runs"]["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
            results["runs"]["machine_load"] = benchlib.load_average()
    finally:
        results["seconds"] = time.monotonic() - started
        results["targets"] = report.targets(results)
        args.output.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
        markdown = report.markdown(results)
        (args.output / "results.md").write_text(markdown, encoding="utf-8")
        log(f"wrote {out_json} and {args.output / 'results.md'} ({results['seconds'] / 60:.1f} min)")
    print(markdown)
    return status


if __name__ == "__main__":
    sys.exit(main())
