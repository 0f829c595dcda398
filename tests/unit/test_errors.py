"""Every error crosses process boundaries (pytest-xdist) intact."""

from __future__ import annotations

import copy
import pickle

import pytest

from pytest_concurrent_db import errors
from pytest_concurrent_db.errors import ConcurrentDBError, ConfigError, ScriptError
from pytest_concurrent_db.url import parse_url

ERROR_CLASSES = [getattr(errors, name) for name in errors.__all__]
MESSAGE = "concurrent-db: something failed: \u00e9\u6570 'quoted'; fix --concurrent-db-url"
PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)


def test_all_error_classes_are_listed() -> None:
    assert {cls.__name__ for cls in ERROR_CLASSES} == {
        "BackendUnavailableError",
        "ConcurrentDBError",
        "ConfigError",
        "IsolationError",
        "LockTimeoutError",
        "NotOursError",
        "PrivilegeError",
        "ScriptError",
    }
    assert all(issubclass(cls, ConcurrentDBError) for cls in ERROR_CLASSES)
    assert issubclass(ConcurrentDBError, Exception)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_pickles_with_its_message(cls: type[ConcurrentDBError], protocol: int) -> None:
    error = cls(MESSAGE)
    clone = pickle.loads(pickle.dumps(error, protocol=protocol))
    assert type(clone) is cls
    assert str(clone) == str(error) == MESSAGE
    assert clone.args == error.args


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_deep_copies(cls: type[ConcurrentDBError]) -> None:
    assert str(copy.deepcopy(cls(MESSAGE))) == MESSAGE


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_script_error_keeps_its_details(protocol: int) -> None:
    error = ScriptError("concurrent-db: schema.sql:3: CREATE TABL x: syntax error", "schema.sql", 3, "CREATE TABL x")
    clone = pickle.loads(pickle.dumps(error, protocol=protocol))
    assert type(clone) is ScriptError
    assert str(clone) == "concurrent-db: schema.sql:3: CREATE TABL x: syntax error"
    assert (clone.source, clone.line, clone.statement) == ("schema.sql", 3, "CREATE TABL x")


def test_script_error_defaults() -> None:
    clone = pickle.loads(pickle.dumps(ScriptError("boom")))
    assert (str(clone), clone.source, clone.line, clone.statement) == ("boom", "", 0, "")


def test_error_without_arguments_is_named_by_its_class() -> None:
    assert str(ConfigError()) == "ConfigError"
    assert str(pickle.loads(pickle.dumps(ConfigError()))) == "ConfigError"


def test_raised_error_pickles() -> None:
    with pytest.raises(ConfigError) as info:
        parse_url("oracle://scott:tiger@h/db")
    clone = pickle.loads(pickle.dumps(info.value))
    assert str(clone) == str(info.value)
    assert "tiger" not in str(clone)
