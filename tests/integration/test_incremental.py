"""Incremental templates on a real Django project (examples/django_project) under ``pytest -n 2``,
on SQLite, PostgreSQL and MariaDB: a new migration (schema, data, a second branch with its
merge) is applied to a copy of the previous template, and the result equals a full build of
the same files (a dump of the server's catalogs and the row count of every table); an edited,
removed or reordered migration builds the template in full.

Each run runs only ``tests/test_dump.py``, which writes the catalog dump of the worker's
pristine clone (both test databases) to ``$RESULTS_DIR``.
"""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_module

from .conftest import Project, summary
from .test_django import DjangoProject, django_project  # noqa: F401  (the fixture)

DUMP_TEST = '''
import json
import os

import pytest
from django.db import connections

QUERIES = {
    "postgresql": {
        "columns": "SELECT table_name, column_name, ordinal_position, data_type, is_nullable, column_default"
        " FROM information_schema.columns WHERE table_schema = 'public'",
        "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'",
        "constraints": "SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid)"
        " FROM pg_constraint WHERE connamespace = 'public'::regnamespace",
        "views": "SELECT table_name, view_definition FROM information_schema.views WHERE table_schema = 'public'",
        "triggers": "SELECT event_object_table, trigger_name, action_statement FROM information_schema.triggers",
        "sequences": "SELECT sequence_name, data_type FROM information_schema.sequences",
    },
    "mysql": {
        "columns": "SELECT table_name, column_name, ordinal_position, column_type, is_nullable, column_default"
        " FROM information_schema.columns WHERE table_schema = DATABASE()",
        "indexes": "SELECT table_name, index_name, non_unique, seq_in_index, column_name"
        " FROM information_schema.statistics WHERE table_schema = DATABASE()",
        "constraints": "SELECT table_name, constraint_name, constraint_type"
        " FROM information_schema.table_constraints WHERE table_schema = DATABASE()",
        "foreign keys": "SELECT table_name, constraint_name, referenced_table_name, update_rule, delete_rule"
        " FROM information_schema.referential_constraints WHERE constraint_schema = DATABASE()",
        "views": "SELECT table_name, view_definition FROM information_schema.views WHERE table_schema = DATABASE()",
        "triggers": "SELECT event_object_table, trigger_name, action_statement"
        " FROM information_schema.triggers WHERE trigger_schema = DATABASE()",
    },
    "sqlite": {
        "objects": "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'",
    },
}


def dump(alias):
    connection = connections[alias]
    out = {}
    with connection.cursor() as cursor:
        for what, sql in QUERIES[connection.vendor].items():
            cursor.execute(sql)
            out[what] = sorted([[str(v) for v in row] for row in cursor.fetchall()])
        rows = {}
        for table in connection.introspection.table_names(cursor):
            cursor.execute("SELECT COUNT(*) FROM " + connection.ops.quote_name(table))
            rows[table] = cursor.fetchone()[0]
        out["rows"] = rows
    return out


@pytest.mark.django_db(databases=["default", "analytics"])
def test_dump():
    dumps = {alias: dump(alias) for alias in ("default", "analytics")}
    path = os.path.join(os.environ["RESULTS_DIR"], "dump.json")
    with open(path, "w") as f:
        json.dump(dumps, f)
'''

TAG = '''
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("catalog", "0002_seed_categories")]
    operations = [
        migrations.CreateModel(
            "Tag",
            [
                ("id", models.AutoField(primary_key=True)),
                ("name", models.CharField(max_length=40, unique=True)),
                ("category", models.ForeignKey("catalog.Category", on_delete=models.CASCADE)),
            ],
        ),
        migrations.AddIndex("tag", models.Index(fields=["name", "category"], name="tag_name_category")),
    ]
'''

SEED_TAGS = '''
from django.db import migrations


def seed(apps, schema_editor):
    Category = apps.get_model("catalog", "Category")
    Tag = apps.get_model("catalog", "Tag")
    db = schema_editor.connection.alias
    for category in Category.objects.using(db).all():
        Tag.objects.using(db).create(name="new-" + category.name, category=category)


class Migration(migrations.Migration):
    dependencies = [("catalog", "0003_tag")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
'''

TAG_COLOR = '''
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("catalog", "0003_tag")]
    operations = [migrations.AddField("tag", "color", models.CharField(max_length=7, default="#000000"))]
'''

MERGE = '''
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("catalog", "0004_seed_tags"), ("catalog", "0004_tag_color")]
    operations = []
'''

BEFORE_TAG = '''
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("catalog", "0002_seed_categories")]
    run_before = [("catalog", "0003_tag")]
    operations = [migrations.AddField("category", "rank", models.IntegerField(default=0))]
'''


