"""The targets and the Markdown report, computed from the results dictionary of ``run.py``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchlib import by_round, fmt_ratio, fmt_seconds, fmt_spread, paired_ratio

#: The goals of the issue: (id, text, part, limit).
TARGETS = (
    ("cold_vs_pd", "Django -n 2 cold <= 0.6x pytest-django -n 2 (wall)", 0.6),
    ("cold_vs_manage", "Django -n 2 cold no slower than manage.py test --parallel 2 (wall)", 1.0),
    ("warm_vs_pd", "Django -n 2 warm <= 0.08x pytest-django -n 2 (wall)", 0.08),
    ("setup_scaling", "setup at -n 4 <= 1.5x setup at -n 1 (ours, slowest worker's django_db_setup)", 1.5),
    ("clone_pg", "PostgreSQL: our clone <= 1.15x CREATE DATABASE … TEMPLATE (WAL_LOG, server default)", 1.15),
    ("clone_sqlite", "SQLite: our clone <= 1.15x the backup API", 1.15),
    ("clone_mysql", "MySQL: our FK-preserving clone of 300 tables <= 0.5x mysqldump | mysql", 0.5),
    ("floor_warm", "Django -n 2 warm <= 1.1x pytest-django -n 2 --reuse-db (median of the paired ratios)", 1.1),
    ("floor_warm_worst", "Django -n 2 warm: the slowest run <= 1.25x pytest-django -n 2 --reuse-db (median)", 1.25),
    ("floor_cold", "Django -n 2 cold <= 1.05x manage.py test --parallel 2 (median of the paired ratios)", 1.05),
    ("clone_mysql_warm", "MySQL, warm run: taking over a pristine spare (300 tables) <= 0.5x mysqldump | mysql",
     0.5),
)


def _median(stats: dict[str, Any] | None) -> float | None:
    return (stats or {}).get("median")


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (target, backend or size) that was measured, with its verdict."""
    out: list[dict[str, Any]] = []
    texts = {key: (text, limit) for key, text, limit in TARGETS}

    def add(key: str, scope: str, value: float | None, detail: str) -> None:
        text, limit = texts[key]
        verdict = "not measured" if value is None else ("PASS" if value <= limit else "FAIL")
        out.append({"target": key, "text": text, "scope": scope, "value": value, "limit": limit,
                    "verdict": verdict, "detail": detail})

    part = results.get("runs") or {}
    summary = part.get("summary") or []
    records = part.get("runs") or []
    size = (part.get("project") or {}).get("size", "?")
    rows = {(r["backend"], r["variant"]): r for r in summary}
    for backend in part.get("backends", []):
        pairs = (
            ("cold_vs_pd", "ours-cold-n2", "pd-n2", "seconds"),
            ("cold_vs_manage", "ours-cold-n2", "dj-par2", "seconds"),
            ("warm_vs_pd", "ours-warm-n2", "pd-n2", "seconds"),
            ("setup_scaling", "ours-warm-n4", "ours-warm-n1", "setup_max"),
            ("setup_scaling", "ours-cold-n4", "ours-cold-n1", "setup_max"),
            # the start-up floor: a first and a second warm run against --reuse-db, cold against manage.py test
            ("floor_warm", "ours-warm-n2", "pd-reuse-n2", "seconds"),
            ("floor_warm", "ours-warm2-n2", "pd-reuse-n2", "seconds"),
            ("floor_cold", "ours-cold-n2", "dj-par2", "seconds"),
        )
        for mine in ("ours-warm-n2", "ours-warm2-n2"):  # the start-up floor's slowest run against the median
            theirs = (rows.get((backend, "pd-reuse-n2")) or {}).get("wall")
            walls = [r["seconds"] for r in records if r["backend"] == backend and r["variant"] == mine and r["ok"]]
            if (backend, mine) not in rows or not theirs:
                continue
            worst = max(walls) / _median(theirs) if walls and _median(theirs) else None
            add("floor_warm_worst", f"{backend}, {size} project: slowest {mine} / median pd-reuse-n2", worst,
                f"slowest {fmt_seconds(max(walls) if walls else None)} / median {fmt_seconds(_median(theirs))}")
        for key, mine, theirs, field in pairs:
            if (backend, mine) not in rows and (backend, theirs) not in rows:
                continue
            value = paired_ratio(by_round(records, backend, mine, field), by_round(records, backend, theirs, field))
            stat = "wall" if field == "seconds" else "setup"
            a = _median(rows.get((backend, mine), {}).get(stat))
            b = _median(rows.get((backend, theirs), {}).get(stat))
            add(key, f"{backend}, {size} project: {mine} / {theirs}", value,
                f"{stat} medians {fmt_seconds(a)} / {fmt_seconds(b)}")

    order = {"sqlite": 0, "postgresql": 1, "mysql": 2}
    prims = sorted((results.get("primitives") or {}).get("results", []),
                   key=lambda r: (order.get(r["backend"], 9), r["tables"]))
    for result in prims:
        backend, tables = result["backend"], result["tables"]
        cases = {c["case"]: c for c in result["cases"]}
        key = {"postgresql": "clone_pg", "sqlite": "clone_sqlite", "mysql": "clone_mysql"}[backend]
        if backend == "mysql" and tables != 300:
            continue
        for case, target in (("ours", key), ("ours_spare", "clone_mysql_warm" if backend == "mysql" else "")):
            ours = cases.get(case)
            if ours is None or not target:
                continue
            base = cases.get(ours.get("baseline") or "")
            value = ours["clone"].get("ratio_vs_raw")
            if ours.get("complete") is False:
                value = None
            detail = (f"{fmt_seconds(_median(ours['clone']))} / {fmt_seconds(_median((base or {}).get('clone')))}"
                      + (" (clone incomplete!)" if ours.get("complete") is False else ""))
            add(target, f"{backend}, {tables} tables", value, detail)
    return out


