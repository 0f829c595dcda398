"""nox sessions: tests per backend, examples, lint, typecheck, docs, build, and a compatibility matrix.

``nox -l`` lists them.  The matrix (``compat``) runs the Django and SQLAlchemy integration tests under
pytest 8 and 9, Django 4.2, 5.2 and 6.0 and each backend; Django 6.0 needs Python 3.12
(``python3.12`` on the PATH; with pyenv: ``PYENV_VERSION=3.11.7:3.12.1 nox -s compat``).
"""

from __future__ import annotations

import os
import tempfile

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs", "build"]
nox.options.default_venv_backend = "venv"

BACKENDS = ["sqlite", "postgresql", "mysql"]
#: (Python, Django): Django 6.0 runs on Python 3.12+, 4.2 and 5.2 on the default interpreter.
DJANGO = [("3.11", "4.2"), ("3.11", "5.2"), ("3.12", "6.0")]
PYTEST = ["8", "9"]


def _install(session: nox.Session) -> None:
    session.install("-e", ".[test]")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite on every backend, in parallel and then the core serially."""
    _install(session)
    session.run("pytest", "-n", "2", *session.posargs)
    session.run("pytest", "-p", "no:xdist", "tests/unit", "tests/integration/test_core.py", "-q")


@nox.session
@nox.parametrize("backend", BACKENDS)
def backend(session: nox.Session, backend: str) -> None:
    """The suite for one backend only (`nox -s "backend(backend='postgresql')"`)."""
    _install(session)
    session.run("pytest", "-n", "2", "-k", backend, *session.posargs)


@nox.session
@nox.parametrize("backend", BACKENDS)
@nox.parametrize(("python", "django"), DJANGO)
@nox.parametrize("pytest", PYTEST)
def compat(session: nox.Session, pytest: str, django: str, backend: str) -> None:
    """pytest x Django x backend with SQLAlchemy 2.0 latest: the Django, runner and SQLAlchemy tests."""
    _install(session)
    session.install(f"pytest=={pytest}.*", f"Django=={django}.*", "SQLAlchemy[asyncio]>=2.0,<2.1")
    session.run(
        "python",
        "-c",
        "import django, pytest, sqlalchemy; print(pytest.__version__, django.__version__, sqlalchemy.__version__)",
    )
    # posargs replace the whole pytest command line (e.g. one cheap test: `-- -p no:xdist tests/unit/test_url.py`)
    default = [
        "-n",
        "2",
        "-k",
        f"{backend} or not (sqlite or postgresql or mysql)",
        "tests/integration/test_django.py",
        "tests/integration/test_django_runner.py",
        "tests/integration/test_sqlalchemy.py",
        "tests/unit",
    ]
    session.run("pytest", *(session.posargs or default))


@nox.session
def examples(session: nox.Session) -> None:
    """The quickstart example on SQLite."""
    _install(session)
    session.chdir("examples/quickstart")
    session.run("pytest", "-n", "2", "--concurrent-db", "-q")


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "pytest_concurrent_db", "tests", "bench", "examples")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".", "mypy", "psycopg[binary]")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """The Sphinx site (docs/), warnings as errors: `nox -s docs`, then open docs/_build/html/index.html."""
    session.install("-e", ".[test,docs]")
    session.run("python", "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "docs", "docs/_build/html")


@nox.session
def build(session: nox.Session) -> None:
    """sdist and wheel (`python -m build`), `twine check`, and the wheel's contents against the source tree."""
    session.install("build", "twine")
    outdir = session.posargs[0] if session.posargs else tempfile.mkdtemp(prefix="cdb-dist-")
    session.run("python", "-m", "build", "--outdir", outdir)
    session.run(
        "python", "-m", "twine", "check", "--strict", *sorted(os.path.join(outdir, n) for n in os.listdir(outdir))
    )
    session.run("python", ".ci/check_dist.py", outdir)


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark kit (bench/README.md): `nox -s bench -- --quick`."""
    _install(session)
    session.run("python", "bench/run.py", *session.posargs)
