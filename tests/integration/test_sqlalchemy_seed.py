"""Seed files loaded into the template in batches (every clone has the rows), and bad seed input."""

from __future__ import annotations

import pytest

from .conftest import Project

SEED_TESTS = """
    import pytest

    @pytest.mark.parametrize("i", range(4))
    def test_seed_rows_in_every_clone(concurrent_db_connection, i):
        cur = concurrent_db_connection.cursor()
        cur.execute("SELECT COUNT(*) FROM author")
        assert cur.fetchone()[0] == 1 + 2500                 # the schema's row and the CSV's
        cur.execute("SELECT title, worker FROM book ORDER BY id")
        assert [tuple(r) for r in cur.fetchall()] == [("json one", None), ("json two", "w")]
        concurrent_db_connection.rollback()
"""


def _write_seed(project: Project) -> None:
    data = project.pytester.path / "data"
    data.mkdir()
    rows = "\n".join(f"{n},author {n}" for n in range(2, 2502))
    (data / "author.csv").write_text("id,name\n" + rows + "\n")
    (data / "book.json").write_text(
        '[{"id": 1, "author_id": 2, "title": "json one"},'
        ' {"id": 2, "author_id": 3, "title": "json two", "worker": "w"}]'
    )


def test_seed_files_fill_the_template(project: Project) -> None:
    _write_seed(project)
    project.write(tests=SEED_TESTS, ini="concurrent_db_seed = data/*.csv data/book.json\n")
    result = project.run("-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    assert project.clones() == []


@pytest.mark.parametrize("backend_url", ["sqlite", "postgresql", "mysql"], indirect=True)
def test_bad_seed_files_are_one_line_naming_file_and_line(project: Project) -> None:
    _write_seed(project)
    data = project.pytester.path / "data"
    project.write(tests=SEED_TESTS, ini="concurrent_db_seed = data/author.csv\n")
    (data / "author.csv").write_text("id,name\n2,ok\n3,\n")  # name is NOT NULL
    bad_row = project.run("-n", "2", "-p", "no:cacheprovider")
    bad_row.stdout.fnmatch_lines(["*concurrent-db: seed file *author.csv, line 3: *; fix the row*"])
    (data / "author.csv").write_text("id,nmae\n2,x\n")
    bad_columns = project.run("-n", "2", "-p", "no:cacheprovider")
    bad_columns.stdout.fnmatch_lines(
        ["*concurrent-db: seed file *author.csv: column nmae not in table author (it has id, name); fix the column*"]
    )
    for result in (bad_row, bad_columns):
        assert "Traceback" not in result.stdout.str()
    assert project.server_names() == []
