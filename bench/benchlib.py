"""Helpers shared by the benchmark scripts: statistics, machine description, servers, URLs.

Nothing here measures anything; it only keeps ``primitives.py``, ``runs.py`` and
``run.py`` short.  The bench scripts import each other as plain modules (``bench/`` is
``sys.path[0]`` when one of them is run).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
WORK_DIR = BENCH_DIR / ".work"  # generated schemas, the Django project, SQLite files (git-ignored)
RESULTS_DIR = BENCH_DIR / "results"

BACKENDS = ("sqlite", "postgresql", "mysql")
DEFAULT_URLS = {
    "postgresql": "postgresql://postgres@127.0.0.1:5432/cdb_bench",
    "mysql": "mysql://root@127.0.0.1:3306/cdb_bench",
}
#: Every database the primitives create starts with this (the Django runs use ``cdb_bench_dj``).
PREFIX = "cdb_bench_"


def log(message: str) -> None:
    """Progress on stderr (stdout stays free for the final summary)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def server_url(backend: str) -> str:
    """The server URL for ``backend``: ``BENCH_POSTGRESQL_URL`` / ``BENCH_MYSQL_URL`` or the local default."""
    return os.environ.get(f"BENCH_{backend.upper()}_URL", DEFAULT_URLS[backend])


# -- statistics ------------------------------------------------------------------------------
def summarize(times: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and quartiles (inclusive method) of ``times`` in seconds."""
    values = sorted(times)
    if not values:
        return {"n": 0}
    if len(values) >= 2:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = q3 = values[0]
    return {
        "n": len(values),
        "median": statistics.median(values),
        "min": values[0],
        "max": values[-1],
        "q1": q1,
        "q3": q3,
    }


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.1f} ms"
    return f"{value:.2f} s"


def fmt_spread(stats: dict[str, Any]) -> str:
    """``min-max (IQR q1-q3)`` in the unit of the median."""
    if not stats or stats.get("n", 0) == 0:
        return "-"
    if stats["n"] == 1:
        return "n=1"
    scale, unit = (1000.0, "ms") if stats["median"] < 1 else (1.0, "s")

    def f(x: float) -> str:
        return f"{x * scale:.1f}" if scale > 1 else f"{x:.2f}"

    return f"{f(stats['min'])}-{f(stats['max'])} {unit} (IQR {f(stats['q1'])}-{f(stats['q3'])})"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def paired_ratio(mine: dict[Any, float], theirs: dict[Any, float]) -> float | None:
    """Median over the rounds both were measured in of ``mine[round] / theirs[round]``.

    The cases of one round run next to each other, so a machine that gets slower or faster
    during the benchmark moves both sides of each ratio alike; a ratio of the two medians
    would mix different rounds.
    """
    ratios = [mine[k] / theirs[k] for k in mine if k in theirs and theirs[k] > 0]
    return statistics.median(ratios) if ratios else None


def by_round(records: Iterable[dict[str, Any]], backend: str, variant: str, key: str = "seconds") -> dict[int, float]:
    """``{round: value}`` of the successful whole runs of ``variant`` on ``backend``."""
    return {
        r["round"]: r[key]
        for r in records
        if r.get("ok") and r["backend"] == backend and r["variant"] == variant and r.get(key) is not None
    }


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def tail(text: str, lines: int = 25) -> str:
    """The last ``lines`` non-empty lines of ``text``."""
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


# -- machine -------------------------------------------------------------------------------------
def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def _os_name() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return platform.platform()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_DIR, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def server_versions(backends: Iterable[str]) -> dict[str, str]:
    """``{"sqlite": "3.40.1", "postgresql": "PostgreSQL 15.20 ...", ...}``; errors as text."""
    out: dict[str, str] = {}
    for backend in backends:
        try:
            if backend == "sqlite":
                import sqlite3

                out[backend] = f"SQLite {sqlite3.sqlite_version}"
            else:
                from pytest_concurrent_db.backends import connect_url
                from pytest_concurrent_db.url import parse_url

                url = parse_url(server_url(backend))
                conn = connect_url(url.with_database("postgres" if backend == "postgresql" else ""))
                try:
                    cur = conn.cursor()
                    cur.execute("SELECT version()")
                    out[backend] = str(cur.fetchone()[0])
                finally:
                    conn.close()
        except Exception as exc:  # a server that is down is reported, not fatal
            out[backend] = f"unavailable: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    return out


def machine(backends: Iterable[str] = BACKENDS) -> dict[str, Any]:
    """What the numbers were measured on."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_usable": affinity,
        "cpu_model": _cpu_model(),
        "ram_gib": _ram_gib(),
        "os": _os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": load_average(),
        "packages": {
            name: _version(name)
            for name in ("pytest-concurrent-db", "pytest", "pytest-xdist", "pytest-django", "Django", "psycopg",
                         "PyMySQL")
        },
        "servers": server_versions(backends),
        "git": {"commit": _git("rev-parse", "--short", "HEAD"), "dirty": bool(_git("status", "--porcelain"))},
    }


def load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None
