"""Splitting SQL scripts into statements with the line each one starts on."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_concurrent_db.sqlscript import Statement, split_sql

DIALECTS = ["sqlite", "postgresql", "mysql"]
SERVERS = ["postgresql", "mysql"]
fast = settings(database=None, deadline=None, max_examples=100)


def texts(script: str, dialect: str) -> list[str]:
    """Statement texts, without a trailing terminator (SQLite keeps its ';')."""
    return [s.text.removesuffix(";").rstrip() if dialect == "sqlite" else s.text for s in split_sql(script, dialect)]


def lines(script: str, dialect: str) -> list[int]:
    return [s.line for s in split_sql(script, dialect)]


# -- basics


@pytest.mark.parametrize("dialect", DIALECTS)
def test_one_statement_per_line(dialect: str) -> None:
    script = "CREATE TABLE t (x INTEGER);\nINSERT INTO t VALUES (1);\nSELECT x FROM t;\n"
    assert texts(script, dialect) == ["CREATE TABLE t (x INTEGER)", "INSERT INTO t VALUES (1)", "SELECT x FROM t"]
    assert lines(script, dialect) == [1, 2, 3]


@pytest.mark.parametrize("dialect", SERVERS)
def test_several_statements_on_one_line(dialect: str) -> None:
    assert split_sql("SELECT 1; SELECT 2;SELECT 3", dialect) == [
        Statement("SELECT 1", 1),
        Statement("SELECT 2", 1),
        Statement("SELECT 3", 1),
    ]


def test_sqlite_several_statements_on_one_line() -> None:
    assert texts("CREATE TABLE a (x); CREATE TABLE b (y);", "sqlite") == ["CREATE TABLE a (x)", "CREATE TABLE b (y)"]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_last_statement_needs_no_terminator(dialect: str) -> None:
    assert texts("SELECT 1;\nSELECT 2", dialect) == ["SELECT 1", "SELECT 2"]
    assert lines("SELECT 1;\nSELECT 2", dialect) == [1, 2]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_multi_line_statement_starts_on_its_first_line(dialect: str) -> None:
    script = "\n\nCREATE TABLE t (\n  x INTEGER,\n  y TEXT\n);\n\n\nSELECT\n  1;\n"
    assert lines(script, dialect) == [3, 9]
    assert texts(script, dialect)[0] == "CREATE TABLE t (\n  x INTEGER,\n  y TEXT\n)"


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(
    "script", ["", "   ", "\n\n\t\n", "-- only a comment", "-- a;\n-- b;\n", "/* a; b */", ";", ";;\n;"]
)
def test_empty_and_comment_only_input(dialect: str, script: str) -> None:
    assert split_sql(script, dialect) == []


def test_mysql_hash_comment_only() -> None:
    assert split_sql("# a; b\n  # c\n", "mysql") == []


@pytest.mark.parametrize("dialect", DIALECTS)
def test_crlf_line_endings(dialect: str) -> None:
    assert lines("SELECT 1;\r\n\r\nSELECT 2;\r\n", dialect) == [1, 3]


# -- quoting


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(
    "literal",
    ["'a;b'", "'it''s; fine'", "''", "'a\n;b'", '"col;umn"', '"say ""hi""; ok"', "'--not a comment;'", "'/*;*/'"],
)
def test_quotes_hide_semicolons(dialect: str, literal: str) -> None:
    script = f"INSERT INTO t VALUES ({literal});\nSELECT 2;\n"
    assert texts(script, dialect) == [f"INSERT INTO t VALUES ({literal})", "SELECT 2"]
    assert lines(script, dialect) == [1, 2 + literal.count("\n")]


def test_mysql_backticks_hide_semicolons() -> None:
    assert texts("SELECT `a;b` FROM `t;``x`; SELECT 2", "mysql") == ["SELECT `a;b` FROM `t;``x`", "SELECT 2"]


def test_mysql_backslash_escapes_quotes() -> None:
    script = "INSERT INTO t VALUES ('it\\'s; here', \"a\\\"; b\", 'c\\\\');\nSELECT 2;"
    assert split_sql(script, "mysql") == [
        Statement("INSERT INTO t VALUES ('it\\'s; here', \"a\\\"; b\", 'c\\\\')", 1),
        Statement("SELECT 2", 2),
    ]


def test_mysql_backslash_does_not_escape_in_backticks() -> None:
    assert texts("SELECT `a\\`; SELECT 2", "mysql") == ["SELECT `a\\`", "SELECT 2"]


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_backslash_is_not_an_escape_outside_mysql(dialect: str) -> None:
    script = "INSERT INTO t VALUES ('C:\\');\nSELECT 'x';\n"
    assert texts(script, dialect) == ["INSERT INTO t VALUES ('C:\\')", "SELECT 'x'"]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_unterminated_quote_swallows_the_rest(dialect: str) -> None:
    assert texts("SELECT 1;\nSELECT 'abc; SELECT 2", dialect) == ["SELECT 1", "SELECT 'abc; SELECT 2"]


# -- comments


@pytest.mark.parametrize("dialect", SERVERS)
def test_comments_hide_semicolons_and_are_skipped_before_a_statement(dialect: str) -> None:
    script = (
        "-- header; with a semicolon\n"  # 1
        "/* block; comment\n"  # 2
        "   over lines; */\n"  # 3
        "\n"  # 4
        "SELECT 1 -- trailing; comment\n"  # 5
        ";\n"  # 6
        "SELECT /* inline; */ 2; -- after\n"  # 7
        "-- between\n"  # 8
        "SELECT 3;\n"  # 9
        "-- footer;\n"  # 10
    )
    assert split_sql(script, dialect) == [
        Statement("SELECT 1 -- trailing; comment", 5),
        Statement("SELECT /* inline; */ 2", 7),
        Statement("SELECT 3", 9),
    ]


def test_mysql_hash_comments() -> None:
    script = "# header; x\nSELECT 1; # trailing; y\n# between\nSELECT 2 # in; statement\n;"
    assert split_sql(script, "mysql") == [Statement("SELECT 1", 2), Statement("SELECT 2 # in; statement", 4)]


def test_hash_is_not_a_comment_in_postgresql() -> None:
    assert texts("SELECT 1 # 2; SELECT 3", "postgresql") == ["SELECT 1 # 2", "SELECT 3"]


def test_mysql_executable_comment_is_kept() -> None:
    script = "/*!40101 SET NAMES utf8mb4; */;\nSELECT 1;"
    assert split_sql(script, "mysql") == [Statement("/*!40101 SET NAMES utf8mb4; */", 1), Statement("SELECT 1", 2)]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_unterminated_block_comment_is_kept_for_the_server_to_reject(dialect: str) -> None:
    assert texts("SELECT 1;\n/* never; closed", dialect) == ["SELECT 1", "/* never; closed"]


@pytest.mark.parametrize("dialect", SERVERS)
def test_line_number_is_the_first_code_line_after_leading_comments(dialect: str) -> None:
    script = "SELECT 1;\n-- about two\n\n/* more\nabout two */\n  SELECT 2;"
    assert lines(script, dialect) == [1, 6]
    assert texts(script, dialect) == ["SELECT 1", "SELECT 2"]


def test_sqlite_line_number_is_the_first_code_line_after_leading_comments() -> None:
    script = "SELECT 1;\n-- about two\n\n/* more\nabout two */\n  SELECT 2;"
    assert lines(script, "sqlite") == [1, 6]


def test_sqlite_statement_text_is_normalised_like_other_dialects() -> None:
    script = "-- about one\nSELECT 1;\n"
    assert split_sql(script, "sqlite") == split_sql(script, "postgresql") == [Statement("SELECT 1", 2)]


# -- PostgreSQL dollar quoting


def test_dollar_quoted_function_body() -> None:
    script = (
        "CREATE FUNCTION f() RETURNS int AS $$\n"  # 1
        "  SELECT 1; -- ; '\n"  # 2
        "$$ LANGUAGE sql;\n"  # 3
        "SELECT f();\n"  # 4
    )
    statements = split_sql(script, "postgresql")
    assert [s.line for s in statements] == [1, 4]
    assert statements[0].text.endswith("$$ LANGUAGE sql")
    assert statements[1].text == "SELECT f()"


def test_tagged_dollar_quotes_nest_other_tags() -> None:
    script = (
        "CREATE FUNCTION g() RETURNS text LANGUAGE plpgsql AS $body$\n"  # 1
        "BEGIN\n"  # 2
        "  RETURN $x$ a; $$ b; $x$;\n"  # 3
        "END;\n"  # 4
        "$body$;\n"  # 5
        "\n"  # 6
        "DO $_1$ BEGIN PERFORM 1; END $_1$;\n"  # 7
        "SELECT $$;$$, $tag$'$tag$;"  # 8
    )
    statements = split_sql(script, "postgresql")
    assert [s.line for s in statements] == [1, 7, 8]
    assert statements[0].text.endswith("$body$")
    assert statements[1].text == "DO $_1$ BEGIN PERFORM 1; END $_1$"
    assert statements[2].text == "SELECT $$;$$, $tag$'$tag$"


def test_positional_parameters_are_not_dollar_quotes() -> None:
    assert texts("PREPARE p AS SELECT $1 + $2;\nEXECUTE p(1, 2);", "postgresql") == [
        "PREPARE p AS SELECT $1 + $2",
        "EXECUTE p(1, 2)",
    ]


def test_dollar_inside_identifier_is_not_a_dollar_quote() -> None:
    assert texts("CREATE TABLE a$b$c (x int);\nSELECT 1;", "postgresql") == ["CREATE TABLE a$b$c (x int)", "SELECT 1"]


def test_dollars_are_plain_text_in_mysql() -> None:
    assert texts("SELECT '$$'; SELECT $$; SELECT 3", "mysql") == ["SELECT '$$'", "SELECT $$", "SELECT 3"]


# -- MySQL DELIMITER


def test_mysql_delimiter_blocks() -> None:
    script = (
        "CREATE TABLE t (x INT);\n"  # 1
        "DELIMITER //\n"  # 2
        "CREATE PROCEDURE p()\n"  # 3
        "BEGIN\n"  # 4
        "  INSERT INTO t VALUES (1);\n"  # 5
        "  SELECT ';//' FROM t;\n"  # 6
        "END //\n"  # 7
        "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW BEGIN SET NEW.x = 2; END//\n"  # 8
        "DELIMITER ;\n"  # 9
        "CALL p();\n"  # 10
    )
    statements = split_sql(script, "mysql")
    assert [s.line for s in statements] == [1, 3, 8, 10]
    assert statements[0].text == "CREATE TABLE t (x INT)"
    assert statements[1].text == "CREATE PROCEDURE p()\nBEGIN\n  INSERT INTO t VALUES (1);\n  SELECT ';//' FROM t;\nEND"
    assert statements[2].text == "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW BEGIN SET NEW.x = 2; END"
    assert statements[3].text == "CALL p()"


def test_mysql_delimiter_is_case_insensitive_and_may_be_dollars() -> None:
    script = "delimiter $$\nCREATE FUNCTION f() RETURNS INT RETURN 1; $$\n  Delimiter ;\nSELECT f();"
    assert split_sql(script, "mysql") == [
        Statement("CREATE FUNCTION f() RETURNS INT RETURN 1;", 2),
        Statement("SELECT f()", 4),
    ]


def test_mysql_delimiter_line_ends_a_pending_statement() -> None:
    script = "SELECT 1\nDELIMITER //\nSELECT 2; SELECT 3 //\nDELIMITER ;"
    assert split_sql(script, "mysql") == [Statement("SELECT 1", 1), Statement("SELECT 2; SELECT 3", 3)]


def test_delimiter_is_not_special_in_postgresql() -> None:
    assert texts("DELIMITER //\nSELECT 1;", "postgresql") == ["DELIMITER //\nSELECT 1"]


# -- SQLite triggers


def test_sqlite_trigger_body_is_one_statement() -> None:
    script = (
        "CREATE TABLE t (x INTEGER, changed TEXT);\n"  # 1
        "\n"  # 2
        "CREATE TRIGGER tr AFTER UPDATE ON t\n"  # 3
        "BEGIN\n"  # 4
        "  UPDATE t SET changed = 'yes; really' WHERE rowid = NEW.rowid;\n"  # 5
        "  SELECT 1;\n"  # 6
        "END;\n"  # 7
        "INSERT INTO t VALUES (1, NULL);\n"  # 8
    )
    statements = split_sql(script, "sqlite")
    assert [s.line for s in statements] == [1, 3, 8]
    assert statements[1].text.startswith("CREATE TRIGGER tr AFTER UPDATE ON t\nBEGIN")
    assert statements[1].text.rstrip(";").endswith("END")


def test_sqlite_statements_execute() -> None:
    script = (
        "-- schema\n"
        "CREATE TABLE t (x INTEGER, note TEXT);\n"
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN\n"
        "  UPDATE t SET note = 'a;b' WHERE rowid = NEW.rowid;\n"
        "END;\n"
        "INSERT INTO t (x) VALUES (1);\n"
    )
    conn = sqlite3.connect(":memory:")
    try:
        for statement in split_sql(script, "sqlite"):
            conn.execute(statement.text)
        assert conn.execute("SELECT x, note FROM t").fetchall() == [(1, "a;b")]
    finally:
        conn.close()


# -- snippet


def test_snippet_flattens_and_truncates() -> None:
    statement = Statement("SELECT\n   a,\n\tb\nFROM t", 1)
    assert statement.snippet() == "SELECT a, b FROM t"
    long = Statement("SELECT " + "x, " * 100 + "y", 1)
    assert len(long.snippet()) == 80
    assert long.snippet().endswith("...")
    assert len(long.snippet(20)) == 20


# -- property: a script built from known statements splits back into them

POOL = [
    "SELECT 1",
    "INSERT INTO t VALUES ('a;b', 'it''s')",
    'SELECT "we;ird" FROM t',
    "SELECT 'multi\nline; text'",
    "CREATE TABLE t (\n  x INTEGER -- note; here\n)",
    "SELECT /* c; */ 2",
]
SEPARATORS = [";\n", ";\n\n", "; ", ";\n-- comment; here\n", ";\n/* block;\ncomment */\n", ";;\n"]


@fast
@given(
    statements=st.lists(st.sampled_from(POOL), min_size=1, max_size=8),
    separators=st.lists(st.sampled_from(SEPARATORS), min_size=8, max_size=8),
    dialect=st.sampled_from(SERVERS),
    lead=st.sampled_from(["", "\n", "-- head\n", "/* head */ ", "\n\n  "]),
)
def test_split_recovers_statements_and_lines(
    statements: list[str], separators: list[str], dialect: str, lead: str
) -> None:
    script = lead
    expected_lines = []
    for statement, separator in zip(statements, separators):
        expected_lines.append(script.count("\n") + 1)
        script += statement + separator
    assert split_sql(script, dialect) == [Statement(text, line) for text, line in zip(statements, expected_lines)]


@fast
@given(
    statements=st.lists(st.sampled_from(POOL), min_size=1, max_size=8),
    blank=st.lists(st.booleans(), min_size=8, max_size=8),
)
def test_sqlite_split_recovers_statements_and_lines(statements: list[str], blank: list[bool]) -> None:
    script = ""
    expected_lines = []
    for statement, extra in zip(statements, blank):
        expected_lines.append(script.count("\n") + 1)
        script += statement + ";\n" + ("\n" if extra else "")
    assert [(s.text, s.line) for s in split_sql(script, "sqlite")] == [
        (text, line) for text, line in zip(statements, expected_lines)
    ]
