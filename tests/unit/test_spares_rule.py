"""The ``auto`` spares rule: stable evidence (the median of a template's latest copies), not one copy."""

from __future__ import annotations

import pytest

from pytest_concurrent_db.spares import SPARES_AUTO_MIN_SECONDS, spares_pay_off

PG = SPARES_AUTO_MIN_SECONDS["postgresql"]


@pytest.mark.parametrize(
    ("copies", "pays"),
    [
        ([], False),
        ([PG * 0.5], False),
        ([PG * 2], False),  # one slow copy alone is not evidence enough
        ([PG * 3], True),  # ...unless it was very slow
        ([PG * 0.2, PG * 1.6], False),  # the median of a fast and a slow copy: below
        ([PG * 1.2, PG * 1.6], True),
        ([PG * 0.2, PG * 0.3, PG * 5], False),  # one noisy copy among fast ones
        ([PG * 5, PG * 1.1, PG * 1.3], True),
        ([PG * 5, PG * 5, PG * 5, PG * 0.2, PG * 0.3, PG * 0.2], False),  # only the latest three count
    ],
)
def test_auto_decides_on_the_median_of_the_latest_copies(copies: list[float], pays: bool) -> None:
    assert spares_pay_off("auto", "postgresql", copies=copies) is pays


def test_explicit_settings_and_sqlite() -> None:
    assert spares_pay_off(1, "postgresql", copies=[])
    assert spares_pay_off(2, "mysql", copies=[0.0])
    assert not spares_pay_off("auto", "sqlite", copies=[100.0])
