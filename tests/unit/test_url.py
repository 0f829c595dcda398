"""Database URLs: accepted forms, errors, rendering, and that passwords never leak."""

from __future__ import annotations

import dataclasses
from urllib.parse import quote

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pytest_concurrent_db.errors import ConfigError
from pytest_concurrent_db.url import DatabaseURL, parse_url

FIX = "fix --concurrent-db-url (ini concurrent_db_url, env CONCURRENT_DB_URL)"
PASSWORD = "Zq9-Sup3rS3cret-Pw"

fast = settings(database=None, deadline=None, max_examples=100)
# Any text that can be percent-encoded as UTF-8 (no lone surrogates).
any_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)


def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_url(text)
    return str(info.value)


# -- sqlite --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "database", "memory"),
    [
        ("sqlite:///tests.db", "tests.db", False),
        ("sqlite:///rel/dir/tests.db", "rel/dir/tests.db", False),
        ("sqlite:////abs/dir/tests.db", "/abs/dir/tests.db", False),
        ("sqlite:///:memory:", ":memory:", True),
        ("sqlite://", "", True),
        ("sqlite:///", "", True),
        ("sqlite3:///tests.db", "tests.db", False),
        ("SQLite:///tests.db", "tests.db", False),
        ("  sqlite:///tests.db \n", "tests.db", False),
        ("sqlite:///my%20tests.db", "my tests.db", False),
        ("sqlite:///tests.db?timeout=5", "tests.db", False),
        ("sqlite:///file:mem1?mode=memory&cache=shared", "file:mem1?mode=memory&cache=shared", True),
        ("sqlite:///file:/abs/tests.db?mode=ro", "file:/abs/tests.db?mode=ro", False),
    ],
)
def test_sqlite_forms(text: str, database: str, memory: bool) -> None:
    url = parse_url(text)
    assert url == DatabaseURL(backend="sqlite", database=database)
    assert url.is_memory is memory
    assert (url.username, url.password, url.host, url.port, url.query) == (None, None, None, None, ())


@pytest.mark.parametrize(
    ("text", "rendered"),
    [
        ("sqlite:///tests.db", "sqlite:///tests.db"),
        ("sqlite:////abs/tests.db", "sqlite:////abs/tests.db"),
        ("sqlite://", "sqlite:///:memory:"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("sqlite:///file:m?mode=memory&cache=shared", "sqlite:///file:m?mode=memory&cache=shared"),
    ],
)
def test_sqlite_render_roundtrips(text: str, rendered: str) -> None:
    url = parse_url(text)
    assert str(url) == rendered
    assert parse_url(str(url)).database == url.database or url.is_memory


@pytest.mark.parametrize("path", ["/tmp/what?/app.db", "/tmp/hash#tag/app.db", "/tmp/50%25 off/ü.db", "rel/a%b?c#d.db"])
def test_sqlite_paths_with_url_characters_roundtrip(path: str) -> None:
    """``?`` would start a query, ``%`` an escape and ``#`` a fragment: render encodes them."""
    url = DatabaseURL(backend="sqlite", database=path)
    assert parse_url(str(url)) == url
    assert parse_url(url.render(hide_password=False)) == url


def test_sqlite_uri_keeps_its_escapes_for_sqlite() -> None:
    url = parse_url("sqlite:///file:/tmp/what%3F/app.db?mode=ro")
    assert url.database == "file:/tmp/what%3F/app.db?mode=ro"  # SQLite decodes them itself
    assert str(url) == "sqlite:///file:/tmp/what%3F/app.db?mode=ro"


# -- server URLs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "backend", "port"),
    [
        ("postgresql", "postgresql", 5432),
        ("postgres", "postgresql", 5432),
        ("postgresql+psycopg", "postgresql", 5432),
        ("postgresql+psycopg3", "postgresql", 5432),
        ("POSTGRESQL", "postgresql", 5432),
        ("mysql", "mysql", 3306),
        ("mariadb", "mysql", 3306),
        ("mysql+pymysql", "mysql", 3306),
        ("mariadb+pymysql", "mysql", 3306),
    ],
)
def test_scheme_aliases_and_default_ports(scheme: str, backend: str, port: int) -> None:
    url = parse_url(f"{scheme}://app@db.example.com/appdb")
    assert url == DatabaseURL(backend=backend, database="appdb", username="app", host="db.example.com", port=port)
    assert str(url) == f"{backend}://app@db.example.com:{port}/appdb"


