"""Handing an untouched database on: the pristine state a spare keeps, and the history that
decides whether to try."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_concurrent_db.recycle import HISTORY, MAX_READ_SECONDS, HandOnHistory, Pristine


def test_pristine_state_round_trips() -> None:
    state = Pristine("0123abcd", {"public.book_id_seq": 7, "author": 2}, 0.125, 2.5)
    assert Pristine.decode(state.encode()) == state
    assert state.encode() == (
        '{"copy_seconds":2.5,"counters":{"author":2,"public.book_id_seq":7},"digest":"0123abcd","seconds":0.125}'
    )
    assert Pristine.decode('{"counters":{},"digest":"ab"}') == Pristine("ab", {}, 0.0, 0.0)


def test_only_a_state_read_quicker_than_a_second_or_than_its_copy_is_read_again() -> None:
    assert Pristine("ab", {}, MAX_READ_SECONDS).quick
    assert not Pristine("ab", {}, MAX_READ_SECONDS + 0.5).quick
    assert Pristine("ab", {}, MAX_READ_SECONDS + 0.5, copy_seconds=MAX_READ_SECONDS + 1).quick  # a busy machine
    assert not Pristine("ab", {}, 5.0, copy_seconds=4.0).quick  # large tables: a copy costs less


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
        '{"digest": "ab", "counters": {}, "seconds": "1"}',
        '{"digest": "ab", "counters": {}, "seconds": true}',
        '{"digest": "ab", "counters": {}, "copy_seconds": null}',
    ],
)
def test_a_state_that_is_not_ours_is_none(text: str) -> None:
    """A spare whose marker has no usable state is taken over once, never handed on."""
    assert Pristine.decode(text) is None


def _history(tmp_path: Path) -> HandOnHistory:
    site = SimpleNamespace(directories=SimpleNamespace(templates=tmp_path))
    return HandOnHistory(SimpleNamespace(site=site, name="cdb_app_tpl_0123"), "gw0")  # type: ignore[arg-type]


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


def test_each_worker_id_keeps_its_own_history(tmp_path: Path) -> None:
    """One outcome per worker per run: another worker's runs do not shorten the wait."""
    site = SimpleNamespace(directories=SimpleNamespace(templates=tmp_path))
    template = SimpleNamespace(site=site, name="cdb_app_tpl_0123")
    gw0, gw1 = HandOnHistory(template, "gw0"), HandOnHistory(template, "gw1")  # type: ignore[arg-type]
    gw0.add("changed")
    for _ in range(HISTORY):
        gw1.add("copied")
    assert not gw0.worth_trying()
    assert gw1.worth_trying()


def test_a_spare_dropped_unchecked_names_the_rule() -> None:
    from pytest_concurrent_db.worker import _unchecked

    assert _unchecked(None, True) == "its state was not read when it was copied"
    slow = Pristine("d" * 32, {}, 1.3, 0.28)
    assert _unchecked(slow, True) == (
        "reading its state took 1.30s when it was copied (more than 1s and than the copy, 0.28s)"
    )
    quick = Pristine("d" * 32, {}, 0.05, 0.28)
    assert _unchecked(quick, False) == "a recent run's tests changed their database"


def test_a_digest_says_how_it_was_made() -> None:
    """A spare copied by another version (another way of reading the state) is not taken for a
    database its tests changed: hand_on skips it instead of counting a change."""
    from pytest_concurrent_db.backends.mysql_state import DIGEST_SCHEME as MYSQL
    from pytest_concurrent_db.backends.postgresql_state import DIGEST_SCHEME as POSTGRESQL
    from pytest_concurrent_db.recycle import _scheme

    assert _scheme("0" * 32) == ""  # the first format had no tag
    assert _scheme(POSTGRESQL + "0" * 32) == "pg1"
    assert _scheme(MYSQL + "0" * 32) == "my2"