# -- Markdown ---------------------------------------------------------------------------------------------
def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return [*lines, ""]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{(value - 1) * 100:+.0f}%"


def machine_section(machine: dict[str, Any]) -> list[str]:
    pkgs = ", ".join(f"{k} {v}" for k, v in (machine.get("packages") or {}).items() if v)
    load = machine.get("load_average")
    git = machine.get("git") or {}
    rows = [
        ("CPU", f"{machine.get('cpu_model')} — {machine.get('cpu_count')} logical CPUs "
                f"({machine.get('cpu_usable')} usable)"),
        ("RAM", f"{machine.get('ram_gib')} GiB"),
        ("OS", f"{machine.get('os')} (kernel {machine.get('kernel')})"),
        ("Python", machine.get("python")),
        ("Packages", pkgs),
        *((f"Server: {k}", v) for k, v in (machine.get("servers") or {}).items()),
        ("Load average at start", ", ".join(f"{x:.2f}" for x in load) if load else "?"),
        ("Git", f"{git.get('commit')}{' + uncommitted changes' if git.get('dirty') else ''}"),
    ]
    return ["## Machine", "", *_table(("", ""), rows)]


def targets_section(rows: Sequence[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["## Targets", "", "Nothing measured yet.", ""]
    table = [(r["text"], r["scope"], fmt_ratio(r["value"]), f"<= {r['limit']:g}x", f"**{r['verdict']}**",
              r["detail"]) for r in rows]
    return ["## Targets", "", *_table(("target", "measured on", "ratio", "limit", "verdict", "times"), table)]


def runs_section(part: dict[str, Any] | None) -> list[str]:
    lines = ["## Whole runs", ""]
    if not part:
        return [*lines, "Not run.", ""]
    if "error" in part and "summary" not in part:
        return [*lines, f"The runs could not start: `{part['error']}`", ""]
    project = part.get("project", {})
    lines += [
        f"Generated Django project `{project.get('size')}`: {project.get('apps')} apps, "
        f"{project.get('models')} models, "
        f"{project.get('app_tables')} app tables, {project.get('app_migrations')} app migrations "
        f"({project.get('data_migrations')} data migrations), {project.get('tests')} tests. "
        f"{part.get('rounds')} interleaved round(s) of {part.get('repeat')} requested; "
        f"{part.get('seconds', 0) / 60:.1f} min; measured {part.get('measured_at', '?')}"
        + (f" (kept from an earlier invocation, {part['from_earlier_invocation']})"
           if part.get("from_earlier_invocation") else "") + ".",
        "",
    ]
    lines += ["Ratios are paired: the median over the rounds of (variant / yardstick in the same round).", ""]
    lines += [f"> {note}" for note in part.get("notes", [])]
    if part.get("notes"):
        lines.append("")
    rows = []
    for r in part.get("summary", []):
        ok = r["runs"] - r["failed"]
        wall = r["wall"]
        status = f"{ok}/{r['runs']}" + (" **FAILED**" if r["failed"] else "")
        rows.append((r["variant"], r["backend"], fmt_seconds(_median(wall)), fmt_spread(wall),
                     fmt_seconds(_median(r["setup"])), fmt_ratio(r["ratio_vs_pd_n2"]),
                     fmt_ratio(r["ratio_vs_manage_par2"]), status))
    lines += _table(("variant", "backend", "median wall", "spread (min-max, IQR)", "setup (slowest worker)",
                     "vs pytest-django -n 2", "vs manage.py test --parallel 2", "ok runs"), rows)
    variants = part.get("variants", {})
    lines += ["Variants:", ""]
    lines += [f"* `{key}`: {v['label']} — `{v['command']}`" for key, v in variants.items()]
    lines.append("")
    failures = [r for r in part.get("summary", []) if r.get("error")]
    if failures:
        lines += ["### Failed runs", ""]
        for r in failures:
            lines += [f"**{r['variant']} on {r['backend']}** ({r['failed']} of {r['runs']} failed), first failure:",
                      "", "```", r["error"], "```", ""]
    return lines


def primitives_section(part: dict[str, Any] | None) -> list[str]:
    lines = ["## Clone primitives (plain-SQL schemas)", ""]
    if not part:
        return [*lines, "Not run.", ""]
    if "error" in part and "results" not in part:
        return [*lines, f"The primitives could not start: `{part['error']}`", ""]
    lines += [
        f"Each case measured {part.get('repeat')} times, in a shuffled order each round (PostgreSQL: the "
        "FILE_COPY cases as a group of their own, after the others); "
        f"{part.get('seconds', 0) / 60:.1f} min; measured {part.get('measured_at', '?')}"
        + (f" (kept from an earlier invocation, {part['from_earlier_invocation']})"
           if part.get("from_earlier_invocation") else "") + ". "
        "Overhead = the median over the rounds of (ours / the raw primitive in the same round) - 1.",
        "",
    ]
    rows = []
    order = {"sqlite": 0, "postgresql": 1, "mysql": 2}
    ordered = sorted(part.get("results", []), key=lambda r: (order.get(r["backend"], 9), r["tables"]))
    for result in ordered:
        for c in result["cases"]:
            clone, drop = c["clone"], c["drop"]
            raw = c["kind"] == "raw"
            complete = {True: "yes", False: "**NO**", None: "?"}[c.get("complete")]
            rows.append((
                result["backend"], result["tables"], c["label"] + (f" — **error**: {c['error']}" if c["error"] else ""),
                fmt_seconds(_median(clone)), fmt_spread(clone),
                "(baseline)" if raw else _pct(clone.get("ratio_vs_raw")),
                fmt_seconds(_median(drop)), "(baseline)" if raw else _pct(drop.get("ratio_vs_raw")),
                complete,
            ))
    lines += _table(("backend", "tables", "case", "clone median", "clone spread", "clone overhead vs raw",
                     "drop median", "drop overhead vs raw", "complete copy"), rows)
    builds = [(r["backend"], r["tables"], fmt_seconds(r["template_build_s"]),
               ", ".join(f"{k} {v}" for k, v in (r.get("reference") or {}).items())) for r in ordered]
    if builds:
        lines += ["Templates (built once through the package; what every clone must contain):", ""]
        lines += _table(("backend", "tables", "build", "contents"), builds)
    for skipped in part.get("skipped", []):
        lines.append(f"* skipped {skipped['backend']} {skipped['tables']} tables: {skipped['reason']}")
    for error in part.get("errors", []):
        lines += [f"* **{error['backend']} {error['tables']} tables failed**: {error['error']}", "",
                  "```", error.get("traceback", ""), "```"]
    if part.get("leftovers"):
        lines.append(f"* could not drop: {part['leftovers']}")
    lines.append("")
    return lines


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# pytest-concurrent-db benchmark results",
        "",
        f"Generated {results.get('generated_at')} by `{results.get('command')}` "
        f"({results.get('seconds', 0) / 60:.1f} min). See `bench/README.md` for what the numbers mean.",
        "",
        *machine_section(results.get("machine", {})),
        *targets_section(results.get("targets", [])),
        *runs_section(results.get("runs")),
        *primitives_section(results.get("primitives")),
    ]
    return "\n".join(lines).rstrip() + "\n"