def test_explicit_port_user_password_and_query() -> None:
    url = parse_url("postgresql://app:pw@db:6543/appdb?sslmode=require&application_name=ci")
    assert (url.backend, url.username, url.password, url.host, url.port, url.database) == (
        "postgresql",
        "app",
        "pw",
        "db",
        6543,
        "appdb",
    )
    assert url.query == (("sslmode", "require"), ("application_name", "ci"))
    assert url.option("sslmode") == "require"
    assert url.option("missing") is None
    assert url.option("missing", "fallback") == "fallback"
    assert str(url) == "postgresql://app:***@db:6543/appdb?sslmode=require&application_name=ci"
    assert url.render(hide_password=False) == "postgresql://app:pw@db:6543/appdb?sslmode=require&application_name=ci"


def test_missing_host_and_database() -> None:
    url = parse_url("mysql://root@/")
    assert (url.host, url.port, url.database, url.username, url.password) == ("127.0.0.1", 3306, "", "root", None)
    url = parse_url("postgresql:///appdb")
    assert (url.host, url.port, url.database, url.username) == ("127.0.0.1", 5432, "appdb", None)
    assert str(url) == "postgresql://127.0.0.1:5432/appdb"


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
def test_a_host_in_the_query_wins_when_the_url_names_none(scheme: str) -> None:
    url = parse_url(f"{scheme}://app:pw@/appdb?host=%2Fvar%2Frun%2Fpostgresql&sslmode=disable")
    assert url.host is None  # not the default 127.0.0.1: the driver takes the query's
    assert url.option("host") == "/var/run/postgresql"
    assert url.port == (5432 if scheme == "postgresql" else 3306)
    assert str(url) == f"{scheme}://app:***@:{url.port}/appdb?host=%2Fvar%2Frun%2Fpostgresql&sslmode=disable"
    assert parse_url(url.render(hide_password=False)) == url
    assert parse_url(str(url)) == dataclasses.replace(url, password="***")
    assert parse_url(f"{scheme}:///appdb?host=/var/run/postgresql") == dataclasses.replace(
        url, username=None, password=None, query=(("host", "/var/run/postgresql"),)
    )
    assert parse_url(f"{scheme}://db.example/appdb?host=/var/run/postgresql").host == "db.example"  # the URL's wins
    assert parse_url(f"{scheme}:///appdb?unix_socket=/run/mysqld/mysqld.sock").host == "127.0.0.1"


@pytest.mark.parametrize(
    ("text", "host", "port", "rendered"),
    [
        ("postgresql://app@[::1]:5433/db", "::1", 5433, "postgresql://app@[::1]:5433/db"),
        ("postgresql://app@[fe80::1]/db", "fe80::1", 5432, "postgresql://app@[fe80::1]:5432/db"),
        ("mysql://[2001:db8::7]:3307/db", "2001:db8::7", 3307, "mysql://[2001:db8::7]:3307/db"),
    ],
)
def test_ipv6_hosts(text: str, host: str, port: int, rendered: str) -> None:
    url = parse_url(text)
    assert (url.host, url.port) == (host, port)
    assert str(url) == rendered
    assert parse_url(rendered) == url


def test_percent_encoded_user_and_password() -> None:
    url = parse_url("postgresql://us%40er%3Aname:p%40ss%3Aw%2Frd%25@h/db")
    assert url.username == "us@er:name"
    assert url.password == "p@ss:w/rd%"
    assert str(url) == "postgresql://us%40er%3Aname:***@h:5432/db"
    assert url.render(hide_password=False) == "postgresql://us%40er%3Aname:p%40ss%3Aw%2Frd%25@h:5432/db"


def test_unencoded_at_sign_in_password_is_tolerated() -> None:
    url = parse_url("postgresql://app:p@ss@h/db")
    assert (url.username, url.password, url.host) == ("app", "p@ss", "h")


def test_empty_password_is_still_hidden() -> None:
    url = parse_url("postgresql://app:@h/db")
    assert url.password == ""
    assert str(url) == "postgresql://app:***@h:5432/db"


def test_with_database_keeps_everything_else() -> None:
    url = parse_url("mysql://app:pw@h:3307/one?charset=utf8mb4")
    other = url.with_database("two")
    assert other == dataclasses.replace(url, database="two")
    assert str(other) == "mysql://app:***@h:3307/two?charset=utf8mb4"


def test_database_url_is_frozen() -> None:
    url = parse_url("postgresql://h/db")
    with pytest.raises(dataclasses.FrozenInstanceError):
        url.database = "other"  # type: ignore[misc]


