"""Snapshot logic without a server: census comparison, pruning, header checks."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from pytest_concurrent_db.snapshot import MAGIC, Census, SnapshotError, prune_snapshots, read_header, snapshot_path


def test_census_differences_name_what_differs() -> None:
    expected = Census(tables=2, indexes=1, foreign_keys=1, views=0, triggers=0, rows={"a": 1, "b": 0})
    assert Census(**{**expected.__dict__}).differences(expected) == []
    found = Census(tables=2, indexes=0, foreign_keys=1, views=0, triggers=0, rows={"a": 0, "b": 0})
    assert found.differences(expected) == ["indexes 0 (expected 1)", "rows of a 0 (expected 1)"]


def test_census_from_json_rejects_malformed_counts() -> None:
    with pytest.raises(SnapshotError, match="malformed"):
        Census.from_json({"tables": "x"})
    with pytest.raises(SnapshotError):
        Census.from_json(None)


def test_snapshot_path() -> None:
    assert snapshot_path(Path("/c"), "ab12", "mysql") == Path("/c/ab12.mysql.snap")


def test_prune_keeps_the_newest_and_the_current(tmp_path: Path) -> None:
    paths = []
    for i in range(5):
        path = tmp_path / f"f{i}.sqlite.snap"
        path.write_bytes(b"x")
        os.utime(path, (1000 + i, 1000 + i))
        paths.append(path)
    (tmp_path / "other.txt").write_text("not a snapshot")
    removed = prune_snapshots(tmp_path, 2, current=paths[0])  # the one just written may be older by mtime
    assert sorted(removed) == sorted(paths[1:4])
    assert sorted(tmp_path.glob("*.snap")) == sorted([paths[0], paths[4]])
    assert (tmp_path / "other.txt").exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"garbage", "not a pytest-concurrent-db snapshot"),
        (MAGIC + b'{"format": 1', "truncated"),
        (MAGIC + b"{not json}\n", "not valid JSON"),
        (MAGIC + b"[1, 2]\n", "malformed"),
    ],
)
def test_read_header_refuses_what_is_not_a_header(data: bytes, message: str) -> None:
    with pytest.raises(SnapshotError, match=message):
        read_header(io.BytesIO(data))
