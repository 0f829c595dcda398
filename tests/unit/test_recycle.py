"""Handing an untouched database on: the pristine state a spare keeps, and the history that
decides whether to try."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_concurrent_db.recycle import HISTORY, HandOnHistory, Pristine


def test_pristine_state_round_trips() -> None:
    state = Pristine("0123abcd", {"public.book_id_seq": 7, "author": 2})
    assert Pristine.decode(state.encode()) == state
    assert state.encode() == '{"counters":{"author":2,"public.book_id_seq":7},"digest":"0123abcd"}'


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        "null",
        '{"digest": "ab"}',
        '{"counters": {}}',
        '{"digest": "", "counters": {}}',
        '{"digest": 5, "counters": {}}',
        '{"digest": "ab", "counters": []}',
        '{"digest": "ab", "counters": {"t": "7"}}',
    ],
)
def test_a_state_that_is_not_ours_is_none(text: str) -> None:
    """A spare whose marker has no usable state is taken over once, never handed on."""
    assert Pristine.decode(text) is None


def _history(tmp_path: Path) -> HandOnHistory:
    site = SimpleNamespace(directories=SimpleNamespace(templates=tmp_path))
    return HandOnHistory(SimpleNamespace(site=site, name="cdb_app_tpl_0123"))  # type: ignore[arg-type]


def test_after_a_changed_database_handing_on_waits_three_runs(tmp_path: Path) -> None:
    history = _history(tmp_path)
    assert history.worth_trying()  # nothing known: try
    history.add("clean")
    assert history.worth_trying()
    history.add("changed")
    for _ in range(HISTORY - 1):
        assert not history.worth_trying()
        history.add("copied")
    assert not history.worth_trying()
    history.add("copied")
    assert history.worth_trying()
    assert history.read() == ["copied"] * HISTORY


def test_an_unreadable_history_is_empty(tmp_path: Path) -> None:
    history = _history(tmp_path)
    history.path.parent.mkdir(parents=True)
    history.path.write_text("{not json")
    assert history.read() == []
    assert history.worth_trying()
    history.path.write_text('{"a": 1}')
    assert history.read() == []
