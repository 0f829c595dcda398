"""Generated database names: safe, prefixed, short, collision-free; lock keys."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pytest_concurrent_db.naming import (
    MAX_NAME_LENGTH,
    PREFIX,
    clone_name,
    fit,
    fresh_name,
    lock_key,
    new_run_id,
    sanitize,
    template_name,
)

fast = settings(database=None, deadline=None, max_examples=100)
few = settings(database=None, deadline=None, max_examples=40)
SAFE = re.compile(r"[a-z0-9_]+")
FINGERPRINT = "0123456789abcdef" * 4
RUN = "1f2e3d4c"

HOSTILE = [
    "",
    " ",
    "_",
    "__",
    "my app",
    "my-app",
    "my.app",
    "My_App",
    "MY_APP",
    "a'b",
    'a"b',
    "a`b",
    "a\\b",
    "a;b",
    "a\x00b",
    "a\nb",
    "tests.db",
    "'; DROP DATABASE postgres; --",
    '"); DROP TABLE users; --',
    "`x`; DROP SCHEMA public CASCADE",
    "1 OR 1=1",
    "caf\u00e9",
    "cafe\u0301",
    "caf\u00e8",
    "\u6570\u636e\u5e93",
    "\U0001f600",
    "\u0130stanbul",
    "stra\u00dfe",
    "\u0441db",  # Cyrillic es
    "x" * 500,
    "x" * 499 + "y",
    "y" + "x" * 499,
    "a" * 24,
    "a" * 25,
    "_leading",
    "trailing_",
    "double__underscore",
    "%s%s",
    "${HOME}",
    "\ud800",  # a lone surrogate
]

hostile = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(max_size=40),
    st.text(st.sampled_from("aA_ -'\"`;.\u00e9\u0301"), max_size=40),
    st.text(st.sampled_from("ab_1"), min_size=20, max_size=80),
    st.builds(lambda c, n: c * n, st.characters(), st.integers(100, 600)),
)
# Names that sanitize() leaves alone: lowercase words joined by single underscores, at most 24 long.
safe_short = (
    st.lists(st.text(st.sampled_from("abcxyz0189"), min_size=1, max_size=8), min_size=1, max_size=4)
    .map("_".join)
    .filter(lambda s: len(s) <= 24)
)
fingerprints = st.text(st.sampled_from("0123456789abcdef"), min_size=12, max_size=64)


def is_safe_short(text: str) -> bool:
    return re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)*", text) is not None and len(text) <= 24


def check_generated(name: str) -> None:
    assert SAFE.fullmatch(name), name
    assert name.startswith(PREFIX)
    assert len(name) <= MAX_NAME_LENGTH == 63
    assert len(name.encode("utf-8")) <= 63


# -- shape ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("base", HOSTILE)
def test_hostile_bases_give_safe_names(base: str) -> None:
    check_generated(template_name(base, FINGERPRINT))
    check_generated(clone_name(base, RUN, "gw0"))
    check_generated(clone_name("app", base, base))


@fast
@given(base=hostile, fingerprint=fingerprints, run_id=hostile, worker_id=hostile)
def test_every_generated_name_is_safe(base: str, fingerprint: str, run_id: str, worker_id: str) -> None:
    check_generated(template_name(base, fingerprint))
    check_generated(clone_name(base, run_id, worker_id))


def test_examples() -> None:
    assert template_name("app", FINGERPRINT) == "cdb_app_tpl_0123456789ab"
    assert clone_name("app", "1f2e3d4c", "gw0") == "cdb_app_1f2e3d4c_gw0"
    assert clone_name("app", "1f2e3d4c", "main") == "cdb_app_1f2e3d4c_main"


def test_changed_names_carry_a_hash_suffix() -> None:
    assert re.fullmatch(r"my_app_[0-9a-f]{6}", sanitize("my app"))
    assert re.fullmatch(r"db_[0-9a-f]{6}", sanitize(""))
    assert re.fullmatch(r"db_[0-9a-f]{6}", sanitize("\u6570\u636e\u5e93"))
    assert re.fullmatch(r"x{17}_[0-9a-f]{6}", sanitize("x" * 500))


# -- idempotence ---------------------------------------------------------------------------------------------


@fast
@given(name=safe_short)
def test_safe_short_names_are_kept(name: str) -> None:
    assert sanitize(name) == name
    assert template_name(name, FINGERPRINT) == f"cdb_{name}_tpl_0123456789ab"
    assert clone_name(name, RUN, "gw3") == f"cdb_{name}_{RUN}_gw3"


@fast
@given(text=hostile)
def test_sanitize_is_idempotent(text: str) -> None:
    once = sanitize(text)
    assert sanitize(once) == once
    assert len(once) <= 24


@fast
@given(name=st.text(st.sampled_from("abc_0"), max_size=MAX_NAME_LENGTH))
def test_fit_keeps_short_names(name: str) -> None:
    assert fit(name) == name


def test_fit_shortens_long_names_with_a_hash() -> None:
    long_a, long_b = "cdb_" + "a" * 100, "cdb_" + "a" * 99 + "b"
    assert len(fit(long_a)) == len(fit(long_b)) == 63
    assert fit(long_a) != fit(long_b)
    assert re.fullmatch(r"cdb_a{50}_[0-9a-f]{8}", fit(long_a))
    assert fit(long_a, 20) == long_a[:11] + fit(long_a, 20)[11:]
    assert len(fit(long_a, 20)) == 20


# -- no collisions -------------------------------------------------------------------------------------------


def test_hostile_examples_never_collide() -> None:
    bases = [b for b in HOSTILE if not is_safe_short(b)]
    templates = {template_name(base, FINGERPRINT) for base in bases}
    clones = {clone_name(base, RUN, "gw0") for base in bases}
    assert len(templates) == len(clones) == len(bases)


def test_near_identical_bases_do_not_collide() -> None:
    bases = ["a b", "a-b", "a.b", "A_B", "a  b", "a'b", "a_b_", "_a_b", "A b", "a\tb"]
    names = {template_name(base, FINGERPRINT) for base in bases} | {template_name("a_b", FINGERPRINT)}
    assert len(names) == len(bases) + 1


hostile_sets = st.lists(hostile.filter(lambda s: not is_safe_short(s)), min_size=2, max_size=12, unique=True)


@few
@given(bases=hostile_sets)
def test_different_hostile_bases_never_collide(bases: list[str]) -> None:
    assert len({sanitize(base) for base in bases}) == len(bases)
    assert len({template_name(base, FINGERPRINT) for base in bases}) == len(bases)
    assert len({clone_name(base, RUN, "gw0") for base in bases}) == len(bases)


@fast
@given(a=hostile)
def test_a_changed_base_never_keeps_its_text(a: str) -> None:
    assume(not is_safe_short(a))
    assert sanitize(a) != a
    assert re.fullmatch(r"[a-z0-9_]+_[0-9a-f]{6}", sanitize(a))


@few
@given(ids=hostile_sets)
def test_different_workers_and_runs_never_collide(ids: list[str]) -> None:
    assert len({clone_name("app", RUN, worker) for worker in ids}) == len(ids)
    assert len({clone_name("app", run_id, "gw0") for run_id in ids}) == len(ids)


def test_workers_and_fingerprints_give_distinct_names() -> None:
    names = {clone_name("app", RUN, f"gw{i}") for i in range(64)} | {clone_name("app", RUN, "main")}
    assert len(names) == 65
    templates = {template_name("app", f"{i:012x}" + "f" * 52) for i in range(64)}
    assert len(templates) == 64


# -- run ids and lock keys -----------------------------------------------------------------------------------


def test_new_run_id() -> None:
    ids = {new_run_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"[0-9a-f]{8}", run_id) for run_id in ids)


@fast
@given(name=st.text(st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_lock_key_is_a_signed_64_bit_int(name: str) -> None:
    key = lock_key(name)
    assert type(key) is int
    assert -(2**63) <= key < 2**63
    assert lock_key(name) == key


def test_lock_key_covers_negative_and_positive_keys() -> None:
    keys = [lock_key(f"template:cdb_app_tpl_{i}") for i in range(64)]
    assert any(k < 0 for k in keys)
    assert any(k >= 0 for k in keys)
    assert len(set(keys)) == 64


def test_lock_key_is_stable_across_processes_and_versions() -> None:
    # Pinned: processes of different runs (and plugin versions) must agree on the key of a lock.
    assert lock_key("") == 5064101946477418053
    assert lock_key("template:cdb_app_tpl_0123456789ab") == 2635921377554128376
    assert lock_key("clone:cdb_app_1f2e3d4c_gw0") == -6914307621765057222


@given(st.text(max_size=80), st.text(max_size=40))
@few
def test_fresh_names_fit_and_never_repeat(base: str, worker: str) -> None:
    names = {fresh_name(base, "1f2e3d4c", worker) for _ in range(5)}
    assert len(names) == 5
    for name in names:
        assert len(name.encode()) <= 63
        assert re.fullmatch(r"cdb_[a-z0-9_]+", name)
