"""nox sessions: tests per backend, examples, lint, typecheck."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.default_venv_backend = "venv"


def _install(session: nox.Session) -> None:
    session.install("-e", ".[test]")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite on every backend, in parallel and then the core serially."""
    _install(session)
    session.run("pytest", "-n", "2", *session.posargs)
    session.run("pytest", "-p", "no:xdist", "tests/unit", "tests/integration/test_core.py", "-q")


@nox.session
@nox.parametrize("backend", ["sqlite", "postgresql", "mysql"])
def backend(session: nox.Session, backend: str) -> None:
    """The suite for one backend only (`nox -s "backend(backend='postgresql')"`)."""
    _install(session)
    session.run("pytest", "-n", "2", "-k", backend, *session.posargs)


@nox.session
def examples(session: nox.Session) -> None:
    """The quickstart example on SQLite."""
    _install(session)
    session.chdir("examples/quickstart")
    session.run("pytest", "-n", "2", "--concurrent-db", "-q")


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "pytest_concurrent_db", "tests")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".", "mypy", "psycopg[binary]")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark kit (bench/README.md): `nox -s bench -- --quick`."""
    _install(session)
    session.run("python", "bench/run.py", *session.posargs)
