"""``--concurrent-db-timings``: the per-phase table and its JSON form, from typed reports,
and the option's value (a flag, or a .json file)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_concurrent_db.errors import ConfigError
from pytest_concurrent_db.report import WorkerReport
from pytest_concurrent_db.settings import option, resolve_one
from pytest_concurrent_db.timings import json_path, timings_from_reports, write_timings

TEMPLATE = "cdb_app_tpl_0123456789ab"


@dataclass
class Terminal:
    sections: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def section(self, title: str) -> None:
        self.sections.append(title)

    def write_line(self, line: str, **markup: bool) -> None:
        self.lines.append(line)


def report(worker_id: str, **fields: Any) -> WorkerReport:
    defaults: dict[str, Any] = {"template": TEMPLATE, "backend": "postgresql"}
    return WorkerReport(worker_id=worker_id, **{**defaults, **fields})


def xdist_run() -> list[WorkerReport]:
    """gw0 built the template (12 migrations) while gw1 waited for the lock, then reused it."""
    return [
        report(
            "gw0",
            fingerprint_seconds=0.02,
            template_built=True,
            template_seconds=3.5,
            migrations=12,
            clone="c0",
            clone_seconds=0.1,
            checks=5,
            check_seconds=0.05,
            dropped=["c0"],
            drop_seconds=0.3,
        ),
        report(
            "gw1",
            fingerprint_seconds=0.04,
            lock_wait_seconds=3.4,
            reuse_seconds=0.01,
            clone="c1",
            clone_seconds=0.3,
            checks=4,
            check_seconds=0.07,
            dropped=["c1"],
            drop_seconds=0.5,
        ),
    ]


def phases(reports: list[WorkerReport]) -> dict[str, dict[str, Any]]:
    (template,) = timings_from_reports(reports, "1f2e3d4c").to_json()["templates"]
    return {p["phase"]: p for p in template["phases"]}


def test_every_phase_with_min_median_max_and_each_worker() -> None:
    rows = phases(xdist_run())
    assert list(rows) == [
        "fingerprint",
        "lock wait",
        "template build",
        "template reuse",
        "clone per worker",
        "isolation check",
        "drop",
    ]
    clone = rows["clone per worker"]
    assert (clone["n"], clone["min"], clone["max"]) == (2, 0.1, 0.3)
    assert clone["median"] == pytest.approx(0.2)
    assert clone["workers"] == {"gw0": 0.1, "gw1": 0.3}
    assert rows["lock wait"]["max"] == 3.4
    assert rows["template build"]["workers"] == {"gw0": 3.5}
    assert rows["template build"]["note"] == "12 migrations applied"
    assert rows["template reuse"]["workers"] == {"gw1": 0.01}
    assert rows["drop"]["total"] == pytest.approx(0.8)


def test_json_document_names_the_template_and_its_builder() -> None:
    document = timings_from_reports(xdist_run(), "1f2e3d4c").to_json()
    assert document["version"] == 1
    assert document["run_id"] == "1f2e3d4c"
    (template,) = document["templates"]
    assert template["template"] == TEMPLATE
    assert (template["backend"], template["built"], template["built_by"], template["migrations"]) == (
        "postgresql",
        True,
        "gw0",
        12,
    )
    json.dumps(document)  # plain builtins only


def test_warm_run_reuses_without_a_build_row() -> None:
    """The runner: one process looked the template up, two clone makers received it."""
    reports = [
        report("main", fingerprint_seconds=0.01, reuse_seconds=0.002),
        report("gw0", clone="c0", clone_seconds=0.01, spare_claimed=True, dropped=["c0"], drop_seconds=0.1),
        report("gw1", clone="c1", clone_seconds=0.02, dropped=["c1"], drop_seconds=0.1),
    ]
    rows = phases(reports)
    assert "template build" not in rows
    assert rows["template reuse"]["note"] == "no migrations"
    assert rows["fingerprint"]["workers"] == {"main": 0.01}  # not the clone makers
    assert rows["clone per worker"]["note"] == "spare taken over"
    assert "isolation check" not in rows  # no checks ran


def test_table_has_a_block_per_template_in_order() -> None:
    other = [report("gw0", template="cdb_app_analytics_tpl_ab", fingerprint_seconds=0.001, reuse_seconds=0.001)]
    lines = timings_from_reports([*xdist_run(), *other], "1f2e3d4c").lines()
    assert lines[0] == "run 1f2e3d4c (seconds)"
    assert lines[1] == f"{TEMPLATE} (postgresql)"
    assert lines[2].split() == ["phase", "n", "min", "median", "max"]
    build = next(line for line in lines if "template build" in line)
    assert build.split()[-4:] == ["1", "3.500", "3.500", "3.500"]
    assert "(12 migrations applied)" in build
    assert lines.index("cdb_app_analytics_tpl_ab (postgresql)") > lines.index(build)


def test_reports_without_a_template_are_left_out() -> None:
    timings = timings_from_reports([report("gw0", template="")], "r")
    assert timings.templates == ()
    assert timings.lines() == ["run r (seconds)", "no template was used"]


def test_write_prints_and_writes_json(tmp_path: Path) -> None:
    terminal = Terminal()
    target = tmp_path / "out" / "timings.json"
    assert write_timings(terminal, xdist_run(), "1f2e3d4c", target) == target
    assert terminal.sections == ["concurrent-db timings"]
    assert terminal.lines[-1] == f"timings written to {target}"
    assert json.loads(target.read_text())["templates"][0]["template"] == TEMPLATE


def test_write_only_prints_for_the_bare_flag(tmp_path: Path) -> None:
    terminal = Terminal()
    assert write_timings(terminal, xdist_run(), "1f2e3d4c", True) is None
    assert not any("written" in line for line in terminal.lines)


def test_unwritable_file_is_said_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    terminal = Terminal()
    assert write_timings(terminal, xdist_run(), "r", blocker / "t.json") is None
    assert terminal.lines[-1].startswith(f"concurrent-db: cannot write the timings to {blocker / 't.json'}")


def _resolve(cli: object = None, env: str | None = None, ini: object = None, base: Path | None = None) -> Any:
    opt = option("timings")
    environ = {opt.env: env} if env is not None else {}
    return resolve_one(opt, lambda dest: cli, lambda key: ini, environ=environ, cwd=base, ini_dir=base)


def test_option_is_a_flag_or_a_json_file(tmp_path: Path) -> None:
    opt = option("timings")
    assert (opt.flag, opt.ini, opt.env) == ("--concurrent-db-timings", "concurrent_db_timings", "CONCURRENT_DB_TIMINGS")
    assert _resolve() == (False, "default")
    assert _resolve(cli=True) == (True, "--concurrent-db-timings")
    assert _resolve(cli="out/t.json", base=tmp_path) == (tmp_path / "out" / "t.json", "--concurrent-db-timings")
    assert _resolve(env="1") == (True, "env CONCURRENT_DB_TIMINGS")
    assert _resolve(env="off", ini="true") == (False, "env CONCURRENT_DB_TIMINGS")
    assert _resolve(ini="ci.JSON", base=tmp_path) == (tmp_path / "ci.JSON", "ini concurrent_db_timings")
    assert json_path(_resolve(cli=True)[0]) is None
    assert json_path(Path("t.json")) == Path("t.json")


@pytest.mark.parametrize("value", ["tests/", "test_app.py", "yes please"])
def test_option_refuses_anything_but_json(value: str) -> None:
    """A bare flag before a test path takes the path as its value: refuse it, never overwrite it."""
    with pytest.raises(ConfigError) as info:
        _resolve(cli=value)
    message = str(info.value)
    assert message.startswith("concurrent-db: --concurrent-db-timings takes no value or a file ending in .json")
    assert "--concurrent-db-timings=timings.json" in message
    assert "\n" not in message
