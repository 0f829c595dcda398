"""A throw-away project per test, run in real pytest subprocesses against real servers."""

from __future__ import annotations

import re
import secrets
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_concurrent_db.backends import load_backend
from pytest_concurrent_db.url import DatabaseURL
from tests.conftest import drop_ours

SCHEMAS = {
    "sqlite": """
        CREATE TABLE author (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
        CREATE TABLE book (id INTEGER PRIMARY KEY, author_id INTEGER NOT NULL REFERENCES author(id),
                           title TEXT NOT NULL, worker TEXT);
        CREATE INDEX book_title ON book (title);
        CREATE VIEW book_view AS SELECT b.title, a.name FROM book b JOIN author a ON a.id = b.author_id;
        CREATE TABLE audit (book_id INTEGER);
        CREATE TRIGGER book_audit AFTER INSERT ON book BEGIN INSERT INTO audit VALUES (NEW.id); END;
        INSERT INTO author (id, name) VALUES (1, 'seed');
    """,
    "postgresql": """
        CREATE TABLE author (id SERIAL PRIMARY KEY, name TEXT NOT NULL);
        CREATE TABLE book (id SERIAL PRIMARY KEY, author_id INTEGER NOT NULL REFERENCES author(id),
                           title TEXT NOT NULL, worker TEXT);
        CREATE INDEX book_title ON book (title);
        CREATE VIEW book_view AS SELECT b.title, a.name FROM book b JOIN author a ON a.id = b.author_id;
        CREATE TABLE audit (book_id INTEGER);
        CREATE FUNCTION book_audit() RETURNS trigger AS $$
        BEGIN INSERT INTO audit VALUES (NEW.id); RETURN NEW; END; $$ LANGUAGE plpgsql;
        CREATE TRIGGER book_audit AFTER INSERT ON book FOR EACH ROW EXECUTE FUNCTION book_audit();
        INSERT INTO author (name) VALUES ('seed');
    """,
    "mysql": """
        CREATE TABLE author (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100) NOT NULL) ENGINE=InnoDB;
        CREATE TABLE book (id INT AUTO_INCREMENT PRIMARY KEY, author_id INT NOT NULL, title VARCHAR(100) NOT NULL,
                           worker VARCHAR(20), CONSTRAINT book_author FOREIGN KEY (author_id) REFERENCES author(id),
                           INDEX book_title (title)) ENGINE=InnoDB;
        CREATE VIEW book_view AS SELECT b.title, a.name FROM book b JOIN author a ON a.id = b.author_id;
        CREATE TABLE audit (book_id INT) ENGINE=InnoDB;
        CREATE TRIGGER book_audit AFTER INSERT ON book FOR EACH ROW INSERT INTO audit VALUES (NEW.id);
        INSERT INTO author (name) VALUES ('seed');
    """,
}
PARAM = {"sqlite": "?", "postgresql": "%s", "mysql": "%s"}
#: the shape of a spare's name: cdb_<base>_sp<6 hex>_<worker>
SPARE = re.compile(r"_sp[0-9a-f]{6}_[a-z0-9]+$")


@dataclass
class Project:
    """A pytester project bound to one backend and a database name unique to the test."""

    pytester: pytest.Pytester
    backend: str
    url: DatabaseURL
    base: str

    @property
    def url_arg(self) -> list[str]:
        return ["--concurrent-db-url", self.url.render(hide_password=False)]

    def write(self, schema: str | None = None, tests: str = "", conftest: str = "", ini: str = "") -> None:
        self.pytester.makefile(".sql", schema=textwrap.dedent(schema if schema is not None else SCHEMAS[self.backend]))
        self.pytester.makeini("[pytest]\nconcurrent_db_schema = schema.sql\n" + textwrap.dedent(ini))
        if conftest:
            self.pytester.makeconftest(textwrap.dedent(conftest))
        if tests:
            self.pytester.makepyfile(test_project=textwrap.dedent(tests).replace("PARAM", PARAM[self.backend]))

    def run(self, *args: str, url: bool = True) -> pytest.RunResult:
        argv = ["--concurrent-db", "-p", "no:randomly", *(self.url_arg if url else []), *args]
        return self.pytester.runpytest_subprocess(*argv, timeout=240)

    def server_names(self) -> list[str]:
        """Names of our databases for this project's base name still on the server (or disk)."""
        backend = self._backend()
        try:
            return [info.name for info in backend.list_databases(f"cdb_{self.base}_")]
        finally:
            backend.close()

    def clones(self) -> list[str]:
        """Worker databases left (not templates, not spares made for the next run)."""
        return [n for n in self.server_names() if "_tpl_" not in n and not SPARE.search(n)]

    def spares(self) -> dict[str, Any]:
        """Spares on the server: name -> marker."""
        backend = self._backend()
        try:
            return {i.name: i.marker for i in backend.list_databases(f"cdb_{self.base}_") if SPARE.search(i.name)}
        finally:
            backend.close()

    def _backend(self):  # type: ignore[no-untyped-def]
        root = self.pytester.path
        return load_backend(
            self.url,
            template_dir=root / ".pytest_cache" / "d" / "concurrent_db",
            clone_dir=root / "clones",
        )

    def drop_all(self) -> None:
        """Drop the project's marked databases; fail, naming them, if a marked one stays.

        A database that appears after the first sweep (a process of a run that outlived it) gets
        two more sweeps, two seconds apart.  Unmarked ones are never dropped as such: the project
        runs once more, as its next run would, to adopt and reap what its killed processes left
        (their intents are in the project); one that is still unmarked fails the test, named."""
        prefix = f"cdb_{self.base}_"
        left: dict[str, Any] = {}
        for attempt in range(3):
            if attempt:
                time.sleep(2)
            left = drop_ours(self._backend(), prefix)
            if not left:
                break
        else:
            raise AssertionError(f"marked databases of the project stay after three sweeps: {left}")
        unmarked = self._unmarked(prefix)
        if unmarked:
            # a killed process's copy its server finished after the run that followed had looked: in a
            # real project its next run adopts it (the intent is in the project); this one runs no more
            self.run("-p", "no:xdist", "--collect-only", "-q")
            drop_ours(self._backend(), prefix)
            still = self._unmarked(prefix)
            assert not still, f"databases of the project left without a marker, not adopted by its next run: {still}"

    def _unmarked(self, prefix: str) -> list[str]:
        if self.backend == "sqlite":
            return []
        backend = self._backend()
        try:
            return [i.name for i in backend.list_databases(prefix, sizes=False) if i.marker is None]
        finally:
            backend.close()


@pytest.fixture
def project(backend_url: DatabaseURL, pytester: pytest.Pytester) -> Iterator[Project]:
    """A project on each backend in turn; its databases are dropped afterwards."""
    base = "it" + secrets.token_hex(3)
    if backend_url.backend == "sqlite":
        url = backend_url.with_database(str(pytester.path / f"{base}.db"))
    else:
        url = backend_url.with_database(base)
    proj = Project(pytester, backend_url.backend, url, base)
    yield proj
    proj.drop_all()


def summary(result: pytest.RunResult) -> str:
    text = result.stdout.str()
    match = re.search(r"=+ concurrent-db =+\n(.*?)(?:\n=|$)", text, re.DOTALL)
    return match.group(1) if match else ""


@pytest.fixture
def results_dir(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory the inner tests write their observations to (env RESULTS_DIR)."""
    path = pytester.path / "results"
    path.mkdir()
    monkeypatch.setenv("RESULTS_DIR", str(path))
    return path