class Builds:
    """Runs of the project's dump test, and what each says about its templates."""

    def __init__(self, project: DjangoProject) -> None:
        self.project = project
        self.project.add_test("test_dump", DUMP_TEST)
        self.migrations = project.pytester.path / "catalog" / "migrations"
        self.runs = 0

    def write(self, name: str, source: str) -> None:
        (self.migrations / f"{name}.py").write_text(textwrap.dedent(source))

    def remove(self, name: str) -> None:
        (self.migrations / f"{name}.py").unlink()

    def run(self, *args: str) -> tuple[dict[str, Any], dict[str, Any], str]:
        """(the default database's template timings, the dumps, the output) of one run."""
        self.runs += 1
        timings = self.project.pytester.path / f"timings{self.runs}.json"
        result = self.project.run(
            "-n", "2", "--concurrent-db", "-p", "no:randomly", "--concurrent-db-keep-templates", "10",
            f"--concurrent-db-timings={timings}", "tests/test_dump.py", *args,
        )  # fmt: skip
        output = result.stdout.str()
        assert result.ret == 0, output
        templates = json.loads(timings.read_text())["templates"]
        default = next(t for t in templates if "_analytics_tpl_" not in t["template"])
        dumps = json.loads((self.project.results / "dump.json").read_text())
        return default, dumps, output

    def incremental(self, added: int, *, reused: bool = False) -> dict[str, Any]:
        """A run that must build the template from the previous one, adding ``added``
        migrations, and whose template equals a full build of the same files (returned);
        ``reused``: and a run in between, with the files unchanged, reuses it."""
        template, dumps, output = self.run()
        assert template["built"], output
        assert template["built_from"], output  # incremental
        assert template["migrations"] == added, output
        plural = "" if added == 1 else "s"
        assert f"built incrementally from {template['built_from']} (+{added} migration{plural})" in output
        if reused:
            again, again_dumps, output = self.run()
            assert not again["built"], output  # the incremental template is kept and reused, like any
            assert again_dumps == dumps
        full, full_dumps, output = self.run("--concurrent-db-rebuild")
        assert full["built"], output
        assert not full["built_from"], output
        assert full["migrations"] > added
        assert dumps == full_dumps  # the same tables, columns, indexes, constraints... and row counts
        return dumps

    def full(self) -> dict[str, Any]:
        """A run that must build the template in full."""
        template, _, output = self.run()
        assert template["built"], output
        assert not template["built_from"], output
        assert "built incrementally" not in output
        assert template["migrations"] >= 5, output  # every migration of the project
        return template


def test_new_migrations_are_applied_to_a_copy_of_the_previous_template(
    django_project: DjangoProject,  # noqa: F811
) -> None:
    builds = Builds(django_project)
    builds.write("0003_tag", TAG)
    builds.full()

    # a schema migration (above), then a data migration: one migration each
    builds.write("0004_seed_tags", SEED_TAGS)
    dumps = builds.incremental(added=1)
    assert dumps["default"]["rows"]["catalog_tag"] == 3  # the data migration's rows

    # a second branch and its merge migration: two; then unchanged files: reused, nothing built
    builds.write("0004_tag_color", TAG_COLOR)
    builds.write("0005_merge", MERGE)
    builds.incremental(added=2, reused=True)


def test_edited_removed_or_reordered_migrations_build_in_full(django_project: DjangoProject) -> None:  # noqa: F811
    builds = Builds(django_project)
    builds.write("0003_tag", TAG)
    builds.write("0004_seed_tags", SEED_TAGS)
    builds.full()

    initial = builds.migrations / "0001_initial.py"  # an old migration edited
    initial.write_text(initial.read_text() + "\n# edited\n")
    builds.full()

    builds.remove("0004_seed_tags")  # one removed
    builds.full()

    builds.write("0003_before_tag", BEFORE_TAG)  # a new one that an old one now depends on
    builds.full()


# -- Alembic ----------------------------------------------------------------------------------------------
ALEMBIC_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sqlalchemy_alembic"

NOTE_REVISION = '''
"""A new column."""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade():
    op.add_column("plan", sa.Column("note", sa.String(40), nullable=True))


def downgrade():
    op.drop_column("plan", "note")
'''

COLUMNS_TEST = '''
import json
import os

from sqlalchemy import inspect


def test_columns(concurrent_db_engine):
    with open(os.path.join(os.environ["RESULTS_DIR"], "plan.json"), "w") as f:
        json.dump(sorted(c["name"] for c in inspect(concurrent_db_engine).get_columns("plan")), f)
'''


def test_a_new_alembic_revision_is_applied_to_a_copy(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    require_module("alembic")
    root = project.pytester.path
    shutil.copytree(ALEMBIC_EXAMPLE, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.db"))
    (root / "tests" / "test_columns.py").write_text(COLUMNS_TEST)
    monkeypatch.setenv("RESULTS_DIR", str(root))
    first = project.run("-n", "2", "tests/test_columns.py")
    first.assert_outcomes(passed=1)
    assert "built by" in summary(first)
    (root / "migrations" / "versions" / "0004_plan_note.py").write_text(NOTE_REVISION)
    second = project.run("-n", "2", "tests/test_columns.py")
    second.assert_outcomes(passed=1)
    assert re.search(r"built incrementally from cdb_\w+_tpl_\w+ \(\+1 migration\)", summary(second)), summary(second)
    assert "note" in json.loads((root / "plan.json").read_text())
    assert project.clones() == []
