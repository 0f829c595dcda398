"""The public API's clones: ``clone_many(template, n)`` (parallel) against ``n`` clones made one
after the other with ``worker_database``, and a reused ``build_template``, per backend.

    python bench/api.py [--n 4] [--tables 50] [--rounds 5] [--backends sqlite postgresql mysql]

Interleaved rounds (sequential, then parallel, then the next round) on the schema of
``make_schema.py``; prints one Markdown table (median and spread of each, and the ratio
parallel / sequential of the medians).  Everything it makes is dropped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import benchlib
import make_schema

from pytest_concurrent_db import build_template, clone_many, worker_database
from pytest_concurrent_db.backends import load_backend
from pytest_concurrent_db.url import parse_url


def _url(backend: str, base: str, directory: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{directory / (base + '.db')}"
    return parse_url(benchlib.server_url(backend)).with_database(base).render(hide_password=False)


def _measure(backend: str, n: int, tables: int, rounds: int) -> dict[str, list[float]]:
    base = "bench_api" + secrets.token_hex(3)  # our databases are cdb_<base>_...
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        schema = directory / "schema.sql"
        schema.write_text(make_schema.schema_sql(backend, tables))
        url = _url(backend, base, directory)
        times: dict[str, list[float]] = {"build (cold)": [], "build (reused)": [], "sequential": [], "parallel": []}
        started = time.perf_counter()
        template = build_template(url, schema, directory=directory)
        times["build (cold)"].append(time.perf_counter() - started)
        try:
            for _ in range(rounds):
                started = time.perf_counter()
                build_template(url, schema, directory=directory)
                times["build (reused)"].append(time.perf_counter() - started)
                started = time.perf_counter()
                with contextlib.ExitStack() as stack:
                    for i in range(n):
                        stack.enter_context(worker_database(template, f"s{i}"))
                    times["sequential"].append(time.perf_counter() - started)
                started = time.perf_counter()
                with clone_many(template, n):
                    times["parallel"].append(time.perf_counter() - started)
        finally:
            backend_ = load_backend(parse_url(url), template_dir=directory, clone_dir=directory / "api")
            try:
                for info in backend_.list_databases(f"cdb_{base}_"):
                    if info.marker is not None:
                        backend_.drop(info.name)
            finally:
                backend_.close()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4, help="clones per measurement (default 4)")
    parser.add_argument("--tables", type=int, default=50, help="tables in the template (default 50)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backends", nargs="+", default=list(benchlib.BACKENDS))
    args = parser.parse_args()
    print(f"clones of a {args.tables}-table template, n={args.n}, {args.rounds} interleaved rounds (seconds)\n")
    print(
        "| backend | build cold | build reused | sequential (worker_database x n) | clone_many(n) "
        "| parallel / sequential |"
    )
    print("|---|---|---|---|---|---|")
    for backend in args.backends:
        benchlib.log(f"{backend}: measuring")
        times = _measure(backend, args.n, args.tables, args.rounds)

        def cell(key: str, times: dict[str, list[float]] = times) -> str:
            values = times[key]
            return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"

        ratio = statistics.median(times["parallel"]) / statistics.median(times["sequential"])
        print(
            f"| {backend} | {times['build (cold)'][0]:.3f} | {cell('build (reused)')} | {cell('sequential')} "
            f"| {cell('parallel')} | {ratio:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
