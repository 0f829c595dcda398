"""pytest-django's transactional tests on fresh clones (``@pytest.mark.concurrent_db(fresh=True)``,
``--concurrent-db-fresh-transactional``) in the example project, on every backend."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.conftest import require_module

from .test_django import DjangoProject, run_id

require_module("pytest_django")

FRESH_TESTS = """
    import json, os

    import pytest
    from django.db import connections

    from catalog.models import Category

    def _record(kind, i):
        names = sorted(Category.objects.values_list("name", flat=True))
        seen = {alias: connections[alias].settings_dict["NAME"] for alias in ("default", "analytics", "replica")}
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        with open(os.path.join(os.environ["RESULTS_DIR"], f"fresh-{kind}-{worker}-{i}.out"), "w") as fh:
            json.dump({"names": names, "databases": {k: str(v) for k, v in seen.items()}}, fh)

    @pytest.mark.concurrent_db(fresh=True)
    @pytest.mark.django_db(transaction=True, databases=["default", "analytics"])
    @pytest.mark.parametrize("i", range(3))
    def test_fresh(i):
        _record("marker", i)
        Category.objects.create(name=f"fresh{i}")

    @pytest.mark.django_db(transaction=True, serialized_rollback=True)
    @pytest.mark.parametrize("i", range(2))
    def test_fresh_serialized(i):
        _record("serialized", i)
        Category.objects.all().delete()

    @pytest.mark.django_db
    @pytest.mark.parametrize("i", range(2))
    def test_zz_worker(i):
        _record("worker", i)
"""


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def django_project(
    request: pytest.FixtureRequest, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> Iterator[DjangoProject]:
    url = None if request.param == "sqlite" else request.getfixturevalue(f"{request.param}_url")
    project = DjangoProject(pytester, monkeypatch, url)
    yield project
    project.drop_all()


def _records(project: DjangoProject, kind: str) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted(project.results.glob(f"fresh-{kind}-*.out"))]


def test_transactional_tests_get_fresh_clones_instead_of_a_flush(django_project: DjangoProject) -> None:
    project = django_project
    project.add_test("test_fresh_db", FRESH_TESTS)
    result = project.run("-n", "2", "--concurrent-db", "--concurrent-db-fresh-transactional", "tests/test_fresh_db.py")
    result.assert_outcomes(passed=7)
    seeded = ["books", "games", "music"]  # the data migration's rows: in the template, so in every clone
    fresh = _records(project, "marker") + _records(project, "serialized")
    assert len(fresh) == 5
    assert all(record["names"] == seeded for record in fresh)
    defaults = [record["databases"]["default"] for record in fresh]  # type: ignore[index]
    assert len(set(defaults)) == 5  # one clone per test
    for record in fresh:
        databases = record["databases"]
        assert databases["replica"] == databases["default"]  # type: ignore[index]  # the mirror follows
    worker = _records(project, "worker")
    assert all(record["names"] == seeded for record in worker)
    assert not {r["databases"]["default"] for r in worker} & set(defaults)  # type: ignore[index]
    text = result.stdout.str()
    assert "fresh clones: 5 used" in text  # default: every fresh test
    assert "fresh clones: 3 used" in text  # analytics: the tests that use it
    assert project.leftovers(run_id(result)) == []


@pytest.mark.parametrize("django_project", ["sqlite"], indirect=True)  # checked once
def test_a_bad_fresh_value_is_one_line(django_project: DjangoProject) -> None:
    django_project.add_test(
        "test_fresh_db",
        """
        import pytest

        @pytest.mark.concurrent_db(fresh="maybe")
        @pytest.mark.django_db(transaction=True)
        def test_one():
            pass
        """,
    )
    result = django_project.run("-n", "2", "--concurrent-db", "tests/test_fresh_db.py")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*@pytest.mark.concurrent_db(fresh=...) must be True or False, not 'maybe'*"])
    assert "Traceback" not in result.stdout.str()
