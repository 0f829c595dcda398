"""Seed files and load_batches on SQLite (the server backends run in tests/integration)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from pytest_concurrent_db.errors import ConfigError, ScriptError
from pytest_concurrent_db.seed import load_batches, read_rows


@pytest.fixture
def conn() -> sqlite3.Connection:
    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT NOT NULL, extra TEXT)")
    return connection


def test_load_batches_takes_mappings_and_sequences(conn: sqlite3.Connection) -> None:
    assert load_batches(conn, "item", ({"id": n, "name": f"n{n}"} for n in range(1, 8)), batch_size=3) == 7
    assert load_batches(conn, "item", [(8, "eight")], columns=["id", "name"]) == 1
    assert conn.execute("SELECT COUNT(*), MAX(name) FROM item").fetchone() == (8, "n7")
    assert load_batches(conn, "item", []) == 0


def test_a_failing_row_is_named_and_the_batches_before_it_stay(conn: sqlite3.Connection) -> None:
    rows = [{"id": n, "name": None if n == 5 else "x"} for n in range(1, 8)]
    with pytest.raises(ScriptError, match=r"^concurrent-db: load_batches into item, row 5: IntegrityError: .*name"):
        load_batches(conn, "item", rows, batch_size=3)
    assert conn.execute("SELECT COUNT(*) FROM item").fetchone() == (3,)  # the first batch; the failing one undone


def test_unknown_table_and_columns(conn: sqlite3.Connection) -> None:
    with pytest.raises(ConfigError, match="the template has no table 'nope'"):
        load_batches(conn, "nope", [{"id": 1}])
    with pytest.raises(ConfigError, match=r"column nmae not in table item \(it has id, name, extra\)"):
        load_batches(conn, "item", [{"id": 1, "nmae": "x"}])
    with pytest.raises(ConfigError, match="batch_size must be at least 1"):
        load_batches(conn, "item", [{"id": 1}], batch_size=0)


def test_read_rows_csv_and_json(tmp_path: Path) -> None:
    csv_file = tmp_path / "item.csv"
    csv_file.write_text("id,name\n1,a\n2,\n")
    assert read_rows(csv_file) == (["id", "name"], [(2, ("1", "a")), (3, ("2", None))])
    json_file = tmp_path / "item.json"
    json_file.write_text('[{"id": 1, "extra": {"k": 1}}, {"id": 2, "name": "b"}]')
    assert read_rows(json_file) == (["id", "extra", "name"], [(1, (1, '{"k": 1}', None)), (2, (2, None, "b"))])
    csv_file.write_text("id,name\n1,a,extra\n")
    with pytest.raises(ConfigError, match=r"item.csv, line 2: 3 values for 2 columns"):
        read_rows(csv_file)
    with pytest.raises(ConfigError, match=r"neither \.csv nor \.json"):
        read_rows(tmp_path / "item.txt")
