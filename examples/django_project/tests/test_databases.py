"""Several databases: "analytics" (its own database) and "replica" (a test mirror of "default")."""

import json
import os

import pytest
from django.conf import settings
from django.db import connections

from analytics.models import Event
from catalog.models import Category


@pytest.mark.django_db(databases=["default", "analytics"])
def test_two_databases():
    Event.objects.create(kind="view")
    assert Event.objects.using("analytics").count() == 1
    assert not Category.objects.filter(name="view").exists()
    assert "analytics_event" not in connections["default"].introspection.table_names()


@pytest.mark.django_db(transaction=True, databases=["default", "replica"])
def test_mirror_reads_what_default_wrote():
    Category.objects.create(name="garden")
    assert Category.objects.using("replica").filter(name="garden").exists()
    assert connections["replica"].settings_dict["NAME"] == connections["default"].settings_dict["NAME"]


@pytest.mark.django_db(databases="__all__")
def test_record_databases():
    """Writes what this worker is connected to into $RESULTS_DIR (the plugin's own tests read it)."""
    results = os.environ.get("RESULTS_DIR")
    if not results:
        pytest.skip("RESULTS_DIR not set")
    worker_id = os.environ.get("PYTEST_XDIST_WORKER", "main")
    seen = {}
    for alias in ("default", "analytics", "replica"):
        connection = connections[alias]
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("SELECT current_database()")
                current = cursor.fetchone()[0]
            elif connection.vendor == "mysql":
                cursor.execute("SELECT DATABASE()")
                current = cursor.fetchone()[0]
            else:
                current = next(row[2] for row in cursor.execute("PRAGMA database_list") if row[1] == "main")
        seen[alias] = {
            "name": str(connection.settings_dict["NAME"]),
            "current": current,
            "settings": str(settings.DATABASES[alias]["NAME"]),
        }
    with open(os.path.join(results, f"{worker_id}.json"), "w", encoding="utf-8") as f:
        json.dump(seen, f)
