"""A 50-revision Alembic project under ``pytest -n 2``: ours (cold: the template is built; warm: it
is reused) against "every worker runs ``alembic upgrade head`` on a database of its own".

    python bench/alembic_runs.py [--revisions 50] [--tests 40] [--rounds 3] [--backends sqlite postgresql mysql]

The variants run interleaved (baseline, ours cold, ours warm, then the next round) so that a
noisy machine hits them alike; the table shows medians, the spread and the ratio to the
baseline.  Results go to ``bench/results/alembic/results.{md,json}``.  Everything the runs make
is dropped at the end (the baseline drops its databases itself; ours prunes its templates).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import benchlib

from pytest_concurrent_db.backends import load_backend
from pytest_concurrent_db.url import parse_url

RESULTS = Path(__file__).resolve().parent / "results" / "alembic"

ENV_PY = """
    from alembic import context
    from sqlalchemy import create_engine, pool

    config = context.config
    connection = config.attributes.get("connection")

    def run(connection):
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()

    if connection is not None:
        run(connection)
    else:
        with create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool).connect() as conn:
            run(conn)
"""

REVISION = """
    import sqlalchemy as sa
    from alembic import op

    revision = "{rev:04d}"
    down_revision = {down}

    def upgrade():
        op.create_table(
            "t{rev:04d}",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("name", sa.String(100), nullable=False),
            sa.Column("amount", sa.Numeric(12, 2)),
            sa.Column("created", sa.DateTime),
            {fk}
        )
        op.create_index("ix_t{rev:04d}_name", "t{rev:04d}", ["name"])
        {alter}

    def downgrade():
        op.drop_table("t{rev:04d}")
"""

#: the baseline: each worker makes its own database and migrates it; ours: the worker's clone
CONFTEST = """
    import os, secrets
    import pytest
    from sqlalchemy import create_engine

    @pytest.fixture(scope="session")
    def engine(request):
        if os.environ.get("BENCH_MODE") != "baseline":
            yield request.getfixturevalue("concurrent_db_engine")
            return
        from alembic import command
        from alembic.config import Config
        from pytest_concurrent_db.backends import connect_url
        from pytest_concurrent_db.sqla.urls import sqlalchemy_url
        from pytest_concurrent_db.url import parse_url

        url = parse_url(os.environ["BENCH_URL"])
        name = "bench_alrun_" + secrets.token_hex(3) + "_" + os.environ.get("PYTEST_XDIST_WORKER", "main")
        server = url.with_database("postgres" if url.backend == "postgresql" else "")
        if url.backend == "sqlite":
            mine = url.with_database(os.path.join(os.path.dirname(url.database), name + ".db"))
        else:
            mine = url.with_database(name)
            admin = connect_url(server, autocommit=True) if url.backend == "postgresql" else connect_url(server)
            admin.cursor().execute("CREATE DATABASE " + name)
        config = Config("alembic.ini")
        config.set_main_option("sqlalchemy.url", sqlalchemy_url(mine))
        command.upgrade(config, "head")
        engine = create_engine(sqlalchemy_url(mine))
        yield engine
        engine.dispose()
        if url.backend == "sqlite":
            os.remove(mine.database)
        else:
            admin.cursor().execute("DROP DATABASE " + name)
            admin.close()
"""

TESTS = """
    import pytest
    from sqlalchemy import text

    @pytest.mark.parametrize("i", range({tests}))
    def test_insert_and_read(engine, i):
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t0001 (name) VALUES ('x')"))
            assert conn.execute(text("SELECT COUNT(*) FROM t{last:04d}")).scalar() == 0
