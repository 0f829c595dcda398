"""Option resolution: names, precedence CLI > env > ini > default, conversion and errors."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from pytest_concurrent_db.errors import ConfigError
from pytest_concurrent_db.settings import ISOLATION_MODES, OPTIONS, Settings, option, resolve
from pytest_concurrent_db.url import parse_url

NOWHERE = Path("/nonexistent-cwd-for-tests")


def run(
    *,
    cli: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    ini: Mapping[str, Any] | None = None,
    cwd: Path = NOWHERE,
    ini_dir: Path | None = None,
) -> Settings:
    """``resolve`` with values keyed by option name, as each source spells them."""
    cli_values = {option(name).dest: value for name, value in (cli or {}).items()}
    ini_values = {option(name).ini: value for name, value in (ini or {}).items()}
    environ = {option(name).env: value for name, value in (env or {}).items()}
    return resolve(cli_values.get, ini_values.get, environ=environ, cwd=cwd, ini_dir=ini_dir)


def config_error(**kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        run(**kwargs)
    return str(info.value)


# -- names ---------------------------------------------------------------------------------------------------

NAMES = [
    ("enabled", "bool", "--concurrent-db", "concurrent_db", "CONCURRENT_DB"),
    ("url", "str", "--concurrent-db-url", "concurrent_db_url", "CONCURRENT_DB_URL"),
    ("schema", "paths", "--concurrent-db-schema", "concurrent_db_schema", "CONCURRENT_DB_SCHEMA"),
    ("keep", "bool", "--concurrent-db-keep", "concurrent_db_keep", "CONCURRENT_DB_KEEP"),
    ("rebuild", "bool", "--concurrent-db-rebuild", "concurrent_db_rebuild", "CONCURRENT_DB_REBUILD"),
    ("timings", "flag_or_path", "--concurrent-db-timings", "concurrent_db_timings", "CONCURRENT_DB_TIMINGS"),
    (
        "lock_timeout",
        "float",
        "--concurrent-db-lock-timeout",
        "concurrent_db_lock_timeout",
        "CONCURRENT_DB_LOCK_TIMEOUT",
    ),
    (
        "keep_templates",
        "int",
        "--concurrent-db-keep-templates",
        "concurrent_db_keep_templates",
        "CONCURRENT_DB_KEEP_TEMPLATES",
    ),
    (
        "clone_strategy",
        "choice",
        "--concurrent-db-clone-strategy",
        "concurrent_db_clone_strategy",
        "CONCURRENT_DB_CLONE_STRATEGY",
    ),
    ("spares", "spares", "--concurrent-db-spares", "concurrent_db_spares", "CONCURRENT_DB_SPARES"),
    ("pool", "int", "--concurrent-db-pool", "concurrent_db_pool", "CONCURRENT_DB_POOL"),
    ("keep_failed", "bool", "--concurrent-db-keep-failed", "concurrent_db_keep_failed", "CONCURRENT_DB_KEEP_FAILED"),
    (
        "fresh_transactional",
        "bool",
        "--concurrent-db-fresh-transactional",
        "concurrent_db_fresh_transactional",
        "CONCURRENT_DB_FRESH_TRANSACTIONAL",
    ),
    ("isolation", "choice", "--concurrent-db-isolation", "concurrent_db_isolation", "CONCURRENT_DB_ISOLATION"),
    ("progress", "choice", "--concurrent-db-progress", "concurrent_db_progress", "CONCURRENT_DB_PROGRESS"),
    # snapshots (issue 15)
    ("snapshot_dir", "dir", "--concurrent-db-snapshot-dir", "concurrent_db_snapshot_dir", "CONCURRENT_DB_SNAPSHOT_DIR"),
    (
        "snapshot_keep",
        "int",
        "--concurrent-db-snapshot-keep",
        "concurrent_db_snapshot_keep",
        "CONCURRENT_DB_SNAPSHOT_KEEP",
    ),
    ("pg_bin", "existing_dir", "--concurrent-db-pg-bin", "concurrent_db_pg_bin", "CONCURRENT_DB_PG_BIN"),
    # SQLAlchemy and Alembic
    ("alembic_ini", "path", "--concurrent-db-alembic-ini", "concurrent_db_alembic_ini", "CONCURRENT_DB_ALEMBIC_INI"),
    ("alembic_env", "str", "--concurrent-db-alembic-env", "concurrent_db_alembic_env", "CONCURRENT_DB_ALEMBIC_ENV"),
    ("metadata", "str", "--concurrent-db-metadata", "concurrent_db_metadata", "CONCURRENT_DB_METADATA"),
    ("seed", "paths", "--concurrent-db-seed", "concurrent_db_seed", "CONCURRENT_DB_SEED"),
    ("pool_min", "int", "--concurrent-db-pool-min", "concurrent_db_pool_min", "CONCURRENT_DB_POOL_MIN"),
    ("pool_max", "int", "--concurrent-db-pool-max", "concurrent_db_pool_max", "CONCURRENT_DB_POOL_MAX"),
    (
        "sqlalchemy_bind",
        "str",
        "--concurrent-db-sqlalchemy-bind",
        "concurrent_db_sqlalchemy_bind",
        "CONCURRENT_DB_SQLALCHEMY_BIND",
    ),
]


@pytest.mark.parametrize(("name", "kind", "flag", "ini", "env"), NAMES)
def test_option_names_in_every_source(name: str, kind: str, flag: str, ini: str, env: str) -> None:
    opt = option(name)
    assert (opt.kind, opt.flag, opt.ini, opt.env, opt.dest) == (kind, flag, ini, env, "concurrent_db_" + name)
    assert opt.names() == f"{flag} (ini {ini}, env {env})"


def test_option_table_matches_settings_fields() -> None:
    assert [o.name for o in OPTIONS] == [row[0] for row in NAMES]
    fields = {f.name for f in dataclasses.fields(Settings)} - {"sources"}
    assert fields == {o.name for o in OPTIONS}
    assert option("isolation").choices == ISOLATION_MODES == ("strict", "default", "warn", "off")


def test_defaults_when_nothing_is_set() -> None:
    settings = run()
    assert settings == Settings()
    assert (settings.enabled, settings.url, settings.schema, settings.keep, settings.rebuild) == (
        False,
        None,
        (),
        False,
        False,
    )
    assert (settings.lock_timeout, settings.isolation, settings.backend) == (300.0, "default", "sqlite")
    assert settings.keep_templates == 2
    assert dict(settings.sources) == {o.name: "default" for o in OPTIONS}


def test_resolve_reads_the_literal_names() -> None:
    cli = {"concurrent_db_keep": True}
    ini = {"concurrent_db_isolation": "warn", "concurrent_db_rebuild": "true", "concurrent_db_keep_templates": "4"}
    env = {"CONCURRENT_DB": "1", "CONCURRENT_DB_LOCK_TIMEOUT": "7", "CONCURRENT_DB_URL": "postgres://h/app"}
    settings = resolve(cli.get, ini.get, environ=env, cwd=NOWHERE)
    assert (settings.enabled, settings.keep, settings.rebuild) == (True, True, True)
    assert (settings.lock_timeout, settings.isolation, settings.backend) == (7.0, "warn", "postgresql")
    assert settings.keep_templates == 4
    assert dict(settings.sources) == {
        "enabled": "env CONCURRENT_DB",
        "url": "env CONCURRENT_DB_URL",
        "schema": "default",
        "keep": "--concurrent-db-keep",
        "rebuild": "ini concurrent_db_rebuild",
        "timings": "default",
        "lock_timeout": "env CONCURRENT_DB_LOCK_TIMEOUT",
        "keep_templates": "ini concurrent_db_keep_templates",
        "clone_strategy": "default",
        "spares": "default",
        "pool": "default",
        "keep_failed": "default",
        "fresh_transactional": "default",
        "isolation": "ini concurrent_db_isolation",
        "progress": "default",
        **dict.fromkeys(SNAPSHOT_OPTIONS, "default"),
        **dict.fromkeys(SQLALCHEMY_OPTIONS, "default"),
    }


SNAPSHOT_OPTIONS = ("snapshot_dir", "snapshot_keep", "pg_bin")


SQLALCHEMY_OPTIONS = ("alembic_ini", "alembic_env", "metadata", "seed", "pool_min", "pool_max", "sqlalchemy_bind")


def test_alembic_ini_is_relative_to_the_ini_file_and_must_exist(tmp_path: Path) -> None:
    (tmp_path / "alembic.ini").write_text("[alembic]\n")
    assert run(ini={"alembic_ini": "alembic.ini"}, ini_dir=tmp_path).alembic_ini == tmp_path / "alembic.ini"
    message = config_error(env={"alembic_ini": "missing.ini"}, cwd=tmp_path)
    assert message == (
        f"concurrent-db: alembic.ini file '{tmp_path / 'missing.ini'}' (from env CONCURRENT_DB_ALEMBIC_INI) "
        "does not exist; fix the path in --concurrent-db-alembic-ini (ini concurrent_db_alembic_ini, "
        "env CONCURRENT_DB_ALEMBIC_INI)"
    )


def test_seed_globs_expand_in_name_order(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("b.csv", "a.csv", "c.json"):
        (data / name).write_text("")
    settings = run(env={"seed": "data/*.csv data/c.json"}, cwd=tmp_path)
    assert [p.name for p in settings.seed] == ["a.csv", "b.csv", "c.json"]
    assert "seed file" in config_error(env={"seed": "data/*.txt"}, cwd=tmp_path)


def test_resolve_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for opt in OPTIONS:
        monkeypatch.delenv(opt.env, raising=False)
    monkeypatch.setenv("CONCURRENT_DB_ISOLATION", "strict")
    settings = resolve(lambda _dest: None, lambda _key: None, cwd=NOWHERE)
    assert settings.isolation == "strict"
    assert settings.sources["isolation"] == "env CONCURRENT_DB_ISOLATION"


# -- precedence ----------------------------------------------------------------------------------------------

# name: (cli value, env value, ini value), (result from cli, env, ini, default).  The env values are
# deliberately "falsy-looking" so that they must still beat a truthy ini value.
PRECEDENCE = {
    "enabled": ((True, "false", "true"), (True, False, True, False)),
    "keep": ((True, "0", "yes"), (True, False, True, False)),
    "rebuild": ((True, "off", "on"), (True, False, True, False)),
    "url": (
        ("sqlite:///cli.db", "sqlite:///env.db", "sqlite:///ini.db"),
        (parse_url("sqlite:///cli.db"), parse_url("sqlite:///env.db"), parse_url("sqlite:///ini.db"), None),
    ),
    "lock_timeout": (("1.5", "2.5", "3.5"), (1.5, 2.5, 3.5, 300.0)),
    "keep_templates": (("5", "0", "3"), (5, 0, 3, 2)),
    "clone_strategy": (("wal_log", "file_copy", "auto"), ("wal_log", "file_copy", "auto", "auto")),
    "spares": (("3", "0", "auto"), (3, 0, "auto", "auto")),
    "isolation": (("strict", "off", "warn"), ("strict", "off", "warn", "default")),
}


@pytest.mark.parametrize("name", list(PRECEDENCE))
def test_cli_beats_env_beats_ini_beats_default(name: str) -> None:
    (cli, env, ini), (from_cli, from_env, from_ini, default) = PRECEDENCE[name]
    opt = option(name)
    cases = [
        ({"cli": {name: cli}, "env": {name: env}, "ini": {name: ini}}, from_cli, opt.flag),
        ({"env": {name: env}, "ini": {name: ini}}, from_env, f"env {opt.env}"),
        ({"cli": {name: cli}, "ini": {name: ini}}, from_cli, opt.flag),
        ({"ini": {name: ini}}, from_ini, f"ini {opt.ini}"),
        ({}, default, "default"),
    ]
    for kwargs, expected, source in cases:
        settings = run(**kwargs)
        assert getattr(settings, name) == expected, kwargs
        assert settings.sources[name] == source, kwargs


@pytest.mark.parametrize("falsy", ["false", "False", "FALSE", "0", "no", "off", " false "])
@pytest.mark.parametrize("name", ["enabled", "keep", "rebuild"])
def test_falsy_env_value_beats_truthy_ini(name: str, falsy: str) -> None:
    settings = run(env={name: falsy}, ini={name: "true"})
    assert getattr(settings, name) is False
    assert settings.sources[name] == f"env {option(name).env}"


@pytest.mark.parametrize("truthy", ["true", "True", "1", "yes", "on", " ON "])
def test_truthy_spellings(truthy: str) -> None:
    assert run(env={"enabled": truthy}).enabled is True
    assert run(ini={"enabled": truthy}).enabled is True


@pytest.mark.parametrize("name", ["enabled", "keep", "rebuild"])
def test_cli_true_beats_falsy_env(name: str) -> None:
    settings = run(cli={name: True}, env={name: "false"}, ini={name: "false"})
    assert getattr(settings, name) is True
    assert settings.sources[name] == option(name).flag


def test_falsy_ini_value_beats_default_and_is_reported_as_ini() -> None:
    settings = run(ini={"enabled": "false", "isolation": "off"})
    assert (settings.enabled, settings.isolation) == (False, "off")
    assert settings.sources["enabled"] == "ini concurrent_db"
    assert settings.sources["isolation"] == "ini concurrent_db_isolation"


def test_python_bools_are_accepted_from_any_source() -> None:
    assert run(ini={"keep": True}).keep is True
    assert run(ini={"keep": False}, cli={}).keep is False


@pytest.mark.parametrize("name", ["enabled", "url", "lock_timeout", "keep_templates", "isolation", "schema"])
def test_empty_env_value_counts_as_unset(name: str, tmp_path: Path) -> None:
    (tmp_path / "s.sql").write_text("", encoding="utf-8")
    ini = {
        "keep_templates": "1",
        "enabled": "true",
        "url": "sqlite:///ini.db",
        "lock_timeout": "9",
        "isolation": "warn",
        "schema": "s.sql",
    }[name]
    settings = run(env={name: ""}, ini={name: ini}, ini_dir=tmp_path)
    assert settings.sources[name] == f"ini {option(name).ini}"


@pytest.mark.parametrize("empty", [None, "", [], ()])
def test_empty_ini_values_count_as_unset(empty: Any) -> None:
    settings = run(ini={o.name: empty for o in OPTIONS})
    assert dict(settings.sources) == {o.name: "default" for o in OPTIONS}


@pytest.mark.parametrize("empty", [None, [], ()])
def test_absent_cli_values_count_as_unset(empty: Any) -> None:
    settings = run(cli={o.name: empty for o in OPTIONS})
    assert dict(settings.sources) == {o.name: "default" for o in OPTIONS}


def test_choice_is_case_insensitive_and_normalised() -> None:
    assert run(env={"isolation": " Strict "}).isolation == "strict"
    assert run(ini={"isolation": "WARN"}).isolation == "warn"


@pytest.mark.parametrize(
    ("where", "raw", "seconds"),
    [("env", "1", 1.0), ("env", "0.25", 0.25), ("ini", " 12 ", 12.0), ("env", "1e3", 1000.0), ("cli", 2, 2.0)],
)
def test_lock_timeout_conversion(where: str, raw: Any, seconds: float) -> None:
    assert run(**{where: {"lock_timeout": raw}}).lock_timeout == seconds


@pytest.mark.parametrize(
    ("where", "raw", "count"),
    [("env", "0", 0), ("ini", "0", 0), ("env", " 7 ", 7), ("cli", "10", 10), ("cli", 3, 3)],
)
def test_keep_templates_conversion(where: str, raw: Any, count: int) -> None:
    sources: dict[str, Any] = {"ini": {"keep_templates": "9"}}  # always overridden
    sources[where] = {"keep_templates": raw}
    settings = run(**sources)
    assert settings.keep_templates == count
    assert type(settings.keep_templates) is int


@pytest.mark.parametrize(
    ("where", "raw", "value"),
    [("env", "0", 0), ("ini", "auto", "auto"), ("env", " AUTO ", "auto"), ("cli", "2", 2), ("cli", 3, 3)],
)
def test_spares_conversion(where: str, raw: Any, value: Any) -> None:
    settings = run(**{where: {"spares": raw}})
    assert settings.spares == value


# -- bad values ----------------------------------------------------------------------------------------------

BAD_VALUES = [
    ("enabled", "env", "maybe"),
    ("enabled", "ini", "2"),
    ("keep", "env", "yes please"),
    ("rebuild", "ini", "enabled"),
    ("lock_timeout", "env", "abc"),
    ("lock_timeout", "env", "0"),
    ("lock_timeout", "ini", "-5"),
    ("lock_timeout", "env", "nan"),
    ("lock_timeout", "cli", "soon"),
    ("lock_timeout", "env", "1\n2"),
    ("keep_templates", "env", "-1"),
    ("keep_templates", "ini", "two"),
    ("keep_templates", "env", "1.5"),
    ("keep_templates", "cli", "many"),
    ("keep_templates", "env", "3\n4"),
    ("spares", "env", "-1"),
    ("spares", "ini", "some"),
    ("spares", "cli", "1.5"),
    ("isolation", "env", "paranoid"),
    ("isolation", "ini", "strictest"),
    ("isolation", "cli", "none"),
    ("isolation", "env", "off\nstrict"),
]


@pytest.mark.parametrize(("name", "where", "value"), BAD_VALUES)
def test_bad_value_is_a_one_line_config_error_naming_every_source(name: str, where: str, value: str) -> None:
    opt = option(name)
    message = config_error(**{where: {name: value}})
    assert "\n" not in message
    assert message.startswith("concurrent-db: ")
    assert opt.flag in message
    assert f"ini {opt.ini}" in message
    assert f"env {opt.env}" in message
    assert repr(value) in message
    source = {"cli": opt.flag, "env": f"env {opt.env}", "ini": f"ini {opt.ini}"}[where]
    assert f"concurrent-db: {source} must be" in message


def test_bad_choice_lists_the_choices() -> None:
    message = config_error(env={"isolation": "paranoid"})
    assert "strict, default, warn, off" in message


def test_bad_value_in_a_lower_precedence_source_is_ignored() -> None:
    settings = run(env={"lock_timeout": "5"}, ini={"lock_timeout": "not a number"})
    assert settings.lock_timeout == 5.0


@pytest.mark.parametrize("where", ["cli", "env", "ini"])
def test_bad_url_names_every_source(where: str) -> None:
    message = config_error(**{where: {"url": "oracle://scott:tiger@h/db"}})
    assert "--concurrent-db-url (ini concurrent_db_url, env CONCURRENT_DB_URL)" in message
    assert "tiger" not in message
    assert "\n" not in message


# -- schema paths --------------------------------------------------------------------------------------------


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """(cwd, ini_dir), each holding its own a.sql, b.sql and "my schema.sql"."""
    cwd, ini_dir = tmp_path / "cwd", tmp_path / "ini"
    for directory in (cwd, ini_dir):
        directory.mkdir()
        for name in ("a.sql", "b.sql", "my schema.sql"):
            (directory / name).write_text(f"-- {directory.name}/{name}\n", encoding="utf-8")
    return cwd, ini_dir


def test_schema_from_cli_is_relative_to_cwd(dirs: tuple[Path, Path]) -> None:
    cwd, ini_dir = dirs
    settings = run(cli={"schema": ["a.sql", "b.sql"]}, env={"schema": "b.sql"}, cwd=cwd, ini_dir=ini_dir)
    assert settings.schema == (cwd / "a.sql", cwd / "b.sql")
    assert settings.sources["schema"] == "--concurrent-db-schema"


def test_schema_from_env_is_relative_to_cwd(dirs: tuple[Path, Path]) -> None:
    cwd, ini_dir = dirs
    settings = run(env={"schema": "a.sql"}, ini={"schema": ["b.sql"]}, cwd=cwd, ini_dir=ini_dir)
    assert settings.schema == (cwd / "a.sql",)
    assert settings.sources["schema"] == "env CONCURRENT_DB_SCHEMA"


@pytest.mark.parametrize("ini", ["a.sql", ["a.sql"], [Path("a.sql")], "a.sql b.sql", ["a.sql", Path("b.sql")]])
def test_schema_from_ini_is_relative_to_the_ini_file(dirs: tuple[Path, Path], ini: Any) -> None:
    cwd, ini_dir = dirs
    settings = run(ini={"schema": ini}, cwd=cwd, ini_dir=ini_dir)
    assert settings.schema[0] == ini_dir / "a.sql"
    assert all(path.parent == ini_dir for path in settings.schema)
    assert settings.sources["schema"] == "ini concurrent_db_schema"


def test_schema_from_ini_without_ini_dir_is_relative_to_cwd(dirs: tuple[Path, Path]) -> None:
    cwd, _ = dirs
    assert run(ini={"schema": "a.sql"}, cwd=cwd).schema == (cwd / "a.sql",)


@pytest.mark.parametrize("where", ["cli", "env", "ini"])
def test_absolute_schema_paths_are_kept(dirs: tuple[Path, Path], where: str) -> None:
    cwd, ini_dir = dirs
    absolute = ini_dir / "b.sql" if where != "ini" else cwd / "b.sql"
    value: Any = [str(absolute)] if where == "cli" else str(absolute)
    assert run(**{where: {"schema": value}}, cwd=cwd, ini_dir=ini_dir).schema == (absolute,)


@pytest.mark.parametrize(
    "value",
    ["a.sql b.sql", "a.sql,b.sql", "a.sql, b.sql", "  a.sql\tb.sql  ", "a.sql,,b.sql,", "a.sql\nb.sql"],
)
def test_env_schema_list_separated_by_spaces_or_commas(dirs: tuple[Path, Path], value: str) -> None:
    cwd, _ = dirs
    assert run(env={"schema": value}, cwd=cwd).schema == (cwd / "a.sql", cwd / "b.sql")


def test_env_schema_list_keeps_order_and_quoted_spaces(dirs: tuple[Path, Path]) -> None:
    cwd, _ = dirs
    settings = run(env={"schema": 'b.sql "my schema.sql",a.sql'}, cwd=cwd)
    assert settings.schema == (cwd / "b.sql", cwd / "my schema.sql", cwd / "a.sql")


def test_cli_schema_item_with_a_space_is_one_path(dirs: tuple[Path, Path]) -> None:
    cwd, _ = dirs
    assert run(cli={"schema": ["my schema.sql"]}, cwd=cwd).schema == (cwd / "my schema.sql",)


@pytest.mark.parametrize("where", ["cli", "env", "ini"])
def test_missing_schema_file_error_names_the_file(dirs: tuple[Path, Path], where: str) -> None:
    cwd, ini_dir = dirs
    value: Any = ["a.sql", "missing.sql"] if where == "cli" else "a.sql missing.sql"
    message = config_error(**{where: {"schema": value}}, cwd=cwd, ini_dir=ini_dir)
    expected = (ini_dir if where == "ini" else cwd) / "missing.sql"
    assert repr(str(expected)) in message
    assert "a.sql" not in message
    opt = option("schema")
    source = {"cli": opt.flag, "env": f"env {opt.env}", "ini": f"ini {opt.ini}"}[where]
    assert f"(from {source})" in message
    assert opt.names() in message
    assert "\n" not in message


def test_schema_directory_is_not_a_file(dirs: tuple[Path, Path]) -> None:
    cwd, _ = dirs
    (cwd / "schemas").mkdir()
    assert repr(str(cwd / "schemas")) in config_error(env={"schema": "schemas"}, cwd=cwd)


def test_unbalanced_quote_in_env_schema_is_a_config_error(dirs: tuple[Path, Path]) -> None:
    cwd, _ = dirs
    message = config_error(env={"schema": "bob's.sql"}, cwd=cwd)
    assert "CONCURRENT_DB_SCHEMA" in message


# -- describe ------------------------------------------------------------------------------------------------


def test_describe_shows_values_and_sources_but_no_password(dirs: tuple[Path, Path]) -> None:
    cwd, _ = dirs
    settings = run(
        cli={"keep": True},
        env={"url": "postgresql://app:Sup3rS3cret@db.example:5433/app", "lock_timeout": "12.5"},
        ini={"schema": "a.sql b.sql", "isolation": "strict"},
        cwd=cwd,
        ini_dir=cwd,
    )
    lines = settings.describe()
    assert lines == [
        "url=postgresql://app:***@db.example:5433/app [env CONCURRENT_DB_URL]",
        "isolation=strict [ini concurrent_db_isolation]",
        "schema=a.sql b.sql [ini concurrent_db_schema]",
        "keep [--concurrent-db-keep]",
        "lock-timeout=12.5s [env CONCURRENT_DB_LOCK_TIMEOUT]",
        "spares=auto [default]",
        "clone-strategy=auto [default]",
        "keep-templates=2 [default]",
    ]
    assert "Sup3rS3cret" not in " ".join(lines)
    assert settings.url is not None
    assert settings.url.password == "Sup3rS3cret"


def test_describe_defaults() -> None:
    assert run().describe() == [
        "url=sqlite (default: pytest cache + temp dirs) [default]",
        "isolation=default [default]",
        "lock-timeout=300s [default]",
        "spares=auto [default]",
        "clone-strategy=auto [default]",
        "keep-templates=2 [default]",
    ]


def test_describe_shows_spares_clone_strategy_and_keep_templates_with_their_sources() -> None:
    settings = run(
        cli={"spares": "0", "rebuild": True},
        env={"clone_strategy": "file_copy"},
        ini={"keep_templates": "5", "lock_timeout": "60"},
    )
    assert settings.describe() == [
        "url=sqlite (default: pytest cache + temp dirs) [default]",
        "isolation=default [default]",
        "rebuild [--concurrent-db-rebuild]",
        "lock-timeout=60s [ini concurrent_db_lock_timeout]",
        "spares=0 [--concurrent-db-spares]",
        "clone-strategy=file_copy [env CONCURRENT_DB_CLONE_STRATEGY]",
        "keep-templates=5 [ini concurrent_db_keep_templates]",
    ]


def test_describe_without_recorded_sources_says_default() -> None:
    parts = Settings(spares=3, keep_templates=0, clone_strategy="wal_log", lock_timeout=0.5).describe()
    assert parts[-4:] == [
        "lock-timeout=0.5s [default]",
        "spares=3 [default]",
        "clone-strategy=wal_log [default]",
        "keep-templates=0 [default]",
    ]


@pytest.mark.parametrize(("value", "message"), [("-1", "'-1'"), ("two", "'two'")])
def test_a_bad_pool_size_is_one_line(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve({}.get, {}.get, environ={"CONCURRENT_DB_POOL": value}, cwd=NOWHERE)
    assert str(info.value) == (
        f"concurrent-db: env CONCURRENT_DB_POOL must be a whole number >= 0, not {message}; "
        "fix --concurrent-db-pool (ini concurrent_db_pool, env CONCURRENT_DB_POOL)"
    )


def test_pool_and_keep_failed_from_the_ini() -> None:
    settings = resolve(
        {}.get, {"concurrent_db_pool": "0", "concurrent_db_keep_failed": "yes"}.get, environ={}, cwd=NOWHERE
    )
    assert (settings.pool, settings.keep_failed) == (0, True)
    assert "keep-failed [ini concurrent_db_keep_failed]" in settings.describe()


def test_snapshot_options(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    settings = resolve(
        {"concurrent_db_snapshot_dir": "snaps/new"}.get,
        {"concurrent_db_snapshot_keep": "5"}.get,
        environ={"CONCURRENT_DB_PG_BIN": str(tmp_path)},
        cwd=tmp_path,
    )
    assert settings.snapshot_dir == tmp_path / "snaps" / "new"
    assert settings.snapshot_dir.is_dir()  # made if missing
    assert (settings.snapshot_keep, settings.pg_bin) == (5, tmp_path)
    assert Settings().snapshot_dir is None
    assert Settings().snapshot_keep == 3
    for cli, environ, message in (
        ({"concurrent_db_snapshot_dir": str(afile)}, {}, "exists and is not a directory"),
        ({}, {"CONCURRENT_DB_SNAPSHOT_KEEP": "-1"}, "whole number >= 0"),
        ({}, {"CONCURRENT_DB_PG_BIN": str(tmp_path / "missing")}, "is not a directory"),
    ):
        with pytest.raises(ConfigError, match=message) as info:
            resolve(cli.get, {}.get, environ=environ, cwd=tmp_path)
        assert "\n" not in str(info.value)
