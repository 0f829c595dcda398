"""`python -m pytest_concurrent_db list|prune` against real servers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import Project


def _cli(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    url = ["--url", project.url.render(hide_password=False)]
    return subprocess.run(
        [sys.executable, "-m", "pytest_concurrent_db", *args, *url],
        cwd=project.pytester.path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_list_and_prune_dead_clones_and_stale_templates(project: Project) -> None:
    project.write(tests="def test_one(concurrent_db): pass\ndef test_two(concurrent_db): pass\n")
    project.run("-n", "2", "--concurrent-db-keep").assert_outcomes(passed=2)
    clones = project.clones()
    assert len(clones) in (1, 2)
    listing = _cli(project, "list")
    assert listing.returncode == 0, listing.stderr
    # SQLite clones live in pytest's temp dirs (pytest removes old ones); servers list them as dead
    for clone in clones if project.backend != "sqlite" else []:
        line = next(line for line in listing.stdout.splitlines() if line.startswith(clone))
        assert " clone " in line
        assert " kept " in line  # kept for debugging: later runs leave it alone, prune removes it
    dry = _cli(project, "prune")
    assert dry.returncode == 0
    assert "dry run" in dry.stdout
    assert project.clones() == clones  # a dry run drops nothing
    if project.backend != "sqlite":
        assert all(clone in dry.stdout for clone in clones)
        done = _cli(project, "prune", "--yes")
        assert done.returncode == 0
        assert project.clones() == []
    # the template is kept (up to --keep-templates out-of-date ones) ...
    templates = [n for n in project.server_names() if "_tpl_" in n]
    assert len(templates) == 1
    assert templates[0] in _cli(project, "list").stdout
    # ... and dropped by prune --keep-templates 0 once no live run uses it
    done = _cli(project, "prune", "--yes", "--keep-templates", "0")
    assert done.returncode == 0, done.stderr
    assert [n for n in project.server_names() if "_tpl_" in n] == []


def test_new_template_prunes_old_ones_beyond_keep(project: Project) -> None:
    project.write(tests="def test_one(concurrent_db): pass\n")
    schema = project.pytester.path / "schema.sql"
    original = schema.read_text()
    for i in range(4):
        schema.write_text(original + f"\nCREATE TABLE version_{i} (id INTEGER);\n")
        project.run("-p", "no:xdist", "--concurrent-db-keep-templates", "1").assert_outcomes(passed=1)
    templates = [n for n in project.server_names() if "_tpl_" in n]
    assert len(templates) == 2  # the current one and one out-of-date one


@pytest.mark.parametrize("backend_url", ["postgresql"], indirect=True)
def test_cli_error_is_one_line(project: Project) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest_concurrent_db", "list", "--url", "postgresql://u:s3cr3t@127.0.0.1:1/x"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "cannot connect" in result.stderr
    assert "s3cr3t" not in result.stderr
    assert "Traceback" not in result.stderr


def test_prune_is_scoped_to_the_urls_database_name(project: Project) -> None:
    """Another project's out-of-date template on the same server survives our prune."""
    project.write(tests="def test_one(concurrent_db): pass\n")
    project.run("-p", "no:xdist").assert_outcomes(passed=1)
    other = Project(
        project.pytester,
        project.backend,
        project.url.with_database(project.url.database.replace(project.base, "o" + project.base[1:])),
        "o" + project.base[1:],
    )
    other.run("-p", "no:xdist").assert_outcomes(passed=1)
    try:
        assert [n for n in other.server_names() if "_tpl_" in n]
        done = _cli(project, "prune", "--yes", "--keep-templates", "0")
        assert done.returncode == 0, done.stderr
        assert [n for n in project.server_names() if "_tpl_" in n] == []
        assert [n for n in other.server_names() if "_tpl_" in n]  # not ours to prune
    finally:
        other.drop_all()
