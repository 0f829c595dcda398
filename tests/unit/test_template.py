"""The pure parts of the template lifecycle: populator keys and the xdist URL check."""

from __future__ import annotations

import functools
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_concurrent_db.backends.sqlite import SQLiteBackend
from pytest_concurrent_db.errors import ConfigError, ScriptError
from pytest_concurrent_db.settings import check_url_for_xdist
from pytest_concurrent_db.template import callable_populator, schema_populator, with_stack_room
from pytest_concurrent_db.url import parse_url

SCHEMA = "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT);\nINSERT INTO items (name) VALUES ('a');\n"


@pytest.fixture
def backend(tmp_path: Path) -> SQLiteBackend:
    return SQLiteBackend(parse_url("sqlite:///app.db"), template_dir=tmp_path / "tpl", clone_dir=tmp_path / "clones")


@pytest.fixture
def connection() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:")
    yield conn
    conn.close()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# -- schema_populator ----------------------------------------------------------------------------------------


def test_schema_key_is_name_and_content_digest(tmp_path: Path) -> None:
    populator = schema_populator(write(tmp_path / "schema.sql", "SELECT 1;"))
    assert populator.label == str(tmp_path / "schema.sql")
    assert populator.key == "schema:schema.sql:17db4fd369edb9244b9f91d9aeed145c3d04ad8ba6e95d06247f07a63527d11a"


def test_schema_key_depends_on_content_and_name_not_directory(tmp_path: Path) -> None:
    base = schema_populator(write(tmp_path / "a" / "schema.sql", SCHEMA)).key
    assert schema_populator(write(tmp_path / "b" / "schema.sql", SCHEMA)).key == base
    assert schema_populator(write(tmp_path / "c" / "schema.sql", SCHEMA + "-- changed\n")).key != base
    assert schema_populator(write(tmp_path / "d" / "other.sql", SCHEMA)).key != base


def test_schema_key_is_taken_when_the_populator_is_made(tmp_path: Path) -> None:
    path = write(tmp_path / "schema.sql", SCHEMA)
    before = schema_populator(path).key
    write(path, "SELECT 2;")
    assert schema_populator(path).key != before


def test_schema_populator_applies_the_file(tmp_path: Path, backend: SQLiteBackend, connection: Any) -> None:
    schema_populator(write(tmp_path / "schema.sql", SCHEMA)).apply(backend, connection, "tpl")
    assert connection.execute("SELECT name FROM items").fetchall() == [("a",)]
    assert not connection.in_transaction


def test_schema_populator_error_names_file_and_line(tmp_path: Path, backend: SQLiteBackend, connection: Any) -> None:
    path = write(tmp_path / "broken.sql", "-- header\nCREATE TABLE t (x);\n\nINSERT INTO missing VALUES (1);\n")
    with pytest.raises(ScriptError) as info:
        schema_populator(path).apply(backend, connection, "tpl")
    assert (info.value.source, info.value.line) == (str(path), 4)
    assert str(info.value).startswith(f"concurrent-db: {path}:4: INSERT INTO missing VALUES (1)")
    assert "no such table: missing" in str(info.value)


# -- callable_populator --------------------------------------------------------------------------------------


def populate_a(conn: Any) -> None:
    conn.execute("CREATE TABLE a (x)")
    conn.execute("INSERT INTO a VALUES (1)")


def populate_b(conn: Any) -> None:
    conn.execute("CREATE TABLE b (x)")


def test_callable_key_is_stable_and_depends_on_source_label_and_extra() -> None:
    key = callable_populator("fixture", populate_a).key
    assert key.startswith("callable:fixture:")
    assert len(key.rsplit(":", 1)[1]) == 64
    assert callable_populator("fixture", populate_a).key == key
    assert callable_populator("fixture", populate_b).key != key
    assert callable_populator("other", populate_a).key != key
    assert callable_populator("fixture", populate_a, extra_key="v2").key != key
    assert callable_populator("fixture", populate_a, call=populate_b).key == key
    assert callable_populator("fixture", populate_a).label == "fixture"


def test_callable_without_source_falls_back_to_its_name() -> None:
    key = callable_populator("builtin", len).key
    assert key == callable_populator("builtin", len).key
    assert key != callable_populator("builtin", print).key


def test_callable_populator_runs_and_commits(backend: SQLiteBackend, connection: Any) -> None:
    callable_populator("fixture", populate_a).apply(backend, connection, "tpl")
    assert not connection.in_transaction
    assert connection.execute("SELECT x FROM a").fetchall() == [(1,)]


def test_callable_populator_uses_call_when_given(backend: SQLiteBackend, connection: Any) -> None:
    calls: list[Any] = []

    def call(conn: Any) -> None:
        calls.append(conn)
        populate_b(conn)

    callable_populator("fixture", populate_a, call=call).apply(backend, connection, "tpl")
    assert calls == [connection]
    assert connection.execute("SELECT name FROM sqlite_master").fetchall() == [("b",)]


# -- check_url_for_xdist -------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://", "sqlite:///file:shared?mode=memory&cache=shared"])
def test_memory_sqlite_cannot_be_shared_by_workers(url: str) -> None:
    with pytest.raises(ConfigError, match="in-memory SQLite URL cannot be shared by xdist workers") as info:
        check_url_for_xdist(parse_url(url), parallel=True)
    assert "sqlite:///tests.db" in str(info.value)
    check_url_for_xdist(parse_url(url), parallel=False)


@pytest.mark.parametrize("url", ["sqlite:///tests.db", "sqlite:////abs/tests.db", "postgresql://h/db", "mysql://h/db"])
@pytest.mark.parametrize("parallel", [True, False])
def test_other_urls_are_fine(url: str, parallel: bool) -> None:
    check_url_for_xdist(parse_url(url), parallel=parallel)


# -- with_stack_room -----------------------------------------------------------------------------------------


def _call_at_depth(depth: int, calls: int) -> None:
    """Go ``depth`` frames down, then make ``calls`` calls 20 frames deep from there."""
    if depth:
        _call_at_depth(depth - 1, calls)
        return
    for _ in range(calls):
        _dive(20)


def _dive(frames: int) -> None:
    if frames:
        _dive(frames - 1)


def _worst_faults(run: Any) -> int:
    """The most page faults the calls from one depth made: from some depth, each call crosses
    a chunk's edge."""
    resource = pytest.importorskip("resource")
    worst = 0
    for depth in range(0, 400, 10):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        run(functools.partial(_call_at_depth, depth, 2000))
        worst = max(worst, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return worst


def test_with_stack_room_returns_and_raises_what_the_call_does() -> None:
    assert with_stack_room(lambda: 42) == 42
    with pytest.raises(KeyError):
        with_stack_room(lambda: {}["missing"])


@pytest.mark.skipif(sys.version_info < (3, 11), reason="frames live on a chunked stack from CPython 3.11")
@pytest.mark.skipif(sys.implementation.name != "cpython", reason="a CPython stack layout")
def test_calls_inside_stack_room_never_map_a_chunk_again() -> None:
    # Calling over a 16 KiB chunk's edge maps a new chunk, and faults its pages in, on every
    # call; inside the room no depth here reaches an edge.
    assert _worst_faults(lambda call: call()) >= 2000
    assert _worst_faults(with_stack_room) < 200