# -- errors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "malformed database URL"),
        ("tests.db", "malformed database URL"),
        ("localhost:5432/db", "malformed database URL"),
        ("postgresql:/h/db", "malformed database URL"),
        ("oracle://scott@h/db", "unknown database URL scheme 'oracle'"),
        ("http://h/db", "unknown database URL scheme 'http'"),
        ("mssql+pyodbc://h/db", "unknown database URL scheme 'mssql+pyodbc'"),
        ("postgresql://h:abc/db", "malformed database URL"),
        ("mysql://h:99999/db", "malformed database URL"),
        ("postgresql://h:-1/db", "malformed database URL"),
        ("postgresql://[::1/db", "malformed database URL"),
        ("postgresql://h/db/extra", "the path must be a single database name"),
        ("mysql://h/a/b/c", "the path must be a single database name"),
    ],
)
def test_bad_urls_are_one_line_config_errors_with_the_fix(text: str, fragment: str) -> None:
    message = config_error(text)
    assert message.startswith("concurrent-db: ")
    assert fragment in message
    assert message.endswith(FIX)
    assert "\n" not in message


def test_unknown_scheme_suggests_the_known_ones() -> None:
    assert "use sqlite://, postgresql:// or mysql:// (mariadb://)" in config_error("oracle://h/db")


@pytest.mark.parametrize(
    "template",
    [
        "postgresql://app:{pw}@h:notaport/db",
        "postgresql://app:{pw}@h:70000/db",
        "mysql://app:{pw}@h/db/extra",
        "oracle://app:{pw}@h/db",
        "postgresql://app:{pw}@[::1/db",
    ],
)
def test_password_not_in_error_message(template: str) -> None:
    message = config_error(template.format(pw=PASSWORD))
    assert PASSWORD not in message
    assert "app:***@" in message


@pytest.mark.parametrize("text", [f"postgresql:/app:{PASSWORD}@h/db", f"app:{PASSWORD}@h/db"])
def test_password_not_in_error_for_url_without_scheme_separator(text: str) -> None:
    assert PASSWORD not in config_error(text)


def test_password_prefix_not_in_error_for_unencoded_slash() -> None:
    message = config_error(f"postgresql://app:{PASSWORD}/tail@h/db")
    assert PASSWORD not in message


# -- properties: roundtrip and no password leak --------------------------------------------------------------


@fast
@given(user=any_text, password=any_text, database=any_text.filter(lambda s: "/" not in s))
def test_render_with_password_roundtrips(user: str, password: str, database: str) -> None:
    text = f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@db.example:5433/{quote(database, safe='')}"
    url = parse_url(text)
    assert (url.username, url.password, url.database) == (user, password, database)
    assert parse_url(url.render(hide_password=False)) == url
    assert parse_url(str(url)) == dataclasses.replace(url, password="***")


@fast
@given(user=any_text, password=any_text, scheme=st.sampled_from(["postgresql", "postgres", "mysql", "mariadb"]))
def test_password_never_in_str_or_repr(user: str, password: str, scheme: str) -> None:
    url = parse_url(f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@db.example/app?sslmode=require")
    assert url.password == password
    backend = url.backend
    assert str(url) == f"{backend}://{quote(user, safe='')}:***@db.example:{url.port}/app?sslmode=require"
    other = dataclasses.replace(url, password="other")
    assert repr(url) == repr(other)
    assert "password" not in repr(dataclasses.replace(url, username="u"))  # (the user name may say "password")
    baseline = str(other) + repr(other)
    assume(password not in baseline)
    for shown in (str(url), repr(url), url.render(), f"{url}", f"{url!r}", " ".join(map(str, [url]))):
        assert password not in shown


@fast
@given(
    password=any_text,
    template=st.sampled_from(
        [
            "postgresql://app:{pw}@h:notaport/db",
            "postgresql://app:{pw}@h:123456/db",
            "mysql://app:{pw}@h/db/extra",
            "mariadb://app:{pw}@h/a/b",
            "oracle://app:{pw}@h/db",
            "postgresql://app:{pw}@[::1/db",
        ]
    ),
)
def test_error_messages_do_not_depend_on_the_password(password: str, template: str) -> None:
    encoded = quote(password, safe="")
    message = config_error(template.format(pw=encoded))
    baseline = config_error(template.format(pw="x"))
    assert message == baseline
    assume(password not in baseline and encoded not in baseline)
    assert password not in message
    assert encoded not in message
