"""Fresh databases per test: what ``concurrent_db_fresh`` costs a test, and what a fresh clone
saves a Django transactional test compared with Django's flush.

Two parts, each one interleaved run (every round visits every case in turn, so that a
noisy neighbour on the machine spreads over all of them):

* ``pool``: per backend and schema size (the 50- and 300-table schemas of
  ``make_schema.py``), a worker's :class:`~pytest_concurrent_db.spares.FreshPool` serves
  blocks of simulated tests in a row whose body takes ``--test-ms`` (default 50), each
  block from a full pool and with no other case's pool running; the overhead of a test is
  what the fixture does in the test's thread (take a ready clone, hand it back to be
  dropped in the background).  Median and p95 per case, how often the pool ran dry, and for
  each case the pool size it would need (copy time / test time).
* ``django``: the example Django project's transactional tests (a generated file of
  ``--django-tests`` ``django_db(transaction=True)`` tests that write rows), run by pytest
  once with Django's flush and once with ``--concurrent-db-fresh-transactional``; the
  per-test time is the mean of the tests' own durations (setup + call + teardown, JUnit XML).

    python bench/fresh.py                       # both parts, every backend
    python bench/fresh.py --parts pool --backends postgresql --tests 40

Results: ``bench/results/fresh.json`` and ``bench/results/fresh.md``.  Every database made
is dropped at the end (names ``cdb_bench_fresh…`` and, for Django, ``cdb_test_bfr…``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import benchlib
import make_schema

from pytest_concurrent_db.paths import Directories
from pytest_concurrent_db.site import Site
from pytest_concurrent_db.spares import FreshPool
from pytest_concurrent_db.template import schema_populator
from pytest_concurrent_db.url import parse_url
from pytest_concurrent_db.worker import WorkerDatabases

SIZES = (50, 300)
EXAMPLE = benchlib.REPO_DIR / "examples" / "django_project"


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


# -- part 1: the pool ---------------------------------------------------------------------------
class Case:
    """One backend and schema size: a template, a pool, and the overheads measured."""

    def __init__(self, backend: str, tables: int, pool: int, work: Path) -> None:
        self.backend, self.tables, self.pool_size = backend, tables, pool
        tag = f"fresh{tables}{secrets.token_hex(2)}"
        if backend == "sqlite":
            url = parse_url(f"sqlite:///{work / (tag + '.db')}")
        else:
            url = parse_url(benchlib.server_url(backend)).with_database(f"bench_{tag}")  # cdb_bench_fresh…
        directories = Directories(templates=work / "tpl", clones=work / "clones", locks=work / "locks")
        self.databases = WorkerDatabases(
            Site(url, directories), run_id=secrets.token_hex(4), worker_id="gw0", pool=pool
        )
        schema = make_schema.write_schema(benchlib.WORK_DIR / "schemas", backend, tables)
        started = time.perf_counter()
        self.databases.ensure_template([schema_populator(schema)])
        self.template_seconds = time.perf_counter() - started
        self.overheads: list[float] = []
        self.copy_seconds: list[float] = []
        self.close_seconds: list[float] = []
        self.dry = 0

    def block(self, tests: int, body: float) -> None:
        """``tests`` simulated tests in a row, from a full pool (only this case's pool runs)."""
        pool = self.databases.fresh_pool()
        started = time.perf_counter()
        pool.release(pool.take())  # starts the pool: a run's first fresh test, not measured
        self.copy_seconds.append(time.perf_counter() - started)
        deadline = time.monotonic() + 300
        while pool.ready < self.pool_size and time.monotonic() < deadline:
            time.sleep(0.01)
        for _ in range(tests):
            self.test(pool, body)
        self.dry += pool.stats.dry
        started = time.perf_counter()
        self.databases.close_pool()  # drops what is left
        self.close_seconds.append(time.perf_counter() - started)

    def test(self, pool: FreshPool, body: float) -> None:
        started = time.perf_counter()
        name = pool.take()
        taken = time.perf_counter()
        time.sleep(body)  # the test's own work, while the pool refills
        back = time.perf_counter()
        pool.release(name)
        self.overheads.append((taken - started) + (time.perf_counter() - back))

    def close(self) -> dict[str, Any]:
        self.databases.close()
        self.drop_template()
        return {
            "backend": self.backend,
            "tables": self.tables,
            "pool": self.pool_size,
            "tests": len(self.overheads),
            "median_ms": 1000 * sorted(self.overheads)[len(self.overheads) // 2],
            "p95_ms": 1000 * p95(self.overheads),
            "max_ms": 1000 * max(self.overheads),
            "dry": self.dry,
            "first_copy_s": sorted(self.copy_seconds)[len(self.copy_seconds) // 2],
            "template_s": self.template_seconds,
        }

    def drop_template(self) -> None:
        template = self.databases.template
        if template is None:
            return
        backend = self.databases.site.open_backend("bench", "gw0")
        try:
            backend.drop(template.name)
        finally:
            backend.close()


def run_pool(backends: list[str], tests: int, rounds: int, body: float, pools: dict[str, int]) -> list[dict[str, Any]]:
    work = Path(tempfile.mkdtemp(prefix="fresh-", dir=benchlib.WORK_DIR))
    cases: list[Case] = []
    try:
        for backend in backends:
            for tables in SIZES:
                benchlib.log(f"pool: template {backend} {tables} tables")
                cases.append(Case(backend, tables, pools.get(backend, 2), work))
        per_round = max(1, tests // rounds)
        for number in range(rounds):
            benchlib.log(f"pool: round {number + 1}/{rounds}")
            for case in cases:  # interleaved: each case gets a block of every round
                case.block(per_round, body)
        return [case.close() for case in cases]
    finally:
        for case in cases:
            try:
                case.databases.close()
                case.drop_template()
            except Exception as exc:  # already closed, or the server went away: say so
                benchlib.log(f"cleanup: {exc}")
        shutil.rmtree(work, ignore_errors=True)


# -- part 2: Django's flush against a fresh clone ---------------------------------------------
DJANGO_TESTS = """
import pytest

from catalog.models import Category, Product


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("i", range({count}))
def test_transactional(i):
    category = Category.objects.create(name=f"bench{{i}}")
    Product.objects.bulk_create(
        [Product(category=category, name=f"p{{n}}", price_cents=n) for n in range(20)]
    )
    assert Category.objects.filter(name__startswith="bench").count() == 1
"""


def django_env(backend: str, name: str) -> dict[str, str]:
    env = {**os.environ, "DJANGO_DB": backend, "DJANGO_DB_NAME": name, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    if backend != "sqlite":
        url = parse_url(benchlib.server_url(backend))
        env.update(
            DJANGO_DB_HOST=url.host or "",
            DJANGO_DB_PORT=str(url.port or ""),
            DJANGO_DB_USER=url.username or "",
            DJANGO_DB_PASSWORD=url.password or "",
        )
    return env


def django_once(project: Path, backend: str, name: str, fresh: bool) -> dict[str, Any]:
    junit = project / f"junit-{backend}-{'fresh' if fresh else 'flush'}.xml"
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:xdist",
        "-p",
        "no:randomly",
        "-p",
        "no:cacheprovider",
        "--concurrent-db",
        "-q",
        f"--junitxml={junit}",
        "tests/test_bench_fresh.py",
    ]
    if fresh:
        argv.append("--concurrent-db-fresh-transactional")
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=project, env=django_env(backend, name), capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"django run failed ({backend}, fresh={fresh}):\n{benchlib.tail(done.stdout)}")
    times = [float(case.get("time", "0")) for case in ET.parse(junit).getroot().iter("testcase")]
    return {"per_test_ms": 1000 * sum(times) / len(times), "tests": len(times), "wall_s": wall}


def run_django(backends: list[str], count: int, rounds: int) -> list[dict[str, Any]]:
    project = Path(tempfile.mkdtemp(prefix="django-fresh-", dir=benchlib.WORK_DIR))
    ignore = shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.sqlite3")
    shutil.copytree(EXAMPLE, project, dirs_exist_ok=True, ignore=ignore)
    (project / "tests" / "test_bench_fresh.py").write_text(DJANGO_TESTS.format(count=count))
    names = {backend: "bfr" + secrets.token_hex(3) for backend in backends}
    samples: dict[tuple[str, bool], list[dict[str, Any]]] = {}
    try:
        for backend in backends:  # the template is built once, outside the measurement
            django_once(project, backend, names[backend], fresh=False)
        for number in range(rounds):
            benchlib.log(f"django: round {number + 1}/{rounds}")
            for backend in backends:
                for fresh in (False, True) if number % 2 == 0 else (True, False):
                    samples.setdefault((backend, fresh), []).append(
                        django_once(project, backend, names[backend], fresh)
                    )
    finally:
        cleanup_django(backends, names)
        shutil.rmtree(project, ignore_errors=True)
    out = []
    for backend in backends:
        flush = sorted(s["per_test_ms"] for s in samples[(backend, False)])
        fresh = sorted(s["per_test_ms"] for s in samples[(backend, True)])
        out.append(
            {
                "backend": backend,
                "tests": count,
                "flush_ms": flush[len(flush) // 2],
                "fresh_ms": fresh[len(fresh) // 2],
                "rounds": rounds,
            }
        )
    return out


def cleanup_django(backends: list[str], names: dict[str, str]) -> None:
    from pytest_concurrent_db.backends import load_backend

    for backend in backends:
        if backend == "sqlite":
            continue
        server = load_backend(parse_url(benchlib.server_url(backend)))
        try:
            for info in server.list_databases(f"cdb_test_{names[backend]}"):  # default and analytics
                if info.marker is not None:
                    server.drop(info.name)
        finally:
            server.close()


# -- output ---------------------------------------------------------------------------------------
def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Fresh databases per test ({result['when']})", "", f"`{result['command']}`", ""]
    if result.get("pool"):
        body = result["test_ms"]
        lines += [
            f"## Overhead of `concurrent_db_fresh` per test (test body {body} ms, one worker)",
            "",
            "| backend | tables | pool | tests | median | p95 | max | pool ran dry | copy (median) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in result["pool"]:
            lines.append(
                f"| {row['backend']} | {row['tables']} | {row['pool']} | {row['tests']} | {row['median_ms']:.1f} ms "
                f"| {row['p95_ms']:.1f} ms | {row['max_ms']:.1f} ms | {row['dry']} | {row['first_copy_s']:.3f} s |"
            )
        lines += [
            "",
            "The pool keeps up while a test takes at least as long as a copy (the drops run on their own",
            "connection); when copies are slower, a pool of N only postpones the wait by about",
            "N x test / (copy - test) tests, after which each test waits copy - test.",
            "",
        ]
    if result.get("django"):
        lines += [
            "## Django transactional tests: flush after each test against a fresh clone per test",
            "",
            "| backend | tests | flush (per test) | fresh clone (per test) | fresh / flush |",
            "| --- | --- | --- | --- | --- |",
        ]
        for row in result["django"]:
            lines.append(
                f"| {row['backend']} | {row['tests']} | {row['flush_ms']:.1f} ms | {row['fresh_ms']:.1f} ms "
                f"| {row['fresh_ms'] / row['flush_ms']:.2f} |"
            )
        lines.append("")
    machine = result["machine"]
    servers = ", ".join(f"{k} {v}" for k, v in (machine.get("servers") or {}).items())
    lines += [
        f"Machine: {machine.get('cpu_model', '?')}, {machine.get('cpu_usable')} usable CPUs (shared), "
        f"load at start {result.get('load')}; servers: {servers}",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=["pool", "django"], default=["pool", "django"])
    parser.add_argument("--backends", nargs="+", choices=benchlib.BACKENDS, default=list(benchlib.BACKENDS))
    parser.add_argument("--tests", type=int, default=40, help="simulated tests per case (default: 40)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default: 2)")
    parser.add_argument("--test-ms", type=int, default=50, help="the body of a simulated test (default: 50)")
    parser.add_argument(
        "--pool", action="append", default=[], metavar="BACKEND=N", help="pool size per backend (default: 2 each)"
    )
    parser.add_argument("--django-tests", type=int, default=20, help="transactional tests in the Django file")
    parser.add_argument("--out", type=Path, default=benchlib.RESULTS_DIR / "fresh")
    parser.add_argument("--render", type=Path, metavar="FILE.json", help="only write the tables of an earlier run")
    args = parser.parse_args(argv)
    if args.render is not None:
        text = markdown(json.loads(args.render.read_text(encoding="utf-8")))
        args.render.with_suffix(".md").write_text(text, encoding="utf-8")
        print(text)
        return 0
    pools = {k: int(v) for k, v in (item.split("=", 1) for item in args.pool)}
    benchlib.WORK_DIR.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python bench/fresh.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": benchlib.machine(args.backends),
        "test_ms": args.test_ms,
        "load": benchlib.load_average(),
    }
    if "pool" in args.parts:
        result["pool"] = run_pool(args.backends, args.tests, args.rounds, args.test_ms / 1000, pools)
    if "django" in args.parts:
        result["django"] = run_django(args.backends, args.django_tests, args.rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    text = markdown(result)
    args.out.with_suffix(".md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
