"""Every error crosses process boundaries (pytest-xdist) intact, and says what it is once."""

from __future__ import annotations

import copy
import inspect
import pickle

import pytest

import pytest_concurrent_db
from pytest_concurrent_db import errors
from pytest_concurrent_db.errors import (
    PREFIX,
    ConcurrentDBError,
    ConfigError,
    IsolationError,
    LockTimeoutError,
    ScriptError,
    describe_error,
)
from pytest_concurrent_db.url import parse_url

#: Every exception class the errors module defines (found, not listed by hand).
ERROR_CLASSES = [
    obj
    for _, obj in inspect.getmembers(errors, inspect.isclass)
    if issubclass(obj, ConcurrentDBError) and obj.__module__ == errors.__name__
]
MESSAGE = "something failed: \u00e9\u6570 'quoted'; fix --concurrent-db-url"
PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)

#: One instance of every class, built with the arguments it takes (fields where it has them).
SAMPLES: dict[type[ConcurrentDBError], ConcurrentDBError] = {
    cls: cls(MESSAGE) for cls in ERROR_CLASSES if cls not in (LockTimeoutError, IsolationError, ScriptError)
}
SAMPLES[LockTimeoutError] = LockTimeoutError("the template lock of cdb_app_tpl_1", 2.5, "pid 7 on host")
SAMPLES[IsolationError] = IsolationError("cdb_a", "cdb_b", "cdb_b sees the marker row written into cdb_a")
SAMPLES[ScriptError] = ScriptError("schema.sql:3: CREATE TABL x: syntax error", "schema.sql", 3, "CREATE TABL x")


def test_every_error_class_is_public_and_derives_from_the_base() -> None:
    assert len(ERROR_CLASSES) >= 8
    for cls in ERROR_CLASSES:
        assert issubclass(cls, ConcurrentDBError)
        assert cls.__name__ in errors.__all__, f"{cls.__name__} missing from errors.__all__"
        assert getattr(pytest_concurrent_db, cls.__name__) is cls, f"{cls.__name__} not re-exported by the package"
        assert cls.__doc__, f"{cls.__name__} has no docstring"
    assert set(SAMPLES) == set(ERROR_CLASSES)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_pickles_with_its_message_and_fields(cls: type[ConcurrentDBError], protocol: int) -> None:
    error = SAMPLES[cls]
    clone = pickle.loads(pickle.dumps(error, protocol=protocol))
    assert type(clone) is cls
    assert str(clone) == str(error)
    assert clone.args == error.args
    assert str(clone).startswith(PREFIX)
    assert str(clone).count("concurrent-db:") == 1


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_deep_copies(cls: type[ConcurrentDBError]) -> None:
    assert str(copy.deepcopy(SAMPLES[cls])) == str(SAMPLES[cls])


def test_the_prefix_is_added_once() -> None:
    assert str(ConfigError("bad URL")) == "concurrent-db: bad URL"
    assert str(ConfigError("concurrent-db: bad URL")) == "concurrent-db: bad URL"


def test_lock_timeout_keeps_its_fields_and_names_the_option() -> None:
    error = pickle.loads(pickle.dumps(SAMPLES[LockTimeoutError]))
    assert (error.lock, error.waited, error.holder) == ("the template lock of cdb_app_tpl_1", 2.5, "pid 7 on host")
    assert str(error) == (
        "concurrent-db: timed out after 2.5s waiting for the template lock of cdb_app_tpl_1 held by pid 7 on host; "
        "raise --concurrent-db-lock-timeout (ini concurrent_db_lock_timeout, env CONCURRENT_DB_LOCK_TIMEOUT) "
        "or stop that process"
    )
    assert "held by" not in str(LockTimeoutError("a lock", 1))


def test_isolation_error_names_both_databases() -> None:
    error = pickle.loads(pickle.dumps(SAMPLES[IsolationError]))
    assert (error.first, error.second) == ("cdb_a", "cdb_b")
    assert str(error) == (
        "concurrent-db: databases 'cdb_a' and 'cdb_b' are not isolated: cdb_b sees the marker row written into cdb_a"
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_script_error_keeps_its_details(protocol: int) -> None:
    clone = pickle.loads(pickle.dumps(SAMPLES[ScriptError], protocol=protocol))
    assert str(clone) == "concurrent-db: schema.sql:3: CREATE TABL x: syntax error"
    assert (clone.source, clone.line, clone.statement) == ("schema.sql", 3, "CREATE TABL x")


def test_script_error_defaults() -> None:
    clone = pickle.loads(pickle.dumps(ScriptError("boom")))
    assert (str(clone), clone.source, clone.line, clone.statement) == ("concurrent-db: boom", "", 0, "")


def test_error_without_arguments_is_named_by_its_class() -> None:
    assert str(ConfigError()) == "ConfigError"
    assert str(pickle.loads(pickle.dumps(ConfigError()))) == "ConfigError"


def test_raised_error_pickles() -> None:
    with pytest.raises(ConfigError) as info:
        parse_url("oracle://scott:tiger@h/db")
    clone = pickle.loads(pickle.dumps(info.value))
    assert str(clone) == str(info.value)
    assert "tiger" not in str(clone)


def test_describe_error_is_one_line_without_our_prefix() -> None:
    assert describe_error(ConcurrentDBError("cannot drop it:\n  a file is in its directory")) == (
        "cannot drop it: a file is in its directory"
    )
    assert describe_error(LockTimeoutError("the lock 'x'", 2.0, "gw1")) == (
        LockTimeoutError("the lock 'x'", 2.0, "gw1").describe()
    )
    assert describe_error(OSError(39, "Directory not empty")) == "OSError: [Errno 39] Directory not empty"
