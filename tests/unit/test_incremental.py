"""When a new template may start from an older one (pytest_concurrent_db.incremental): pure functions."""

from __future__ import annotations

from typing import Any

from pytest_concurrent_db.backends import DatabaseInfo, Marker
from pytest_concurrent_db.incremental import decode_manifest, encode_manifest, find_base, resumes
from pytest_concurrent_db.template import Populator


def noop(*_: Any) -> None:
    return None


def migrate(*steps: str, resume_key: str = "settings", check: Any = None) -> Populator:
    return Populator("migrate", "key:" + ",".join(steps), noop, resume_key=resume_key, steps=steps, can_resume=check)


def fixed(key: str = "seed") -> Populator:
    return Populator("seed", key, noop)


def manifest(populators: list[Populator], outside: str = "x") -> dict[str, Any]:
    decoded = decode_manifest(encode_manifest(outside, populators))
    assert decoded is not None
    return decoded


def added(old: list[Populator], new: list[Populator], *, old_outside: str = "x") -> int:
    return resumes(manifest(old, old_outside), manifest(new), new)


def test_new_steps_are_counted() -> None:
    assert added([migrate("a", "b")], [migrate("a", "b", "c")]) == 1
    assert added([migrate("a")], [migrate("a", "b", "c")]) == 2


def test_the_same_steps_add_nothing() -> None:
    assert added([migrate("a", "b")], [migrate("a", "b")]) == 0


def test_an_edited_or_removed_step_means_a_full_build() -> None:
    assert added([migrate("a", "b")], [migrate("a", "b2", "c")]) == 0  # b edited (another digest)
    assert added([migrate("a", "b")], [migrate("a", "c")]) == 0


def test_anything_outside_the_steps_must_be_unchanged() -> None:
    assert added([migrate("a")], [migrate("a", "b")], old_outside="other server") == 0
    assert added([migrate("a", resume_key="old settings")], [migrate("a", "b")]) == 0
    assert added([migrate("a"), fixed("seed v1")], [migrate("a", "b"), fixed("seed v2")]) == 0
    assert added([migrate("a")], [fixed(), migrate("a", "b")]) == 0  # another list of populators


def test_a_fixed_populator_after_new_steps_means_a_full_build() -> None:
    # a seed loaded after the migrations would come before the new ones: not what a full build does
    assert added([migrate("a"), fixed()], [migrate("a", "b"), fixed()]) == 0
    assert added([fixed(), migrate("a")], [fixed(), migrate("a", "b")]) == 1


def test_the_populator_may_refuse() -> None:
    seen = []

    def check(old: frozenset[str]) -> bool:
        seen.append(old)
        return False

    assert added([migrate("a")], [migrate("a", "b", check=check)]) == 0
    assert seen == [frozenset({"a"})]


def test_unknown_manifests_are_ignored() -> None:
    assert decode_manifest("") is None
    assert decode_manifest("not json") is None
    assert decode_manifest('{"v": 2, "p": []}') is None
    assert decode_manifest('{"v": 1, "x": "y", "p": [["k", true]]}') is None


def _template(name: str, populators: list[Populator], created: float, state: str = "ready") -> DatabaseInfo:
    marker = Marker(
        "template", "run", fingerprint=name[-3:], state=state, created=created,  # type: ignore[arg-type]
        manifest=encode_manifest("x", populators),
    )  # fmt: skip
    return DatabaseInfo(name, marker)


def test_the_newest_usable_template_of_the_project_is_the_base() -> None:
    new = [migrate("a", "b", "c")]
    infos = [
        _template("cdb_app_tpl_old", [migrate("a")], created=1.0),
        _template("cdb_app_tpl_mid", [migrate("a", "b")], created=2.0),
        _template("cdb_app_tpl_bad", [migrate("a", "z")], created=3.0),  # not a prefix
        _template("cdb_app_tpl_bld", [migrate("a", "b")], created=4.0, state="building"),
        _template("cdb_other_tpl_oth", [migrate("a", "b")], created=5.0),  # another project
        DatabaseInfo("cdb_app_tpl_unm", None),
    ]
    base = find_base(infos, lambda fp: "cdb_app_tpl_" + fp, encode_manifest("x", new), new)
    assert base is not None
    assert (base.name, base.added) == ("cdb_app_tpl_mid", 1)


def test_no_base_without_a_usable_template() -> None:
    new = [migrate("a", "b")]
    infos = [_template("cdb_app_tpl_bad", [migrate("z")], created=1.0)]
    assert find_base(infos, lambda fp: "cdb_app_tpl_" + fp, encode_manifest("x", new), new) is None