"""


def make_project(root: Path, revisions: int, tests: int) -> None:
    versions = root / "migrations" / "versions"
    versions.mkdir(parents=True)
    (root / "migrations" / "env.py").write_text(textwrap.dedent(ENV_PY))
    for rev in range(1, revisions + 1):
        fk = f'sa.Column("parent_id", sa.Integer, sa.ForeignKey("t{rev - 1:04d}.id")),' if rev > 1 else ""
        alter = f'op.add_column("t{rev - 1:04d}", sa.Column("note{rev}", sa.String(50)))' if rev > 1 else ""
        down = repr(f"{rev - 1:04d}") if rev > 1 else "None"
        text = textwrap.dedent(REVISION).format(rev=rev, down=down, fk=fk, alter=alter)
        (versions / f"{rev:04d}_t{rev:04d}.py").write_text(text)
    (root / "alembic.ini").write_text("[alembic]\nscript_location = migrations\nsqlalchemy.url = sqlite://\n")
    (root / "pytest.ini").write_text("[pytest]\nconcurrent_db_alembic_ini = alembic.ini\n")
    (root / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (root / "test_app.py").write_text(textwrap.dedent(TESTS).format(tests=tests, last=revisions))


def _url(backend: str, root: Path, base: str) -> str:
    if backend == "sqlite":
        return f"sqlite:///{root / (base + '.db')}"
    return parse_url(benchlib.server_url(backend)).with_database(base).render(hide_password=False)


def run_variant(root: Path, url: str, variant: str) -> tuple[float, float]:
    """Wall time of one ``pytest -n 2`` run, and its slowest setup (the worker that built or
    migrated: the session fixtures run in the first test's setup)."""
    env = dict(os.environ, BENCH_URL=url, BENCH_MODE="baseline" if variant == "baseline" else "ours")
    argv = [sys.executable, "-m", "pytest", "-q", "-n", "2", "-p", "no:randomly", "--durations=6", "--durations-min=0"]
    if variant != "baseline":
        argv += ["--concurrent-db", "--concurrent-db-url", url]
    if variant == "ours cold":
        argv.append("--concurrent-db-rebuild")
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{benchlib.tail(done.stdout + done.stderr)}")
    setups = [float(m) for m in re.findall(r"^([0-9.]+)s setup ", done.stdout, re.MULTILINE)]
    return seconds, max(setups, default=0.0)


def cleanup(backend: str, root: Path, url: str) -> None:
    """Drop our templates of this benchmark (the baseline dropped its own databases)."""
    parsed = parse_url(url)
    db = load_backend(parsed, template_dir=root / ".pytest_cache" / "d" / "concurrent_db", clone_dir=root)
    try:
        for info in db.list_databases(f"cdb_{parsed.database if backend != 'sqlite' else 'bench'}_"):
            if info.marker is not None:
                db.drop(info.name)
    finally:
        db.close()


VARIANTS = ("baseline", "ours cold", "ours warm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--revisions", type=int, default=50)
    parser.add_argument("--tests", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql", "mysql"])
    args = parser.parse_args()
    results: dict[str, dict[str, list[float]]] = {}
    for backend in args.backends:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            make_project(root, args.revisions, args.tests)
            url = _url(backend, root, "cdb_bench_al" + secrets.token_hex(3) if backend != "sqlite" else "bench")
            times: dict[str, list[float]] = {v: [] for v in VARIANTS}
            setups: dict[str, list[float]] = {v: [] for v in VARIANTS}
            try:
                run_variant(root, url, "ours cold")  # the first run of all pays imports and caches
                for n in range(args.rounds):
                    for variant in VARIANTS:
                        wall, setup = run_variant(root, url, variant)
                        times[variant].append(wall)
                        setups[variant].append(setup)
                    benchlib.log(f"{backend} round {n + 1}: " + ", ".join(f"{v} {times[v][-1]:.2f}s" for v in VARIANTS))
            finally:
                cleanup(backend, root, url)
            results[backend] = times
            results[backend + " setup"] = setups
    write(results, args)


def _cell(times: dict[str, list[float]], variant: str) -> str:
    median, base = statistics.median(times[variant]), statistics.median(times["baseline"])
    ratio = f"{median / base:.2f}x" if base else "-"
    return f"{median:.2f} s ({min(times[variant]):.2f}-{max(times[variant]):.2f}; {ratio})"


def write(results: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> None:
    backends = [b for b in results if not b.endswith(" setup")]
    lines = [
        f"# {args.revisions}-revision Alembic project, {args.tests} tests, `pytest -n 2`",
        "",
        f"{args.rounds} interleaved rounds; median (min-max; ratio to the baseline's median). *wall*: the whole",
        "run; *setup*: the slowest test setup of the run (the worker that migrated, built or cloned: the session",
        "fixtures run there).",
        "",
        "| variant | " + " | ".join(f"{b} wall | {b} setup" for b in backends) + " |",
        "| --- |" + " --- | --- |" * len(backends),
    ]
    for variant in VARIANTS:
        cells = [f"{_cell(results[b], variant)} | {_cell(results[b + ' setup'], variant)}" for b in backends]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    warm = {b: statistics.median(results[b]["ours warm"]) / statistics.median(results[b]["baseline"]) for b in backends}
    verdict = "PASS" if all(r <= 0.1 for r in warm.values()) else "FAIL"
    lines += ["", f"Target warm <= 0.1x of the baseline (wall): {verdict} ("
              + ", ".join(f"{b} {r:.2f}x" for b, r in warm.items()) + ")", ""]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "results.md").write_text(text, encoding="utf-8")
    data = {"machine": benchlib.machine(backends), "argv": sys.argv, "times": results}
    (RESULTS / "results.json").write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
