"""The docs (docs/) cover everything users meet: a new option, fixture, marker, public API name or
error message without its entry fails here.

How each is found, so that nothing is a hand-kept list:

* options: ``options.OPTIONS``; the reference renders them with the ``concurrent-db-options``
  directive (``docs/_ext/cdb_reference.py``), so each needs its flag, ini key, env var and help there;
* fixtures: every pytest fixture defined in a module of the package (introspected with pytest's
  ``getfixturemarker``), public unless its name starts with ``_``: each needs a
  ``.. concurrent-db-fixture::`` entry in ``docs/reference/fixtures.rst``;
* markers: those our plugin registers (``config.getini("markers")`` with the plugin, less those
  without it): each needs ``pytest.mark.<name>`` in ``docs/reference/markers.rst``;
* hooks: every ``pytest_*`` hook specification in ``hookspecs``: each needs an autodoc entry in
  ``docs/reference/hooks.rst``;
* the public API: ``pytest_concurrent_db.__all__``: each needs an autodoc (or ``py:data``) entry in
  ``docs/reference/api.rst``;
* error messages: every message with literal text of its own, read from the source with ``ast``
  (``docs/_ext/cdb_messages.py``: raises of our error classes, ``pytest.UsageError``, ``CommandError``,
  ``pytest.fail``, our warnings, isolation findings and the messages error classes build in
  ``describe``): the troubleshooting page must quote each message's longest literal fragment.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from _pytest.fixtures import getfixturemarker

import pytest_concurrent_db
from pytest_concurrent_db import options

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _load(name: str) -> ModuleType:
    path = DOCS / "_ext" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


cdb_messages = _load("cdb_messages")
cdb_reference = _load("cdb_reference")


def _text(relative: str) -> str:
    return (DOCS / relative).read_text(encoding="utf-8")


def _normalized(text: str) -> str:
    return re.sub(r"\s+", " ", text)


# -- options -------------------------------------------------------------------------------
def undocumented_options(option_table: Any, page: str) -> list[str]:
    """Options without their row (flag, ini key, env var, help) in the reference page."""
    if ".. concurrent-db-options::" not in page:
        return [option.name for option in option_table]
    rows = cdb_reference.option_rows()
    missing = []
    for option in option_table:
        row = next((r for r in rows if r[0].split(" ")[0].split("[")[0] == option.flag), None)
        if row is None or row[1] != option.ini or row[2] != option.env or not row[3] or not option.help.strip():
            missing.append(option.name)
    return missing


def test_every_option_is_in_the_reference() -> None:
    assert undocumented_options(options.OPTIONS, _text("reference/options.rst")) == []


def test_an_option_without_docs_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    page = _text("reference/options.rst")
    fake = options.Option("brand_new", "int", 1, "")  # no help: nothing to show
    monkeypatch.setattr(options, "OPTIONS", (*options.OPTIONS, fake))
    assert undocumented_options(options.OPTIONS, page) == ["brand_new"]
    monkeypatch.undo()
    assert undocumented_options(options.OPTIONS, page.replace(".. concurrent-db-options::", "")) != []


def test_option_rows_show_flag_ini_env_and_default() -> None:
    rows = {row[0].split(" ")[0].split("[")[0]: row for row in cdb_reference.option_rows()}
    assert rows["--concurrent-db-lock-timeout"][1:4] == (
        "concurrent_db_lock_timeout",
        "CONCURRENT_DB_LOCK_TIMEOUT",
        "300",
    )
    assert rows["--concurrent-db"][3] == "off"
    assert len(rows) == len(options.OPTIONS)


# -- fixtures ------------------------------------------------------------------------------
def plugin_fixtures() -> dict[str, str]:
    """Public fixture name -> ``module.attribute`` of every fixture the package defines."""
    found: dict[str, str] = {}
    for info in pkgutil.walk_packages(pytest_concurrent_db.__path__, "pytest_concurrent_db."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for attribute, value in vars(module).items():
            marker = getfixturemarker(value)
            if marker is None:
                continue
            function = (
                getattr(value, "__wrapped__", None) or getattr(value, "_get_wrapped_function", lambda v=value: v)()
            )
            if getattr(function, "__module__", info.name) != info.name:
                continue  # imported from where it is defined
            name = marker.name or attribute
            if not name.startswith("_"):
                found[name] = f"{info.name}.{attribute}"
    return found


def undocumented_fixtures(fixtures: dict[str, str], page: str) -> list[str]:
    documented = set(re.findall(r"^\.\. concurrent-db-fixture:: (\S+)$", page, re.MULTILINE))
    return sorted(name for name, path in fixtures.items() if path not in documented)


def test_fixtures_are_found_by_introspection() -> None:
    fixtures = plugin_fixtures()
    for name in ("concurrent_db", "concurrent_db_connection", "concurrent_db_session", "django_db_setup"):
        assert name in fixtures
    assert not any(name.startswith("_") for name in fixtures)


def test_every_fixture_is_in_the_reference() -> None:
    assert undocumented_fixtures(plugin_fixtures(), _text("reference/fixtures.rst")) == []


def test_a_fixture_without_docs_fails() -> None:
    page = _text("reference/fixtures.rst").replace(
        ".. concurrent-db-fixture:: pytest_concurrent_db.fixtures.concurrent_db_url\n", ""
    )
    assert undocumented_fixtures(plugin_fixtures(), page) == ["concurrent_db_url"]


def test_every_fixture_has_a_docstring() -> None:
    for name, path in plugin_fixtures().items():
        assert cdb_reference.fixture_text(path)[3].strip(), f"fixture {name} has no docstring"


# -- markers -------------------------------------------------------------------------------
def _marker_names(lines: list[str]) -> set[str]:
    return {re.split(r"[(:]", line, maxsplit=1)[0].strip() for line in lines}


def plugin_markers(pytester: pytest.Pytester) -> set[str]:
    ours = pytester.parseconfigure()
    without = pytester.parseconfigure("-p", "no:concurrent_db")
    return _marker_names(ours.getini("markers")) - _marker_names(without.getini("markers"))


def undocumented_markers(markers: set[str], page: str) -> list[str]:
    return sorted(
        name for name in markers if f"pytest.mark.{name}(" not in page and f"pytest.mark.{name}\n" not in page
    )


def test_every_marker_is_in_the_reference(pytester: pytest.Pytester) -> None:
    markers = plugin_markers(pytester)
    assert "concurrent_db" in markers
    assert undocumented_markers(markers, _text("reference/markers.rst")) == []
    assert undocumented_markers(markers | {"brand_new"}, _text("reference/markers.rst")) == ["brand_new"]


def test_marker_signatures_match_the_registration(pytester: pytest.Pytester) -> None:
    """The docs show each marker with the signature the plugin registers (``--markers``)."""
    ours = plugin_markers(pytester)
    lines = [line for line in pytester.parseconfigure().getini("markers") if re.split(r"[(:]", line)[0] in ours]
    page = _text("reference/markers.rst")
    for line in lines:
        signature = line.split(":", 1)[0].strip()
        assert f"pytest.mark.{signature}" in page, signature


# -- the public API ------------------------------------------------------------------------
def undocumented_api(names: list[str], page: str) -> list[str]:
    documented = set(re.findall(r"^\.\. (?:auto\w+|py:\w+):: pytest_concurrent_db\.(\w+)", page, re.MULTILINE))
    return sorted(set(names) - documented)


def test_every_public_name_is_in_the_reference() -> None:
    assert undocumented_api(pytest_concurrent_db.__all__, _text("reference/api.rst")) == []


def test_a_public_name_without_docs_fails() -> None:
    page = _text("reference/api.rst").replace(".. autofunction:: pytest_concurrent_db.clone_many\n", "")
    assert undocumented_api(pytest_concurrent_db.__all__, page) == ["clone_many"]


# -- error messages ------------------------------------------------------------------------
def _troubleshooting() -> str:
    text = _text("troubleshooting.rst")
    return _normalized(text.split("All messages, by source", 1)[0])  # not the generated index


def undocumented_messages(messages: list[Any], page: str) -> list[str]:
    return sorted({f"{m.module}:{m.line}: {m.text}" for m in messages if m.key not in page})


def test_messages_are_found_in_the_source() -> None:
    messages = cdb_messages.messages()
    assert len(messages) > 80
    texts = {m.text for m in messages}
    for expected in (  # one of each way a message is made
        "unknown database URL scheme",  # raise ConfigError(f"...")
        "the concurrent_db fixtures need the plugin enabled",  # pytest.fail
        "are not isolated",  # IsolationError.describe
        "was changed or removed during the run",  # an isolation finding
        "may not create databases (checked rolcreatedb and rolsuper): run",  # PrivilegeError over lines
    ):
        assert any(expected in text for text in texts), expected
    assert all(m.key for m in messages)


def test_every_error_message_is_in_troubleshooting() -> None:
    assert undocumented_messages(cdb_messages.messages(), _troubleshooting()) == []


def test_a_message_without_docs_fails() -> None:
    messages = cdb_messages.messages()
    victim = next(m for m in messages if "unknown database URL scheme" in m.text)
    page = _troubleshooting().replace(victim.key, "")
    assert [line for line in undocumented_messages(messages, page) if "unknown database URL scheme" in line]
    new = cdb_messages.Message("pytest_concurrent_db.x", 1, "ConfigError", "a brand new message nobody wrote up")
    assert undocumented_messages([*messages, new], _troubleshooting()) == [f"{new.module}:1: {new.text}"]


def test_every_error_class_is_documented() -> None:
    from pytest_concurrent_db import errors

    page = _text("reference/api.rst")
    for name in errors.__all__:
        if name != "PREFIX":
            assert f"pytest_concurrent_db.{name}" in page, name


# -- what is not built must not be documented ----------------------------------------------
@pytest.mark.parametrize("absent", ["fresh-per-test", "progress line"])
def test_docs_do_not_promise_what_does_not_exist(absent: str) -> None:
    for path in DOCS.rglob("*.rst"):
        assert absent not in path.read_text(encoding="utf-8").lower(), f"{path.relative_to(ROOT)} mentions {absent!r}"


# -- hooks ---------------------------------------------------------------------------------
def undocumented_hooks(page: str) -> list[str]:
    from pytest_concurrent_db import hookspecs

    hooks = [name for name in vars(hookspecs) if name.startswith("pytest_")]
    assert hooks
    return sorted(h for h in hooks if f".. autofunction:: pytest_concurrent_db.hookspecs.{h}\n" not in page)


def test_every_hook_is_in_the_reference() -> None:
    page = _text("reference/hooks.rst")
    assert undocumented_hooks(page) == []
    assert undocumented_hooks(page.replace("pytest_concurrent_db_template_key\n", "\n")) == [
        "pytest_concurrent_db_template_key"
    ]
