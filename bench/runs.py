"""Whole test runs on the generated Django project, interleaved.

The project comes from ``make_django_project.py`` (the shared generator; see
:func:`generator_path`), regenerated only when its size changes.  Its settings take the
database from ``DB_*`` environment variables, which is how each backend is chosen here.

Every *variant* is one command line run in the project directory.  Rounds visit every
(backend, variant) pair in turn (round robin), each round starting one step further
down the list, so that slow phases of a busy machine are shared by all variants; a
round is started only while the time budget allows one more (the first always runs).

Wall time is the whole subprocess.  *Setup* is the time the ``django_db_setup``
fixture took in each process (the project's conftest writes it to
``BENCH_TIMING_FILE``); the per-run value is the slowest worker's, which is what the
run waits for.  ``manage.py test`` has no such hook: setup is not reported for it.

A variant that fails (non-zero exit, timeout) is recorded with the tail of its output and
left out of the medians; the other variants go on.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchlib
from benchlib import log, summarize

#: pytest-django's and ``manage.py test``'s test databases: ``bench_djrun``, ``bench_djrun_gw0``,
#: ``bench_djrun_1``; with ``--reuse-db``: ``bench_djrun_reuse_gw0``.  Ours: ``cdb_bench_djrun_…``.
TEST_NAME = "bench_djrun"
REUSE_NAME = "bench_djrun_reuse"
THEIR_NAMES = re.compile(r"bench_djrun(_reuse)?(_gw[0-9]+|_[0-9]+)?")
OUR_PREFIX = "cdb_bench_djrun_"


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    args: tuple[str, ...]
    workers: int
    #: "pytest" or "manage"
    runner: str = "pytest"
    #: Measured only once its state exists (pytest-django --reuse-db databases, our template).
    needs_warm: str = ""
    #: Runs right after this variant in every round (not at a place of its own): a second run in a row.
    after: str = ""


def _ours(workers: int, cold: bool, spares: str = "") -> Variant:
    state = "cold" if cold else "warm"
    args = ("-n", str(workers), "--concurrent-db") + (("--concurrent-db-rebuild",) if cold else ())
    what = "template rebuilt (--concurrent-db-rebuild)" if cold else "template reused"
    key = f"ours-{state}-n{workers}"
    if spares:  # the default is auto; these force one setting, to show what spares change
        args += ("--concurrent-db-spares", spares)
        key, what = f"{key}-spares{spares}", f"{what}, --concurrent-db-spares {spares}"
    return Variant(key, f"ours -n {workers}, {state}: {what}", args, workers, needs_warm="" if cold else "template")


VARIANTS: dict[str, Variant] = {
    v.key: v
    for v in (
        Variant("pd-n2", "pytest-django -n 2 (each worker migrates)", ("-n", "2"), 2),
        Variant("dj-par2", "manage.py test --parallel 2", (), 2, runner="manage"),
        _ours(2, cold=True),
        _ours(2, cold=False),
        Variant("pd-reuse-n2", "pytest-django -n 2 --reuse-db (databases kept from an earlier run)",
                ("-n", "2", "--reuse-db"), 2, needs_warm="reuse"),
        _ours(1, cold=False),
        _ours(4, cold=False),
        Variant("serial", "pytest-django, serial", (), 1),
        Variant("pd-n4", "pytest-django -n 4 (each worker migrates)", ("-n", "4"), 4),
        _ours(1, cold=True),
        _ours(4, cold=True),
        _ours(2, cold=False, spares="0"),
        _ours(2, cold=False, spares="1"),
        Variant("ours-warm2-n2", "ours -n 2, warm, the second warm run in a row (right after ours-warm-n2)",
                _ours(2, cold=False).args, 2, needs_warm="template", after="ours-warm-n2"),
    )
}
#: ``--quick``: what the targets need.  ``core`` (the default): every run the issue lists
#: (serial, pytest-django -n 2/-n 4/--reuse-db, manage.py test, ours cold and warm at -n 2/-n 4).
QUICK = ("pd-n2", "dj-par2", "ours-cold-n2", "ours-warm-n2", "ours-warm-n1", "ours-warm-n4")
CORE = (*QUICK, "pd-reuse-n2", "serial", "pd-n4", "ours-cold-n4", "ours-cold-n1")
#: ``floor``: the start-up floor — warm runs (twice in a row) against pytest-django ``--reuse-db``,
#: cold runs against ``manage.py test --parallel 2``.
FLOOR = ("pd-reuse-n2", "ours-warm-n2", "ours-warm2-n2", "dj-par2", "ours-cold-n2")
#: The variant every ratio is computed against, and the second yardstick.
BASELINE, DJANGO_BASELINE = "pd-n2", "dj-par2"


def select_variants(spec: Sequence[str]) -> list[Variant]:
    """``quick``, ``core``, ``all`` or variant keys (in the canonical order)."""
    wanted: set[str] = set()
    for item in spec:
        for raw in item.split(","):
            key = raw.strip()
            if key == "all":
                wanted |= set(VARIANTS)
            elif key == "core":
                wanted |= set(CORE)
            elif key == "quick":
                wanted |= set(QUICK)
            elif key == "floor":
                wanted |= set(FLOOR)
            elif key in VARIANTS:
                wanted.add(key)
            elif key:
                raise SystemExit(f"unknown variant {key!r}: use quick, core, floor, all or {', '.join(VARIANTS)}")
    return [v for key, v in VARIANTS.items() if key in wanted]


# -- the project ------------------------------------------------------------------------------------
def generator_path() -> Path:
    """``BENCH_DJANGO_GENERATOR``, else ``bench/make_django_project.py``, else ``../shared/bench/``."""
    env = os.environ.get("BENCH_DJANGO_GENERATOR")
    candidates = [Path(env)] if env else []
    candidates += [benchlib.BENCH_DIR / "make_django_project.py",
                   benchlib.REPO_DIR.parent / "shared" / "bench" / "make_django_project.py"]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"make_django_project.py not found (looked at {', '.join(map(str, candidates))}); "
                            "set BENCH_DJANGO_GENERATOR")


def ensure_project(size: str) -> tuple[Path, dict[str, str]]:
    """The generated project of ``size`` under ``bench/.work`` (made, and compiled, if missing)."""
    generator = generator_path()
    project = benchlib.WORK_DIR / f"django_{size}"
    stamp = project / ".bench_generator"
    key = f"{generator}:{generator.stat().st_mtime_ns}:{size}"
    if not stamp.exists() or stamp.read_text() != key:
        log(f"generating the Django project ({size}) with {generator}")
        subprocess.run([sys.executable, str(generator), str(project), "--size", size], check=True,
                       stdout=subprocess.DEVNULL)
        # Byte-compile once, so that the first measured run does not pay for it.
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(project)], check=True)
        stamp.write_text(key)
    info = dict(line.split("=", 1) for line in (project / "bench_project.txt").read_text().split() if "=" in line)
    return project, info


# -- environment and commands ---------------------------------------------------------------------
def _env(backend: str, variant: Variant, project: Path, timing: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CONCURRENT_DB", "PYTEST_", "DB_", "DJANGO_")) and k != "PYTHONPATH"}
    env.update(DB_ENGINE=backend, BENCH_TIMING_FILE=str(timing), BENCH_LABEL=variant.key)
    # Only the plugins a variant needs (see command()): an unrelated plugin of the environment
    # (hypothesis, from our own test dependencies, costs ~0.5 s per process) would weigh on all.
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    # Bytecode is written and read as on a user's machine: with PYTHONDONTWRITEBYTECODE (this VM
    # sets it) every run compiled the project and this checkout's plugin from source, ~0.2 s a
    # process for the plugin alone, while pytest-django's installed wheel had its .pyc files.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    reuse = variant.needs_warm == "reuse"
    if backend == "sqlite":
        if reuse:  # an in-memory test database cannot be reused: --reuse-db users put it on disk
            env["DB_TEST_NAME"] = str(project / f"{REUSE_NAME}.sqlite3")
    else:
        from pytest_concurrent_db.url import parse_url

        url = parse_url(benchlib.server_url(backend))
        env.update(DB_HOST=url.host or "127.0.0.1", DB_PORT=str(url.port or ""), DB_USER=url.username or "",
                   DB_PASSWORD=url.password or "", DB_TEST_NAME=REUSE_NAME if reuse else TEST_NAME)
        env = {k: v for k, v in env.items() if v != "" or k == "DB_PASSWORD"}
    return env


def command(variant: Variant) -> list[str]:
    if variant.runner == "manage":
        return [sys.executable, "manage.py", "test", "--parallel", str(variant.workers), "--pattern", "djtests.py",
                "--noinput", "-v", "1", *variant.args]
    plugins = ["-p", "xdist.plugin", "-p", "pytest_django.plugin"]
    if "--concurrent-db" in variant.args:
        plugins += ["-p", "pytest_concurrent_db.plugin"]
    return [sys.executable, "-m", "pytest", "-q", *plugins, *variant.args]


def run_once(backend: str, variant: Variant, project: Path, timeout: float, expected: int) -> dict[str, Any]:
    """One run: wall time, per-worker setup, outcome (ok: exit code 0 and ``expected`` tests passed)."""
    with tempfile.TemporaryDirectory(prefix="cdb-bench-run-") as tmp:
        timing = Path(tmp) / "timing.jsonl"
        env = _env(backend, variant, project, timing)
        started = time.perf_counter()
        proc = subprocess.Popen(command(variant), cwd=project, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the run and its xdist workers
            output, _ = proc.communicate()
            timed_out = True
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        seconds = time.perf_counter() - started
        setup = []
        if timing.exists():
            for line in timing.read_text().splitlines():
                with contextlib.suppress(ValueError, KeyError):
                    setup.append(float(json.loads(line)["setup_s"]))
    summary = _summary_line(output)
    passed = tests_run(summary)
    template = _template_state(output)
    ok = proc.returncode == 0 and not timed_out and passed == expected
    # A warm run must reuse the template, a cold one build it; else the number means something else.
    wrong = variant.key.startswith("ours-") and template != ("reused" if variant.needs_warm else "built")
    record: dict[str, Any] = {
        "backend": backend,
        "variant": variant.key,
        "seconds": seconds,
        "ok": ok,
        "returncode": proc.returncode,
        "setup": setup,
        "setup_max": max(setup) if setup else None,
        "summary": summary,
        "tests_passed": passed,
        "template": template,
        "incremental": "built incrementally" in output,
        "databases": _database_lines(output),
    }
    if not ok:
        why = f"timed out after {timeout:g}s" if timed_out else f"exit code {proc.returncode}"
        if not timed_out and proc.returncode == 0:
            why = f"{passed} tests passed, {expected} expected"
        record["error"] = f"{why}\n{benchlib.tail(output, 30)}"
    elif wrong:
        record["ok"] = False
        state = template or "not reported"
        record["error"] = (f"the template was {state} in a {'warm' if variant.needs_warm else 'cold'} run "
                           f"(dropped by another process meanwhile?)\n{benchlib.tail(output, 12)}")
    return record


def _summary_line(output: str) -> str:
    """pytest's last line (``25 passed in 3.1s``) or Django's ``Ran 25 tests in 0.3s OK``."""
    lines = [line.strip().strip("=").strip() for line in output.splitlines() if line.strip()]
    for index in range(len(lines) - 1, -1, -1):
        text = lines[index]
        if re.search(r"\b(passed|failed|errors?)\b.* in [0-9.]+s", text):
            return text
        if re.match(r"Ran [0-9]+ tests? in", text):
            status = next((t for t in lines[index + 1 :] if t == "OK" or t.startswith(("OK (", "FAILED ("))), "")
            return f"{text} {status}".strip()
    return ""


def _template_state(output: str) -> str:
    """``built`` or ``reused``, from our terminal summary (``template: <name> built by gw0 ...``)."""
    states = re.findall(r"^template: \S+ (built|reused)\b", output, re.MULTILINE)
    return "built" if "built" in states else (states[0] if states else "")


def _database_lines(output: str) -> list[str]:
    """What our summary says each worker's database was and became (``gw0: ok — …``, ``clones (…``,
    ``spares for the next run: …``): why one run of a series was slower than the others."""
    return re.findall(r"^(?:gw[0-9]+: .*|clones \(.*|spares for the next run: .*)$", output, re.MULTILINE)


def tests_run(summary: str) -> int | None:
    """How many tests passed according to ``summary`` (None if it does not say)."""
    match = re.search(r"([0-9]+) passed", summary) or re.match(r"Ran ([0-9]+) tests? in .* OK", summary)
    return int(match.group(1)) if match else None


# -- state kept between runs -------------------------------------------------------------------------
def _server(backend: str) -> tuple[Any, Any]:
    """(raw autocommit connection to the server, our backend) for PostgreSQL or MySQL."""
    from pytest_concurrent_db.backends import connect_url, load_backend
    from pytest_concurrent_db.url import parse_url

    url = parse_url(benchlib.server_url(backend))
    if backend == "postgresql":
        raw = connect_url(url.with_database("postgres"), autocommit=True)
    else:
        raw = connect_url(url.with_database(""), autocommit=True)
    return raw, load_backend(url, application_name="cdb-bench-runs")


def _names(raw: Any, backend: str) -> list[str]:
    cur = raw.cursor()
    cur.execute("SELECT datname FROM pg_database" if backend == "postgresql"
                else "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")
    return [str(r[0]) for r in cur.fetchall()]


def is_warm(backend: str, variant: Variant, project: Path) -> bool:
    """Whether the state ``variant`` reuses exists already."""
    if variant.needs_warm == "template":
        if backend == "sqlite":
            cache = project / ".pytest_cache" / "d" / "concurrent_db"
            return any(p.name.endswith(".db") and "_tpl_" in p.name for p in cache.glob("*.db"))
        raw, ours = _server(backend)
        try:
            return any(n.startswith(OUR_PREFIX + "tpl_") for n in _names(raw, backend))
        finally:
            raw.close()
            ours.close()
    if variant.needs_warm == "reuse":
        if backend == "sqlite":
            return any(project.glob(f"{REUSE_NAME}.sqlite3_gw*"))
        raw, ours = _server(backend)
        try:
            names = set(_names(raw, backend))
            return all(f"{REUSE_NAME}_gw{i}" in names for i in range(variant.workers))
        finally:
            raw.close()
            ours.close()
    return True


class TemplateGuard:
    """Keeps one live clone of each of our Django templates on a server while the runs go on.

    Test runs of other projects on a shared server may ``prune`` templates no live run uses;
    between two of our runs nothing uses ours, and a "warm" run would find it gone.  A clone
    whose lock this process holds marks its template as used, so nobody prunes it.
    """

    def __init__(self) -> None:
        self.held: dict[str, tuple[Any, list[str]]] = {}  # backend -> (our backend, anchor names)

    def protect(self, backend: str) -> None:
        if backend == "sqlite":
            return  # the template is a file in the project's own cache
        from pytest_concurrent_db.backends import Marker

        if backend not in self.held:
            raw, ours = _server(backend)
            raw.close()
            self.held[backend] = (ours, [])
        ours, anchors = self.held[backend]
        for info in ours.list_databases(OUR_PREFIX + "tpl_"):
            if info.marker is None or info.marker.state != "ready":
                continue
            name = f"{OUR_PREFIX}anchor_{info.name.rsplit('_', 1)[-1]}"
            if name in anchors:
                continue
            ours.try_lock(f"clone:{name}")
            if ours.exists(name):
                ours.drop(name)
            ours.clone(info.name, name, Marker(kind="clone", run_id="bench-anchor", worker_id="anchor",
                                                template=info.name))
            anchors.append(name)

    def release(self) -> list[str]:
        left = []
        for backend, (ours, anchors) in self.held.items():
            for name in anchors:
                try:
                    ours.drop(name)
                    ours.release_lock(f"clone:{name}")
                except Exception as exc:
                    left.append(f"{backend} {name}: {type(exc).__name__}: {exc}")
            ours.close()
        self.held.clear()
        return left


def _protect(guard: TemplateGuard, backend: str, variant: Variant) -> None:
    if not variant.key.startswith("ours-"):
        return
    try:
        guard.protect(backend)
    except Exception as exc:  # the runs go on; a vanished template is detected anyway
        log(f"{backend}: cannot protect the template: {type(exc).__name__}: {exc}")


def clean(backends: Sequence[str], project: Path | None) -> list[str]:
    """Drop the databases the runs leave (pytest-django's ``bench_djrun*``, ours ``cdb_bench_djrun_*``)
    and the SQLite files; returns what could not be removed."""
    from pytest_concurrent_db.errors import NotOursError

    left: list[str] = []
    if project is not None:
        shutil.rmtree(project / ".pytest_cache" / "d" / "concurrent_db", ignore_errors=True)
        for path in project.glob(f"{REUSE_NAME}.sqlite3*"):
            path.unlink(missing_ok=True)
    for backend in backends:
        if backend == "sqlite":
            continue
        try:
            raw, ours = _server(backend)
        except Exception as exc:
            left.append(f"{backend}: {type(exc).__name__}: {exc}")
            continue
        try:
            for name in _names(raw, backend):
                theirs = THEIR_NAMES.fullmatch(name) is not None
                if not theirs and not name.startswith(OUR_PREFIX):
                    continue
                try:
                    if theirs:
                        _raw_drop(raw, backend, name)
                    else:
                        try:
                            ours.drop(name)
                        except NotOursError:
                            _raw_drop(raw, backend, name)
                    log(f"dropped {backend} database {name}")
                except Exception as exc:
                    left.append(f"{backend} {name}: {type(exc).__name__}: {exc}")
        finally:
            raw.close()
            ours.close()
    return left


def _raw_drop(raw: Any, backend: str, name: str) -> None:
    cur = raw.cursor()
    if backend == "postgresql":
        from psycopg import sql

        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    else:
        from pytest_concurrent_db.backends.mysql import quote_ident

        cur.execute("DROP DATABASE IF EXISTS " + quote_ident(name))


# -- the rounds ----------------------------------------------------------------------------------------
def run_runs(
    backends: Sequence[str],
    variants: Sequence[Variant],
    *,
    repeat: int,
    size: str,
    budget: float,
    timeout: float,
    keep: bool = False,
) -> dict[str, Any]:
    """``repeat`` interleaved rounds (fewer if ``budget`` seconds run out) of every pair."""
    started = time.monotonic()
    project, info = ensure_project(size)
    expected = int(info.get("tests", "0"))
    pairs = [(b, v) for b in backends for v in variants if not v.after]
    followers = {v.after: v for v in variants if v.after}
    records: list[dict[str, Any]] = []
    warmups: list[dict[str, Any]] = []
    notes: list[str] = []
    round_seconds: list[float] = []
    log(f"runs: project {project.name} ({info.get('app_tables')} app tables, {info.get('tests')} tests), "
        f"backends {', '.join(backends)}, variants {', '.join(v.key for v in variants)}, repeat {repeat}, "
        f"budget {budget:.0f}s")
    left = clean(backends, project)
    guard = TemplateGuard()
    try:
        for rnd in range(repeat):
            elapsed = time.monotonic() - started
            if rnd > 0 and elapsed + max(round_seconds) > budget:
                notes.append(f"stopped after {rnd} of {repeat} rounds: one more round (~{max(round_seconds):.0f}s) "
                             f"would exceed the time budget ({budget:.0f}s; raise --budget or select fewer "
                             "--backends/--variants)")
                log(notes[-1])
                break
            shift = rnd % len(pairs)
            order = pairs[shift:] + pairs[:shift]
            begun = time.monotonic()
            warm_seconds = 0.0
            for backend, variant in _with_followers(order, followers):
                if variant.needs_warm and not is_warm(backend, variant, project):
                    log(f"{backend} {variant.key}: warm-up run (not measured)")
                    w0 = time.monotonic()
                    warm = run_once(backend, variant, project, timeout, expected)
                    warm_seconds += time.monotonic() - w0
                    warmups.append({**warm, "round": rnd})
                    _protect(guard, backend, variant)
                record = run_once(backend, variant, project, timeout, expected)
                record["round"] = rnd
                records.append(record)
                _protect(guard, backend, variant)
                status = "ok" if record["ok"] else "FAILED"
                setup = "" if record["setup_max"] is None else f", setup {record['setup_max']:.2f}s"
                log(f"round {rnd + 1}/{repeat} {backend:10} {variant.key:13} {record['seconds']:7.2f}s{setup} "
                    f"{status} {record['summary']}")
            round_seconds.append(time.monotonic() - begun - warm_seconds)
    finally:
        left += guard.release()
        if not keep:
            left += clean(backends, project)
    return {
        "project": {"path": str(project.relative_to(benchlib.REPO_DIR)), "size": size, **info},
        "backends": list(backends),
        "variants": {v.key: {"label": v.label, "command": " ".join(command(v)[1:]), "workers": v.workers}
                     for v in variants},
        "repeat": repeat,
        "rounds": len(round_seconds),
        "seconds": time.monotonic() - started,
        "runs": records,
        "warmups": warmups,
        "notes": notes,
        "leftovers": left,
        "summary": aggregate(records, backends, variants),
    }


def _with_followers(order: Sequence[tuple[str, Variant]],
                    followers: dict[str, Variant]) -> Iterator[tuple[str, Variant]]:
    """``order``, each pair followed at once by the variant that runs right after it (if selected)."""
    for backend, variant in order:
        yield backend, variant
        follower = followers.get(variant.key)
        if follower is not None:
            yield backend, follower


def aggregate(records: Sequence[dict[str, Any]], backends: Sequence[str],
              variants: Sequence[Variant]) -> list[dict[str, Any]]:
    """Per (backend, variant): wall and setup statistics of the successful runs, ratios, failures."""
    out = []
    for backend in backends:
        rows: dict[str, dict[str, Any]] = {}
        for variant in variants:
            mine = [r for r in records if r["backend"] == backend and r["variant"] == variant.key]
            good = [r for r in mine if r["ok"]]
            failed = [r for r in mine if not r["ok"]]
            rows[variant.key] = {
                "backend": backend,
                "variant": variant.key,
                "label": variant.label,
                "wall": summarize([r["seconds"] for r in good]),
                "setup": summarize([r["setup_max"] for r in good if r["setup_max"] is not None]),
                "runs": len(mine),
                "failed": len(failed),
                "error": failed[0]["error"] if failed else None,
            }
        for row in rows.values():
            mine = benchlib.by_round(records, backend, row["variant"])
            for name, key in (("ratio_vs_pd_n2", BASELINE), ("ratio_vs_manage_par2", DJANGO_BASELINE)):
                row[name] = benchlib.paired_ratio(mine, benchlib.by_round(records, backend, key))
        out.extend(rows.values())
    return out
